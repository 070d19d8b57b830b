"""Dataset files -> validated float32 arrays -> `tf.data` pipelines.

Every loader returns an `ArrayDataset`: float32 NHWC images in [0, 1] and int64 class indices, checked on the way
in. Formats read here:

  * IDX (MNIST, Fashion-MNIST), raw or gzipped: `load_idx`, `load_idx_dataset`.
  * CIFAR-10, binary or python version: `load_cifar10`. The python version is a set of pickles; they are read with
    a restricted unpickler that can rebuild numpy arrays and nothing else, so a hostile file cannot run code.
  * An image folder `DIR/{train,test}/<class>/*.png|jpg|jpeg`: `load_image_folder`.
  * A learnable synthetic dataset for smoke tests: `make_synthetic`.

Anything wrong with a file (missing, empty, truncated, corrupt, inconsistent, labels out of range) raises
`DataError` with a message naming the file and the problem; no raw numpy / gzip / pickle traceback reaches the user.
"""

import dataclasses
import functools
import gzip
import io
import os
import pickle
import zlib
from typing import Callable, Optional, Sequence

import numpy as np

from tfrobprune.keras_compat import tf

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_FASHION_MNIST_DIR",
    "ArrayDataset",
    "DataError",
    "load_cifar10",
    "load_dataset",
    "load_idx",
    "load_idx_dataset",
    "load_image_folder",
    "make_synthetic",
    "make_tf_dataset",
    "split_validation",
]

# Where Debian's `dataset-fashion-mnist` package installs the four gzipped IDX files under their upstream names.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                          "Ankle boot")
_MNIST_CLASSES = tuple(str(digit) for digit in range(10))
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# A std below this is clamped so that the model's `(x - mean) / std` layer never divides by ~0 (constant channels).
_MIN_STD = 1e-3
_SYNTHETIC_NOISE_STD = 0.2
_AUGMENT_PADDING = 4


class DataError(ValueError):
  """A dataset file or folder is missing, truncated, corrupt or inconsistent.

  The message names the file and the problem.
  """


# ----------------------------------------------------------------------------------------------------------------------
# The dataset value.


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: field-wise `==` on numpy arrays is ambiguous.
class ArrayDataset:
  """A train/test split held in memory.

  Arrays are converted on construction (no copy when they already have the right dtype) and checked: images
  float32 NHWC in [0, 1] with the same (H, W, C) in both splits, labels int64 in [0, num_classes), one label per
  image, at least one training example.

  Attributes:
    name: the dataset name, e.g. 'fashion_mnist'.
    x_train: float32 [N, H, W, C] training images in [0, 1].
    y_train: int64 [N] training labels.
    x_test: float32 [M, H, W, C] test images in [0, 1].
    y_test: int64 [M] test labels.
    class_names: one name per class; its length is the number of classes.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    # Frozen dataclass: normalise dtypes through object.__setattr__, once, here.
    for split in ("train", "test"):
      object.__setattr__(self, f"x_{split}", np.asarray(getattr(self, f"x_{split}"), dtype=np.float32))
      object.__setattr__(self, f"y_{split}", self._as_labels(getattr(self, f"y_{split}"), split))
    object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
    if not self.class_names:
      raise DataError(f"Dataset {self.name!r} has no class names.")
    if len(self.x_train) == 0:
      raise DataError(f"Dataset {self.name!r} has no training examples.")
    for split in ("train", "test"):
      self._check_split(split)
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise DataError(f"Dataset {self.name!r}: train images are {self.x_train.shape[1:]} but test images are "
                      f"{self.x_test.shape[1:]}.")

  def _as_labels(self, labels, split):
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
      raise DataError(f"In dataset {self.name!r} ({split} split): labels must be a 1-D integer array of class "
                      f"indices, got {labels.dtype} {labels.shape}.")
    return labels.astype(np.int64, copy=False)

  def _check_split(self, split):
    x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
    source = f"dataset {self.name!r} ({split} split)"
    if x.ndim != 4:
      raise DataError(f"In {source}: images must be NHWC (4-D), got shape {x.shape}.")
    _check_counts(len(x), len(y), source)
    _check_labels(y, len(self.class_names), source)
    if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):  # also catches NaN
      raise DataError(f"In {source}: pixel values must lie in [0, 1], got [{x.min()}, {x.max()}].")

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one image."""
    return tuple(int(d) for d in self.x_train.shape[1:])

  @property
  def num_classes(self) -> int:
    """The number of classes, `len(class_names)`."""
    return len(self.class_names)

  @functools.cached_property
  def mean(self) -> np.ndarray:
    """Per-channel mean of `x_train`, float32 [C]."""
    return self.x_train.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)

  @functools.cached_property
  def std(self) -> np.ndarray:
    """Per-channel standard deviation of `x_train`, float32 [C], clamped below at 1e-3 so it is safe to divide by."""
    std = self.x_train.std(axis=(0, 1, 2), dtype=np.float64)
    return np.maximum(std, _MIN_STD).astype(np.float32)


