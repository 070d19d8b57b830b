"""The one error type of the data package, kept apart so every format module can raise it without import cycles."""

__all__ = ["DataError"]


class DataError(ValueError):
  """A dataset file or folder is missing, truncated, corrupt or inconsistent.

  The message names the file and the problem.
  """
