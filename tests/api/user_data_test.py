"""Tests for tfrobprune.api.user_data: the caller's arrays or tf.data.Dataset become the pipeline's ArrayDataset."""

from absl.testing import absltest
import numpy as np

from tfrobprune.api import user_data
from tfrobprune import config as config_lib
from tfrobprune.data import datasets
from tfrobprune.keras_compat import tf


def _arrays(n=10, seed=0):
  rng = np.random.default_rng(seed)
  return rng.random((n, 4, 4, 1), np.float32), rng.integers(0, 3, n)


class ToArraysTest(tf.test.TestCase):

  def testDatasetOfElementsOrBatches_GivesTheArrays(self):
    x, y = _arrays()
    for dataset in (tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((x, y)).batch(3)):
      got_x, got_y = user_data.to_arrays(dataset, "train")
      self.assertAllEqual(got_x, x)
      self.assertAllEqual(got_y, y)
      self.assertEqual((got_x.dtype, got_y.dtype), (np.float32, np.int64))

  def testBatchesOfGreyscaleImagesWithoutAChannelAxis_AreUnbatched(self):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (50, 28, 28), np.uint8), rng.integers(0, 10, 50)  # keras.datasets.mnist's layout
    for batched in (tf.data.Dataset.from_tensor_slices((x, y)).batch(20),  # a partial last batch
                    tf.data.Dataset.from_tensor_slices((x, np.eye(10)[y])).batch(25, drop_remainder=True)):
      images, labels = user_data.to_arrays(batched, "train")
      self.assertEqual(images.shape, (50, 28, 28, 1))
      self.assertAllEqual(labels, y)
    images, labels = user_data.to_arrays(tf.data.Dataset.from_tensor_slices((x[..., None], np.eye(10)[y])), "train")
    self.assertEqual((images.shape, labels.shape), ((50, 28, 28, 1), (50,)))  # unbatched HWC with one-hot labels

  def testImagesOfDifferentSizes_AreNamedWithTheirSplit(self):
    ragged = tf.data.Dataset.from_generator(
        lambda: iter([(np.zeros((4, 4, 1), np.float32), 0), (np.zeros((5, 4, 1), np.float32), 1)]),
        output_signature=(tf.TensorSpec((None, 4, 1), tf.float32), tf.TensorSpec((), tf.int64)))
    with self.assertRaisesRegex(ValueError, "test_data: the tf.data.Dataset's images .or labels. differ in shape"):
      user_data.to_arrays(ragged, "test")

  def testUint8ImagesNhwImagesAndOneHotLabels_AreConverted(self):
    x = np.array([[[0, 255]], [[51, 102]]], np.uint8)  # [2, 1, 2]: NHW
    images, labels = user_data.to_arrays((x, np.eye(3)[[2, 0]]), "test")
    self.assertEqual(images.shape, (2, 1, 2, 1))
    self.assertAllClose(images[..., 0], [[[0.0, 1.0]], [[0.2, 0.4]]])
    self.assertAllEqual(labels, [2, 0])
    self.assertAllEqual(user_data.to_arrays((images, np.array([[1], [2]])), "test")[1], [1, 2])

  def testBadInputs_AreNamedWithTheirSplit(self):
    x, y = _arrays()
    cases = [
        ([x], "train_data must be \\(images, labels\\)"),
        (tf.data.Dataset.from_tensor_slices(x), "train_data: a tf.data.Dataset of \\(image, label\\)"),
        (tf.data.Dataset.from_tensor_slices((x, y)).repeat(), "infinite"),
        (tf.data.Dataset.from_tensor_slices((x, y)).take(0), "empty"),
        ((x.astype(np.int32), y), "float in \\[0, 1\\] or uint8"),
        ((x, y + 0.5), "class indices"),
        ((x, np.array(["cat", "dog"] * 5)), "labels must be class indices .numbers., got <U3 labels"),
    ]
    for data, pattern in cases:
      with self.subTest(pattern=pattern):
        with self.assertRaisesRegex(ValueError, pattern):
          user_data.to_arrays(data, "train")


class ArrayDatasetOfTest(tf.test.TestCase):

  def testBothSplits_BecomeTheApiDataset(self):
    dataset = user_data.array_dataset_of(_arrays(), _arrays(4, seed=1), num_classes=3)
    self.assertEqual(dataset.name, config_lib.API_DATASET)
    self.assertEqual((len(dataset.x_train), len(dataset.x_test), dataset.num_classes), (10, 4, 3))

  def testLoadersChecks_NameTheSplit(self):
    x, y = _arrays()
    with self.assertRaisesRegex(datasets.DataError, "test split.*\\[0, 1\\]"):
      user_data.array_dataset_of((x, y), (x * 2, y), num_classes=3)
    with self.assertRaisesRegex(datasets.DataError, "train split.*outside \\[0, 2\\)"):
      user_data.array_dataset_of((x, y), (x, y), num_classes=2)


if __name__ == "__main__":
  absltest.main()