def _check_counts(num_images, num_labels, source):
  if num_images != num_labels:
    raise DataError(f"In {source}: {num_images} images but {num_labels} labels; the counts must match.")


def _check_labels(labels, num_classes, source):
  """Raises DataError naming `source`, the first bad label and its index unless all labels are in range."""
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"In {source}: labels must be integers, got dtype {labels.dtype}.")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    index = int(bad[0])
    raise DataError(f"In {source}: label {int(labels[index])} at index {index} is outside [0, {num_classes}) "
                    f"({bad.size} bad labels in total).")


def _to_unit_float(images_uint8):
  """uint8 images -> float32 in [0, 1] (one float32 copy, divided in place)."""
  images = images_uint8.astype(np.float32)
  images /= 255.0
  return images


# ----------------------------------------------------------------------------------------------------------------------
# Reading files.


def _read_bytes(path):
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
    raise DataError(f"{path}: file not found.") from None
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut-off stream is an EOFError.
    raise DataError(f"{path}: cannot read the file ({type(e).__name__}: {e}); it is corrupt or truncated.") from e
  if not content:
    raise DataError(f"{path}: the file is empty.")
  return content


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
  content = _read_bytes(path)
  dtype, shape = _parse_idx_header(content, path)
  offset = 4 + 4 * len(shape)
  expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
  actual = len(content) - offset
  if actual != expected:
    problem = "truncated" if actual < expected else "has trailing bytes"
    raise DataError(f"{path}: the IDX file {problem}: header dims {shape} need {expected} data bytes, "
                    f"found {actual}.")
  array = np.frombuffer(content, dtype=dtype, offset=offset).reshape(shape)
  return array.astype(dtype.newbyteorder("="), copy=False)


