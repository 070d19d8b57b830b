"""Tests for tfrobprune.data.array_dataset: dtype normalisation, validation and per-channel statistics."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.data import array_dataset
from tfrobprune.data import errors


class ArrayDatasetTest(parameterized.TestCase):

  def testArrayDatasetMeanAndStdArePerChannelOverTrain(self):
    x_train = np.zeros((2, 1, 2, 2), np.float32)
    x_train[..., 0] = [[[0.0, 1.0]], [[0.0, 1.0]]]
    x_train[..., 1] = 0.25
    ds = array_dataset.ArrayDataset("t", x_train, np.array([0, 1]), x_train[:1], np.array([1]), ("a", "b"))
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
    with self.assertRaisesRegex(errors.DataError, message):
      array_dataset.ArrayDataset(**fields)


if __name__ == "__main__":
  absltest.main()
