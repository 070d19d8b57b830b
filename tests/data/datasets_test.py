"""Tests for tfrobprune.data.datasets: real small files in every format, built in a temp dir at run time."""

import gzip
import os
import pathlib
import pickle
import struct
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from tfrobprune.data import datasets

_IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def _idx_bytes(array):
  """The IDX encoding of `array`: magic (0, 0, type code, ndim), big-endian uint32 dims, big-endian data."""
  header = bytes([0, 0, _IDX_TYPE_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write(path, content):
  with open(path, "wb") as f:
    f.write(content)
  return path


def _write_idx(path, array):
  """Writes `array` as an IDX file, gzipped when `path` ends in '.gz'."""
  content = _idx_bytes(np.asarray(array))
  return _write(path, gzip.compress(content) if path.endswith(".gz") else content)


def _write_mnist(folder, *, gz=False, num_train=12, num_test=5, names=None, rng_seed=0):
  """Writes the four MNIST IDX files; returns {(split, kind): array}."""
  rng = np.random.default_rng(rng_seed)
  names = names or {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
                    ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}
  arrays = {}
  for split, count in (("train", num_train), ("test", num_test)):
    arrays[split, "images"] = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    arrays[split, "labels"] = (np.arange(count) % 10).astype(np.uint8)
  for key, array in arrays.items():
    _write_idx(os.path.join(folder, names[key] + (".gz" if gz else "")), array)
  return arrays


def _cifar_arrays(count, rng):
  return rng.integers(0, 256, size=(count, 3072), dtype=np.uint8), (np.arange(count) % 10).astype(np.uint8)


def _write_cifar_binary(folder, *, per_batch=3, rng_seed=0):
  """Writes the binary CIFAR-10 layout; returns {batch name: (rows, labels)}."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(rng_seed)
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    rows, labels = batches[name] = _cifar_arrays(per_batch, rng)
    _write(os.path.join(folder, name + ".bin"), np.concatenate([labels[:, None], rows], axis=1).tobytes())
  _write(os.path.join(folder, "batches.meta.txt"), "\n".join(datasets._CIFAR10_CLASSES).encode() + b"\n\n")
  return batches


def _py2_style_pickle(batch):
  """A pickle shaped like the original Python 2 CIFAR-10 files: protocol 2, numpy.core names, byte strings."""
  def string(b):  # BINSTRING: a Python 2 str, read back as bytes with encoding='bytes'
    return b"T" + struct.pack("<I", len(b)) + b
  rows, labels = batch[b"data"], batch[b"labels"]
  array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b") + b"\x87R(K\x01"
           + b"J" + struct.pack("<i", rows.shape[0]) + b"J" + struct.pack("<i", rows.shape[1]) + b"\x86cnumpy\ndtype\n"
           + string(b"u1") + b"K\x00K\x01\x87R(K\x03" + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
           + b"\x89" + string(rows.tobytes()) + b"tb")
  label_list = b"](" + b"".join(b"K" + bytes([int(label)]) for label in labels) + b"e"
  return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def _write_cifar_python(folder, *, protocol=4, per_batch=3, rng_seed=0):
  """Writes the python CIFAR-10 layout (pickled dicts of byte-string keys); returns {batch name: (rows, labels)}."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(rng_seed)
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    rows, labels = batches[name] = _cifar_arrays(per_batch, rng)
    batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": rows,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
    content = _py2_style_pickle(batch) if protocol == "py2" else pickle.dumps(batch, protocol=protocol)
    _write(os.path.join(folder, name), content)
  meta = {b"label_names": [n.encode() for n in datasets._CIFAR10_CLASSES], b"num_vis": 3072}
  _write(os.path.join(folder, "batches.meta"), pickle.dumps(meta, protocol=4))
  return batches


def _expected_cifar_images(rows):
  """Reference CHW -> HWC conversion, pixel by pixel: channel c, row h, column w is byte c*1024 + h*32 + w."""
  images = np.zeros((len(rows), 32, 32, 3), np.float32)
  for c in range(3):
    for h in range(32):
      images[:, h, :, c] = rows[:, c * 1024 + h * 32:c * 1024 + h * 32 + 32] / 255.0
  return images


def _write_image(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)
  return path


class _EvilPayload:
  """Pickles to a call of `function(argument)`: what a malicious batch file would contain."""

  def __init__(self, function, argument):
    self.function, self.argument = function, argument

  def __reduce__(self):
    return self.function, (self.argument,)


class IdxTest(parameterized.TestCase):

  @parameterized.named_parameters(("_Raw", ""), ("_Gzipped", ".gz"))
  def testLoadIdxReturnsArrayWithHeaderShape(self, suffix):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = _write_idx(os.path.join(self.create_tempdir().full_path, "x-idx3-ubyte" + suffix), array)
    loaded = datasets.load_idx(path)
    self.assertEqual(loaded.dtype, np.uint8)
    np.testing.assert_array_equal(loaded, array)

  @parameterized.named_parameters(("_Int32", np.int32), ("_Float32", np.float32))
  def testLoadIdxDecodesBigEndianTypesToNative(self, dtype):
    array = np.array([[-3, 70000], [1, 2]], dtype=dtype)
    path = _write_idx(os.path.join(self.create_tempdir().full_path, "x"), array)
    loaded = datasets.load_idx(path)
    self.assertTrue(loaded.dtype.isnative)
    np.testing.assert_array_equal(loaded, array)

  def testLoadIdxRejectsTruncatedFileNamingIt(self):
    path = os.path.join(self.create_tempdir().full_path, "short-idx3-ubyte")
    _write(path, _idx_bytes(np.zeros((4, 5, 5), np.uint8))[:-7])
    with self.assertRaisesRegex(datasets.DataError, f"{path}.*truncated"):
      datasets.load_idx(path)

  def testLoadIdxRejectsFileCutInsideHeader(self):
    path = _write(os.path.join(self.create_tempdir().full_path, "x"), bytes([0, 0, 8, 3, 0, 0]))
    with self.assertRaisesRegex(datasets.DataError, f"{path}.*truncated inside its header"):
      datasets.load_idx(path)

  def testLoadIdxRejectsTrailingBytes(self):
    path = os.path.join(self.create_tempdir().full_path, "long")
    _write(path, _idx_bytes(np.zeros((2, 2), np.uint8)) + b"\0")
    with self.assertRaisesRegex(datasets.DataError, f"{path}.*trailing bytes"):
      datasets.load_idx(path)

  @parameterized.named_parameters(("_PngHeader", b"\x89PNG\r\n\x1a\n" + bytes(16)),
                                  ("_UnknownTypeCode", bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5])),
                                  ("_ZeroDims", bytes([0, 0, 8, 0, 1])),
                                  ("_ShorterThanMagic", b"\0\0"))
  def testLoadIdxRejectsWrongMagicNumber(self, content):
    path = _write(os.path.join(self.create_tempdir().full_path, "bad-magic"), content)
    with self.assertRaisesRegex(datasets.DataError, f"{path}.*wrong magic number"):
      datasets.load_idx(path)

  @parameterized.named_parameters(("_Raw", ""), ("_Gzipped", ".gz"))
  def testLoadIdxRejectsEmptyFile(self, suffix):
    path = _write(os.path.join(self.create_tempdir().full_path, "empty" + suffix), b"")
    with self.assertRaisesRegex(datasets.DataError, f"{path}.*empty"):
      datasets.load_idx(path)

  def testLoadIdxTurnsBadGzipIntoDataError(self):
    path = _write(os.path.join(self.create_tempdir().full_path, "not-gzip.gz"), _idx_bytes(np.zeros(3, np.uint8)))
    with self.assertRaisesRegex(datasets.DataError, f"{path}.*corrupt or truncated"):
      datasets.load_idx(path)

  def testLoadIdxTurnsCutOffGzipStreamIntoDataError(self):
    path = os.path.join(self.create_tempdir().full_path, "cut.gz")
    _write(path, gzip.compress(_idx_bytes(np.arange(4000, dtype=np.int32)))[:-40])
    with self.assertRaisesRegex(datasets.DataError, f"{path}.*corrupt or truncated"):
      datasets.load_idx(path)

  def testLoadIdxReportsMissingFile(self):
    path = os.path.join(self.create_tempdir().full_path, "nowhere-idx1-ubyte")
    with self.assertRaisesRegex(datasets.DataError, f"{path}: file not found"):
      datasets.load_idx(path)


