"""Tests for tfrobprune.robust.bound_registry: each layer's rule on hand-checkable numbers, unsupported layers,
and tfmot pruned layers bounded with their masked kernels."""

from absl.testing import parameterized
import numpy as np

from bounds_test_utils import NUM_CLASSES, TOLERANCE, make_data, make_model, randomize
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import crown_ibp
from tfrobprune.robust import interval_propagation
from tfrobprune.robust.intervals import IntervalBounds
from tfrobprune.robust import margins
import tensorflow_model_optimization as tfmot  # noqa: I100  (after keras_compat)
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

layers = keras.layers


def _one_layer_bounds(layer, lower, upper):
  """The IBP box of `layer` applied to the box [lower, upper] (batch first)."""
  lower = np.asarray(lower, np.float32)
  model = keras.Sequential([keras.Input(lower.shape[1:]), layer])
  return interval_propagation.propagate_bounds(model, IntervalBounds(lower, np.asarray(upper, np.float32)))


class LayerBoundsTest(tf.test.TestCase):

  def testDense_OnesWithBiasTwo_GivesFiveToEleven(self):
    dense = layers.Dense(1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(2.))
    box = _one_layer_bounds(dense, [[0., 1., 2.]], [[2., 3., 4.]])
    self.assertAllEqual(box.lower, [[5.]])
    self.assertAllEqual(box.upper, [[11.]])

  def testDense_ReluActivationAttribute_IsApplied(self):
    dense = layers.Dense(2, activation="relu", kernel_initializer=keras.initializers.Constant([[1., -1.]]))
    box = _one_layer_bounds(dense, [[-2.]], [[1.]])
    self.assertAllEqual(box.lower, [[0., 0.]])
    self.assertAllEqual(box.upper, [[1., 2.]])

  def testRelu_ClipsBothEnds(self):
    box = _one_layer_bounds(layers.ReLU(), [[-2., -1., .5]], [[-1., 1., 2.]])
    self.assertAllEqual(box.lower, [[0., 0., .5]])
    self.assertAllEqual(box.upper, [[0., 1., 2.]])

  def testReluWithMaxValue_IsMonotone(self):
    box = _one_layer_bounds(layers.ReLU(max_value=1.), [[-2., .5]], [[3., 4.]])
    self.assertAllEqual(box.lower, [[0., .5]])
    self.assertAllEqual(box.upper, [[1., 1.]])

  def testSigmoidAndTanhActivations_MapTheEnds(self):
    for name, fn in (("sigmoid", tf.sigmoid), ("tanh", tf.tanh)):
      box = _one_layer_bounds(layers.Activation(name), [[-1.]], [[2.]])
      self.assertAllClose(box.lower, fn([[-1.]]))
      self.assertAllClose(box.upper, fn([[2.]]))

  def testConv2D_KnownKernel(self):
    # Every output is x00 - x01 + 2 x10 + .5 over a 2x2 window of x in [0, 1]: [-1 + .5, 3 + .5].
    kernel = np.array([[1., -1.], [2., 0.]], np.float32).reshape(2, 2, 1, 1)
    conv = layers.Conv2D(1, 2, kernel_initializer=keras.initializers.Constant(kernel),
                         bias_initializer=keras.initializers.Constant(.5))
    box = _one_layer_bounds(conv, np.zeros([1, 3, 3, 1]), np.ones([1, 3, 3, 1]))
    self.assertAllEqual(box.lower, np.full([1, 2, 2, 1], -.5))
    self.assertAllEqual(box.upper, np.full([1, 2, 2, 1], 3.5))

  def testConv2D_StridedSamePadding_MatchesCornersOfOneByOneKernel(self):
    conv = layers.Conv2D(1, 1, strides=2, padding="same", kernel_initializer=keras.initializers.Constant(-3.),
                         use_bias=False)
    box = _one_layer_bounds(conv, np.zeros([1, 3, 3, 1]), np.ones([1, 3, 3, 1]))
    self.assertAllEqual(box.lower, np.full([1, 2, 2, 1], -3.))
    self.assertAllEqual(box.upper, np.zeros([1, 2, 2, 1]))

  def testStandardize_IsPerChannelAffine(self):
    standardize = models.Standardize([.5, 0.], [.25, 2.])
    box = _one_layer_bounds(standardize, [[[[0., 0.]]]], [[[[1., 1.]]]])
    self.assertAllClose(box.lower, [[[[-2., 0.]]]])
    self.assertAllClose(box.upper, [[[[2., .5]]]])

  def testBatchNorm_NegativeGamma_SwapsTheEnds(self):
    # -2 (x - .5) + 1 over x in [0, 1] is [0, 2].
    bn = layers.BatchNormalization(epsilon=.25)
    model = keras.Sequential([keras.Input((1,)), bn])
    bn.set_weights([np.array([-2.]), np.array([1.]), np.array([.5]), np.array([1. - .25])])
    box = interval_propagation.propagate_bounds(model, IntervalBounds([[0.]], [[1.]]))
    self.assertAllClose(box.lower, [[0.]])
    self.assertAllClose(box.upper, [[2.]])

  def testMaxPooling_TakesMaxOfEachEnd(self):
    box = _one_layer_bounds(layers.MaxPooling2D(2), np.reshape([0., 1., 2., -3.], [1, 2, 2, 1]),
                            np.reshape([4., 1., 2., 5.], [1, 2, 2, 1]))
    self.assertAllEqual(box.lower, [[[[2.]]]])
    self.assertAllEqual(box.upper, [[[[5.]]]])

  def testAveragePooling_AveragesEachEnd(self):
    lower, upper = np.reshape([0., 1., 2., -3.], [1, 2, 2, 1]), np.reshape([4., 1., 2., 5.], [1, 2, 2, 1])
    for pool in (layers.AveragePooling2D(2), layers.GlobalAveragePooling2D()):
      box = _one_layer_bounds(pool, lower, upper)
      self.assertAllClose(np.ravel(box.lower), [0.])
      self.assertAllClose(np.ravel(box.upper), [3.])

  def testFlattenReshapeAndDropout_KeepTheValues(self):
    lower, upper = np.reshape(np.arange(6.), [1, 1, 2, 3]), np.reshape(np.arange(6.) + 1, [1, 1, 2, 3])
    model = keras.Sequential([keras.Input((1, 2, 3)), layers.Flatten(), layers.Dropout(.5), layers.Reshape((3, 2))])
    box = interval_propagation.propagate_bounds(model, IntervalBounds(lower.astype(np.float32),
                                                                      upper.astype(np.float32)))
    self.assertAllEqual(box.lower, np.reshape(lower, [1, 3, 2]))
    self.assertAllEqual(box.upper, np.reshape(upper, [1, 3, 2]))

  def testUnsupportedLayers_RaiseNamingLayerAndClass(self):
    cases = (((3, 2), layers.LSTM(2, name="my_lstm"), "'my_lstm' \\(LSTM\\)"),
             ((2,), layers.Lambda(tf.square, name="square"), "'square' \\(Lambda\\)"),
             ((2,), layers.Activation("softmax", name="probs"), "'probs' \\(Activation\\).*softmax"))
    for input_shape, layer, pattern in cases:
      with self.assertRaisesRegex(NotImplementedError, pattern):
        _one_layer_bounds(layer, np.zeros((1,) + input_shape), np.ones((1,) + input_shape))


