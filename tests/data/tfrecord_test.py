"""Tests for tfrobprune.data.tfrecord: record files of (encoded image, label) written with tf.io at run time."""

import io
import os

from absl.testing import absltest
from absl.testing import parameterized
import hypothesis
import numpy as np
from PIL import Image

import format_files
import fuzzing
from tfrobprune.data import datasets
from tfrobprune.data import errors
from tfrobprune.data import tfrecord
from tfrobprune.keras_compat import tf


def _examples(count, seed, size=(5, 4), num_classes=3, first_label=0):
  """`count` (encoded image, label) pairs, PNG and JPEG alternating, labels cycling from `first_label`."""
  rng = np.random.default_rng(seed)
  return [(format_files.encoded_image(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8),
                                      "JPEG" if i % 2 else "PNG"), (first_label + i) % num_classes)
          for i in range(count)]


def _pixels(encoded):
  return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


class OpenTFRecordTest(parameterized.TestCase):

  def _write_dataset(self, root, shards=(4, 5), test_count=3):
    """Train shards of the given sizes and one test file; returns (train examples, test examples) in file order."""
    train = _examples(sum(shards), seed=0)
    start = 0
    for i, count in enumerate(shards):
      format_files.write_tfrecord(os.path.join(root, f"train-{i:05d}-of-{len(shards):05d}"), train[start:start + count])
      start += count
    test = _examples(test_count, seed=1, first_label=1)
    format_files.write_tfrecord(os.path.join(root, "test.tfrecord"), test)
    return train, test

  def testReadsShardsInSortedOrderWithTheirLabelsAndPixels(self):
    root = self.create_tempdir().full_path
    train, test = self._write_dataset(root)
    ds = tfrecord.open_tfrecord(root)
    self.assertEqual((ds.name, ds.class_names, ds.input_shape, len(ds.x_train)), ("tfrecord", ("0", "1", "2"),
                                                                                   (5, 4, 3), 9))
    np.testing.assert_array_equal(ds.y_train, [label for _, label in train])
    np.testing.assert_array_equal(ds.y_test, [label for _, label in test])
    np.testing.assert_array_equal(ds.x_train.uint8(), np.stack([_pixels(encoded) for encoded, _ in train]))
    np.testing.assert_array_equal(ds.x_test * 255, np.stack([_pixels(encoded) for encoded, _ in test]))
    self.assertEqual(ds.x_train.source.describe(5), f"{os.path.join(root, 'train-00001-of-00002')}, record 1")

  def testLabelsTxtNamesTheClasses(self):
    root = self.create_tempdir().full_path
    self._write_dataset(root)
    format_files.write(os.path.join(root, "labels.txt"), b"cat\ndog\nemu\nfox\n")
    self.assertEqual(tfrecord.open_tfrecord(root).class_names, ("cat", "dog", "emu", "fox"))

  def testLabelsTxtBesideTheTrainingFilesInASplitFolder_IsNotReadAsRecords(self):
    root = self.create_tempdir().full_path
    format_files.write_tfrecord(os.path.join(root, "train", "a.rec"), _examples(4, seed=0))
    format_files.write_tfrecord(os.path.join(root, "test", "b.rec"), _examples(2, seed=1))
    format_files.write(os.path.join(root, "train", "labels.txt"), b"cat\ndog\nemu\n")
    ds = datasets.load_dataset("tfrecord", root, streaming=True)
    self.assertEqual((len(ds.x_train), ds.class_names), (4, ("cat", "dog", "emu")))

  @parameterized.named_parameters(
      ("_SplitSubfolders", "{root}", "{root}/train/a.rec", "{root}/test/b.rec"),
      ("_SplitPattern", "{root}/data-{{split}}-*", "{root}/data-train-0", "{root}/data-test-0"),
      ("_ValidationAsTest", "{root}", "{root}/train.tfrecord", "{root}/validation-00000-of-00001"))
  def testFindsTheSplitFilesInEachDocumentedLayout(self, data_dir, train_path, test_path):
    root = self.create_tempdir().full_path
    format_files.write_tfrecord(train_path.format(root=root), _examples(4, seed=0))
    format_files.write_tfrecord(test_path.format(root=root), _examples(2, seed=1))
    ds = datasets.load_dataset("tfrecord", data_dir.format(root=root), streaming=True)
    self.assertEqual((len(ds.x_train), len(ds.x_test)), (4, 2))

  def testLoadDatasetWithoutStreamingDecodesTheSameImagesIntoArrays(self):
    root = self.create_tempdir().full_path
    self._write_dataset(root, shards=(3,))
    streamed = datasets.load_dataset("tfrecord", root, streaming=True)
    arrays = datasets.load_dataset("tfrecord", root, image_size=(8, 6))
    self.assertIsInstance(arrays, datasets.ArrayDataset)
    self.assertEqual(arrays.input_shape, (8, 6, 3))  # resized
    np.testing.assert_array_equal(datasets.load_dataset("tfrecord", root).x_train, np.asarray(streamed.x_train))

  def testShuffledEpochsReadEveryRecordOfTheSubsetOnceInASeededOrder(self):
    root = self.create_tempdir().full_path
    self._write_dataset(root, shards=(7, 6, 7))
    ds = tfrecord.open_tfrecord(root)
    train, (x_val, y_val) = datasets.split_validation(ds, 0.25, seed=0)
    self.assertEqual((len(train.x_train), len(x_val)), (15, 5))

    def epoch(seed):
      batches = datasets.make_tf_dataset(train.x_train, train.y_train, 4, shuffle=True, seed=seed)
      self.assertEqual(int(batches.cardinality()), 4)
      return [image for images, _ in batches.as_numpy_iterator() for image in images]

    expected = np.asarray(train.x_train)
    first, again, other = epoch(1), epoch(1), epoch(2)
    self.assertCountEqual([image.tobytes() for image in first], [image.tobytes() for image in expected])
    np.testing.assert_array_equal(first, again)
    self.assertFalse(np.array_equal(first, other))
    validation = list(datasets.make_tf_dataset(x_val, y_val, 5).as_numpy_iterator())
    np.testing.assert_array_equal(validation[0][1], y_val)