class IdxDatasetTest(parameterized.TestCase):

  @parameterized.named_parameters(("_Raw", False), ("_GzippedLikeDebian", True))
  def testLoadIdxDatasetScalesImagesAndKeepsLabels(self, gz):
    folder = self.create_tempdir().full_path
    arrays = _write_mnist(folder, gz=gz)
    ds = datasets.load_idx_dataset("fashion_mnist", folder)
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
    _write_mnist(folder, names=names)
    ds = datasets.load_idx_dataset("mnist", folder)
    self.assertEqual(ds.class_names, tuple("0123456789"))
    self.assertLen(ds.y_train, 12)

  def testLoadIdxDatasetRejectsLabelOutOfRangeNamingFileAndLabel(self):
    folder = self.create_tempdir().full_path
    _write_mnist(folder)
    labels_path = _write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte"), np.array([0, 1, 10, 3, 4], np.uint8))
    with self.assertRaisesRegex(datasets.DataError, f"{labels_path}: label 10 at index 2 is outside"):
      datasets.load_idx_dataset("mnist", folder)

  def testLoadIdxDatasetRejectsImageLabelCountMismatch(self):
    folder = self.create_tempdir().full_path
    _write_mnist(folder)
    _write_idx(os.path.join(folder, "train-labels-idx1-ubyte"), np.zeros(11, np.uint8))
    with self.assertRaisesRegex(datasets.DataError, "train-images-idx3-ubyte.*12 images but 11 labels"):
      datasets.load_idx_dataset("mnist", folder)

  def testLoadIdxDatasetRejectsLabelsFileInPlaceOfImages(self):
    folder = self.create_tempdir().full_path
    _write_mnist(folder)
    _write_idx(os.path.join(folder, "t10k-images-idx3-ubyte"), np.zeros(5, np.uint8))
    with self.assertRaisesRegex(datasets.DataError, "t10k-images-idx3-ubyte: expected uint8 images"):
      datasets.load_idx_dataset("mnist", folder)

  def testLoadIdxDatasetNamesTheMissingFile(self):
    folder = self.create_tempdir().full_path
    _write_mnist(folder)
    os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte"))
    with self.assertRaisesRegex(datasets.DataError, "mnist test labels: not found in .*t10k-labels-idx1-ubyte.gz"):
      datasets.load_idx_dataset("mnist", folder)

  def testMissingDefaultFashionMnistDirSuggestsAptGetOrDataDir(self):
    missing = os.path.join(self.create_tempdir().full_path, "not-installed")
    with mock.patch.object(data, "DEFAULT_FASHION_MNIST_DIR", missing):
      with self.assertRaisesRegex(datasets.DataError, f"{missing} does not exist.*apt-get install dataset-fashion-mnist"
                                  ".*--data_dir"):
        datasets.load_dataset("fashion_mnist")

  @absltest.skipUnless(os.path.isdir(datasets.DEFAULT_FASHION_MNIST_DIR), "dataset-fashion-mnist is not installed")
  def testLoadsInstalledDebianFashionMnist(self):
    ds = datasets.load_dataset("fashion_mnist")
    self.assertEqual((len(ds.x_train), len(ds.x_test), ds.num_classes), (60000, 10000, 10))
    self.assertEqual(ds.input_shape, (28, 28, 1))
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    self.assertBetween(float(ds.mean[0]), 0.28, 0.29)  # the well-known Fashion-MNIST pixel mean, 0.2860


