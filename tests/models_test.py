"""Tests for tfrobprune.models: every zoo model builds, maps [0, 1] images to logits and can be pruned/bounded."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models


class StandardizeTest(tf.test.TestCase):

  def testStandardizesPerChannel(self):
    layer = models.Standardize([0.5, 0.25], [0.5, 0.25])
    x = tf.constant([[[[1.0, 0.5]]]])
    self.assertAllClose(layer(x), [[[[1.0, 1.0]]]])

  def testRejectsNonPositiveStd(self):
    with self.assertRaisesRegex(ValueError, "std must be positive"):
      models.Standardize([0.0], [0.0])

  def testRoundTripsThroughConfig(self):
    layer = models.Standardize([0.1], [0.3], name="s")
    clone = models.Standardize.from_config(layer.get_config())
    self.assertEqual(clone.mean_values, layer.mean_values)
    self.assertEqual(clone.std_values, layer.std_values)


class BuildModelTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      ("mlp", (28, 28, 1)), ("cnn_small", (28, 28, 1)), ("cnn_medium", (28, 28, 1)), ("dm_large", (28, 28, 1)),
      ("vgg16", (32, 32, 3)), ("wrn_28_4", (32, 32, 3)))
  def testBuildsModelFromImagesToLogits(self, name, shape):
    model = models.build_model(name, shape, 10, mean=0.5, std=0.25, seed=1)
    self.assertIsInstance(model, keras.Model)
    logits = model(np.random.rand(2, *shape).astype(np.float32), training=False)
    self.assertEqual(logits.shape, (2, 10))
    self.assertEqual(model.layers[0].name if name != "wrn_28_4" else model.layers[1].name, "standardize")

  def testCnnSmallHasTheDocumentedLayers(self):
    model = models.build_model("cnn_small", (28, 28, 1), 10)
    shapes = [(layer.name, tuple(layer.kernel.shape)) for layer in models.prunable_layers(model)]
    self.assertEqual(shapes, [("conv1", (4, 4, 1, 16)), ("conv2", (4, 4, 16, 32)), ("fc1", (1568, 100)),
                              ("logits", (100, 10))])

  def testSameSeedGivesSameWeights(self):
    a = models.build_model("cnn_small", (28, 28, 1), 10, seed=3)
    b = models.build_model("cnn_small", (28, 28, 1), 10, seed=3)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
      self.assertAllEqual(wa, wb)

  def testUnknownModelNamesTheChoices(self):
    with self.assertRaisesRegex(ValueError, "Unknown model 'resnet9'.*cnn_small"):
      models.build_model("resnet9", (28, 28, 1), 10)

  def testBadShapeIsRejected(self):
    with self.assertRaisesRegex(ValueError, "input_shape"):
      models.build_model("mlp", (28, 28), 10)

  def testVggRejectsSmallImages(self):
    with self.assertRaisesRegex(ValueError, "at least 32x32"):
      models.build_model("vgg16", (28, 28, 1), 10)


if __name__ == "__main__":
  absltest.main()
