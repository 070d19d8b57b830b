"""Tests for tfrobprune.models: every zoo model builds, maps [0, 1] images to logits and can be pruned/bounded."""

import random

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models


def _draws_after_seeding(between=lambda: None):
  """Python's, NumPy's and TensorFlow's next global random numbers after seeding them, with `between()` run after
  the seeding: equal to a run with a no-op `between` if and only if `between` left the global state alone."""
  random.seed(11)
  np.random.seed(11)
  tf.random.set_seed(11)
  between()
  return [random.random(), float(np.random.rand()), tf.random.uniform([2]).numpy().tolist()]


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

  def testSeedsGiveDistinctReproducibleWeightsWithoutTouchingGlobalRandomState(self):
    untouched = _draws_after_seeding()
    for name, shape in (("cnn_small", (28, 28, 1)), ("wrn_28_4", (32, 32, 3))):
      with self.subTest(model=name):
        built = []
        self.assertEqual(_draws_after_seeding(lambda: built.append(models.build_model(name, shape, 10, seed=3))),
                         untouched)
        again, other = models.build_model(name, shape, 10, seed=3), models.build_model(name, shape, 10, seed=4)
        kernels = [[layer.kernel.numpy() for layer in models.prunable_layers(m)] for m in (built[0], again, other)]
        for first, second, third in zip(*kernels):
          self.assertAllEqual(first, second)
          self.assertFalse(np.array_equal(first, third))
        same_shape = [(a, b) for i, a in enumerate(kernels[0]) for b in kernels[0][i + 1:] if a.shape == b.shape]
        self.assertFalse(any(np.array_equal(a, b) for a, b in same_shape))  # every kernel has its own seed

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