class Cifar10Test(parameterized.TestCase):

  @parameterized.named_parameters(("_ExtractedFolder", "cifar-10-batches-bin"), ("_ParentFolder", ""))
  def testLoadCifar10ReadsBinaryRecordsAsHwc(self, subfolder):
    root = self.create_tempdir().full_path
    batches = _write_cifar_binary(os.path.join(root, "cifar-10-batches-bin"))
    ds = data.load_cifar10(os.path.join(root, subfolder))
    self.assertEqual(ds.x_train.shape, (15, 32, 32, 3))
    self.assertEqual(ds.x_test.shape, (3, 32, 32, 3))
    np.testing.assert_allclose(ds.x_train[:3], _expected_cifar_images(batches["data_batch_1"][0]), rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])
    self.assertEqual(ds.class_names, datasets._CIFAR10_CLASSES)
    self.assertEqual(ds.name, "cifar10")

  @parameterized.named_parameters(("_Python2Original", "py2"), ("_Protocol4", 4), ("_Protocol5", 5))
  def testLoadCifar10ReadsPythonPickles(self, protocol):
    root = self.create_tempdir().full_path
    batches = _write_cifar_python(os.path.join(root, "cifar-10-batches-py"), protocol=protocol)
    ds = data.load_cifar10(root)
    np.testing.assert_allclose(ds.x_train[12:], _expected_cifar_images(batches["data_batch_5"][0]), rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train[:3], batches["data_batch_1"][1])
    self.assertEqual(ds.class_names[-1], "truck")
    self.assertEqual((ds.x_test.dtype, ds.y_test.dtype), (np.float32, np.int64))

  def testLoadCifar10BinaryRejectsTruncatedRecord(self):
    folder = self.create_tempdir().full_path
    _write_cifar_binary(folder)
    path = os.path.join(folder, "data_batch_3.bin")
    _write(path, pathlib.Path(path).read_bytes()[:-100])
    with self.assertRaisesRegex(datasets.DataError, f"{path}: .*not a whole number of 3073-byte"):
      data.load_cifar10(folder)

  def testLoadCifar10RejectsLabelOutOfRangeNamingFile(self):
    folder = self.create_tempdir().full_path
    _write_cifar_binary(folder)
    path = os.path.join(folder, "test_batch.bin")
    _write(path, bytes([11]) + bytes(3072))
    with self.assertRaisesRegex(datasets.DataError, f"{path}: label 11 at index 0 is outside \\[0, 10\\)"):
      data.load_cifar10(folder)

  def testLoadCifar10PythonRejectsLabelCountMismatch(self):
    folder = self.create_tempdir().full_path
    _write_cifar_python(folder)
    path = os.path.join(folder, "data_batch_2")
    _write(path, pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]}, protocol=4))
    with self.assertRaisesRegex(datasets.DataError, f"{path}: 3 images but 2 labels"):
      data.load_cifar10(folder)

  @parameterized.named_parameters(("_NotAPickle", b"garbage bytes"), ("_CutPickle", pickle.dumps({b"a": 1})[:-3]),
                                  ("_NotADict", pickle.dumps([1, 2, 3])),
                                  ("_MissingKeys", pickle.dumps({b"data": 1})))
  def testLoadCifar10PythonRejectsCorruptBatch(self, content):
    folder = self.create_tempdir().full_path
    _write_cifar_python(folder)
    path = _write(os.path.join(folder, "test_batch"), content)
    with self.assertRaisesRegex(datasets.DataError, path):
      data.load_cifar10(folder)

  @parameterized.named_parameters(("_OsSystem", "system"), ("_BuiltinsExec", "exec"))
  def testRestrictedUnpicklerRefusesMaliciousPickleWithoutRunningIt(self, attack):
    folder = self.create_tempdir().full_path
    _write_cifar_python(folder)
    sentinel = os.path.join(folder, "pwned")
    payloads = {"system": _EvilPayload(os.system, f"touch {sentinel}"),
                "exec": _EvilPayload(exec, f"open({sentinel!r}, 'w').close()")}
    path = _write(os.path.join(folder, "data_batch_1"), pickle.dumps({b"data": payloads[attack], b"labels": []}))
    with self.assertRaisesRegex(datasets.DataError, f"{path}: refusing to unpickle global"):
      data.load_cifar10(folder)
    self.assertFalse(os.path.exists(sentinel))

  def testMaliciousPayloadWouldRunUnderPlainPickle(self):
    # Control for the test above: the payload is live, so its sentinel not appearing there means something.
    sentinel = os.path.join(self.create_tempdir().full_path, "pwned")
    pickle.loads(pickle.dumps(_EvilPayload(exec, f"open({sentinel!r}, 'w').close()")))
    self.assertTrue(os.path.exists(sentinel))

  def testLoadCifar10NamesTheMissingBatch(self):
    folder = self.create_tempdir().full_path
    _write_cifar_binary(folder)
    os.remove(os.path.join(folder, "data_batch_4.bin"))
    with self.assertRaisesRegex(datasets.DataError, "data_batch_4.bin: CIFAR-10 batch file not found"):
      data.load_cifar10(folder)

  def testLoadCifar10RejectsFolderWithoutBatches(self):
    folder = self.create_tempdir().full_path
    with self.assertRaisesRegex(datasets.DataError, f"{folder} holds no CIFAR-10 batches"):
      data.load_cifar10(folder)

  def testLoadCifar10UsesStandardNamesWithoutMetaFile(self):
    folder = self.create_tempdir().full_path
    _write_cifar_binary(folder)
    os.remove(os.path.join(folder, "batches.meta.txt"))
    self.assertEqual(data.load_cifar10(folder).class_names[0], "airplane")


