"""The one error type of the data package, kept apart so every format module can raise it without import cycles."""

import re

__all__ = ["DataError", "op_message"]


class DataError(ValueError):
  """A dataset file or folder is missing, truncated, corrupt or inconsistent.

  The message names the file and the problem.
  """


def op_message(error):
  """The first line of a TensorFlow op error's message without its `{{function_node ...}}` and `[Op:...]` noise."""
  message = (getattr(error, "message", None) or str(error) or type(error).__name__).strip().splitlines()[0]
  message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", message)
  return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).strip() or type(error).__name__
