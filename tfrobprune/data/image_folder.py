"""Image folders `DIR/{train,test}/<class>/*.png|jpg|jpeg`: streamed from their files, or decoded into arrays.

Class names are the sorted training subfolder names; a test folder may hold a subset of them. The storage order is
class by class, files sorted by name within a class. `open_image_folder` keeps the file paths and decodes each image
in the `tf.data` map when training reads it (`StreamingDataset`); `load_image_folder` decodes everything into an
`ArrayDataset` for callers that want arrays. Both decode with TensorFlow (`image_decoding`), so they give the same
pixels.
"""

import os
from typing import Optional, Sequence

import numpy as np

from tfrobprune.data import array_dataset
from tfrobprune.data import errors
from tfrobprune.data import streaming_dataset
from tfrobprune.keras_compat import tf

__all__ = ["FileSource", "load_image_folder", "open_image_folder"]

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class FileSource:
  """Image files as a source of encoded images (see `streamed_images`): each is read in the `tf.data` map.

  Args:
    paths: the image files, in storage order.
  """

  def __init__(self, paths):
    self.paths = np.asarray(paths, dtype=object)
    self.size = len(self.paths)
    self._path_table = tf.constant([str(path) for path in self.paths], tf.string, shape=(self.size,))

  def examples(self, index, shuffle=False, seed=None):
    """(position, file bytes) for the positions `index`; `shuffle` permutes the whole selection (seeded)."""
    positions = tf.data.Dataset.from_tensor_slices(np.asarray(index, np.int64))
    if shuffle:
      positions = positions.shuffle(max(len(index), 1), seed=seed, reshuffle_each_iteration=True)
    table = self._path_table
    return positions.map(lambda position: (position, tf.io.read_file(tf.gather(table, position))),
                         num_parallel_calls=tf.data.AUTOTUNE)

  def describe(self, position):
    return str(self.paths[position])

  def encoded(self, position):
    with open(self.paths[position], "rb") as handle:
      return handle.read()


def open_image_folder(data_dir: str,
                      image_size: Optional[Sequence[int]] = None) -> streaming_dataset.StreamingDataset:
  """Opens `data_dir/train/<class>/*` and `data_dir/test/<class>/*` (.png, .jpg, .jpeg) for streaming.

  Every image is decoded once here to check it (in parallel, a batch at a time); the test split is kept decoded.
  Images are decoded to `image_size`; one of another size is resized (bilinear, antialiased when shrinking). The
  images decide the channels: one if all of them (train and test) are grayscale, else three (RGB; alpha is dropped).

  Args:
    data_dir: the folder holding `train/` and `test/`.
    image_size: (height, width) to decode to; None takes the size of the first training image.

  Returns:
    A `StreamingDataset` whose training images are the files, decoded in the `tf.data` map.

  Raises:
    ValueError: if `image_size` is not two positive integers.
    DataError: if `train/` or `test/` is missing or holds no class folder, a class folder has no images, a test class
      is not a training class, or an image cannot be read (the message names the file).
  """
  train = _list_image_split(data_dir, "train")
  test = _list_image_split(data_dir, "test")
  class_names = tuple(sorted(train))
  unknown = sorted(set(test) - set(train))
  if unknown:
    raise errors.DataError(f"{os.path.join(data_dir, 'test')}: class folder(s) {unknown} are not among the training "
                           f"classes {list(class_names)}.")
  splits = [_labelled_source(classes, class_names) for classes in (train, test)]
  return streaming_dataset.open_streaming("image_folder", *splits, class_names, image_size)


def load_image_folder(data_dir: str, image_size: Optional[Sequence[int]] = None) -> array_dataset.ArrayDataset:
  """`open_image_folder` with the training images decoded into memory too: an `ArrayDataset` of [N, H, W, 1 or 3]
  images in [0, 1]. Same arguments and errors."""
  return open_image_folder(data_dir, image_size).to_arrays()


def _list_image_split(data_dir, split):
  """Returns {class name: sorted image paths} for `data_dir/split`; every class folder must hold an image."""
  split_dir = os.path.join(data_dir, split)
  if not os.path.isdir(split_dir):
    raise errors.DataError(f"{split_dir}: folder not found; an image folder dataset needs {split}/<class>/<images>.")
  classes = {}
  for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
    if entry.is_dir() and not entry.name.startswith("."):
      images = sorted(f.path for f in os.scandir(entry.path)  # dot-files: macOS '._x.png' metadata, editors' files
                      if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(_IMAGE_EXTENSIONS))
      if not images:
        raise errors.DataError(f"{entry.path}: empty class folder (no {'/'.join(_IMAGE_EXTENSIONS)} files).")
      classes[entry.name] = images
  if not classes:
    raise errors.DataError(f"{split_dir}: no class folders found; expected {split}/<class>/<images>.")
  return classes


def _labelled_source(classes, class_names):
  """(FileSource of the split's images in class order, their int64 labels)."""
  index = {name: i for i, name in enumerate(class_names)}
  files = [(path, index[name]) for name, paths in sorted(classes.items()) for path in paths]
  return FileSource([path for path, _ in files]), np.array([label for _, label in files], dtype=np.int64)
