"""Tests for tfrobprune.robust.bounds: hand-checkable numbers per layer, then soundness properties on random models."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

from tfrobprune.keras_compat import keras, tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.robust import bounds  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402  (after keras_compat)
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper  # noqa: E402

layers = keras.layers
IntervalBounds = bounds.IntervalBounds
NUM_CLASSES = 10
TOLERANCE = 1e-5


def _one_layer_bounds(layer, lower, upper):
  """The IBP box of `layer` applied to the box [lower, upper] (batch first)."""
  lower = np.asarray(lower, np.float32)
  model = keras.Sequential([keras.Input(lower.shape[1:]), layer])
  return bounds.propagate_bounds(model, IntervalBounds(lower, np.asarray(upper, np.float32)))


def _randomize(model, seed):
  """Random biases and BatchNorm statistics (negative gammas included), so no layer is trivially centred."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    layer = getattr(layer, "layer", layer)
    if isinstance(layer, (layers.Dense, layers.Conv2D)) and layer.use_bias:
      layer.bias.assign(rng.normal(0., .1, layer.bias.shape))
    if isinstance(layer, layers.BatchNormalization):
      shape = layer.gamma.shape
      layer.set_weights([rng.normal(0., 1., shape), rng.normal(0., .2, shape), rng.normal(0., .2, shape),
                         rng.uniform(.5, 2., shape)])
  return model


def _conv_pool_model():
  """Every IBP-only layer: Standardize, strided Conv2D, BN, tanh, max/avg pooling, Dropout, Reshape, sigmoid."""
  return keras.Sequential([
      keras.Input((10, 10, 2)),
      models.Standardize([.3, .6], [.2, .5]),
      layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
      layers.BatchNormalization(),
      layers.Activation("tanh"),
      layers.MaxPooling2D(2, strides=1),
      layers.AveragePooling2D(2),
      layers.Dropout(.5),
      layers.Flatten(),
      layers.Dense(6, activation="sigmoid"),
      layers.Reshape((2, 3)),
      layers.Flatten(),
      layers.Dense(NUM_CLASSES),
  ], name="conv_pool")


def _crown_chain_model():
  """A chain CROWN-IBP relaxes: valid and dilated convs, BN, ReLU layers and activations, average pools."""
  return keras.Sequential([
      keras.Input((9, 9, 2)),
      models.Standardize([.5, .4], [.3, .2]),
      layers.Conv2D(4, 3, strides=2, padding="valid"),
      layers.BatchNormalization(),
      layers.ReLU(),
      layers.Conv2D(3, 2, padding="same", dilation_rate=2, activation="relu"),
      layers.AveragePooling2D(2, padding="same"),
      layers.GlobalAveragePooling2D(),
      layers.Dense(8, activation="relu"),
      layers.Dense(NUM_CLASSES),
  ], name="crown_chain")


def _residual_model():
  """A functional model with a residual Add and global average pooling."""
  inputs = keras.Input((6, 6, 2))
  trunk = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(4, 3, padding="same")(inputs)))
  branch = layers.Conv2D(4, 3, padding="same", activation="relu")(trunk)
  merged = layers.ReLU()(layers.Add(name="residual_add")([trunk, branch]))
  outputs = layers.Dense(NUM_CLASSES)(layers.GlobalAveragePooling2D()(merged))
  return keras.Model(inputs, outputs, name="residual")


_MODELS = {
    "mlp": lambda: models.build_model("mlp", (8, 8, 1), NUM_CLASSES, mean=.4, std=.3, seed=0),
    "cnn_small": lambda: models.build_model("cnn_small", (12, 12, 1), NUM_CLASSES, mean=.4, std=.3, seed=0),
    "conv_pool": _conv_pool_model,
    "crown_chain": _crown_chain_model,
    "residual": _residual_model,
}
_CROWN_MODELS = ("mlp", "cnn_small", "crown_chain")


def _model(name, seed=0):
  keras.utils.set_random_seed(seed)
  return _randomize(_MODELS[name](), seed)


def _data(model, batch, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0., 1., (batch,) + tuple(model.input_shape[1:])).astype(np.float32)
  return x, rng.integers(0, NUM_CLASSES, batch).astype(np.int64)


