"""Tests for tfrobprune.data.idx: real small IDX files (raw and gzipped) built in a temp dir at run time."""

import gzip
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import hypothesis
from hypothesis import strategies as st
import numpy as np

import format_files
import fuzzing
from tfrobprune.data import errors
from tfrobprune.data import idx


class IdxTest(parameterized.TestCase):

  @parameterized.named_parameters(("_Raw", ""), ("_Gzipped", ".gz"))
  def testLoadIdxReturnsArrayWithHeaderShape(self, suffix):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = format_files.write_idx(os.path.join(self.create_tempdir().full_path, "x-idx3-ubyte" + suffix), array)
    loaded = idx.load_idx(path)
    self.assertEqual(loaded.dtype, np.uint8)
    np.testing.assert_array_equal(loaded, array)

  @parameterized.named_parameters(("_Int32", np.int32), ("_Float32", np.float32))
  def testLoadIdxDecodesBigEndianTypesToNative(self, dtype):
    array = np.array([[-3, 70000], [1, 2]], dtype=dtype)
    path = format_files.write_idx(os.path.join(self.create_tempdir().full_path, "x"), array)
    loaded = idx.load_idx(path)
    self.assertTrue(loaded.dtype.isnative)
    np.testing.assert_array_equal(loaded, array)

  def testLoadIdxRejectsTruncatedFileNamingIt(self):
    path = os.path.join(self.create_tempdir().full_path, "short-idx3-ubyte")
    format_files.write(path, format_files.idx_bytes(np.zeros((4, 5, 5), np.uint8))[:-7])
    with self.assertRaisesRegex(errors.DataError, f"{path}.*truncated"):
      idx.load_idx(path)

  def testLoadIdxRejectsFileCutInsideHeader(self):
    path = format_files.write(os.path.join(self.create_tempdir().full_path, "x"), bytes([0, 0, 8, 3, 0, 0]))
    with self.assertRaisesRegex(errors.DataError, f"{path}.*truncated inside its header"):
      idx.load_idx(path)

  def testLoadIdxRejectsTrailingBytes(self):
    path = os.path.join(self.create_tempdir().full_path, "long")
    format_files.write(path, format_files.idx_bytes(np.zeros((2, 2), np.uint8)) + b"\0")
    with self.assertRaisesRegex(errors.DataError, f"{path}.*trailing bytes"):
      idx.load_idx(path)

  @parameterized.named_parameters(("_PngHeader", b"\x89PNG\r\n\x1a\n" + bytes(16)),
                                  ("_UnknownTypeCode", bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5])),
                                  ("_ZeroDims", bytes([0, 0, 8, 0, 1])),
                                  ("_ShorterThanMagic", b"\0\0"))
  def testLoadIdxRejectsWrongMagicNumber(self, content):
    path = format_files.write(os.path.join(self.create_tempdir().full_path, "bad-magic"), content)
    with self.assertRaisesRegex(errors.DataError, f"{path}.*wrong magic number"):
      idx.load_idx(path)

  @parameterized.named_parameters(("_Raw", ""), ("_Gzipped", ".gz"))
  def testLoadIdxRejectsEmptyFile(self, suffix):
    path = format_files.write(os.path.join(self.create_tempdir().full_path, "empty" + suffix), b"")
    with self.assertRaisesRegex(errors.DataError, f"{path}.*empty"):
      idx.load_idx(path)

  def testLoadIdxTurnsBadGzipIntoDataError(self):
    path = format_files.write(os.path.join(self.create_tempdir().full_path, "not-gzip.gz"),
                              format_files.idx_bytes(np.zeros(3, np.uint8)))
    with self.assertRaisesRegex(errors.DataError, f"{path}.*corrupt or truncated"):
      idx.load_idx(path)

  def testLoadIdxTurnsCutOffGzipStreamIntoDataError(self):
    path = os.path.join(self.create_tempdir().full_path, "cut.gz")
    format_files.write(path, gzip.compress(format_files.idx_bytes(np.arange(4000, dtype=np.int32)))[:-40])
    with self.assertRaisesRegex(errors.DataError, f"{path}.*corrupt or truncated"):
      idx.load_idx(path)

  def testLoadIdxReportsMissingFile(self):
    path = os.path.join(self.create_tempdir().full_path, "nowhere-idx1-ubyte")
    with self.assertRaisesRegex(errors.DataError, f"{path}: file not found"):
      idx.load_idx(path)


