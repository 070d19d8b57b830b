"""Dataset files -> validated images and labels -> `tf.data` pipelines: the one import point of the data package.

The array formats return an `ArrayDataset` (array_dataset.py): float32 NHWC images in [0, 1] and int64 class
indices, checked on the way in. The streaming formats (image folders, TFRecord files) can also open into a
`StreamingDataset` (streaming_dataset.py) whose training images stay encoded (file paths or records) and are decoded
in the `tf.data` map, so memory does not grow with the training set; its test split is in arrays. One module per
format:

  * IDX (MNIST, Fashion-MNIST), raw or gzipped: `load_idx`, `load_idx_dataset` (idx.py).
  * CIFAR-10, binary or python version: `load_cifar10` (cifar10.py). The python version is a set of pickles; they
    are read with a restricted unpickler (safe_unpickle.py) that can rebuild numpy arrays and nothing else, so a
    hostile file cannot run code.
  * An image folder `DIR/{train,test}/<class>/*.png|jpg|jpeg`: `open_image_folder`, `load_image_folder`
    (image_folder.py).
  * TFRecord files of (encoded image, label) `tf.train.Example`s: `open_tfrecord`, `load_tfrecord` (tfrecord.py).
  * A learnable synthetic dataset for smoke tests: `make_synthetic` (synthetic.py).

This module picks a loader by name (`load_dataset`, `DATASET_NAMES`), holds out a validation split and builds the
`tf.data` pipeline with its augmentation, for arrays and streamed images alike; it re-exports the loaders and
`DataError` so callers import only it.

Anything wrong with a file (missing, empty, truncated, corrupt, inconsistent, labels out of range) raises
`DataError` with a message naming the file and the problem; no raw numpy / gzip / pickle traceback reaches the user.
"""

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from tfrobprune.data import array_dataset
from tfrobprune.data import cifar10
from tfrobprune.data import errors
from tfrobprune.data import idx
from tfrobprune.data import image_folder
from tfrobprune.data import streamed_images
from tfrobprune.data import streaming_dataset
from tfrobprune.data import synthetic
from tfrobprune.data import tfrecord
from tfrobprune.keras_compat import tf

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_FASHION_MNIST_DIR",
    "ArrayDataset",
    "DataError",
    "StreamedImages",
    "StreamingDataset",
    "load_cifar10",
    "load_dataset",
    "load_idx",
    "load_idx_dataset",
    "load_image_folder",
    "load_tfrecord",
    "make_synthetic",
    "make_tf_dataset",
    "open_image_folder",
    "open_tfrecord",
    "split_validation",
]

# The package's public names, re-exported so that callers import this one module.
ArrayDataset = array_dataset.ArrayDataset
DataError = errors.DataError
StreamedImages = streamed_images.StreamedImages
StreamingDataset = streaming_dataset.StreamingDataset
# `load_dataset` reads this one from this module at call time, so tests (and users) can repoint it here.
DEFAULT_FASHION_MNIST_DIR = idx.DEFAULT_FASHION_MNIST_DIR
load_cifar10 = cifar10.load_cifar10
load_idx = idx.load_idx
load_idx_dataset = idx.load_idx_dataset
load_image_folder = image_folder.load_image_folder
load_tfrecord = tfrecord.load_tfrecord
make_synthetic = synthetic.make_synthetic
open_image_folder = image_folder.open_image_folder
open_tfrecord = tfrecord.open_tfrecord

_AUGMENT_PADDING = 4


@dataclasses.dataclass(frozen=True)
class _LoadRequest:
  data_dir: Optional[str]
  image_size: Optional[Sequence[int]]
  synthetic_examples: Sequence[int]
  synthetic_shape: Sequence[int]
  num_classes: int
  seed: int
  streaming: bool


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
    "image_folder": lambda r: _streamed(open_image_folder(_require_data_dir("image_folder", r), r.image_size), r),
    "synthetic": _load_synthetic,
    "tfrecord": lambda r: _streamed(open_tfrecord(_require_data_dir("tfrecord", r), r.image_size), r),
}