def _sample_box(box, num_samples, seed=0):
  """`num_samples` points per example, half uniform in the box, half random corners: [batch, samples, ...]."""
  rng = np.random.default_rng(seed)
  lower, upper = box.lower.numpy()[:, None], box.upper.numpy()[:, None]
  shape = (lower.shape[0], num_samples) + lower.shape[2:]
  fractions = rng.uniform(0., 1., shape)
  fractions[:, num_samples // 2:] = rng.integers(0, 2, fractions[:, num_samples // 2:].shape)
  return (lower + fractions * (upper - lower)).astype(np.float32)


def _apply_per_example(model, points):
  """Runs [batch, samples, ...] points through the model: [batch, samples, outputs...]."""
  outputs = model(points.reshape((-1,) + points.shape[2:]), training=False).numpy()
  return outputs.reshape(points.shape[:2] + outputs.shape[1:])


def _margins(logits, y):
  """logit_y - logit_j for [..., K] logits and labels broadcast against them."""
  return np.take_along_axis(logits, y[..., None], axis=-1) - logits


def _pgd_margins(model, x, y, box, steps=15):
  """Signed-gradient descent on each margin logit_y - logit_j, one attack per (example, j): [batch, K]."""
  lower, upper = (tf.repeat(t, NUM_CLASSES, axis=0) for t in (box.lower, box.upper))
  labels, targets = np.repeat(y, NUM_CLASSES), np.tile(np.arange(NUM_CLASSES), len(y))
  points = lower + tf.random.stateless_uniform(lower.shape, (1, 2)) * (upper - lower)
  for _ in range(steps):
    with tf.GradientTape() as tape:
      tape.watch(points)
      logits = model(points, training=False)
      margins = tf.reduce_sum(logits * (tf.one_hot(labels, NUM_CLASSES) - tf.one_hot(targets, NUM_CLASSES)), axis=1)
    points = tf.clip_by_value(points - (upper - lower) / 8. * tf.sign(tape.gradient(margins, points)), lower, upper)
  logits = model(points, training=False).numpy()
  return (logits[np.arange(len(labels)), labels] - logits[np.arange(len(labels)), targets]).reshape(len(y), -1)


def _linear_matrix(apply, input_shape):
  """The dense matrix [outputs, inputs] of a linear map `apply`, column by column from the unit vectors."""
  size = int(np.prod(input_shape))
  basis = tf.reshape(tf.eye(size), (size,) + tuple(input_shape))
  return tf.reshape(apply(basis), [size, -1]).numpy().T


def _linear_step(make_layer, input_shape, seed):
  """A randomised one-step linear layer, its `_Affine` step and the dense matrix of the step's linear map."""
  keras.utils.set_random_seed(seed)
  layer = make_layer()
  _randomize(keras.Sequential([keras.Input(input_shape), layer]), seed)
  (step,) = bounds._steps(layer)  # pylint: disable=protected-access
  return layer, step, _linear_matrix(step.linear.apply, input_shape)


# Layers that are one linear step (no bias where they would have one), with their input shapes.
_LINEAR_LAYERS = (
    ("dense", lambda: layers.Dense(3, use_bias=False), (4,)),
    ("dense_rank3", lambda: layers.Dense(3, use_bias=False), (2, 4)),
    ("conv_same_stride2_odd", lambda: layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False), (5, 5, 2)),
    ("conv_same_stride2_even", lambda: layers.Conv2D(2, 4, strides=2, padding="same", use_bias=False), (6, 6, 2)),
    ("conv_valid_stride2_odd", lambda: layers.Conv2D(2, 2, strides=2, padding="valid", use_bias=False), (5, 5, 1)),
    ("conv_dilated", lambda: layers.Conv2D(2, 2, dilation_rate=2, padding="same", use_bias=False), (5, 5, 2)),
    ("avg_pool_same", lambda: layers.AveragePooling2D(2, padding="same"), (5, 5, 2)),
    ("global_avg_pool", layers.GlobalAveragePooling2D, (3, 3, 2)),
    ("flatten", layers.Flatten, (2, 3, 2)),
    ("batch_norm", layers.BatchNormalization, (2, 2, 3)),
    ("standardize", lambda: models.Standardize([.1, .2], [.5, 2.]), (2, 2, 2)),
)


