"""IDX files (the MNIST format), raw or gzipped, and the MNIST / Fashion-MNIST datasets made of four of them."""

import os

import numpy as np

from tfrobprune.data import array_dataset
from tfrobprune.data import errors
from tfrobprune.data import file_bytes

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "load_idx", "load_idx_dataset"]

# Where Debian's `dataset-fashion-mnist` package installs the four gzipped IDX files under their upstream names.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                          "Ankle boot")
_MNIST_CLASSES = tuple(str(digit) for digit in range(10))

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_idx(path: str) -> np.ndarray:
  """Reads one IDX file (the MNIST format), raw or gzipped.

  The header is two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per dimension;
  the data follows in C order.

  Args:
    path: the file; gunzipped when the name ends in '.gz'.

  Returns:
    The array with the header's shape, in native byte order (uint8 for MNIST files).

  Raises:
    DataError: naming `path` if the file is missing, empty, not valid gzip, has a wrong magic number, or its length
      does not match the header's dimensions (truncated or with trailing bytes).
  """
  content = file_bytes.read_bytes(path)
  dtype, shape = _parse_idx_header(content, path)
  offset = 4 + 4 * len(shape)
  expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
  actual = len(content) - offset
  if actual != expected:
    problem = "truncated" if actual < expected else "has trailing bytes"
    raise errors.DataError(f"{path}: the IDX file {problem}: header dims {shape} need {expected} data bytes, "
                           f"found {actual}.")
  array = np.frombuffer(content, dtype=dtype, offset=offset).reshape(shape)
  return array.astype(dtype.newbyteorder("="), copy=False)


def _parse_idx_header(content, path):
  """Returns (dtype, shape) from an IDX header, or raises DataError naming `path`."""
  magic = content[:4]
  if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
    raise errors.DataError(f"{path}: not an IDX file: wrong magic number {magic.hex()!r} (expected 0000 + a type code "
                           f"in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} + a dimension count >= 1).")
  ndim = magic[3]
  header_end = 4 + 4 * ndim
  if len(content) < header_end:
    raise errors.DataError(f"{path}: the IDX file is truncated inside its header ({ndim} dims need {header_end} bytes, "
                           f"file has {len(content)}).")
  shape = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
  return _IDX_DTYPES[magic[2]], shape


# ----------------------------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST.

# Upstream names (also what Debian's dataset-fashion-mnist installs, gzipped); some MNIST mirrors use a dot instead
# of the last dash ('train-images.idx3-ubyte'). Raw files are preferred over gzipped ones when both exist.
_IDX_FILE_STEMS = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

_IDX_CLASS_NAMES = {"mnist": _MNIST_CLASSES, "fashion_mnist": _FASHION_MNIST_CLASSES}

_IDX_MISSING_HINTS = {
    "fashion_mnist": f"Install it with `apt-get install dataset-fashion-mnist` (it puts the files in "
                     f"{DEFAULT_FASHION_MNIST_DIR}) or pass --data_dir.",
    "mnist": "Download the four MNIST IDX files and pass their folder as --data_dir.",
}


def load_idx_dataset(name: str, data_dir: str) -> array_dataset.ArrayDataset:
  """Loads MNIST or Fashion-MNIST from the four IDX files in `data_dir`.

  Accepted names per file: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
  `t10k-labels-idx1-ubyte`, each raw or with '.gz' (Debian's dataset-fashion-mnist layout), or with '.idx' in place
  of '-idx'.

  Args:
    name: 'mnist' or 'fashion_mnist'; selects the class names.
    data_dir: the folder holding the files.

  Returns:
    An `ArrayDataset` of [N, 28, 28, 1] images in [0, 1] and ten classes.

  Raises:
    ValueError: for any other `name`.
    DataError: if a file is missing or invalid, images are not uint8 [N, H, W], labels are not 1-D or not in
      [0, 10), or the image and label counts differ; the message names the file.
  """
  if name not in _IDX_CLASS_NAMES:
    raise ValueError(f"load_idx_dataset: name must be one of {sorted(_IDX_CLASS_NAMES)}, got {name!r}.")
  class_names = _IDX_CLASS_NAMES[name]
  splits = {split: _load_idx_split(name, data_dir, split, len(class_names)) for split in ("train", "test")}
  return array_dataset.ArrayDataset(name=name, x_train=splits["train"][0], y_train=splits["train"][1],
                                    x_test=splits["test"][0], y_test=splits["test"][1], class_names=class_names)


def _load_idx_split(name, data_dir, split, num_classes):
  images_path = _find_idx_file(name, data_dir, split, "images")
  labels_path = _find_idx_file(name, data_dir, split, "labels")
  images, labels = load_idx(images_path), load_idx(labels_path)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise errors.DataError(f"{images_path}: expected uint8 images of shape [N, H, W], got {images.dtype} "
                           f"{images.shape}.")
  if labels.ndim != 1:
    raise errors.DataError(f"{labels_path}: expected a 1-D label vector, got shape {labels.shape}.")
  array_dataset.check_counts(len(images), len(labels), f"{images_path} / {labels_path}")
  array_dataset.check_labels(labels, num_classes, labels_path)
  return array_dataset.to_unit_float(images)[..., np.newaxis], labels.astype(np.int64)


def _find_idx_file(name, data_dir, split, kind):
  candidates = [stem + suffix for stem in _IDX_FILE_STEMS[split, kind] for suffix in ("", ".gz")]
  for candidate in candidates:
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  where = f"{data_dir} does not exist" if not os.path.isdir(data_dir) else f"not found in {data_dir}"
  raise errors.DataError(f"{name} {split} {kind}: {where} (looked for {', '.join(candidates)}). "
                         f"{_IDX_MISSING_HINTS[name]}")
