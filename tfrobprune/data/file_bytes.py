"""Reading a dataset file's bytes, raw or gzipped, with every I/O failure turned into a `DataError` naming the file."""

import gzip
import zlib

from tfrobprune.data import errors

__all__ = ["read_bytes"]


def read_bytes(path):
  """Returns the bytes of `path`, gunzipped when the name ends in '.gz'.

  Raises:
    DataError: naming `path` if it is missing, unreadable, not valid gzip, or empty.
  """
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        content = f.read()
    else:
      with open(path, "rb") as f:
        content = f.read()
  except FileNotFoundError:
    raise errors.DataError(f"{path}: file not found.") from None
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut-off stream is an EOFError.
    raise errors.DataError(f"{path}: cannot read the file ({type(e).__name__}: {e}); it is corrupt or "
                           "truncated.") from e
  if not content:
    raise errors.DataError(f"{path}: the file is empty.")
  return content
