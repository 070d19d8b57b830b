"""Tests for tfrobprune.data.cifar10: small CIFAR-10 folders (binary and python) built in a temp dir at run time."""

import os
import pathlib
import pickle

from absl.testing import absltest
from absl.testing import parameterized
import hypothesis
import numpy as np

import format_files
import fuzzing
from tfrobprune.data import cifar10
from tfrobprune.data import errors


def _expected_cifar_images(rows):
  """Reference CHW -> HWC conversion, pixel by pixel: channel c, row h, column w is byte c*1024 + h*32 + w."""
  images = np.zeros((len(rows), 32, 32, 3), np.float32)
  for c in range(3):
    for h in range(32):
      images[:, h, :, c] = rows[:, c * 1024 + h * 32:c * 1024 + h * 32 + 32] / 255.0
  return images


class Cifar10Test(parameterized.TestCase):

  @parameterized.named_parameters(("_ExtractedFolder", "cifar-10-batches-bin"), ("_ParentFolder", ""))
  def testLoadCifar10ReadsBinaryRecordsAsHwc(self, subfolder):
    root = self.create_tempdir().full_path
    batches = format_files.write_cifar_binary(os.path.join(root, "cifar-10-batches-bin"))
    ds = cifar10.load_cifar10(os.path.join(root, subfolder))
    self.assertEqual(ds.x_train.shape, (15, 32, 32, 3))
    self.assertEqual(ds.x_test.shape, (3, 32, 32, 3))
    np.testing.assert_allclose(ds.x_train[:3], _expected_cifar_images(batches["data_batch_1"][0]), rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])
    self.assertEqual(ds.class_names, cifar10._CIFAR10_CLASSES)
    self.assertEqual(ds.name, "cifar10")

  @parameterized.named_parameters(("_Python2Original", "py2"), ("_Protocol4", 4), ("_Protocol5", 5))
  def testLoadCifar10ReadsPythonPickles(self, protocol):
    root = self.create_tempdir().full_path
    batches = format_files.write_cifar_python(os.path.join(root, "cifar-10-batches-py"), protocol=protocol)
    ds = cifar10.load_cifar10(root)
    np.testing.assert_allclose(ds.x_train[12:], _expected_cifar_images(batches["data_batch_5"][0]), rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train[:3], batches["data_batch_1"][1])
    self.assertEqual(ds.class_names[-1], "truck")
    self.assertEqual((ds.x_test.dtype, ds.y_test.dtype), (np.float32, np.int64))

  def testLoadCifar10BinaryRejectsTruncatedRecord(self):
    folder = self.create_tempdir().full_path
    format_files.write_cifar_binary(folder)
    path = os.path.join(folder, "data_batch_3.bin")
    format_files.write(path, pathlib.Path(path).read_bytes()[:-100])
    with self.assertRaisesRegex(errors.DataError, f"{path}: .*not a whole number of 3073-byte"):
      cifar10.load_cifar10(folder)

  def testLoadCifar10RejectsLabelOutOfRangeNamingFile(self):
    folder = self.create_tempdir().full_path
    format_files.write_cifar_binary(folder)
    path = os.path.join(folder, "test_batch.bin")
    format_files.write(path, bytes([11]) + bytes(3072))
    with self.assertRaisesRegex(errors.DataError, f"{path}: label 11 at index 0 is outside \\[0, 10\\)"):
      cifar10.load_cifar10(folder)

  def testLoadCifar10PythonRejectsLabelCountMismatch(self):
    folder = self.create_tempdir().full_path
    format_files.write_cifar_python(folder)
    path = os.path.join(folder, "data_batch_2")
    format_files.write(path, pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]}, protocol=4))
    with self.assertRaisesRegex(errors.DataError, f"{path}: 3 images but 2 labels"):
      cifar10.load_cifar10(folder)

  @parameterized.named_parameters(("_NotAPickle", b"garbage bytes"), ("_CutPickle", pickle.dumps({b"a": 1})[:-3]),
                                  ("_NotADict", pickle.dumps([1, 2, 3])),
                                  ("_MissingKeys", pickle.dumps({b"data": 1})))
  def testLoadCifar10PythonRejectsCorruptBatch(self, content):
    folder = self.create_tempdir().full_path
    format_files.write_cifar_python(folder)
    path = format_files.write(os.path.join(folder, "test_batch"), content)
    with self.assertRaisesRegex(errors.DataError, path):
      cifar10.load_cifar10(folder)

  def testLoadCifar10NamesTheMissingBatch(self):
    folder = self.create_tempdir().full_path
    format_files.write_cifar_binary(folder)
    os.remove(os.path.join(folder, "data_batch_4.bin"))
    with self.assertRaisesRegex(errors.DataError, "data_batch_4.bin: CIFAR-10 batch file not found"):
      cifar10.load_cifar10(folder)

  def testLoadCifar10RejectsFolderWithoutBatches(self):
    folder = self.create_tempdir().full_path
    with self.assertRaisesRegex(errors.DataError, f"{folder} holds no CIFAR-10 batches"):
      cifar10.load_cifar10(folder)

  def testLoadCifar10UsesStandardNamesWithoutMetaFile(self):
    folder = self.create_tempdir().full_path
    format_files.write_cifar_binary(folder)
    os.remove(os.path.join(folder, "batches.meta.txt"))
    self.assertEqual(cifar10.load_cifar10(folder).class_names[0], "airplane")