def _parse_idx_header(content, path):
  """Returns (dtype, shape) from an IDX header, or raises DataError naming `path`."""
  magic = content[:4]
  if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
    raise DataError(f"{path}: not an IDX file: wrong magic number {magic.hex()!r} (expected 0000 + a type code "
                    f"in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} + a dimension count >= 1).")
  ndim = magic[3]
  header_end = 4 + 4 * ndim
  if len(content) < header_end:
    raise DataError(f"{path}: the IDX file is truncated inside its header ({ndim} dims need {header_end} bytes, "
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


def load_idx_dataset(name: str, data_dir: str) -> ArrayDataset:
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
  return ArrayDataset(name=name, x_train=splits["train"][0], y_train=splits["train"][1], x_test=splits["test"][0],
                      y_test=splits["test"][1], class_names=class_names)


def _load_idx_split(name, data_dir, split, num_classes):
  images_path = _find_idx_file(name, data_dir, split, "images")
  labels_path = _find_idx_file(name, data_dir, split, "labels")
  images, labels = load_idx(images_path), load_idx(labels_path)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise DataError(f"{images_path}: expected uint8 images of shape [N, H, W], got {images.dtype} {images.shape}.")
  if labels.ndim != 1:
    raise DataError(f"{labels_path}: expected a 1-D label vector, got shape {labels.shape}.")
  _check_counts(len(images), len(labels), f"{images_path} / {labels_path}")
  _check_labels(labels, num_classes, labels_path)
  return _to_unit_float(images)[..., np.newaxis], labels.astype(np.int64)


def _find_idx_file(name, data_dir, split, kind):
  candidates = [stem + suffix for stem in _IDX_FILE_STEMS[split, kind] for suffix in ("", ".gz")]
  for candidate in candidates:
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  where = f"{data_dir} does not exist" if not os.path.isdir(data_dir) else f"not found in {data_dir}"
  raise DataError(f"{name} {split} {kind}: {where} (looked for {', '.join(candidates)}). "
                  f"{_IDX_MISSING_HINTS[name]}")


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR-10.

_CIFAR_SIDE = 32
_CIFAR_PIXELS = 3 * _CIFAR_SIDE * _CIFAR_SIDE
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"


class _RestrictedUnpickler(pickle.Unpickler):
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
      raise DataError(f"{self._path}: refusing to unpickle global {module}.{name}; a CIFAR-10 batch holds only "
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


def _unpickle_dict(path):
  """Reads a pickled dict with the restricted unpickler; keys are returned as str."""
  content = _read_bytes(path)
  try:
    obj = _RestrictedUnpickler(io.BytesIO(content), path).load()
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (untrusted bytes: any failure is a corrupt file)
    raise DataError(f"{path}: not a valid CIFAR-10 pickle ({type(e).__name__}: {e}).") from e
  if not isinstance(obj, dict):
    raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}.")
  return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


def _read_python_batch(path):
  """Returns (uint8 [N, 3072] CHW rows, labels) from one python-version batch."""
  batch = _unpickle_dict(path)
  missing = {"data", "labels"} - batch.keys()
  if missing:
    raise DataError(f"{path}: the batch dict lacks key(s) {sorted(missing)}; found {sorted(batch)}.")
  data, labels = batch["data"], batch["labels"]
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
    described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
    raise DataError(f"{path}: 'data' must be a uint8 array of shape [N, {_CIFAR_PIXELS}], got {described}.")
  try:
    labels = np.asarray(labels)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{path}: 'labels' is not a list of integers ({e}).") from e
  if labels.ndim != 1:
    raise DataError(f"{path}: 'labels' must be a flat list, got shape {labels.shape}.")
  return data, labels


def _read_python_names(path):
  names = _unpickle_dict(path).get("label_names")
  if not isinstance(names, (list, tuple)) or not names:
    raise DataError(f"{path}: expected a non-empty 'label_names' list.")
  return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _read_binary_batch(path):
  """Returns (uint8 [N, 3072] CHW rows, labels) from one binary-version batch of 1 + 3072 byte records."""
  content = _read_bytes(path)
  record = 1 + _CIFAR_PIXELS
  if len(content) % record:
    raise DataError(f"{path}: {len(content)} bytes is not a whole number of {record}-byte CIFAR-10 records; the "
                    "file is truncated or corrupt.")
  records = np.frombuffer(content, dtype=np.uint8).reshape(-1, record)
  return records[:, 1:], records[:, 0]


def _read_binary_names(path):
  try:
    with open(path, encoding="utf-8") as f:
      names = tuple(line.strip() for line in f if line.strip())
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read the class names ({e}).") from e
  if not names:
    raise DataError(f"{path}: the file lists no class names.")
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


def load_cifar10(data_dir: str) -> ArrayDataset:
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
  return ArrayDataset(name="cifar10", x_train=np.concatenate([x for x, _ in train]),
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
  raise DataError(f"{data_dir} {where}: expected data_batch_1..5[.bin] and test_batch[.bin] in it or in its "
                  f"{' or '.join(f.folder for f in _CIFAR_FORMATS)} subfolder.")


def _load_cifar_batch(fmt, path, num_classes):
  if not os.path.exists(path):
    raise DataError(f"{path}: CIFAR-10 batch file not found.")
  rows, labels = fmt.read_batch(path)
  _check_counts(len(rows), len(labels), path)
  _check_labels(labels, num_classes, path)
  images = rows.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)  # CHW -> HWC
  return _to_unit_float(images), labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------------
# Image folders.

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def load_image_folder(data_dir: str, image_size: Optional[Sequence[int]]) -> ArrayDataset:
  """Loads `data_dir/train/<class>/*` and `data_dir/test/<class>/*` (.png, .jpg, .jpeg).

  Class names are the sorted training subfolder names; a test folder may hold a subset of them. Every image is
  resized (bilinear) to `image_size`. The images decide the channels: one if all of them (train and test) are
  grayscale, else three (RGB; alpha is dropped).

  Args:
    data_dir: the folder holding `train/` and `test/`.
    image_size: (height, width) to resize to; None takes the size of the first training image.

  Returns:
    An `ArrayDataset` of [N, H, W, 1 or 3] images in [0, 1].

  Raises:
    ValueError: if `image_size` is not two positive integers.
    DataError: if `train/` or `test/` is missing, a class folder has no images, a test class is not a training
      class, or an image cannot be read (the message names the file).
  """
  train = _list_image_split(data_dir, "train")
  test = _list_image_split(data_dir, "test")
  class_names = tuple(sorted(train))
  unknown = sorted(set(test) - set(train))
  if unknown:
    raise DataError(f"{os.path.join(data_dir, 'test')}: class folder(s) {unknown} are not among the training "
                    f"classes {list(class_names)}.")
  train_files = _labelled_files(train, class_names)
  test_files = _labelled_files(test, class_names)
  image_size = _check_image_size(_first_image_size(train_files) if image_size is None else image_size)
  mode = _common_mode([path for path, _ in train_files + test_files])
  x_train, y_train = _read_images(train_files, image_size, mode)
  x_test, y_test = _read_images(test_files, image_size, mode)
  return ArrayDataset(name="image_folder", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                      class_names=class_names)


def _list_image_split(data_dir, split):
  """Returns {class name: sorted image paths} for `data_dir/split`; every class folder must hold an image."""
  split_dir = os.path.join(data_dir, split)
  if not os.path.isdir(split_dir):
    raise DataError(f"{split_dir}: folder not found; an image folder dataset needs {split}/<class>/<images>.")
  classes = {}
  for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
    if entry.is_dir() and not entry.name.startswith("."):
      images = sorted(f.path for f in os.scandir(entry.path)
                      if f.is_file() and f.name.lower().endswith(_IMAGE_EXTENSIONS))
      if not images:
        raise DataError(f"{entry.path}: empty class folder (no {'/'.join(_IMAGE_EXTENSIONS)} files).")
      classes[entry.name] = images
  if not classes:
    raise DataError(f"{split_dir}: no class folders found; expected {split}/<class>/<images>.")
  return classes


def _labelled_files(classes, class_names):
  index = {name: i for i, name in enumerate(class_names)}
  return [(path, index[name]) for name, paths in sorted(classes.items()) for path in paths]


def _check_image_size(image_size):
  size = tuple(image_size)
  if len(size) != 2 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in size):
    raise ValueError(f"image_size must be (height, width) with two positive integers, got {image_size!r}.")
  return int(size[0]), int(size[1])