class IntervalBoundsTest(tf.test.TestCase):

  def testFromEpsilon_IntersectsBallWithPixelRange(self):
    box = IntervalBounds.from_epsilon([[.05, .5, .98]], .1)
    self.assertAllClose(box.lower, [[0., .4, .88]])
    self.assertAllClose(box.upper, [[.15, .6, 1.]])

  def testFromEpsilon_NoneClipsDoNotClip(self):
    box = IntervalBounds.from_epsilon([[0., 1.]], .5, clip_min=None, clip_max=None)
    self.assertAllClose(box.lower, [[-.5, .5]])
    self.assertAllClose(box.upper, [[.5, 1.5]])

  def testCenterAndRadius_RoundTrip(self):
    box = IntervalBounds.from_center_radius(tf.constant([[1., -2.]]), tf.constant([[.5, 3.]]))
    self.assertAllClose(box.lower, [[.5, -5.]])
    self.assertAllClose(box.center, [[1., -2.]])
    self.assertAllClose(box.radius, [[.5, 3.]])

  def testAffine_MapsCenterAndRadiusSeparately(self):
    kernel = tf.constant([[1., -2.], [3., 0.]])
    box = IntervalBounds([[0., -1.]], [[2., 1.]]).affine(lambda c: c @ kernel, lambda r: r @ tf.abs(kernel), [1., 1.])
    # c = [1, 0], r = [1, 1]: c' = [1, -2] + 1, r' = [4, 2].
    self.assertAllClose(box.lower, [[-2., -3.]])
    self.assertAllClose(box.upper, [[6., 1.]])

  def testMismatchedShapes_RaiseValueError(self):
    with self.assertRaisesRegex(ValueError, "shape"):
      IntervalBounds(tf.zeros([1, 2]), tf.zeros([1, 3]))


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
    box = bounds.propagate_bounds(model, IntervalBounds([[0.]], [[1.]]))
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
    box = bounds.propagate_bounds(model, IntervalBounds(lower.astype(np.float32), upper.astype(np.float32)))
    self.assertAllEqual(box.lower, np.reshape(lower, [1, 3, 2]))
    self.assertAllEqual(box.upper, np.reshape(upper, [1, 3, 2]))

  def testAdd_FunctionalModel_SumsTheBoxes(self):
    # (x + 1) + (-x) over x in [0, 1]^2: IBP adds [1, 2] and [-1, 0], giving [0, 2].
    inputs = keras.Input((2,))
    plus_one = layers.Dense(2, kernel_initializer="identity", bias_initializer="ones")(inputs)
    minus = layers.Dense(2, kernel_initializer=keras.initializers.Constant(-np.eye(2)), use_bias=False)(inputs)
    model = keras.Model(inputs, layers.Add()([plus_one, minus]))
    box = bounds.propagate_bounds(model, IntervalBounds([[0., 0.]], [[1., 1.]]))
    self.assertAllClose(box.lower, [[0., 0.]])
    self.assertAllClose(box.upper, [[2., 2.]])

  def testStopBeforeLast_ReturnsTheLastLayersInput(self):
    for name in ("mlp", "residual"):
      model = _model(name)
      box = bounds.propagate_bounds(model, IntervalBounds.from_epsilon(_data(model, 2)[0], .1), stop_before_last=True)
      self.assertEqual(box.shape[1:], model.layers[-1].input_shape[1:])

  def testUnsupportedLayers_RaiseNamingLayerAndClass(self):
    cases = (((3, 2), layers.LSTM(2, name="my_lstm"), "'my_lstm' \\(LSTM\\)"),
             ((2,), layers.Lambda(tf.square, name="square"), "'square' \\(Lambda\\)"),
             ((2,), layers.Activation("softmax", name="probs"), "'probs' \\(Activation\\).*softmax"))
    for input_shape, layer, pattern in cases:
      with self.assertRaisesRegex(NotImplementedError, pattern):
        _one_layer_bounds(layer, np.zeros((1,) + input_shape), np.ones((1,) + input_shape))


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
    model = _randomize(keras.Sequential([keras.Input(input_shape), make_layer()]), 1)
    box = IntervalBounds.from_epsilon(np.random.default_rng(1).uniform(size=(3,) + input_shape), .2)
    self._assertContains(bounds.propagate_bounds(model, box), _apply_per_example(model, _sample_box(box, 64)))

  @parameterized.parameters("mlp", "cnn_small", "conv_pool", "crown_chain", "residual")
  def testRandomModel_SampledPointsStayInBounds(self, name):
    model = _model(name)
    box = IntervalBounds.from_epsilon(_data(model, 4)[0], .05)
    self._assertContains(bounds.propagate_bounds(model, box), _apply_per_example(model, _sample_box(box, 64)))

  @parameterized.parameters("mlp", "cnn_small", "conv_pool", "crown_chain", "residual")
  def testRandomModel_SampledMarginsNeverBelowMarginBounds(self, name):
    model = _model(name)
    x, y = _data(model, 4)
    margins = _margins(_apply_per_example(model, _sample_box(IntervalBounds.from_epsilon(x, .05), 64)), y[:, None])
    lower_bounds = {"ibp": bounds.margin_bounds(model, x, y, .05, NUM_CLASSES)}
    if name in _CROWN_MODELS:
      lower_bounds["crown_ibp"] = bounds.crown_ibp_margin_bounds(model, x, y, .05, NUM_CLASSES)
    for method, lower in lower_bounds.items():
      with self.subTest(method):
        self.assertAllGreaterEqual(margins - lower.numpy()[:, None] + TOLERANCE, 0.)

  @parameterized.parameters("mlp", "cnn_small", "crown_chain")
  def testPgdPoints_NeverBeatMarginBounds(self, name):
    model = _model(name)
    x, y = _data(model, 3)
    eps = .02
    found = _pgd_margins(model, x, y, IntervalBounds.from_epsilon(x, eps))
    for fn in (bounds.margin_bounds, bounds.crown_ibp_margin_bounds, bounds.tightest_margin_bounds):
      with self.subTest(fn.__name__):
        self.assertAllGreaterEqual(found - fn(model, x, y, eps, NUM_CLASSES).numpy() + TOLERANCE, 0.)

  def _assertContains(self, box, outputs):
    """outputs [batch, samples, ...] lie in the box [batch, ...] up to TOLERANCE."""
    self.assertAllGreaterEqual(outputs - box.lower.numpy()[:, None] + TOLERANCE, 0.)
    self.assertAllGreaterEqual(box.upper.numpy()[:, None] - outputs + TOLERANCE, 0.)


class MarginBoundsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters("mlp", "cnn_small", "conv_pool", "residual")
  def testFoldedSpec_NeverLooserThanNaiveLogitDifference(self, name):
    model = _model(name)
    x, y = _data(model, 4)
    logits = bounds.propagate_bounds(model, IntervalBounds.from_epsilon(x, .05))
    naive = np.take_along_axis(logits.lower.numpy(), y[:, None], axis=1) - logits.upper.numpy()
    folded = bounds.margin_bounds(model, x, y, .05, NUM_CLASSES).numpy()
    others = np.arange(NUM_CLASSES)[None] != y[:, None]
    self.assertAllGreaterEqual(folded[others] - naive[others], -TOLERANCE)
    self.assertTrue(np.any(folded[others] > naive[others] + TOLERANCE))

  @parameterized.parameters("mlp", "cnn_small")
  def testPairwiseFinalDense_EqualsFoldingTheSpecInValueAndGradient(self, name):
    model = _model(name)
    x, y = _data(model, 6)
    last = model.layers[-1]
    with tf.GradientTape(persistent=True) as tape:
      penultimate = bounds.propagate_bounds(model, IntervalBounds.from_epsilon(x, .05), stop_before_last=True)
      pairwise = bounds._pairwise_margins(last.kernel, last.bias, penultimate, tf.constant(y, tf.int32))
      folded = bounds._folded_margins(bounds._steps(last), penultimate, bounds._margin_spec(y, NUM_CLASSES))
      losses = [tf.reduce_sum(tf.nn.softplus(-margins) * np.arange(1, NUM_CLASSES + 1)) for margins in (pairwise,
                                                                                                         folded)]
    self.assertAllClose(pairwise, folded, atol=TOLERANCE, rtol=1e-5)
    self.assertAllClose(bounds.margin_bounds(model, x, y, .05, NUM_CLASSES), folded, atol=TOLERANCE, rtol=1e-5)
    for fast, reference in zip(*(tape.gradient(loss, model.trainable_variables) for loss in losses)):
      # Summation order differs: compare to the gradient's own scale (the random models' margins are ~100).
      self.assertAllClose(fast, reference, atol=1e-6 * float(tf.reduce_max(tf.abs(reference))), rtol=1e-3)

  def testLabelEntry_IsZero(self):
    model = _model("mlp")
    x, y = _data(model, 5)
    for fn in (bounds.margin_bounds, bounds.crown_ibp_margin_bounds, bounds.tightest_margin_bounds):
      self.assertAllEqual(np.take_along_axis(fn(model, x, y, .1, NUM_CLASSES).numpy(), y[:, None], axis=1),
                          np.zeros([5, 1]))

  @parameterized.parameters("mlp", "cnn_small", "conv_pool", "residual", "wrn_28_4")
  def testZeroEpsilon_BoundsCollapseToModelOutput(self, name):
    if name == "wrn_28_4":
      model = _randomize(models.build_model(name, (8, 8, 3), NUM_CLASSES, seed=0), 0)
    else:
      model = _model(name)
    x = _data(model, 2)[0]
    box = bounds.propagate_bounds(model, IntervalBounds.from_epsilon(x, 0.))
    expected = model(x, training=False)
    self.assertAllClose(box.lower, expected, atol=TOLERANCE, rtol=TOLERANCE)
    self.assertAllClose(box.upper, expected, atol=TOLERANCE, rtol=TOLERANCE)

  @parameterized.parameters("mlp", "cnn_small", "crown_chain")
  def testZeroEpsilon_MarginBoundsAreTheMargins(self, name):
    model = _model(name)
    x, y = _data(model, 3)
    expected = _margins(model(x, training=False).numpy(), y)
    for fn in (bounds.margin_bounds, bounds.crown_ibp_margin_bounds):
      self.assertAllClose(fn(model, x, y, 0., NUM_CLASSES), expected, atol=TOLERANCE, msg=fn.__name__)

  def testWrongNumClasses_RaisesValueError(self):
    model = _model("mlp")
    x, y = _data(model, 2)
    with self.assertRaisesRegex(ValueError, "num_classes=3"):
      bounds.margin_bounds(model, x, y % 3, .1, 3)

  def testNonAffineLastLayer_RaisesValueError(self):
    model = keras.Sequential([keras.Input((2,)), layers.Dense(2), layers.ReLU(name="last_relu")])
    with self.assertRaisesRegex(ValueError, "last_relu"):
      bounds.margin_bounds(model, np.zeros([1, 2]), np.zeros([1], np.int64), .1, 2)

  def testMergeAsLastLayer_RaisesValueError(self):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, layers.Add(name="last_add")([layers.Dense(2)(inputs), layers.Dense(2)(inputs)]))
    with self.assertRaisesRegex(ValueError, "last_add"):
      bounds.margin_bounds(model, np.zeros([1, 2], np.float32), np.zeros([1], np.int64), .1, 2)

  def testMarginBounds_TracesOnceInTfFunction(self):
    model = _model("cnn_small")
    compiled = tf.function(lambda x, y, eps: bounds.margin_bounds(model, x, y, eps, NUM_CLASSES))
    for seed in (1, 2):
      x, y = _data(model, 4, seed)
      compiled(tf.constant(x), tf.constant(y), tf.constant(.01 * seed))
    self.assertEqual(compiled.experimental_get_tracing_count(), 1)


class CrownIbpTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters((2., -1., -2., -1.), (4., -1., -4., -3.))
  def testAbsoluteValue_CrownIbpChordsAreExactWhereIbpAddsTheRanges(self, scale, shift, ibp_margin,
                                                                   crown_ibp_margin):
    # logits = [-(relu(z) + relu(-z)), 0] = [-|z|, 0] with z = scale x + shift over x in [0, 1]: [-1, 1] or [-1, 3].
    # IBP adds the two ReLU boxes ([0, 1] + [0, 1], or [0, 3] + [0, 1]). The chords u (z - l) / (u - l) of the two
    # ReLUs sum to z/2 + 1/2 + (-z/2 + 1/2) = 1, or (3z + 3) / 4 + (-z + 3) / 4 = (z + 3) / 2 <= 3: the true minimum.
    model = keras.Sequential([
        keras.Input((1,)),
        layers.Dense(2, kernel_initializer=keras.initializers.Constant([[scale, -scale]]),
                     bias_initializer=keras.initializers.Constant([shift, -shift])),
        layers.ReLU(),
        layers.Dense(2, kernel_initializer=keras.initializers.Constant([[-1., 0.], [-1., 0.]]), use_bias=False),
    ])
    x, y = np.array([[.5]], np.float32), np.array([0])
    self.assertAllClose(bounds.margin_bounds(model, x, y, .5, 2), [[0., ibp_margin]])
    self.assertAllClose(bounds.crown_ibp_margin_bounds(model, x, y, .5, 2), [[0., crown_ibp_margin]])
    self.assertAllClose(bounds.tightest_margin_bounds(model, x, y, .5, 2), [[0., crown_ibp_margin]])

  @parameterized.parameters((4., -1., -1.), (2., -1.5, 0.))
  def testAdaptiveLowerSlope_IsOneOnlyWhereUpperExceedsMinusLower(self, scale, shift, crown_ibp_margin):
    # margin_1 = relu(z), z = scale x + shift over x in [0, 1]. z in [-1, 3] takes relu(z) >= z (minimum -1, looser
    # than IBP's 0); z in [-1.5, .5] takes relu(z) >= 0. tightest_margin_bounds keeps IBP's 0 in both.
    model = keras.Sequential([
        keras.Input((1,)),
        layers.Dense(1, kernel_initializer=keras.initializers.Constant(scale),
                     bias_initializer=keras.initializers.Constant(shift)),
        layers.ReLU(),
        layers.Dense(2, kernel_initializer=keras.initializers.Constant([[1., 0.]]), use_bias=False),
    ])
    x, y = np.array([[.5]], np.float32), np.array([0])
    self.assertAllClose(bounds.crown_ibp_margin_bounds(model, x, y, .5, 2), [[0., crown_ibp_margin]])
    self.assertAllClose(bounds.tightest_margin_bounds(model, x, y, .5, 2), [[0., 0.]])

  @parameterized.named_parameters(*_LINEAR_LAYERS)
  def testLinearStepTranspose_MatchesDenseMatrix(self, make_layer, input_shape):
    layer, step, matrix = _linear_step(make_layer, input_shape, seed=2)
    output_shape = layer.compute_output_shape((1,) + input_shape)[1:]
    lam = np.random.default_rng(2).normal(size=(2, 3) + tuple(output_shape)).astype(np.float32)
    transposed = step.linear.transpose(tf.constant(lam), list(input_shape)).numpy()
    self.assertAllClose(transposed.reshape(2, 3, -1), lam.reshape(2, 3, -1) @ matrix, atol=1e-5)
    self.assertAllClose(_linear_matrix(step.linear.apply_abs, input_shape), np.abs(matrix), atol=1e-6)

  @parameterized.named_parameters(*_LINEAR_LAYERS)
  def testAffineStepInterval_IsCenterPlusMinusAbsMatrixTimesRadius(self, make_layer, input_shape):
    # The steps skip center and radius (halved weights, or [A l, A u] for non-negative maps); the box must still be
    # exactly c' = A c + b, r' = |A| r.
    layer, step, matrix = _linear_step(make_layer, input_shape, seed=3)
    bias = 0. if step.bias is None else np.broadcast_to(step.bias, layer.compute_output_shape((1,) + input_shape)[1:])
    rng = np.random.default_rng(3)
    lower = rng.normal(size=(2,) + input_shape).astype(np.float32)
    upper = lower + rng.uniform(0., 1., lower.shape).astype(np.float32)
    box = step.interval(IntervalBounds(lower, upper))
    center, radius = ((upper + lower) / 2).reshape(2, -1), ((upper - lower) / 2).reshape(2, -1)
    expected_center = center @ matrix.T + np.ravel(bias)
    self.assertAllClose(box.lower.numpy().reshape(2, -1), expected_center - radius @ np.abs(matrix).T, atol=1e-5)
    self.assertAllClose(box.upper.numpy().reshape(2, -1), expected_center + radius @ np.abs(matrix).T, atol=1e-5)

  @parameterized.parameters("mlp", "cnn_small", "crown_chain")
  def testTightest_NeverLooserThanIbpAndMixesAtBetaEnds(self, name):
    model = _model(name)
    x, y = _data(model, 4)
    ibp = bounds.margin_bounds(model, x, y, .05, NUM_CLASSES)
    crown_ibp = bounds.crown_ibp_margin_bounds(model, x, y, .05, NUM_CLASSES)
    self.assertAllGreaterEqual(bounds.tightest_margin_bounds(model, x, y, .05, NUM_CLASSES) - ibp, 0.)
    self.assertAllClose(bounds.crown_ibp_training_margins(model, x, y, .05, NUM_CLASSES, 0.), ibp, atol=TOLERANCE)
    self.assertAllClose(bounds.crown_ibp_training_margins(model, x, y, .05, NUM_CLASSES, 1.), crown_ibp)

  @parameterized.parameters("mlp", "cnn_small", "crown_chain")
  def testRawCrownIbp_TighterThanIbpOnMostMarginsOfSmallBalls(self, name):
    model = _model(name)
    x, y = _data(model, 8)
    eps = .01
    gap = (bounds.crown_ibp_margin_bounds(model, x, y, eps, NUM_CLASSES) -
           bounds.margin_bounds(model, x, y, eps, NUM_CLASSES)).numpy()[np.arange(NUM_CLASSES)[None] != y[:, None]]
    self.assertGreater(np.mean(gap > 0.), .9)

  @parameterized.parameters(("cnn_small", False), ("crown_chain", False), ("crown_chain", True))
  def testTrainingMargins_GradientsAreFiniteForAllWeights_EvenAtZeroEpsilon(self, name, in_tf_function):
    model = _model(name)
    x, y = _data(model, 4)

    def gradients(eps):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(bounds.robust_cross_entropy(
            bounds.crown_ibp_training_margins(model, x, y, eps, NUM_CLASSES, .5)))
      return tape.gradient(loss, model.trainable_weights)

    for eps in (0., .05):
      results = (tf.function(gradients) if in_tf_function else gradients)(tf.constant(eps))
      self.assertNotIn(None, results)
      for gradient in results:
        self.assertAllEqual(tf.math.is_finite(gradient), tf.ones_like(gradient, tf.bool))

  def testTrainingMargins_TracesOnceAsEpsilonAndBetaRamp(self):
    model = _model("mlp")
    x, y = _data(model, 4)
    compiled = tf.function(lambda x, y, eps, beta: bounds.crown_ibp_training_margins(model, x, y, eps, NUM_CLASSES,
                                                                                      beta))
    for step in range(3):
      compiled(tf.constant(x), tf.constant(y), tf.constant(.01 * step), tf.constant(1. - step / 2.))
    self.assertEqual(compiled.experimental_get_tracing_count(), 1)

  @parameterized.parameters(("residual", "residual_add", "Add"), ("conv_pool", "activation", "Activation"))
  def testUnsupportedModel_RaisesNamingTheLayer(self, name, layer_name, class_name):
    model = _model(name)
    x, y = _data(model, 2)
    with self.assertRaisesRegex(NotImplementedError, f"'{layer_name}[_0-9]*' \\({class_name}\\)"):
      bounds.crown_ibp_margin_bounds(model, x, y, .1, NUM_CLASSES)


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
    pruned, masked = self._prune_by_hand(_model(name), seed=3)
    wrapper = next(layer for layer in pruned.layers if hasattr(layer, "pruning_vars"))
    self.assertIsInstance(wrapper, pruning_wrapper.PruneLowMagnitude)
    self.assertGreater(np.mean(wrapper.layer.kernel.numpy() != 0.), .99)  # the mask is not applied yet
    x, y = _data(masked, 3)
    self.assertAllClose(bounds.margin_bounds(pruned, x, y, .05, NUM_CLASSES),
                        bounds.margin_bounds(masked, x, y, .05, NUM_CLASSES))
    self.assertAllClose(bounds.crown_ibp_margin_bounds(pruned, x, y, .05, NUM_CLASSES),
                        bounds.crown_ibp_margin_bounds(masked, x, y, .05, NUM_CLASSES))
    self.assertGreater(np.mean(wrapper.layer.kernel.numpy() != 0.), .99)  # bounds do not assign weights

  def testPruneLowMagnitudeOfWholeModel_WrapsEveryLayerAndBoundsMatchMaskedModel(self):
    keras.utils.set_random_seed(4)
    model = _randomize(keras.Sequential([keras.Input((5,)), layers.Dense(6, activation="relu"), layers.ReLU(),
                                         layers.Dense(3)]), 4)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(
        .5, 0))
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    self._set_masks(pruned, masked, seed=4)
    x, y = np.random.default_rng(4).uniform(size=(4, 5)).astype(np.float32), np.array([0, 1, 2, 0])
    self.assertAllClose(bounds.tightest_margin_bounds(pruned, x, y, .1, 3),
                        bounds.tightest_margin_bounds(masked, x, y, .1, 3))
    # Once tfmot applies the masks, the pruned model's outputs agree with the zero-epsilon bounds.
    box = bounds.propagate_bounds(pruned, IntervalBounds.from_epsilon(x, 0.))
    self.assertAllClose(box.lower, pruned(x, training=False), atol=TOLERANCE)