class PruningTest(tf.test.TestCase, parameterized.TestCase):

  def _prune_by_hand(self, model, seed):
    """(a copy with Dense/Conv2D wrapped by tfmot, random masks set by hand and raw kernels left dense,
    a plain copy whose kernels are kernel * mask)."""

    def wrap(layer):
      clone = layer.__class__.from_config(layer.get_config())
      if not isinstance(layer, (layers.Dense, layers.Conv2D)):
        return clone
      return tfmot.sparsity.keras.prune_low_magnitude(
          clone, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(.5, 0))

    pruned = keras.models.clone_model(model, clone_function=wrap)
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    for wrapper, plain in zip(pruned.layers, masked.layers):
      getattr(wrapper, "layer", wrapper).set_weights(plain.get_weights())
    self._set_masks(pruned, masked, seed)
    return pruned, masked

  def _set_masks(self, pruned, masked, seed):
    rng = np.random.default_rng(seed)
    for wrapper, plain in zip(pruned.layers, masked.layers):
      for kernel, mask, _ in getattr(wrapper, "pruning_vars", ()):
        mask.assign(rng.integers(0, 2, mask.shape).astype(np.float32))
        plain.kernel.assign(kernel * mask)

  @parameterized.parameters("mlp", "cnn_small")
  def testPrunedWrapper_BoundsUseMaskedKernelBeforeTfmotAppliesIt(self, name):
    pruned, masked = self._prune_by_hand(make_model(name), seed=3)
    wrapper = next(layer for layer in pruned.layers if hasattr(layer, "pruning_vars"))
    self.assertIsInstance(wrapper, pruning_wrapper.PruneLowMagnitude)
    self.assertGreater(np.mean(wrapper.layer.kernel.numpy() != 0.), .99)  # the mask is not applied yet
    x, y = make_data(masked, 3)
    self.assertAllClose(margins.margin_bounds(pruned, x, y, .05, NUM_CLASSES),
                        margins.margin_bounds(masked, x, y, .05, NUM_CLASSES))
    self.assertAllClose(crown_ibp.crown_ibp_margin_bounds(pruned, x, y, .05, NUM_CLASSES),
                        crown_ibp.crown_ibp_margin_bounds(masked, x, y, .05, NUM_CLASSES))
    self.assertGreater(np.mean(wrapper.layer.kernel.numpy() != 0.), .99)  # bounds do not assign weights

  def testPruneLowMagnitudeOfWholeModel_WrapsEveryLayerAndBoundsMatchMaskedModel(self):
    keras.utils.set_random_seed(4)
    model = randomize(keras.Sequential([keras.Input((5,)), layers.Dense(6, activation="relu"), layers.ReLU(),
                                         layers.Dense(3)]), 4)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(
        .5, 0))
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    self._set_masks(pruned, masked, seed=4)
    x, y = np.random.default_rng(4).uniform(size=(4, 5)).astype(np.float32), np.array([0, 1, 2, 0])
    self.assertAllClose(crown_ibp.tightest_margin_bounds(pruned, x, y, .1, 3),
                        crown_ibp.tightest_margin_bounds(masked, x, y, .1, 3))
    # Once tfmot applies the masks, the pruned model's outputs agree with the zero-epsilon bounds.
    box = interval_propagation.propagate_bounds(pruned, IntervalBounds.from_epsilon(x, 0.))
    self.assertAllClose(box.lower, pruned(x, training=False), atol=TOLERANCE)


if __name__ == "__main__":
  tf.test.main()