def _pil_image():
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top  (only image folders need Pillow)
  except ImportError as e:
    raise ImportError("Loading an image folder needs Pillow: `pip install pillow`.") from e
  return Image


def _open_image(path):
  """Opens (lazily, header only) an image; any failure becomes a DataError naming the file."""
  try:
    return _pil_image().open(path)
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types for bad files)
    raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e}).") from e


def _first_image_size(files):
  with _open_image(files[0][0]) as image:
    return image.height, image.width


def _common_mode(paths):
  """'L' if every image is grayscale, else 'RGB'."""
  for path in paths:
    with _open_image(path) as image:
      if image.mode not in _GRAYSCALE_MODES:
        return "RGB"
  return "L"


def _read_images(files, image_size, mode):
  """Returns float32 [N, H, W, C] images in [0, 1] and int64 labels for (path, label) pairs."""
  channels = 1 if mode == "L" else 3
  images = np.empty((len(files), *image_size, channels), dtype=np.uint8)
  for i, (path, _) in enumerate(files):
    images[i] = _read_image(path, image_size, mode).reshape(*image_size, channels)
  return _to_unit_float(images), np.array([label for _, label in files], dtype=np.int64)


def _read_image(path, image_size, mode):
  height, width = image_size
  try:
    with _pil_image().open(path) as image:
      return np.asarray(image.convert(mode).resize((width, height), _pil_image().Resampling.BILINEAR))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e}).") from e


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic data.


