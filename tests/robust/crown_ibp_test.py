"""Tests for tfrobprune.robust.crown_ibp: relaxations checked by hand, never looser than IBP when mixed, finite
gradients, one trace, unsupported layers named, and no attack point beating the bounds."""

from absl.testing import parameterized
import numpy as np

from bounds_test_utils import NUM_CLASSES, TOLERANCE, make_data, make_model
from bounds_test_utils import assert_traces_once_as_eps_and_beta_ramp, assert_weight_gradients_finite
from tfrobprune.keras_compat import keras, tf
# Tests name local results `crown_ibp` and `margins`; the modules are `crown_ibp_lib` and `margins_lib`.
from tfrobprune.robust import crown_ibp as crown_ibp_lib
from tfrobprune.robust.intervals import IntervalBounds
from tfrobprune.robust import margins as margins_lib

layers = keras.layers


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
    self.assertAllClose(margins_lib.margin_bounds(model, x, y, .5, 2), [[0., ibp_margin]])
    self.assertAllClose(crown_ibp_lib.crown_ibp_margin_bounds(model, x, y, .5, 2), [[0., crown_ibp_margin]])
    self.assertAllClose(crown_ibp_lib.tightest_margin_bounds(model, x, y, .5, 2), [[0., crown_ibp_margin]])

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
    self.assertAllClose(crown_ibp_lib.crown_ibp_margin_bounds(model, x, y, .5, 2), [[0., crown_ibp_margin]])
    self.assertAllClose(crown_ibp_lib.tightest_margin_bounds(model, x, y, .5, 2), [[0., 0.]])

  @parameterized.parameters("mlp", "cnn_small", "crown_chain")
  def testTightest_NeverLooserThanIbpAndMixesAtBetaEnds(self, name):
    model = make_model(name)
    x, y = make_data(model, 4)
    ibp = margins_lib.margin_bounds(model, x, y, .05, NUM_CLASSES)
    crown_ibp = crown_ibp_lib.crown_ibp_margin_bounds(model, x, y, .05, NUM_CLASSES)
    self.assertAllGreaterEqual(crown_ibp_lib.tightest_margin_bounds(model, x, y, .05, NUM_CLASSES) - ibp, 0.)
    self.assertAllClose(crown_ibp_lib.crown_ibp_training_margins(model, x, y, .05, NUM_CLASSES, 0.), ibp,
                        atol=TOLERANCE)
    self.assertAllClose(crown_ibp_lib.crown_ibp_training_margins(model, x, y, .05, NUM_CLASSES, 1.), crown_ibp)

  @parameterized.parameters("mlp", "cnn_small", "crown_chain")
  def testRawCrownIbp_TighterThanIbpOnMostMarginsOfSmallBalls(self, name):
    model = make_model(name)
    x, y = make_data(model, 8)
    eps = .01
    gap = (crown_ibp_lib.crown_ibp_margin_bounds(model, x, y, eps, NUM_CLASSES) -
           margins_lib.margin_bounds(model, x, y, eps, NUM_CLASSES)).numpy()[np.arange(NUM_CLASSES)[None] != y[:, None]]
    self.assertGreater(np.mean(gap > 0.), .9)

  @parameterized.parameters(("cnn_small", False), ("crown_chain", False), ("crown_chain", True))
  def testTrainingMargins_GradientsAreFiniteForAllWeights_EvenAtZeroEpsilon(self, name, in_tf_function):
    model = make_model(name)
    x, y = make_data(model, 4)
    assert_weight_gradients_finite(
        self, model, lambda eps: tf.reduce_mean(margins_lib.robust_cross_entropy(
            crown_ibp_lib.crown_ibp_training_margins(model, x, y, eps, NUM_CLASSES, .5))), in_tf_function)

  def testTrainingMargins_TracesOnceAsEpsilonAndBetaRamp(self):
    model = make_model("mlp")
    x, y = make_data(model, 4)
    assert_traces_once_as_eps_and_beta_ramp(
        self, lambda x, y, eps, beta: crown_ibp_lib.crown_ibp_training_margins(model, x, y, eps, NUM_CLASSES, beta),
        x, y)

  @parameterized.parameters(("residual", "residual_add", "Add"), ("conv_pool", "activation", "Activation"))
  def testUnsupportedModel_RaisesNamingTheLayer(self, name, layer_name, class_name):
    model = make_model(name)
    x, y = make_data(model, 2)
    with self.assertRaisesRegex(NotImplementedError, f"'{layer_name}[_0-9]*' \\({class_name}\\)"):
      crown_ibp_lib.crown_ibp_margin_bounds(model, x, y, .1, NUM_CLASSES)


class SoundnessTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters("mlp", "cnn_small", "crown_chain")
  def testPgdPoints_NeverBeatMarginBounds(self, name):
    model = make_model(name)
    x, y = make_data(model, 3)
    eps = .02
    found = _pgd_margins(model, x, y, IntervalBounds.from_epsilon(x, eps))
    for fn in (margins_lib.margin_bounds, crown_ibp_lib.crown_ibp_margin_bounds, crown_ibp_lib.tightest_margin_bounds):
      with self.subTest(fn.__name__):
        self.assertAllGreaterEqual(found - fn(model, x, y, eps, NUM_CLASSES).numpy() + TOLERANCE, 0.)


if __name__ == "__main__":
  tf.test.main()