class TFRecordErrorsTest(parameterized.TestCase):

  def _root_with_train(self, train_content):
    """A folder whose train file holds `train_content` (bytes) and whose test file is valid."""
    root = self.create_tempdir().full_path
    path = format_files.write(os.path.join(root, "train.tfrecord"), train_content)
    format_files.write_tfrecord(os.path.join(root, "test.tfrecord"), _examples(2, seed=1))
    return root, path

  def _valid_bytes(self, count=6):
    path = format_files.write_tfrecord(os.path.join(self.create_tempdir().full_path, "x"), _examples(count, seed=0))
    with open(path, "rb") as handle:
      return handle.read()

  def testCorruptRecordNamesTheFileAndTheGoodRecordsBeforeIt(self):
    content = bytearray(self._valid_bytes())
    record = len(content) // 6
    content[3 * record + record // 2] ^= 0xFF  # a payload byte of the fourth record: its checksum fails
    root, path = self._root_with_train(bytes(content))
    with self.assertRaisesRegex(errors.DataError, f"{path}: corrupt or truncated TFRecord file after 3 good records "
                                r"\(corrupted record"):
      tfrecord.open_tfrecord(root)

  def testTruncatedFileNamesTheFile(self):
    root, path = self._root_with_train(self._valid_bytes()[:-10])
    with self.assertRaisesRegex(errors.DataError, f"{path}: corrupt or truncated TFRecord file after 5 good records"):
      tfrecord.open_tfrecord(root)

  def testRecordWithoutTheImageFeaturesNamesFileRecordAndKeys(self):
    root = self.create_tempdir().full_path
    path = format_files.write_tfrecord(os.path.join(root, "train.tfrecord"), _examples(2, seed=0))
    with tf.io.TFRecordWriter(path) as writer:  # rewrite: a good record, then an Example without the features
      writer.write(tfrecord.example_bytes(*_examples(1, seed=0)[0]))
      writer.write(tf.train.Example().SerializeToString())
    format_files.write_tfrecord(os.path.join(root, "test.tfrecord"), _examples(2, seed=1))
    with self.assertRaisesRegex(errors.DataError, f"{path}, record 1: not an image example .*'image/encoded' "
                                r"\(bytes, an encoded image\) and 'image/class/label' \(int64\)"):
      tfrecord.open_tfrecord(root)

  def testUndecodableImageNamesFileAndRecord(self):
    root = self.create_tempdir().full_path
    path = format_files.write_tfrecord(os.path.join(root, "train.tfrecord"), _examples(2, seed=0) + [(b"junk", 0)])
    format_files.write_tfrecord(os.path.join(root, "test.tfrecord"), _examples(2, seed=1))
    with self.assertRaisesRegex(errors.DataError, f"{path}, record 2: unreadable image"):
      tfrecord.open_tfrecord(root)

  @parameterized.named_parameters(
      ("_NegativeTrainLabel", [0, -1, 2, 1], [0], None, "train", 1, r"label -1 is outside \[0, 3\)"),
      ("_TestLabelBeyondTraining", [0, 1, 2, 1], [3], None, "test", 0, r"label 3 is outside \[0, 3\)"),
      ("_LabelBeyondLabelsTxt", [0, 1, 2, 1], [0], b"a\nb\n", "train", 2, r"label 2 is outside \[0, 2\)"))
  def testLabelOutOfRangeNamesFileAndRecord(self, train_labels, test_labels, labels_txt, split, record, pattern):
    root = self.create_tempdir().full_path
    for name, labels in (("train", train_labels), ("test", test_labels)):
      images = [encoded for encoded, _ in _examples(len(labels), seed=0)]
      format_files.write_tfrecord(os.path.join(root, f"{name}.tfrecord"), zip(images, labels))
    if labels_txt:
      format_files.write(os.path.join(root, "labels.txt"), labels_txt)
    with self.assertRaisesRegex(errors.DataError, f"{os.path.join(root, split)}.tfrecord, record {record}: {pattern}"):
      tfrecord.open_tfrecord(root)

  def testMissingSplitOrFolderSaysWhatWasLookedFor(self):
    root = self.create_tempdir().full_path
    format_files.write_tfrecord(os.path.join(root, "train.tfrecord"), _examples(2, seed=0))
    with self.assertRaisesRegex(errors.DataError, f"No test record files: nothing matches {root}/test\\* or "
                                f"{root}/validation\\*"):
      tfrecord.open_tfrecord(root)
    with self.assertRaisesRegex(errors.DataError, "no-such-dir: folder not found"):
      tfrecord.open_tfrecord(os.path.join(root, "no-such-dir"))

  def testSplitWithoutRecordsIsAnError(self):
    root, path = self._root_with_train(b"")
    with self.assertRaisesRegex(errors.DataError, f"{path}: no records"):
      tfrecord.open_tfrecord(root)


class TFRecordFuzzTest(absltest.TestCase):
  """Bounded fuzzing: a mutated record file gives a dataset or a DataError."""

  @fuzzing.SETTINGS
  @hypothesis.given(fuzzing.MUTATION)
  def testTFRecordGivesDatasetOrDataError(self, mutation):
    root = self.create_tempdir().full_path
    path = format_files.write_tfrecord(os.path.join(root, "train.tfrecord"), _examples(3, seed=0, size=(4, 4)))
    with open(path, "rb") as handle:
      payload = handle.read()
    format_files.write(path, fuzzing.mutate(payload, *mutation))
    format_files.write_tfrecord(os.path.join(root, "test.tfrecord"), _examples(1, seed=1, size=(4, 4)))
    try:
      dataset = tfrecord.open_tfrecord(root)
    except errors.DataError:
      return
    self.assertEqual(dataset.input_shape[-1], 3)


if __name__ == "__main__":
  absltest.main()