class ImageFolderTest(parameterized.TestCase):

  def _rgb(self, seed, size=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)

  def testLoadImageFolderReadsPngAndJpegWithSortedClasses(self):
    root = self.create_tempdir().full_path
    _write_image(os.path.join(root, "train", "zebra", "a.png"), self._rgb(0))
    _write_image(os.path.join(root, "train", "zebra", "b.JPG"), self._rgb(1, size=(9, 9)))
    _write_image(os.path.join(root, "train", "ant", "c.jpeg"), self._rgb(2))
    _write(os.path.join(root, "train", "ant", "notes.txt"), b"not an image, ignored")
    _write_image(os.path.join(root, "test", "zebra", "d.png"), self._rgb(3))
    ds = datasets.load_image_folder(root, (4, 3))
    self.assertEqual(ds.class_names, ("ant", "zebra"))
    self.assertEqual(ds.x_train.shape, (3, 4, 3, 3))
    self.assertEqual(ds.x_test.shape, (1, 4, 3, 3))
    np.testing.assert_array_equal(ds.y_train, [0, 1, 1])
    np.testing.assert_array_equal(ds.y_test, [1])
    self.assertEqual(ds.x_train.dtype, np.float32)
    self.assertTrue(0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0)

  def testLoadImageFolderKeepsExactPixelsWithoutResizing(self):
    root = self.create_tempdir().full_path
    pixels = self._rgb(4)
    _write_image(os.path.join(root, "train", "a", "x.png"), pixels)
    _write_image(os.path.join(root, "test", "a", "y.png"), pixels)
    ds = datasets.load_dataset("image_folder", root)  # image_size None: the first training image's size
    np.testing.assert_allclose(ds.x_test[0], pixels / 255.0, rtol=1e-6)

  def testLoadImageFolderUsesOneChannelWhenAllImagesAreGrayscale(self):
    root = self.create_tempdir().full_path
    gray = np.arange(30, dtype=np.uint8).reshape(6, 5)
    _write_image(os.path.join(root, "train", "a", "x.png"), gray)
    _write_image(os.path.join(root, "test", "a", "y.jpg"), gray)
    ds = datasets.load_image_folder(root, (6, 5))
    self.assertEqual(ds.input_shape, (6, 5, 1))
    np.testing.assert_allclose(ds.x_train[0, ..., 0], gray / 255.0, rtol=1e-6)

  def testLoadImageFolderUsesThreeChannelsWhenAnyImageIsColor(self):
    root = self.create_tempdir().full_path
    _write_image(os.path.join(root, "train", "a", "x.png"), np.zeros((6, 5), np.uint8))
    _write_image(os.path.join(root, "test", "a", "y.png"), self._rgb(5))
    ds = datasets.load_image_folder(root, (6, 5))
    self.assertEqual(ds.input_shape, (6, 5, 3))

  @parameterized.named_parameters(("_Train", "train"), ("_Test", "test"))
  def testLoadImageFolderRejectsMissingSplit(self, missing):
    root = self.create_tempdir().full_path
    present = "test" if missing == "train" else "train"
    _write_image(os.path.join(root, present, "a", "x.png"), self._rgb(0))
    with self.assertRaisesRegex(datasets.DataError, f"{os.path.join(root, missing)}: folder not found"):
      datasets.load_image_folder(root, (4, 4))

  def testLoadImageFolderRejectsEmptyClassFolder(self):
    root = self.create_tempdir().full_path
    _write_image(os.path.join(root, "train", "a", "x.png"), self._rgb(0))
    os.makedirs(os.path.join(root, "train", "b"))
    _write_image(os.path.join(root, "test", "a", "y.png"), self._rgb(1))
    with self.assertRaisesRegex(datasets.DataError, f"{os.path.join(root, 'train', 'b')}: empty class folder"):
      datasets.load_image_folder(root, (4, 4))

  def testLoadImageFolderRejectsTestClassNotInTrain(self):
    root = self.create_tempdir().full_path
    _write_image(os.path.join(root, "train", "a", "x.png"), self._rgb(0))
    _write_image(os.path.join(root, "test", "b", "y.png"), self._rgb(1))
    with self.assertRaisesRegex(datasets.DataError, r"class folder\(s\) \['b'\] are not among the training classes"):
      datasets.load_image_folder(root, (4, 4))

  @parameterized.named_parameters(("_NotAnImage", b"plain text"),
                                  ("_TruncatedPng", None))
  def testLoadImageFolderNamesUnreadableImage(self, content):
    root = self.create_tempdir().full_path
    good = _write_image(os.path.join(root, "train", "a", "x.png"), self._rgb(0, size=(40, 40)))
    if content is None:
      content = pathlib.Path(good).read_bytes()[:-200]
    bad = _write(os.path.join(root, "train", "a", "y.png"), content)
    _write_image(os.path.join(root, "test", "a", "z.png"), self._rgb(1))
    with self.assertRaisesRegex(datasets.DataError, f"{bad}: unreadable image"):
      datasets.load_image_folder(root, (4, 4))

  @parameterized.named_parameters(("_OneDim", (4,)), ("_Zero", (0, 4)), ("_Float", (4.5, 4)))
  def testLoadImageFolderRejectsBadImageSize(self, image_size):
    root = self.create_tempdir().full_path
    _write_image(os.path.join(root, "train", "a", "x.png"), self._rgb(0))
    _write_image(os.path.join(root, "test", "a", "y.png"), self._rgb(1))
    with self.assertRaisesRegex(ValueError, "image_size must be"):
      datasets.load_image_folder(root, image_size)


