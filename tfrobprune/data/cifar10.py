"""CIFAR-10, binary or python version: batch files of CHW uint8 rows -> an `ArrayDataset` of HWC images.

The python version is a set of pickles, read with `safe_unpickle.RestrictedUnpickler` so a hostile file cannot run
code.
"""

import dataclasses
import io
import os
from typing import Callable

import numpy as np

from tfrobprune.data import array_dataset
from tfrobprune.data import errors
from tfrobprune.data import file_bytes
from tfrobprune.data import safe_unpickle

__all__ = ["load_cifar10"]

_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_CIFAR_SIDE = 32
_CIFAR_PIXELS = 3 * _CIFAR_SIDE * _CIFAR_SIDE
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"


def _unpickle_dict(path):
  """Reads a pickled dict with the restricted unpickler; keys are returned as str."""
  content = file_bytes.read_bytes(path)
  try:
    obj = safe_unpickle.RestrictedUnpickler(io.BytesIO(content), path).load()
  except errors.DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (untrusted bytes: any failure is a corrupt file)
    raise errors.DataError(f"{path}: not a valid CIFAR-10 pickle ({type(e).__name__}: {e}).") from e
  if not isinstance(obj, dict):
    raise errors.DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}.")
  return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


def _read_python_batch(path):
  """Returns (uint8 [N, 3072] CHW rows, labels) from one python-version batch."""
  batch = _unpickle_dict(path)
  missing = {"data", "labels"} - batch.keys()
  if missing:
    raise errors.DataError(f"{path}: the batch dict lacks key(s) {sorted(missing)}; found {sorted(batch)}.")
  data, labels = batch["data"], batch["labels"]
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
    described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
    raise errors.DataError(f"{path}: 'data' must be a uint8 array of shape [N, {_CIFAR_PIXELS}], got {described}.")
  try:
    labels = np.asarray(labels)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DataError(f"{path}: 'labels' is not a list of integers ({e}).") from e
  if labels.ndim != 1:
    raise errors.DataError(f"{path}: 'labels' must be a flat list, got shape {labels.shape}.")
  return data, labels


def _read_python_names(path):
  names = _unpickle_dict(path).get("label_names")
  if not isinstance(names, (list, tuple)) or not names:
    raise errors.DataError(f"{path}: expected a non-empty 'label_names' list.")
  return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _read_binary_batch(path):
  """Returns (uint8 [N, 3072] CHW rows, labels) from one binary-version batch of 1 + 3072 byte records."""
  content = file_bytes.read_bytes(path)
  record = 1 + _CIFAR_PIXELS
  if len(content) % record:
    raise errors.DataError(f"{path}: {len(content)} bytes is not a whole number of {record}-byte CIFAR-10 records; the "
                           "file is truncated or corrupt.")
  records = np.frombuffer(content, dtype=np.uint8).reshape(-1, record)
  return records[:, 1:], records[:, 0]


def _read_binary_names(path):
  try:
    with open(path, encoding="utf-8") as f:
      names = tuple(line.strip() for line in f if line.strip())
  except (OSError, UnicodeDecodeError) as e:
    raise errors.DataError(f"{path}: cannot read the class names ({e}).") from e
  if not names:
    raise errors.DataError(f"{path}: the file lists no class names.")
  return names


@dataclasses.dataclass(frozen=True)
class _CifarFormat:
  folder: str  # the name of the extracted folder
  suffix: str  # of each batch file
  meta: str  # the class-name file
  read_batch: Callable[[str], tuple[np.ndarray, np.ndarray]]
  read_names: Callable[[str], tuple[str, ...]]


_CIFAR_FORMATS = (
    _CifarFormat("cifar-10-batches-bin", ".bin", "batches.meta.txt", _read_binary_batch, _read_binary_names),
    _CifarFormat("cifar-10-batches-py", "", "batches.meta", _read_python_batch, _read_python_names),
)


def load_cifar10(data_dir: str) -> array_dataset.ArrayDataset:
  """Loads CIFAR-10 from its binary or its python version, whichever `data_dir` holds.

  Binary: `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin` (records of 1 label byte + 3072 CHW bytes) and
  `batches.meta.txt`. Python: `data_batch_1` .. `data_batch_5`, `test_batch` (pickled dicts with b'data', a uint8
  [N, 3072] CHW array, and b'labels') and `batches.meta`. The pickles are read with a restricted unpickler that
  rebuilds numpy arrays and refuses every other global, so a malicious file cannot execute code. When the meta file
  is absent the standard ten CIFAR-10 class names are used.

  Args:
    data_dir: the extracted folder (`cifar-10-batches-bin` / `cifar-10-batches-py`) or its parent.

  Returns:
    An `ArrayDataset` of [N, 32, 32, 3] images in [0, 1].

  Raises:
    DataError: naming the file if no batches are found, a batch is missing, truncated or corrupt, a pickle holds
      anything but arrays / lists / bytes, the label and image counts differ, or a label is outside the classes.
  """
  folder, fmt = _find_cifar_folder(data_dir)
  meta_path = os.path.join(folder, fmt.meta)
  class_names = fmt.read_names(meta_path) if os.path.exists(meta_path) else _CIFAR10_CLASSES
  train = [_load_cifar_batch(fmt, os.path.join(folder, b + fmt.suffix), len(class_names))
           for b in _CIFAR_TRAIN_BATCHES]
  x_test, y_test = _load_cifar_batch(fmt, os.path.join(folder, _CIFAR_TEST_BATCH + fmt.suffix), len(class_names))
  return array_dataset.ArrayDataset(name="cifar10", x_train=np.concatenate([x for x, _ in train]),
                                    y_train=np.concatenate([y for _, y in train]), x_test=x_test, y_test=y_test,
                                    class_names=class_names)


def _find_cifar_folder(data_dir):
  """Returns (folder, format): `data_dir` itself or its extracted subfolder, binary preferred."""
  for fmt in _CIFAR_FORMATS:
    for folder in (data_dir, os.path.join(data_dir, fmt.folder)):
      markers = (_CIFAR_TRAIN_BATCHES[0] + fmt.suffix, _CIFAR_TEST_BATCH + fmt.suffix)
      if any(os.path.isfile(os.path.join(folder, marker)) for marker in markers):
        return folder, fmt
  where = "does not exist" if not os.path.isdir(data_dir) else "holds no CIFAR-10 batches"
  raise errors.DataError(f"{data_dir} {where}: expected data_batch_1..5[.bin] and test_batch[.bin] in it or in its "
                         f"{' or '.join(f.folder for f in _CIFAR_FORMATS)} subfolder.")


def _load_cifar_batch(fmt, path, num_classes):
  if not os.path.exists(path):
    raise errors.DataError(f"{path}: CIFAR-10 batch file not found.")
  rows, labels = fmt.read_batch(path)
  array_dataset.check_counts(len(rows), len(labels), path)
  array_dataset.check_labels(labels, num_classes, path)
  images = rows.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)  # CHW -> HWC
  return array_dataset.to_unit_float(images), labels.astype(np.int64)