DATASET_NAMES = tuple(_LOADERS)  # ('fashion_mnist', 'mnist', 'cifar10', 'image_folder', 'synthetic', 'tfrecord')
STREAMING_NAMES = ("image_folder", "tfrecord")


def _streamed(dataset, request):
  return dataset if request.streaming else dataset.to_arrays()


def load_dataset(name: str, data_dir: Optional[str] = None, *, image_size: Optional[Sequence[int]] = None,
                 synthetic_examples: Sequence[int] = (1024, 256), synthetic_shape: Sequence[int] = (28, 28, 1),
                 num_classes: int = 10, seed: int = 0, streaming: bool = False) -> ArrayDataset | StreamingDataset:
  """Loads a dataset by name.

  Args:
    name: one of `DATASET_NAMES`.
    data_dir: the folder with the dataset's files. Optional for 'fashion_mnist' (defaults to
      `DEFAULT_FASHION_MNIST_DIR`, where Debian's dataset-fashion-mnist package installs it); unused by 'synthetic';
      required otherwise.
    image_size: (height, width) for 'image_folder' and 'tfrecord' (None: the first training image's size; images of
      another size are resized); ignored by the other datasets.
    synthetic_examples: (num_train, num_test) for 'synthetic'.
    synthetic_shape: (H, W, C) for 'synthetic'.
    num_classes: number of classes for 'synthetic'; the other datasets define their own.
    seed: seed for 'synthetic'.
    streaming: for the `STREAMING_NAMES`, return a `StreamingDataset` (training images decoded per batch in the
      `tf.data` map) instead of decoding them all into an `ArrayDataset`; the other datasets are arrays anyway.

  Returns:
    The `ArrayDataset`, or the `StreamingDataset` if `streaming` and the format streams.

  Raises:
    ValueError: for an unknown `name` or bad synthetic / image-size arguments.
    DataError: if the dataset's files are missing or invalid (see the individual loaders).
  """
  if name not in _LOADERS:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}.")
  return _LOADERS[name](_LoadRequest(data_dir=data_dir, image_size=image_size, synthetic_examples=synthetic_examples,
                                     synthetic_shape=synthetic_shape, num_classes=num_classes, seed=seed,
                                     streaming=streaming))


# ----------------------------------------------------------------------------------------------------------------------
# Validation split and tf.data.


def split_validation(dataset: ArrayDataset | StreamingDataset, fraction: float,
                     seed: int) -> tuple[ArrayDataset | StreamingDataset, tuple[np.ndarray, np.ndarray]]:
  """Holds out a random `fraction` of the training examples for validation (not stratified).

  The held-out examples are chosen by position in the training split (for a `StreamingDataset`: the file listing or
  the records in file order), so a seed holds out the same files or records every time; streamed validation images
  stay streamed (`x_val` is then a `StreamedImages`).

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


def make_tf_dataset(x: np.ndarray | StreamedImages, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
                    seed: Optional[int] = None, augment: bool = False, drop_remainder: bool = False,
                    repeat: bool = False) -> tf.data.Dataset:
  """Builds the input pipeline: slices -> shuffle -> repeat -> augment -> batch -> prefetch.

  Streamed images (`StreamedImages`) go: encoded examples -> shuffle -> decode (a parallel map, uint8 until it
  scales to [0, 1]) -> repeat -> augment -> batch -> prefetch; a shuffle with a given seed puts an image folder's
  files in the same order as the array of the same images.

  Args:
    x: float32 [N, H, W, C] images in [0, 1], or `StreamedImages`.
    y: integer [N] labels.
    batch_size: examples per batch, >= 1.
    shuffle: shuffle over the whole array (streamed TFRecords: files and a bounded buffer, see `tfrecord`),
      reshuffled on every pass; `seed` makes the sequence of orders repeatable.
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
  if not isinstance(x, StreamedImages):
    x = np.asarray(x, dtype=np.float32)
  y = np.asarray(y, dtype=np.int64)
  if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"make_tf_dataset needs images [N, H, W, C] and labels [N], got {x.shape} and {y.shape}.")
  if isinstance(x, StreamedImages):
    ds = x.dataset(y, shuffle=shuffle, seed=seed)
  else:
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