def _cifar_binary_record(label):
  return bytes([label]) + bytes(range(256)) * 12


def _cifar_pickle():
  """A valid python-version batch, pickled with protocol 4.

  Not protocol 2: Python 3 writes bytes at protocol 2 as `_codecs.encode` calls, which the restricted unpickler
  refuses, so every batch would fail before the mutated one is read.
  """
  batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2], b"batch_label": b"testing batch 1 of 1"}
  return pickle.dumps(batch, protocol=4)


class Cifar10FuzzTest(absltest.TestCase):
  """Bounded fuzzing: a mutated test batch, binary or pickled, gives a dataset or a DataError."""

  @fuzzing.SETTINGS
  @hypothesis.given(fuzzing.MUTATION)
  def testCifarBinaryGivesDatasetOrDataError(self, mutation):
    directory = self.create_tempdir().full_path
    folder = os.path.join(directory, "cifar-10-batches-bin")
    os.makedirs(folder)
    for index in range(1, 6):
      with open(os.path.join(folder, f"data_batch_{index}.bin"), "wb") as handle:
        handle.write(_cifar_binary_record(index))
    with open(os.path.join(folder, "test_batch.bin"), "wb") as handle:
      handle.write(fuzzing.mutate(_cifar_binary_record(3) * 2, *mutation))
    try:
      dataset = cifar10.load_cifar10(directory)
    except errors.DataError:
      return
    self.assertEqual(dataset.x_test.shape[1:], (32, 32, 3))

  def _write_pickle_folder(self, test_batch):
    directory = self.create_tempdir().full_path
    folder = os.path.join(directory, "cifar-10-batches-py")
    os.makedirs(folder)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
      payload = _cifar_pickle() if name != "test_batch" else test_batch
      with open(os.path.join(folder, name), "wb") as handle:
        handle.write(payload)
    return directory

  def testUnmutatedPickleFolderLoads(self):
    # Guards the fuzz test below: if the valid batches failed to load, the mutated one would never be read.
    self.assertLen(cifar10.load_cifar10(self._write_pickle_folder(_cifar_pickle())).y_test, 2)

  @fuzzing.SETTINGS
  @hypothesis.given(fuzzing.MUTATION)
  def testCifarPickleGivesDatasetOrDataError(self, mutation):
    directory = self._write_pickle_folder(fuzzing.mutate(_cifar_pickle(), *mutation))
    try:
      cifar10.load_cifar10(directory)
    except errors.DataError:
      pass


if __name__ == "__main__":
  absltest.main()
