"""The dataset value every loader returns: a validated in-memory train/test split, plus the checks loaders share."""

import dataclasses
import functools

import numpy as np

from tfrobprune.data import errors

__all__ = ["ArrayDataset", "ImageClassification", "MIN_STD", "as_labels", "check_counts", "check_labels",
           "to_unit_float"]

# A std below this is clamped so that the model's `(x - mean) / std` layer never divides by ~0 (constant channels).
MIN_STD = 1e-3


class ImageClassification:
  """What both kinds of dataset (`ArrayDataset`, `streaming_dataset.StreamingDataset`) derive the same way from their
  `x_train` (anything with an NHWC `shape`) and `class_names`."""

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one image."""
    return tuple(int(d) for d in self.x_train.shape[1:])

  @property
  def num_classes(self) -> int:
    """The number of classes, `len(class_names)`."""
    return len(self.class_names)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: field-wise `==` on numpy arrays is ambiguous.
class ArrayDataset(ImageClassification):
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
      raise errors.DataError(f"Dataset {self.name!r} has no class names.")
    if len(self.x_train) == 0:
      raise errors.DataError(f"Dataset {self.name!r} has no training examples.")
    for split in ("train", "test"):
      self._check_split(split)
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise errors.DataError(f"Dataset {self.name!r}: train images are {self.x_train.shape[1:]} but test images are "
                             f"{self.x_test.shape[1:]}.")

  def _as_labels(self, labels, split):
    return as_labels(labels, f"dataset {self.name!r} ({split} split)")

  def _check_split(self, split):
    x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
    source = f"dataset {self.name!r} ({split} split)"
    if x.ndim != 4:
      raise errors.DataError(f"In {source}: images must be NHWC (4-D), got shape {x.shape}.")
    check_counts(len(x), len(y), source)
    check_labels(y, len(self.class_names), source)
    if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):  # also catches NaN
      raise errors.DataError(f"In {source}: pixel values must lie in [0, 1], got [{x.min()}, {x.max()}].")

  @functools.cached_property
  def mean(self) -> np.ndarray:
    """Per-channel mean of `x_train`, float32 [C]."""
    return self.x_train.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)

  @functools.cached_property
  def std(self) -> np.ndarray:
    """Per-channel standard deviation of `x_train`, float32 [C], clamped below at 1e-3 so it is safe to divide by."""
    std = self.x_train.std(axis=(0, 1, 2), dtype=np.float64)
    return np.maximum(std, MIN_STD).astype(np.float32)


def as_labels(labels, source):
  """`labels` as an int64 array; raises DataError naming `source` unless they are a 1-D integer array."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
    raise errors.DataError(f"In {source}: labels must be a 1-D integer array of class indices, got {labels.dtype} "
                           f"{labels.shape}.")
  return labels.astype(np.int64, copy=False)


def check_counts(num_images, num_labels, source):
  """Raises DataError naming `source` unless there is exactly one label per image."""
  if num_images != num_labels:
    raise errors.DataError(f"In {source}: {num_images} images but {num_labels} labels; the counts must match.")


def check_labels(labels, num_classes, source):
  """Raises DataError naming `source`, the first bad label and its index unless all labels are in range."""
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise errors.DataError(f"In {source}: labels must be integers, got dtype {labels.dtype}.")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    index = int(bad[0])
    raise errors.DataError(f"In {source}: label {int(labels[index])} at index {index} is outside [0, {num_classes}) "
                           f"({bad.size} bad labels in total).")


def to_unit_float(images_uint8):
  """uint8 images -> float32 in [0, 1] (one float32 copy, divided in place)."""
  images = images_uint8.astype(np.float32)
  images /= 255.0
  return images
