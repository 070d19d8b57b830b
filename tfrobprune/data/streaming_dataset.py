"""`StreamingDataset`: a train/test split whose training images stay encoded and are decoded per batch.

The streaming formats (image folders, TFRecord files) open into this value instead of an `ArrayDataset`: training
images are a `StreamedImages` (file paths or TFRecord records, decoded in the `tf.data` map), so memory does not grow
with the training set; the test split is decoded into float32 arrays, because evaluation attacks it many times and
the export's checks compare every artifact on it. Labels of both splits are in memory (eight bytes an example).

`open_streaming` is how a loader makes one: it decodes every image once (`image_decoding.scan`), so an unreadable
image is reported with its file before training; takes the size of the first training image when no `image_size` is
given; and decides the channels (one if every image of both splits is grayscale, else three).
"""

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np

from tfrobprune.data import array_dataset
from tfrobprune.data import errors
from tfrobprune.data import image_decoding
from tfrobprune.data import streamed_images

__all__ = ["StreamingDataset", "check_image_size", "open_streaming"]


@dataclasses.dataclass(frozen=True, eq=False)
class StreamingDataset(array_dataset.ImageClassification):
  """A train/test split with streamed training images (see the module docstring).

  Attributes:
    name: the dataset name, e.g. 'image_folder'.
    x_train: the training images, a `StreamedImages` (float32 [H, W, C] in [0, 1] once decoded).
    y_train: int64 [N] training labels.
    x_test: float32 [M, H, W, C] test images in [0, 1].
    y_test: int64 [M] test labels.
    class_names: one name per class; its length is the number of classes.
  """
  name: str
  x_train: streamed_images.StreamedImages
  y_train: np.ndarray = dataclasses.field(repr=False)
  x_test: np.ndarray = dataclasses.field(repr=False)
  y_test: np.ndarray = dataclasses.field(repr=False)
  class_names: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
    object.__setattr__(self, "x_test", np.asarray(self.x_test, dtype=np.float32))
    for split in ("train", "test"):
      source = f"dataset {self.name!r} ({split} split)"
      labels = array_dataset.as_labels(getattr(self, f"y_{split}"), source)
      object.__setattr__(self, f"y_{split}", labels)
      array_dataset.check_counts(len(getattr(self, f"x_{split}")), len(labels), source)
      array_dataset.check_labels(labels, len(self.class_names), source)
    if not self.class_names:
      raise errors.DataError(f"Dataset {self.name!r} has no class names.")
    if len(self.x_train) == 0:
      raise errors.DataError(f"Dataset {self.name!r} has no training examples.")
    if tuple(self.x_test.shape[1:]) != self.input_shape:
      raise errors.DataError(f"Dataset {self.name!r}: train images are {self.input_shape} but test images are "
                             f"{self.x_test.shape[1:]}.")

  @functools.cached_property
  def _moments(self):
    count, sums, squares = self.x_train.channel_moments()
    mean = sums / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))

  @property
  def mean(self) -> np.ndarray:
    """Per-channel mean of the training images, float32 [C] (one decoding pass, the first time it is asked for)."""
    return self._moments[0].astype(np.float32)

  @property
  def std(self) -> np.ndarray:
    """Per-channel standard deviation of the training images, float32 [C], clamped below at 1e-3."""
    return np.maximum(self._moments[1], array_dataset.MIN_STD).astype(np.float32)

  def to_arrays(self) -> array_dataset.ArrayDataset:
    """The same dataset with its training images decoded into memory, as the in-memory loaders return it."""
    return array_dataset.ArrayDataset(name=self.name, x_train=np.asarray(self.x_train), y_train=self.y_train,
                                      x_test=self.x_test, y_test=self.y_test, class_names=self.class_names)


def check_image_size(image_size):
  """(height, width) as two ints; ValueError naming `image_size` unless it is two positive integers."""
  size = tuple(image_size)
  if len(size) != 2 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in size):
    raise ValueError(f"image_size must be (height, width) with two positive integers, got {image_size!r}.")
  return int(size[0]), int(size[1])


def open_streaming(name, train, test, class_names, image_size: Optional[Sequence[int]] = None):
  """Checks every image of both splits once and returns the `StreamingDataset` of them.

  Args:
    name: the dataset name.
    train: (source, int64 labels by position) of the training split; a source as `streamed_images` describes.
    test: the same for the test split.
    class_names: one name per class.
    image_size: (height, width) every image is decoded to; None: the first training image's size.

  Returns:
    The `StreamingDataset`, its test images decoded into memory.

  Raises:
    ValueError: if `image_size` is not two positive integers.
    DataError: if an image cannot be read or decoded (the message names the first such file and counts them), or a
      label is out of range.
  """
  if image_size is not None:
    image_size = check_image_size(image_size)
  (train_source, y_train), (test_source, y_test) = train, test
  train_shapes, test_shapes = _scan(train_source), _scan(test_source)
  if image_size is None:
    image_size = check_image_size(train_shapes[0, :2])
  channels = image_decoding.channels_for(np.concatenate([train_shapes[:, 2], test_shapes[:, 2]]))
  x_train = streamed_images.StreamedImages(train_source, None, image_size, channels)
  x_test = streamed_images.StreamedImages(test_source, None, image_size, channels)
  return StreamingDataset(name=name, x_train=x_train, y_train=y_train, x_test=np.asarray(x_test), y_test=y_test,
                          class_names=class_names)


def _scan(source):
  """Native (height, width, channels) of every image of `source`; DataError naming the first unreadable one."""
  shapes, bad = image_decoding.scan(source.examples(np.arange(source.size, dtype=np.int64)), source.size)
  if bad.size:
    position = int(bad[0])
    try:
      reason = image_decoding.decode_error(source.encoded(position))
    except (OSError, errors.DataError) as error:
      reason = str(error)
    more = f"; {bad.size} unreadable images in total" if bad.size > 1 else ""
    raise errors.DataError(f"{source.describe(position)}: unreadable image ({reason}){more}.")
  return shapes
