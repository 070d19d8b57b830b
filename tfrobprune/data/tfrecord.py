"""TFRecord files of (encoded image, label) examples, streamed record by record.

Each record is a serialized `tf.train.Example` with the feature keys of TensorFlow's image datasets (TF-Slim,
`tensorflow/models`):

  * `image/encoded`: bytes, one PNG, JPEG, GIF or BMP file;
  * `image/class/label`: int64, the class index in [0, number of classes).

Other features are ignored. `example_bytes` writes such a record.

Where the files are (`data_dir`):
  * a folder holding files whose names start with the split, `DIR/train*` and `DIR/test*` (`train.tfrecord`,
    `train-00000-of-00008`, ...), or subfolders `DIR/train/` and `DIR/test/` of record files;
  * or a glob with a `{split}` placeholder, e.g. `/data/imagenet/{split}-*-of-*`.
The test split may also be named `validation`. Files are read in sorted order; that order, record by record, is
the storage order (positions for the validation split and subsets).

Class names come from an optional `labels.txt` (one name per line, line i naming class i) in `data_dir` or beside
the first training file; without it the classes are '0' .. 'K-1' with K = the largest training label + 1.

Streaming (`TFRecordSource.examples` with `shuffle`): each epoch reads the files in a seeded order, interleaving
`_INTERLEAVE_FILES` of them, through a seeded shuffle buffer of `SHUFFLE_BUFFER` records (encoded, so memory is
about that many records' bytes): the standard approach for record files, which cannot be read at random positions.
"""

import os
from typing import Optional, Sequence

import numpy as np

from tfrobprune.data import array_dataset
from tfrobprune.data import errors
from tfrobprune.data import streaming_dataset
from tfrobprune.keras_compat import tf

__all__ = ["IMAGE_KEY", "LABEL_KEY", "SHUFFLE_BUFFER", "TFRecordSource", "example_bytes", "load_tfrecord",
           "open_tfrecord"]

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
# Encoded records held by the shuffle buffer of a streamed epoch.
SHUFFLE_BUFFER = 10_000
_INTERLEAVE_FILES = 8
_SPLIT_NAMES = {"train": ("train",), "test": ("test", "validation")}
_LABEL_BATCH = 4096
_FEATURES = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
_FORMAT = (f"each record must be a tf.train.Example with {IMAGE_KEY!r} (bytes, an encoded image) and {LABEL_KEY!r} "
           "(int64)")


# The optional class-name file; it may sit among the record files, which then leave it out.
_LABELS_FILE = "labels.txt"

