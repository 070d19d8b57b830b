"""Tests for tfrobprune.data.datasets: choosing a dataset by name, the validation split and the tf.data pipeline."""

import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

import format_files
from tfrobprune.data import array_dataset
from tfrobprune.data import cifar10
from tfrobprune.data import datasets
from tfrobprune.data import errors
from tfrobprune.data import idx
from tfrobprune.data import image_folder
from tfrobprune.data import streamed_images
from tfrobprune.data import streaming_dataset
from tfrobprune.data import synthetic
from tfrobprune.data import tfrecord


class LoadDatasetTest(parameterized.TestCase):

  def testReExportsEachFormatModulesPublicNames(self):
    # Callers import only `datasets`; these names must stay the objects the format modules define.
    self.assertIs(datasets.DataError, errors.DataError)
    self.assertIs(datasets.ArrayDataset, array_dataset.ArrayDataset)
    self.assertEqual(datasets.DEFAULT_FASHION_MNIST_DIR, idx.DEFAULT_FASHION_MNIST_DIR)
    self.assertIs(datasets.load_idx, idx.load_idx)
    self.assertIs(datasets.load_idx_dataset, idx.load_idx_dataset)
    self.assertIs(datasets.load_cifar10, cifar10.load_cifar10)
    self.assertIs(datasets.load_image_folder, image_folder.load_image_folder)
    self.assertIs(datasets.open_image_folder, image_folder.open_image_folder)
    self.assertIs(datasets.load_tfrecord, tfrecord.load_tfrecord)
    self.assertIs(datasets.open_tfrecord, tfrecord.open_tfrecord)
    self.assertIs(datasets.StreamingDataset, streaming_dataset.StreamingDataset)
    self.assertIs(datasets.StreamedImages, streamed_images.StreamedImages)
    self.assertIs(datasets.make_synthetic, synthetic.make_synthetic)
    self.assertEmpty([name for name in datasets.__all__ if not hasattr(datasets, name)])

  def testLoadDatasetDispatchesSyntheticOptions(self):
    ds = datasets.load_dataset("synthetic", synthetic_examples=(12, 6), synthetic_shape=(5, 5, 2), num_classes=3,
                               seed=4)
    self.assertEqual((ds.name, ds.input_shape, ds.num_classes, len(ds.x_test)), ("synthetic", (5, 5, 2), 3, 6))

  def testLoadDatasetRejectsUnknownNameListingChoices(self):
    with self.assertRaisesRegex(ValueError, "Unknown dataset 'imagenet'.*fashion_mnist, mnist, cifar10"):
      datasets.load_dataset("imagenet")

  @parameterized.named_parameters(("_Mnist", "mnist"), ("_Cifar10", "cifar10"), ("_ImageFolder", "image_folder"),
                                  ("_TFRecord", "tfrecord"))
  def testLoadDatasetRequiresDataDirForFileDatasets(self, name):
    with self.assertRaisesRegex(datasets.DataError, f"{name}.*needs --data_dir"):
      datasets.load_dataset(name)

  def testDatasetNamesAreTheDocumentedSix(self):
    self.assertEqual(datasets.DATASET_NAMES, ("fashion_mnist", "mnist", "cifar10", "image_folder", "synthetic",
                                              "tfrecord"))

  def testLoadImageFolderKeepsExactPixelsWithoutResizing(self):
    root = self.create_tempdir().full_path
    pixels = np.random.default_rng(4).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    format_files.write_image(os.path.join(root, "train", "a", "x.png"), pixels)
    format_files.write_image(os.path.join(root, "test", "a", "y.png"), pixels)
    ds = datasets.load_dataset("image_folder", root)  # image_size None: the first training image's size
    np.testing.assert_allclose(ds.x_test[0], pixels / 255.0, rtol=1e-6)

  def testStreamingLoadsImageFoldersAsStreamsAndArrayFormatsAsArrays(self):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "a", "x.png"), np.zeros((4, 4), np.uint8))
    format_files.write_image(os.path.join(root, "test", "a", "y.png"), np.zeros((4, 4), np.uint8))
    self.assertIsInstance(datasets.load_dataset("image_folder", root), datasets.ArrayDataset)
    self.assertIsInstance(datasets.load_dataset("image_folder", root, streaming=True), datasets.StreamingDataset)
    self.assertIsInstance(datasets.load_dataset("synthetic", synthetic_examples=(4, 2), streaming=True),
                          datasets.ArrayDataset)

  def testMissingDefaultFashionMnistDirSuggestsAptGetOrDataDir(self):
    missing = os.path.join(self.create_tempdir().full_path, "not-installed")
    with mock.patch.object(datasets, "DEFAULT_FASHION_MNIST_DIR", missing):
      with self.assertRaisesRegex(datasets.DataError, f"{missing} does not exist.*apt-get install dataset-fashion-mnist"
                                  ".*--data_dir"):
        datasets.load_dataset("fashion_mnist")

  @absltest.skipUnless(os.path.isdir(datasets.DEFAULT_FASHION_MNIST_DIR), "dataset-fashion-mnist is not installed")
  def testLoadsInstalledDebianFashionMnist(self):
    ds = datasets.load_dataset("fashion_mnist")
    self.assertEqual((len(ds.x_train), len(ds.x_test), ds.num_classes), (60000, 10000, 10))
    self.assertEqual(ds.input_shape, (28, 28, 1))
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    self.assertBetween(float(ds.mean[0]), 0.28, 0.29)  # the well-known Fashion-MNIST pixel mean


