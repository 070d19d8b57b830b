"""Bounded fuzz tests of the dataset loaders: any bytes give a dataset or a DataError, never another exception.

Hypothesis drives mutations of small, valid files of each format (IDX raw and gzip, CIFAR-10 binary and python
pickles, images); runs are derandomized and bounded so that CI takes the same, short time on every run.
"""

import gzip
import io
import os
import pickle
import tempfile

from absl.testing import absltest
import hypothesis
from hypothesis import strategies as st
import numpy as np

from tfrobprune.data import datasets

_SETTINGS = hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None,
                                suppress_health_check=list(hypothesis.HealthCheck))


def _idx_bytes(images):
  header = bytes([0, 0, 0x08, images.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
  return header + images.astype(np.uint8).tobytes()


def _valid_idx():
  return _idx_bytes(np.arange(3 * 4 * 4).reshape(3, 4, 4) % 256)


def _cifar_binary_record(label):
  return bytes([label]) + bytes(range(256)) * 12


def _cifar_pickle():
  batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2], b"batch_label": b"testing batch 1 of 1"}
  return pickle.dumps(batch, protocol=2)


def _mutate(payload, cut, flips):
  """Truncates `payload` at `cut` (as a fraction) and overwrites bytes at the given (fraction, value) places."""
  mutated = bytearray(payload[:max(0, int(len(payload) * cut))])
  for where, value in flips:
    if mutated:
      mutated[int(where * (len(mutated) - 1))] = value
  return bytes(mutated)


_MUTATION = st.tuples(st.floats(0.0, 1.0), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)),
                                                     max_size=6))


class LoaderFuzzTest(absltest.TestCase):

  def _write(self, name, payload):
    directory = tempfile.mkdtemp(dir=self.create_tempdir().full_path)
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
      handle.write(payload)
    return directory, path

  @_SETTINGS
  @hypothesis.given(_MUTATION, st.booleans())
  def testIdxGivesArrayOrDataError(self, mutation, compress):
    payload = _mutate(_valid_idx(), *mutation)
    if compress:
      payload = gzip.compress(payload)
    _, path = self._write("images-idx3-ubyte" + (".gz" if compress else ""), payload)
    try:
      array = datasets.load_idx(path)
    except datasets.DataError as error:
      self.assertIn(path, str(error))
    else:
      self.assertEqual(array.dtype.kind in "uif", True)

  @_SETTINGS
  @hypothesis.given(st.binary(max_size=64))
  def testArbitraryBytesAsGzipIdxGiveDataError(self, payload):
    _, path = self._write("t10k-labels-idx1-ubyte.gz", payload)
    try:
      datasets.load_idx(path)
    except datasets.DataError as error:
      self.assertIn(path, str(error))

  @_SETTINGS
  @hypothesis.given(_MUTATION)
  def testCifarBinaryGivesDatasetOrDataError(self, mutation):
    directory = self.create_tempdir().full_path
    folder = os.path.join(directory, "cifar-10-batches-bin")
    os.makedirs(folder)
    for index in range(1, 6):
      with open(os.path.join(folder, f"data_batch_{index}.bin"), "wb") as handle:
        handle.write(_cifar_binary_record(index))
    with open(os.path.join(folder, "test_batch.bin"), "wb") as handle:
      handle.write(_mutate(_cifar_binary_record(3) * 2, *mutation))
    try:
      dataset = data.load_cifar10(directory)
    except datasets.DataError:
      return
    self.assertEqual(dataset.x_test.shape[1:], (32, 32, 3))

  @_SETTINGS
  @hypothesis.given(_MUTATION)
  def testCifarPickleGivesDatasetOrDataError(self, mutation):
    directory = self.create_tempdir().full_path
    folder = os.path.join(directory, "cifar-10-batches-py")
    os.makedirs(folder)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
      payload = _cifar_pickle() if name != "test_batch" else _mutate(_cifar_pickle(), *mutation)
      with open(os.path.join(folder, name), "wb") as handle:
        handle.write(payload)
    try:
      data.load_cifar10(directory)
    except datasets.DataError:
      pass

  @_SETTINGS
  @hypothesis.given(_MUTATION)
  def testImageFolderGivesDatasetOrDataError(self, mutation):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6), 128, np.uint8)).save(buffer, format="PNG")
    root = self.create_tempdir().full_path
    for split in ("train", "test"):
      for label in ("a", "b"):
        os.makedirs(os.path.join(root, split, label))
        payload = buffer.getvalue() if (split, label) != ("test", "b") else _mutate(buffer.getvalue(), *mutation)
        with open(os.path.join(root, split, label, "0.png"), "wb") as handle:
          handle.write(payload)
    try:
      dataset = datasets.load_image_folder(root, (6, 6))
    except datasets.DataError:
      return
    self.assertEqual(dataset.class_names, ("a", "b"))


if __name__ == "__main__":
  absltest.main()