def example_bytes(encoded_image: bytes, label: int) -> bytes:
  """A serialized `tf.train.Example` of one (encoded image, label), as this module reads them."""
  feature = {IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded_image])),
             LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class TFRecordSource:
  """Record files as a source of encoded images (see `streamed_images`).

  Args:
    files: the record files, in storage order.
    counts: records per file.
  """

  def __init__(self, files, counts):
    self.files = [str(path) for path in files]
    self.counts = np.asarray(counts, np.int64)
    self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
    self.size = int(self.counts.sum())

  def examples(self, index, shuffle=False, seed=None):
    """(position, image bytes) for the sorted positions `index`, in storage order or shuffled (module docstring)."""
    index = np.asarray(index, np.int64)
    files = tf.data.Dataset.from_tensor_slices((tf.constant(self.files, tf.string), self.starts))
    if shuffle:
      files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
    cycle = min(_INTERLEAVE_FILES, len(self.files)) if shuffle else 1
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) if cycle > 1 else {}
    records = files.interleave(lambda path, start: tf.data.TFRecordDataset(path).enumerate(start),
                               cycle_length=cycle, **parallel)
    if len(index) < self.size:
      keep = np.zeros(self.size, bool)
      keep[index] = True
      keep = tf.constant(keep)
      records = records.filter(lambda position, record: tf.gather(keep, position))
    examples = records.map(lambda position, record: (position, _image_bytes(record)),
                           num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
      examples = examples.shuffle(max(1, min(SHUFFLE_BUFFER, len(index))), seed=seed, reshuffle_each_iteration=True)
    return examples.apply(tf.data.experimental.assert_cardinality(len(index)))

  def _locate(self, position):
    file_index = int(np.searchsorted(self.starts, position, side="right")) - 1
    return self.files[file_index], int(position - self.starts[file_index])

  def describe(self, position):
    path, record = self._locate(position)
    return f"{path}, record {record}"

  def encoded(self, position):
    path, record = self._locate(position)
    for serialized in tf.data.TFRecordDataset(path).skip(record).take(1):
      return _image_bytes(serialized).numpy()
    raise errors.DataError(f"{path}: has no record {record}.")


def _image_bytes(record):
  return tf.io.parse_single_example(record, {IMAGE_KEY: _FEATURES[IMAGE_KEY]})[IMAGE_KEY]


def open_tfrecord(data_dir: str,
                  image_size: Optional[Sequence[int]] = None) -> streaming_dataset.StreamingDataset:
  """Opens the train and test record files of `data_dir` for streaming (see the module docstring).

  Every record is parsed and its image decoded once here to check it; the test split is kept decoded. Images are
  decoded to `image_size` (resized if needed, bilinear) with one channel if all are grayscale, else three.

  Args:
    data_dir: a folder, or a glob with a `{split}` placeholder.
    image_size: (height, width) to decode to; None takes the size of the first training image.

  Returns:
    A `StreamingDataset` whose training images are read from the files in the `tf.data` pipeline.

  Raises:
    ValueError: if `image_size` is not two positive integers.
    DataError: if a split has no files or no records, a file is corrupt or truncated, a record lacks the features,
      an image cannot be decoded, or a label is outside [0, number of classes) (messages name the file and record).
  """
  train_files, test_files = _split_files(data_dir, "train"), _split_files(data_dir, "test")
  (train_source, y_train), (test_source, y_test) = _read_split(train_files), _read_split(test_files)
  class_names = _class_names(data_dir, train_files[0], y_train)
  for source, labels in ((train_source, y_train), (test_source, y_test)):
    _check_label_range(source, labels, len(class_names))
  return streaming_dataset.open_streaming("tfrecord", (train_source, y_train), (test_source, y_test), class_names,
                                          image_size)


def load_tfrecord(data_dir: str, image_size: Optional[Sequence[int]] = None) -> array_dataset.ArrayDataset:
  """`open_tfrecord` with the training images decoded into memory too (an `ArrayDataset`). Same arguments and
  errors."""
  return open_tfrecord(data_dir, image_size).to_arrays()


def _split_files(data_dir, split):
  """Sorted record files of `split`: `{split}` glob, `DIR/split/*`, or `DIR/split*` (test: also `validation`)."""
  tried = []
  for name in _SPLIT_NAMES[split]:
    if "{split}" in data_dir:
      pattern = data_dir.replace("{split}", name)
    elif os.path.isdir(os.path.join(data_dir, name)):
      pattern = os.path.join(data_dir, name, "*")
    else:
      pattern = os.path.join(data_dir, name + "*")
    files = sorted(path for path in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(path)
                   and not os.path.basename(path).startswith(".") and os.path.basename(path) != _LABELS_FILE)
    if files:
      return files
    tried.append(pattern)
  if "{split}" not in data_dir and not os.path.isdir(data_dir):
    raise errors.DataError(f"{data_dir}: folder not found; --data_dir of a tfrecord dataset is a folder of train* and "
                           "test* record files, or a glob with {split}, e.g. /data/{split}-*.tfrecord.")
  raise errors.DataError(f"No {split} record files: nothing matches {' or '.join(tried)}.")


def _read_split(files):
  """(TFRecordSource of `files`, int64 labels of their records); parses every record once."""
  counts, labels = [], []
  for path in files:
    file_labels = _file_labels(path)
    counts.append(len(file_labels))
    labels.append(file_labels)
  source = TFRecordSource(files, counts)
  if source.size == 0:
    raise errors.DataError(f"{', '.join(files)}: no records.")
  return source, np.concatenate(labels)


def _file_labels(path):
  """The labels of every record of one file; DataError naming the file (and record) if one cannot be read."""
  parsed = tf.data.TFRecordDataset(path).map(lambda record: tf.io.parse_single_example(record, _FEATURES)[LABEL_KEY],
                                             num_parallel_calls=tf.data.AUTOTUNE).batch(_LABEL_BATCH)
  try:
    return np.concatenate([np.zeros(0, np.int64), *parsed.as_numpy_iterator()])
  except tf.errors.OpError as error:
    raise _located_error(path, error) from error


def _located_error(path, error):
  """A DataError for the first bad record of `path`, found by reading it again record by record."""
  count = 0
  try:
    for record in tf.data.TFRecordDataset(path):
      try:
        tf.io.parse_single_example(record, _FEATURES)
      except tf.errors.InvalidArgumentError as parse_error:
        return errors.DataError(f"{path}, record {count}: not an image example ({errors.op_message(parse_error)}); "
                                f"{_FORMAT}.")
      count += 1
  except tf.errors.DataLossError as read_error:
    return errors.DataError(f"{path}: corrupt or truncated TFRecord file after {count} good records "
                            f"({errors.op_message(read_error)}).")
  return errors.DataError(f"{path}: unreadable ({errors.op_message(error)}).")


def _class_names(data_dir, first_train_file, y_train):
  """Names from labels.txt (in `data_dir` or beside the first training file), else '0' .. str(max label)."""
  folders = [data_dir] if "{split}" not in data_dir else []
  for folder in folders + [os.path.dirname(first_train_file)]:
    path = os.path.join(folder, _LABELS_FILE)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle.read().strip().splitlines()]
      if not names or not all(names):
        raise errors.DataError(f"{path}: expected one class name per line, without empty lines.")
      return tuple(names)
  return tuple(str(i) for i in range(max(int(y_train.max()) + 1, 1)))


def _check_label_range(source, labels, num_classes):
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    position = int(bad[0])
    raise errors.DataError(f"{source.describe(position)}: label {int(labels[position])} is outside [0, {num_classes}) "
                           f"({bad.size} bad labels in total; the classes are the training labels 0 .. max, or the "
                           "lines of labels.txt).")
