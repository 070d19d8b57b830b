"""A restricted unpickler for CIFAR-10 python batches: it rebuilds numpy arrays and refuses every other global.

Plain `pickle.load` on an untrusted file can run any code the file names; this unpickler can only build dicts,
lists, ints, byte strings and numpy arrays, so a hostile batch file raises `DataError` instead.
"""

import functools
import pickle

import numpy as np

from tfrobprune.data import errors

__all__ = ["RestrictedUnpickler"]


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles CIFAR-10 python batches, allowing only the globals needed to rebuild numpy arrays.

  Dicts, lists, ints and bytes are pickle opcodes and need no globals; numpy arrays need `_reconstruct` (protocols
  <= 4, under its numpy 1 or numpy 2 module name) or `_frombuffer` (protocol 5), plus `ndarray` and `dtype`. Any
  other global (`os.system`, `builtins.eval`, ...) is refused before it can be called.
  """

  def __init__(self, file, path):
    super().__init__(file, encoding="bytes")  # the original batches are Python 2 pickles of byte strings
    self._path = path

  def find_class(self, module, name):
    allowed = _allowed_pickle_globals()
    if (module, name) not in allowed:
      raise errors.DataError(f"{self._path}: refusing to unpickle global {module}.{name}; a CIFAR-10 batch holds only "
                             "numpy arrays, lists and byte strings.")
    return allowed[module, name]


@functools.cache
def _allowed_pickle_globals():
  # Take the reconstructors from numpy's own reduce methods: no import of private modules whose path moved between
  # numpy 1 (numpy.core) and numpy 2 (numpy._core).
  sample = np.zeros(1)
  reconstruct, frombuffer = sample.__reduce__()[0], sample.__reduce_ex__(5)[0]
  allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
  for package in ("numpy.core", "numpy._core"):
    allowed[f"{package}.multiarray", "_reconstruct"] = reconstruct
    allowed[f"{package}.numeric", "_frombuffer"] = frombuffer
  return allowed
