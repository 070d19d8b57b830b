"""Image folders `DIR/{train,test}/<class>/*.png|jpg|jpeg` -> an `ArrayDataset`, resized, read with Pillow."""

import os
from typing import Optional, Sequence

import numpy as np

from tfrobprune.data import array_dataset
from tfrobprune.data import errors

__all__ = ["load_image_folder"]

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def load_image_folder(data_dir: str, image_size: Optional[Sequence[int]]) -> array_dataset.ArrayDataset:
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
    raise errors.DataError(f"{os.path.join(data_dir, 'test')}: class folder(s) {unknown} are not among the training "
                           f"classes {list(class_names)}.")
  train_files = _labelled_files(train, class_names)
  test_files = _labelled_files(test, class_names)
  image_size = _check_image_size(_first_image_size(train_files) if image_size is None else image_size)
  mode = _common_mode([path for path, _ in train_files + test_files])
  x_train, y_train = _read_images(train_files, image_size, mode)
  x_test, y_test = _read_images(test_files, image_size, mode)
  return array_dataset.ArrayDataset(name="image_folder", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                                    class_names=class_names)


def _list_image_split(data_dir, split):
  """Returns {class name: sorted image paths} for `data_dir/split`; every class folder must hold an image."""
  split_dir = os.path.join(data_dir, split)
  if not os.path.isdir(split_dir):
    raise errors.DataError(f"{split_dir}: folder not found; an image folder dataset needs {split}/<class>/<images>.")
  classes = {}
  for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
    if entry.is_dir() and not entry.name.startswith("."):
      images = sorted(f.path for f in os.scandir(entry.path)
                      if f.is_file() and f.name.lower().endswith(_IMAGE_EXTENSIONS))
      if not images:
        raise errors.DataError(f"{entry.path}: empty class folder (no {'/'.join(_IMAGE_EXTENSIONS)} files).")
      classes[entry.name] = images
  if not classes:
    raise errors.DataError(f"{split_dir}: no class folders found; expected {split}/<class>/<images>.")
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
    raise errors.DataError(f"{path}: unreadable image ({type(e).__name__}: {e}).") from e


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
  return array_dataset.to_unit_float(images), np.array([label for _, label in files], dtype=np.int64)


def _read_image(path, image_size, mode):
  height, width = image_size
  try:
    with _pil_image().open(path) as image:
      return np.asarray(image.convert(mode).resize((width, height), _pil_image().Resampling.BILINEAR))
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DataError(f"{path}: unreadable image ({type(e).__name__}: {e}).") from e