def _indexed_dataset(count=50, shape=(2, 2, 1)):
  """Each training image is filled with its own index / count, so examples can be recognised after splitting."""
  x = (np.arange(count, dtype=np.float32) / count)[:, None, None, None] * np.ones(shape, np.float32)
  return datasets.ArrayDataset("idx", x, np.arange(count) % 5, x[:3], np.zeros(3, np.int64), tuple("abcde"))


def _streamed_folder(root, count):
  """An image folder of `count` random 5x4 RGB PNGs in two classes, opened for streaming."""
  rng = np.random.default_rng(count)
  for i in range(count):
    format_files.write_image(os.path.join(root, "train", "ab"[i % 2], f"{i}.png"),
                             rng.integers(0, 256, (5, 4, 3), dtype=np.uint8))
  format_files.write_image(os.path.join(root, "test", "a", "t.png"), np.zeros((5, 4, 3), np.uint8))
  return datasets.load_dataset("image_folder", root, streaming=True)


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

  def testStreamedSplitHoldsOutTheSameFilesAsTheArraySplit(self):
    streamed = _streamed_folder(self.create_tempdir().full_path, 20)
    arrays = streamed.to_arrays()
    (s_train, (s_val, s_y)), (a_train, (a_val, a_y)) = (datasets.split_validation(d, 0.25, seed=7)
                                                        for d in (streamed, arrays))
    self.assertIsInstance(s_val, datasets.StreamedImages)
    np.testing.assert_array_equal(np.asarray(s_val), a_val)
    np.testing.assert_array_equal(np.asarray(s_train.x_train), a_train.x_train)
    np.testing.assert_array_equal(s_y, a_y)

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

  @parameterized.named_parameters(("_Plain", False, False), ("_ShuffledAugmentedRepeated", True, True))
  def testStreamedImagesGiveTheArraysBatchesForTheSameSeed(self, shuffle, augment):
    # Same seed, same batches: a run on an image folder trains on what the in-memory loader would have fed it.
    streamed = _streamed_folder(self.create_tempdir().full_path, 13)
    arrays = streamed.to_arrays()
    options = dict(shuffle=shuffle, seed=4, augment=augment, drop_remainder=True, repeat=shuffle)
    from_stream, from_arrays = (datasets.make_tf_dataset(d.x_train, d.y_train, 4, **options).take(6)
                                for d in (streamed, arrays))
    for (x_s, y_s), (x_a, y_a) in zip(from_stream.as_numpy_iterator(), from_arrays.as_numpy_iterator(), strict=True):
      np.testing.assert_array_equal(x_s, x_a)
      np.testing.assert_array_equal(y_s, y_a)

  def testMakeTfDatasetRejectsMismatchedInputs(self):
    with self.assertRaisesRegex(ValueError, "images \\[N, H, W, C\\] and labels \\[N\\]"):
      datasets.make_tf_dataset(np.zeros((3, 2, 2, 1)), np.zeros(2), 2)
    with self.assertRaisesRegex(ValueError, "batch_size must be >= 1"):
      datasets.make_tf_dataset(np.zeros((3, 2, 2, 1)), np.zeros(3), 0)


if __name__ == "__main__":
  absltest.main()