def make_synthetic(num_train: int, num_test: int, image_shape: Sequence[int], num_classes: int,
                   seed: int) -> ArrayDataset:
  """Makes a learnable dataset: each class is a random prototype image plus Gaussian noise, clipped to [0, 1].

  Labels cycle through the classes (balanced) in a seeded random order; the noise (std 0.2) leaves the classes
  easily separable. The same seed gives the same arrays.

  Args:
    num_train: number of training examples, >= 1.
    num_test: number of test examples, >= 0.
    image_shape: (H, W, C) of each image.
    num_classes: number of classes, >= 2.
    seed: seeds the prototypes, labels and noise.

  Returns:
    An `ArrayDataset` named 'synthetic' with class names 'class_0', 'class_1', ...

  Raises:
    ValueError: if a size is out of range or `image_shape` is not three positive integers.
  """
  if num_train < 1 or num_test < 0:
    raise ValueError(f"make_synthetic needs num_train >= 1 and num_test >= 0, got {num_train} and {num_test}.")
  if num_classes < 2:
    raise ValueError(f"make_synthetic needs num_classes >= 2, got {num_classes}.")
  shape = tuple(int(d) for d in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape must be (height, width, channels) with positive entries, got {image_shape!r}.")
  rng = np.random.default_rng(seed)
  prototypes = rng.uniform(0.0, 1.0, size=(num_classes, *shape))
  x_train, y_train = _noisy_copies(rng, prototypes, num_train)
  x_test, y_test = _noisy_copies(rng, prototypes, num_test)
  return ArrayDataset(name="synthetic", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                      class_names=tuple(f"class_{i}" for i in range(num_classes)))


def _noisy_copies(rng, prototypes, count):
  labels = rng.permutation(np.arange(count) % len(prototypes))
  noise = rng.normal(0.0, _SYNTHETIC_NOISE_STD, size=(count, *prototypes.shape[1:]))
  return np.clip(prototypes[labels] + noise, 0.0, 1.0).astype(np.float32), labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------------
# Choosing a dataset by name.


@dataclasses.dataclass(frozen=True)
class _LoadRequest:
  data_dir: Optional[str]
  image_size: Optional[Sequence[int]]
  synthetic_examples: Sequence[int]
  synthetic_shape: Sequence[int]
  num_classes: int
  seed: int


def _require_data_dir(name, request):
  if not request.data_dir:
    raise DataError(f"Dataset {name!r} needs --data_dir (the folder holding its files).")
  return request.data_dir


def _load_synthetic(request):
  num_train, num_test = request.synthetic_examples
  return make_synthetic(num_train, num_test, request.synthetic_shape, request.num_classes, request.seed)


_LOADERS: dict[str, Callable[[_LoadRequest], ArrayDataset]] = {
    # The default directory is looked up at call time so tests (and users) can repoint the module constant.
    "fashion_mnist": lambda r: load_idx_dataset("fashion_mnist", r.data_dir or DEFAULT_FASHION_MNIST_DIR),
    "mnist": lambda r: load_idx_dataset("mnist", _require_data_dir("mnist", r)),
    "cifar10": lambda r: load_cifar10(_require_data_dir("cifar10", r)),
    "image_folder": lambda r: load_image_folder(_require_data_dir("image_folder", r), r.image_size),
    "synthetic": _load_synthetic,
}

DATASET_NAMES = tuple(_LOADERS)  # ('fashion_mnist', 'mnist', 'cifar10', 'image_folder', 'synthetic')


def load_dataset(name: str, data_dir: Optional[str] = None, *, image_size: Optional[Sequence[int]] = None,
                 synthetic_examples: Sequence[int] = (1024, 256), synthetic_shape: Sequence[int] = (28, 28, 1),
                 num_classes: int = 10, seed: int = 0) -> ArrayDataset:
  """Loads a dataset by name.

  Args:
    name: one of `DATASET_NAMES`.
    data_dir: the folder with the dataset's files. Optional for 'fashion_mnist' (defaults to
      `DEFAULT_FASHION_MNIST_DIR`, where Debian's dataset-fashion-mnist package installs it); unused by 'synthetic';
      required otherwise.
    image_size: (height, width) for 'image_folder' (None: the first image's size); ignored by the other datasets.
    synthetic_examples: (num_train, num_test) for 'synthetic'.
    synthetic_shape: (H, W, C) for 'synthetic'.
    num_classes: number of classes for 'synthetic'; the other datasets define their own.
    seed: seed for 'synthetic'.

  Returns:
    The `ArrayDataset`.

  Raises:
    ValueError: for an unknown `name` or bad synthetic / image-size arguments.
    DataError: if the dataset's files are missing or invalid (see the individual loaders).
  """
  if name not in _LOADERS:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}.")
  return _LOADERS[name](_LoadRequest(data_dir=data_dir, image_size=image_size, synthetic_examples=synthetic_examples,
                                     synthetic_shape=synthetic_shape, num_classes=num_classes, seed=seed))