class SyntheticAndDatasetTest(parameterized.TestCase):

  def testMakeSyntheticHasRequestedShapesBalancedLabelsAndUnitRange(self):
    ds = datasets.make_synthetic(40, 20, (8, 8, 3), 4, seed=1)
    self.assertEqual((ds.x_train.shape, ds.x_test.shape), ((40, 8, 8, 3), (20, 8, 8, 3)))
    np.testing.assert_array_equal(np.bincount(ds.y_train), [10] * 4)
    self.assertTrue(0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0)
    self.assertEqual(ds.class_names, ("class_0", "class_1", "class_2", "class_3"))

  def testMakeSyntheticIsDeterministicInSeed(self):
    a, b, c = (datasets.make_synthetic(16, 8, (4, 4, 1), 3, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    self.assertFalse(np.array_equal(a.x_train, c.x_train))

  def testMakeSyntheticIsLearnableByNearestClassMean(self):
    ds = datasets.make_synthetic(200, 100, (8, 8, 1), 10, seed=0)
    flat_train, flat_test = ds.x_train.reshape(200, -1), ds.x_test.reshape(100, -1)
    means = np.stack([flat_train[ds.y_train == k].mean(axis=0) for k in range(10)])
    predicted = np.argmin(((flat_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    self.assertGreater(np.mean(predicted == ds.y_test), 0.95)

  @parameterized.named_parameters(("_NoTrain", dict(num_train=0)), ("_OneClass", dict(num_classes=1)),
                                  ("_TwoDimShape", dict(image_shape=(4, 4))))
  def testMakeSyntheticRejectsBadArguments(self, override):
    kwargs = dict(num_train=4, num_test=2, image_shape=(4, 4, 1), num_classes=2, seed=0) | override
    with self.assertRaises(ValueError):
      datasets.make_synthetic(**kwargs)

  def testLoadDatasetDispatchesSyntheticOptions(self):
    ds = datasets.load_dataset("synthetic", synthetic_examples=(12, 6), synthetic_shape=(5, 5, 2), num_classes=3, seed=4)
    self.assertEqual((ds.name, ds.input_shape, ds.num_classes, len(ds.x_test)), ("synthetic", (5, 5, 2), 3, 6))

  def testLoadDatasetRejectsUnknownNameListingChoices(self):
    with self.assertRaisesRegex(ValueError, "Unknown dataset 'imagenet'.*fashion_mnist, mnist, cifar10"):
      datasets.load_dataset("imagenet")

  @parameterized.named_parameters(("_Mnist", "mnist"), ("_Cifar10", "cifar10"), ("_ImageFolder", "image_folder"))
  def testLoadDatasetRequiresDataDirForFileDatasets(self, name):
    with self.assertRaisesRegex(datasets.DataError, f"{name}.*needs --data_dir"):
      datasets.load_dataset(name)

  def testDatasetNamesAreTheDocumentedFive(self):
    self.assertEqual(datasets.DATASET_NAMES, ("fashion_mnist", "mnist", "cifar10", "image_folder", "synthetic"))

  def testArrayDatasetMeanAndStdArePerChannelOverTrain(self):
    x_train = np.zeros((2, 1, 2, 2), np.float32)
    x_train[..., 0] = [[[0.0, 1.0]], [[0.0, 1.0]]]
    x_train[..., 1] = 0.25
    ds = datasets.ArrayDataset("t", x_train, np.array([0, 1]), x_train[:1], np.array([1]), ("a", "b"))
    np.testing.assert_allclose(ds.mean, [0.5, 0.25])
    np.testing.assert_allclose(ds.std, [0.5, 1e-3])  # a constant channel is clamped, safe to divide by
    self.assertEqual((ds.mean.dtype, ds.y_train.dtype), (np.float32, np.int64))

  @parameterized.named_parameters(
      ("_PixelAboveOne", dict(x_train=np.full((2, 2, 2, 1), 2.0)), "pixel values must lie in"),
      ("_CountMismatch", dict(y_train=np.array([0])), "2 images but 1 labels"),
      ("_LabelOutOfRange", dict(y_test=np.array([5])), "label 5 at index 0"),
      ("_ShapeMismatch", dict(x_test=np.zeros((1, 3, 3, 1))), "train images are"),
      ("_OneHotLabels", dict(y_test=np.eye(2)[[1]]), "labels must be a 1-D integer array"),
      ("_FloatLabels", dict(y_train=np.array([0.5, 1.0])), "labels must be a 1-D integer array"))
  def testArrayDatasetRejectsInconsistentArrays(self, override, message):
    fields = dict(name="t", x_train=np.zeros((2, 2, 2, 1)), y_train=np.array([0, 1]), x_test=np.zeros((1, 2, 2, 1)),
                  y_test=np.array([1]), class_names=("a", "b")) | override
    with self.assertRaisesRegex(datasets.DataError, message):
      datasets.ArrayDataset(**fields)


def _indexed_dataset(count=50, shape=(2, 2, 1)):
  """Each training image is filled with its own index / count, so examples can be recognised after splitting."""
  x = (np.arange(count, dtype=np.float32) / count)[:, None, None, None] * np.ones(shape, np.float32)
  return datasets.ArrayDataset("idx", x, np.arange(count) % 5, x[:3], np.zeros(3, np.int64), tuple("abcde"))


class SplitValidationTest(parameterized.TestCase):

  def testSplitValidationSizesAreDisjointAndCoverTrain(self):
    ds = _indexed_dataset(50)
    train, (x_val, y_val) = datasets.split_validation(ds, 0.2, seed=3)
    self.assertEqual((len(train.x_train), len(x_val), len(y_val)), (40, 10, 10))
    ids_train = np.round(train.x_train[:, 0, 0, 0] * 50).astype(int)
    ids_val = np.round(x_val[:, 0, 0, 0] * 50).astype(int)
    self.assertEmpty(np.intersect1d(ids_train, ids_val))
    np.testing.assert_array_equal(np.sort(np.concatenate([ids_train, ids_val])), np.arange(50))
    np.testing.assert_array_equal(y_val, ids_val % 5)
    self.assertIs(train.x_test, ds.x_test)

  def testSplitValidationIsDeterministicInSeed(self):
    ds = _indexed_dataset(50)
    (_, (a, _)), (_, (b, _)), (_, (c, _)) = (datasets.split_validation(ds, 0.3, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    self.assertFalse(np.array_equal(a, c))

  def testSplitValidationWithZeroFractionGivesEmptyValidation(self):
    ds = _indexed_dataset(10)
    train, (x_val, y_val) = datasets.split_validation(ds, 0.0, seed=0)
    self.assertEqual((x_val.shape, y_val.shape), ((0, 2, 2, 1), (0,)))
    np.testing.assert_array_equal(train.x_train, ds.x_train)

  @parameterized.parameters(-0.1, 1.0, 0.99)
  def testSplitValidationRejectsFractionLeavingNoTrainingData(self, fraction):
    with self.assertRaises(ValueError):
      datasets.split_validation(_indexed_dataset(10), fraction, seed=0)


class MakeTfDatasetTest(parameterized.TestCase):

  def _labels(self, ds):
    return np.concatenate([y for _, y in ds.as_numpy_iterator()])

  def _images(self, ds):
    return np.concatenate([x for x, _ in ds.as_numpy_iterator()])

  @parameterized.named_parameters(("_KeepRemainder", False, [4, 4, 2]), ("_DropRemainder", True, [4, 4]))
  def testMakeTfDatasetBatchesFloat32ImagesAndInt64Labels(self, drop_remainder, sizes):
    ds = _indexed_dataset(10)
    batches = list(datasets.make_tf_dataset(ds.x_train, ds.y_train, 4, drop_remainder=drop_remainder))
    self.assertEqual([len(y) for _, y in batches], sizes)
    x, y = batches[0]
    self.assertEqual((x.dtype.name, y.dtype.name, tuple(x.shape)), ("float32", "int64", (4, 2, 2, 1)))
    np.testing.assert_array_equal(self._labels(datasets.make_tf_dataset(ds.x_train, ds.y_train, 4)), ds.y_train)

  def testMakeTfDatasetShufflesDeterministicallyWithSeedAndReshufflesEachPass(self):
    y = np.arange(64)
    x = np.zeros((64, 1, 1, 1), np.float32)
    first = datasets.make_tf_dataset(x, y, 16, shuffle=True, seed=5)
    second = datasets.make_tf_dataset(x, y, 16, shuffle=True, seed=5)
    pass_1, pass_2 = self._labels(first), self._labels(first)
    np.testing.assert_array_equal(pass_1, self._labels(second))
    np.testing.assert_array_equal(np.sort(pass_1), y)
    self.assertFalse(np.array_equal(pass_1, y))
    self.assertFalse(np.array_equal(pass_1, pass_2))

  def testMakeTfDatasetRepeatContinuesPastOneEpoch(self):
    ds = _indexed_dataset(6)
    batches = list(datasets.make_tf_dataset(ds.x_train, ds.y_train, 4, repeat=True, shuffle=True, seed=0).take(5))
    self.assertEqual([len(y) for _, y in batches], [4] * 5)

  def testAugmentationKeepsShapeAndRangeAndIsAPaddedCropOrFlip(self):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 1.0, size=(32, 6, 6, 3)).astype(np.float32)
    out = self._images(datasets.make_tf_dataset(x, np.arange(32), 8, augment=True, seed=1))
    self.assertEqual(out.shape, x.shape)
    self.assertTrue(0.0 <= out.min() and out.max() <= 1.0)
    padded = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)])
    for i in range(32):
      crops = [padded[i, r:r + 6, c:c + 6] for r in range(9) for c in range(9)]
      self.assertTrue(any(np.array_equal(out[i], crop) or np.array_equal(out[i], crop[:, ::-1]) for crop in crops),
                      f"example {i} is not a 4-pixel-padded crop of its input, flipped or not")
    self.assertFalse(np.array_equal(out, x))

  def testAugmentationIsDeterministicWithSeedAndFreshEachPass(self):
    x = np.random.default_rng(1).uniform(size=(16, 8, 8, 3)).astype(np.float32)
    first = datasets.make_tf_dataset(x, np.arange(16), 16, augment=True, seed=9)
    second = datasets.make_tf_dataset(x, np.arange(16), 16, augment=True, seed=9)
    pass_1, pass_2 = self._images(first), self._images(first)
    np.testing.assert_array_equal(pass_1, self._images(second))
    self.assertFalse(np.array_equal(pass_1, pass_2))

  def testMakeTfDatasetRejectsMismatchedInputs(self):
    with self.assertRaisesRegex(ValueError, "images \\[N, H, W, C\\] and labels \\[N\\]"):
      datasets.make_tf_dataset(np.zeros((3, 2, 2, 1)), np.zeros(2), 2)
    with self.assertRaisesRegex(ValueError, "batch_size must be >= 1"):
      datasets.make_tf_dataset(np.zeros((3, 2, 2, 1)), np.zeros(3), 0)


if __name__ == "__main__":
  absltest.main()