class IdxDatasetTest(parameterized.TestCase):

  @parameterized.named_parameters(("_Raw", False), ("_GzippedLikeDebian", True))
  def testLoadIdxDatasetScalesImagesAndKeepsLabels(self, gz):
    folder = self.create_tempdir().full_path
    arrays = format_files.write_mnist(folder, gz=gz)
    ds = idx.load_idx_dataset("fashion_mnist", folder)
    self.assertEqual(ds.name, "fashion_mnist")
    self.assertEqual(ds.x_train.shape, (12, 28, 28, 1))
    self.assertEqual(ds.x_test.shape, (5, 28, 28, 1))
    self.assertEqual((ds.x_train.dtype, ds.y_train.dtype), (np.float32, np.int64))
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train", "images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["test", "labels"])
    self.assertEqual(ds.class_names[0], "T-shirt/top")
    self.assertEqual((ds.num_classes, ds.input_shape), (10, (28, 28, 1)))

  def testLoadIdxDatasetAcceptsDottedMirrorNamesForMnist(self):
    folder = self.create_tempdir().full_path
    names = {("train", "images"): "train-images.idx3-ubyte", ("train", "labels"): "train-labels.idx1-ubyte",
             ("test", "images"): "t10k-images.idx3-ubyte", ("test", "labels"): "t10k-labels.idx1-ubyte"}
    format_files.write_mnist(folder, names=names)
    ds = idx.load_idx_dataset("mnist", folder)
    self.assertEqual(ds.class_names, tuple("0123456789"))
    self.assertLen(ds.y_train, 12)

  def testLoadIdxDatasetRejectsLabelOutOfRangeNamingFileAndLabel(self):
    folder = self.create_tempdir().full_path
    format_files.write_mnist(folder)
    labels_path = format_files.write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte"),
                                         np.array([0, 1, 10, 3, 4], np.uint8))
    with self.assertRaisesRegex(errors.DataError, f"{labels_path}: label 10 at index 2 is outside"):
      idx.load_idx_dataset("mnist", folder)

  def testLoadIdxDatasetRejectsImageLabelCountMismatch(self):
    folder = self.create_tempdir().full_path
    format_files.write_mnist(folder)
    format_files.write_idx(os.path.join(folder, "train-labels-idx1-ubyte"), np.zeros(11, np.uint8))
    with self.assertRaisesRegex(errors.DataError, "train-images-idx3-ubyte.*12 images but 11 labels"):
      idx.load_idx_dataset("mnist", folder)

  def testLoadIdxDatasetRejectsLabelsFileInPlaceOfImages(self):
    folder = self.create_tempdir().full_path
    format_files.write_mnist(folder)
    format_files.write_idx(os.path.join(folder, "t10k-images-idx3-ubyte"), np.zeros(5, np.uint8))
    with self.assertRaisesRegex(errors.DataError, "t10k-images-idx3-ubyte: expected uint8 images"):
      idx.load_idx_dataset("mnist", folder)

  def testLoadIdxDatasetNamesTheMissingFile(self):
    folder = self.create_tempdir().full_path
    format_files.write_mnist(folder)
    os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte"))
    with self.assertRaisesRegex(errors.DataError, "mnist test labels: not found in .*t10k-labels-idx1-ubyte.gz"):
      idx.load_idx_dataset("mnist", folder)


def _valid_idx():
  return format_files.idx_bytes((np.arange(3 * 4 * 4).reshape(3, 4, 4) % 256).astype(np.uint8))


class IdxFuzzTest(absltest.TestCase):
  """Bounded fuzzing: any bytes, raw or gzipped, give an array or a DataError naming the file."""

  def _write(self, name, payload):
    directory = tempfile.mkdtemp(dir=self.create_tempdir().full_path)
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
      handle.write(payload)
    return directory, path

  @fuzzing.SETTINGS
  @hypothesis.given(fuzzing.MUTATION, st.booleans())
  def testIdxGivesArrayOrDataError(self, mutation, compress):
    payload = fuzzing.mutate(_valid_idx(), *mutation)
    if compress:
      payload = gzip.compress(payload)
    _, path = self._write("images-idx3-ubyte" + (".gz" if compress else ""), payload)
    try:
      array = idx.load_idx(path)
    except errors.DataError as error:
      self.assertIn(path, str(error))
    else:
      self.assertEqual(array.dtype.kind in "uif", True)

  @fuzzing.SETTINGS
  @hypothesis.given(st.binary(max_size=64))
  def testArbitraryBytesAsGzipIdxGiveDataError(self, payload):
    _, path = self._write("t10k-labels-idx1-ubyte.gz", payload)
    try:
      idx.load_idx(path)
    except errors.DataError as error:
      self.assertIn(path, str(error))


if __name__ == "__main__":
  absltest.main()