# ----------------------------------------------------------------------------------------------------------------------
# Validation split and tf.data.


def split_validation(dataset: ArrayDataset, fraction: float,
                     seed: int) -> tuple[ArrayDataset, tuple[np.ndarray, np.ndarray]]:
  """Holds out a random `fraction` of the training examples for validation (not stratified).

  Args:
    dataset: the dataset to split; its test split is kept as is.
    fraction: share of training examples to hold out, in [0, 1); 0 gives an empty validation set.
    seed: seeds the choice of held-out examples.

  Returns:
    (the dataset with the remaining training examples in their original order, (x_val, y_val)).

  Raises:
    ValueError: if `fraction` is outside [0, 1) or would leave no training example.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"Validation fraction must be in [0, 1), got {fraction}.")
  num_examples = len(dataset.x_train)
  num_val = int(round(fraction * num_examples))
  if num_val >= num_examples:
    raise ValueError(f"Validation fraction {fraction} of {num_examples} examples leaves none for training.")
  order = np.random.default_rng(seed).permutation(num_examples)
  val_index, train_index = np.sort(order[:num_val]), np.sort(order[num_val:])
  train_part = dataclasses.replace(dataset, x_train=dataset.x_train[train_index], y_train=dataset.y_train[train_index])
  return train_part, (dataset.x_train[val_index], dataset.y_train[val_index])


def make_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
                    seed: Optional[int] = None, augment: bool = False, drop_remainder: bool = False,
                    repeat: bool = False) -> tf.data.Dataset:
  """Builds the input pipeline: slices -> shuffle -> repeat -> augment -> batch -> prefetch.

  Args:
    x: float32 [N, H, W, C] images in [0, 1].
    y: integer [N] labels.
    batch_size: examples per batch, >= 1.
    shuffle: shuffle over the whole array, reshuffled on every pass; `seed` makes the sequence of orders repeatable.
    seed: seeds shuffling and augmentation; None draws fresh randomness.
    augment: CIFAR-style augmentation per example: zero-pad by 4 pixels, random crop back to H x W, random
      horizontal flip. Stateless ops with per-example seeds drawn from a seeded stream, so a given seed gives the
      same augmentations, while each pass over the data draws new ones.
    drop_remainder: drop a final smaller batch.
    repeat: repeat forever.

  Returns:
    A `tf.data.Dataset` of (float32 [B, H, W, C] images, int64 [B] labels).

  Raises:
    ValueError: if `batch_size` < 1, `x` is not 4-D, or `x` and `y` differ in length.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
  if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"make_tf_dataset needs images [N, H, W, C] and labels [N], got {x.shape} and {y.shape}.")
  ds = tf.data.Dataset.from_tensor_slices((x, y))
  if shuffle:
    ds = ds.shuffle(max(len(x), 1), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  if augment:
    ds = _augment(ds, seed)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return ds.prefetch(tf.data.AUTOTUNE)


def _augment(ds, seed):
  """Pairs each example with a fresh [2] stateless seed and applies `_pad_crop_flip` in parallel."""
  seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
  return tf.data.Dataset.zip((ds, seeds)).map(lambda example, op_seed: _pad_crop_flip(*example, op_seed),
                                              num_parallel_calls=tf.data.AUTOTUNE)


def _pad_crop_flip(image, label, op_seed):
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(op_seed, num=2))
  p = _AUGMENT_PADDING
  padded = tf.pad(image, [[p, p], [p, p], [0, 0]])
  cropped = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed), label