class VerifiedAccuracyTest(tf.test.TestCase, parameterized.TestCase):

  def _clean_accuracy(self, model, x, y):
    return np.mean(np.argmax(model(x, training=False), axis=1) == y)

  def _labelled_by_model(self, model, batch):
    """Data labelled mostly by the model itself, so that some examples verify."""
    x, y = _data(model, batch)
    y[: batch * 3 // 4] = np.argmax(model(x[: batch * 3 // 4], training=False), axis=1)
    return x, y

  @parameterized.parameters(("mlp", 3e-4), ("crown_chain", .01))
  def testVerifiedAccuracy_AtMostCleanAndCrownIbpAtLeastIbp(self, name, eps):
    model = _model(name)
    x, y = self._labelled_by_model(model, 16)
    clean = self._clean_accuracy(model, x, y)
    ibp = bounds.verified_accuracy(model, x, y, eps, NUM_CLASSES, method="ibp", batch_size=5)
    crown_ibp = bounds.verified_accuracy(model, x, y, eps, NUM_CLASSES, method="crown_ibp", batch_size=5)
    self.assertLessEqual(ibp, crown_ibp)
    self.assertLessEqual(crown_ibp, clean)
    self.assertGreater(crown_ibp, 0.)
    self.assertAlmostEqual(bounds.verified_accuracy(model, x, y, 0., NUM_CLASSES, batch_size=5), clean)

  def testCrownIbpOnResidualModel_FallsBackToIbpFigure(self):
    model = _model("residual")
    x, y = self._labelled_by_model(model, 8)
    self.assertEqual(bounds.verified_accuracy(model, x, y, .001, NUM_CLASSES, method="crown_ibp"),
                     bounds.verified_accuracy(model, x, y, .001, NUM_CLASSES, method="ibp"))

  def testBadArguments_RaiseValueError(self):
    model = _model("mlp")
    x, y = _data(model, 2)
    for kwargs, pattern in (({"method": "crown"}, "method"), ({"batch_size": 0}, "batch_size")):
      with self.assertRaisesRegex(ValueError, pattern):
        bounds.verified_accuracy(model, x, y, .1, NUM_CLASSES, **kwargs)


class RobustCrossEntropyTest(tf.test.TestCase):

  def testEqualsSoftmaxCrossEntropyOfNegatedMargins(self):
    model = _model("mlp")
    x, y = _data(model, 4)
    margins = bounds.margin_bounds(model, x, y, .05, NUM_CLASSES)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=-margins)
    self.assertAllClose(bounds.robust_cross_entropy(margins), expected)

  def testUpperBoundsCleanCrossEntropy_AndEqualsItAtZeroEpsilon(self):
    model = _model("mlp")
    x, y = _data(model, 4)
    clean = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(x, training=False))
    self.assertAllClose(bounds.robust_cross_entropy(bounds.margin_bounds(model, x, y, 0., NUM_CLASSES)), clean,
                        atol=TOLERANCE)
    self.assertAllGreaterEqual(bounds.robust_cross_entropy(bounds.margin_bounds(model, x, y, .05, NUM_CLASSES)) -
                               clean, 0.)


if __name__ == "__main__":
  tf.test.main()
