"""Tests for tfrobprune.deploy.checks: what the exporters accept, and errors that name the argument."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from tfrobprune.deploy import checks  # noqa: E402
from tfrobprune.keras_compat import keras, tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402

_SHAPE = (12, 12, 1)


class CheckExportableTest(tf.test.TestCase):

  def testStrippedModel_ReturnsItsImageShape(self):
    self.assertEqual(checks.check_exportable(models.build_model("cnn_small", _SHAPE, 10, seed=0)), _SHAPE)

  def testWrappedModel_RaisesNamingStrip(self):
    dense = models.build_model("cnn_small", _SHAPE, 10, seed=0)
    wrapped = magnitude.prune_model(dense, pruning_config.PruningConfig(0.5, schedule="constant"))
    with self.assertRaisesRegex(ValueError, r"pruning wrapper .*wrapping\.strip"):
      checks.check_exportable(wrapped)

  def testModelOfVectors_RaisesNamingTheImageShape(self):
    inputs = keras.Input((5,))
    with self.assertRaisesRegex(ValueError, r"fixed shape \[None, H, W, C\]"):
      checks.check_exportable(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


class CheckImagesTest(tf.test.TestCase):

  def testWrongShape_RaisesNamingTheArgumentAndTheShape(self):
    with self.assertRaisesRegex(ValueError, r"x_test must have shape \[N, 12, 12, 1\], got \[2, 3, 3, 1\]"):
      checks.check_images("x_test", np.zeros((2, 3, 3, 1)), _SHAPE)

  def testPixelsOutsideTheUnitRange_Raise(self):
    for value in (1.5, -0.1, np.nan, np.inf):
      images = np.zeros((2,) + _SHAPE)
      images[1, 0, 0, 0] = value
      with self.assertRaisesRegex(ValueError, r"x_adv must hold finite pixels in \[0, 1\]"):
        checks.check_images("x_adv", images, _SHAPE)

  def testValidImages_AreReturnedAsFloat32_EvenNone(self):
    self.assertEqual(checks.check_images("x", np.ones((3,) + _SHAPE, np.float64), _SHAPE).dtype, np.float32)
    self.assertEqual(checks.check_images("x", np.zeros((0,) + _SHAPE), _SHAPE).shape, (0,) + _SHAPE)


class CheckLabelsTest(tf.test.TestCase):

  def testWrongCount_RaisesNamingTheArgument(self):
    with self.assertRaisesRegex(ValueError, r"y_test must have shape \[3\] \(one class index per image\), got \[2\]"):
      checks.check_labels("y_test", [1, 2], 3)

  def testLabels_AreReturnedAsInt64(self):
    self.assertAllEqual(checks.check_labels("y", np.array([1, 2], np.int32), 2), [1, 2])
    self.assertEqual(checks.check_labels("y", np.array([1, 2], np.int32), 2).dtype, np.int64)


if __name__ == "__main__":
  tf.test.main()
