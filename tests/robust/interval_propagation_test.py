"""Tests for tfrobprune.robust.interval_propagation: functional models, stopping before the last layer, exactness
at zero epsilon, and soundness (sampled points stay inside the bounds) on random layers and models."""

from absl.testing import parameterized
import numpy as np

from bounds_test_utils import (NUM_CLASSES, TOLERANCE, apply_per_example, make_data, make_model,
                                            randomize, sample_box)
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import bound_registry
from tfrobprune.robust import interval_propagation
from tfrobprune.robust.intervals import IntervalBounds

layers = keras.layers


class PropagateBoundsTest(tf.test.TestCase, parameterized.TestCase):

  def testAdd_FunctionalModel_SumsTheBoxes(self):
    # (x + 1) + (-x) over x in [0, 1]^2: IBP adds [1, 2] and [-1, 0], giving [0, 2].
    inputs = keras.Input((2,))
    plus_one = layers.Dense(2, kernel_initializer="identity", bias_initializer="ones")(inputs)
    minus = layers.Dense(2, kernel_initializer=keras.initializers.Constant(-np.eye(2)), use_bias=False)(inputs)
    model = keras.Model(inputs, layers.Add()([plus_one, minus]))
    box = interval_propagation.propagate_bounds(model, IntervalBounds([[0., 0.]], [[1., 1.]]))
    self.assertAllClose(box.lower, [[0., 0.]])
    self.assertAllClose(box.upper, [[2., 2.]])

  def testStopBeforeLast_ReturnsTheLastLayersInput(self):
    for name in ("mlp", "residual"):
      model = make_model(name)
      box = interval_propagation.propagate_bounds(model, IntervalBounds.from_epsilon(make_data(model, 2)[0], .1),
                                                  stop_before_last=True)
      self.assertEqual(box.shape[1:], model.layers[-1].input_shape[1:])

  @parameterized.parameters("mlp", "cnn_small", "conv_pool", "residual", "wrn_28_4")
  def testZeroEpsilon_BoundsCollapseToModelOutput(self, name):
    if name == "wrn_28_4":
      model = randomize(models.build_model(name, (8, 8, 3), NUM_CLASSES, seed=0), 0)
    else:
      model = make_model(name)
    x = make_data(model, 2)[0]
    box = interval_propagation.propagate_bounds(model, IntervalBounds.from_epsilon(x, 0.))
    expected = model(x, training=False)
    self.assertAllClose(box.lower, expected, atol=TOLERANCE, rtol=TOLERANCE)
    self.assertAllClose(box.upper, expected, atol=TOLERANCE, rtol=TOLERANCE)


class NominalBatchStatisticsTest(tf.test.TestCase):

  def testZeroWidthBoxUnderTheBatchStatisticsIsTheTrainingPass(self):
    # wrn_28_4: functional, residual, pre-activation BatchNorm (each normalised after earlier ones).
    model = randomize(models.build_model("wrn_28_4", (8, 8, 3), NUM_CLASSES, seed=0), 0)
    x = make_data(model, 4)[0]
    statistics = interval_propagation.nominal_batch_statistics(model, x)
    self.assertLen(statistics, sum(isinstance(layer, layers.BatchNormalization) for layer in model.layers))
    with bound_registry.batch_statistics(statistics):
      box = interval_propagation.propagate_bounds(model, IntervalBounds.from_epsilon(x, 0.))
    outside = interval_propagation.propagate_bounds(model, IntervalBounds.from_epsilon(x, 0.))
    inference = model(x, training=False).numpy()
    training = model(x, training=True).numpy()
    self.assertGreater(np.abs(training - inference).max(), 0.1)  # the statistics make a difference here
    self.assertAllClose(box.lower, training, atol=TOLERANCE, rtol=TOLERANCE)
    self.assertAllClose(box.upper, training, atol=TOLERANCE, rtol=TOLERANCE)
    self.assertAllClose(outside.lower, inference, atol=TOLERANCE, rtol=TOLERANCE)  # moving statistics outside

  def testFrozenBatchNormAndModelsWithoutOneHaveNoBatchStatistics(self):
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3), layers.BatchNormalization(name="bn")])
    self.assertLen(interval_propagation.nominal_batch_statistics(model, np.ones((2, 4), np.float32)), 1)
    model.get_layer("bn").trainable = False  # Keras 2 runs a frozen BatchNorm in inference mode
    self.assertEqual(interval_propagation.nominal_batch_statistics(model, np.ones((2, 4), np.float32)), {})
    self.assertEqual(interval_propagation.nominal_batch_statistics(make_model("mlp"), np.ones((2, 8, 8, 1))), {})


class SoundnessTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("dense", lambda: layers.Dense(5, activation="tanh"), (4,)),
      ("conv_same_stride2", lambda: layers.Conv2D(3, 3, strides=2, padding="same"), (7, 7, 2)),
      ("conv_valid_dilated", lambda: layers.Conv2D(3, 2, dilation_rate=2, activation="relu"), (6, 6, 2)),
      ("batch_norm", layers.BatchNormalization, (3, 3, 4)),
      ("max_pool_same", lambda: layers.MaxPooling2D(2, padding="same"), (5, 5, 2)),
      ("avg_pool_same", lambda: layers.AveragePooling2D(3, strides=2, padding="same"), (5, 5, 2)),
  )
  def testRandomLayer_SampledPointsStayInBounds(self, make_layer, input_shape):
    keras.utils.set_random_seed(1)
    model = randomize(keras.Sequential([keras.Input(input_shape), make_layer()]), 1)
    box = IntervalBounds.from_epsilon(np.random.default_rng(1).uniform(size=(3,) + input_shape), .2)
    self._assertContains(interval_propagation.propagate_bounds(model, box),
                         apply_per_example(model, sample_box(box, 64)))

  @parameterized.parameters("mlp", "cnn_small", "conv_pool", "crown_chain", "residual")
  def testRandomModel_SampledPointsStayInBounds(self, name):
    model = make_model(name)
    box = IntervalBounds.from_epsilon(make_data(model, 4)[0], .05)
    self._assertContains(interval_propagation.propagate_bounds(model, box),
                         apply_per_example(model, sample_box(box, 64)))

  def _assertContains(self, box, outputs):
    """outputs [batch, samples, ...] lie in the box [batch, ...] up to TOLERANCE."""
    self.assertAllGreaterEqual(outputs - box.lower.numpy()[:, None] + TOLERANCE, 0.)
    self.assertAllGreaterEqual(box.upper.numpy()[:, None] - outputs + TOLERANCE, 0.)


if __name__ == "__main__":
  tf.test.main()
