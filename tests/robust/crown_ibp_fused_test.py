"""Tests for tfrobprune.robust.crown_ibp_fused: the loss bound is sound (sampled and attacked points stay below it),
exact where it should be, never looser than IBP nor than CROWN-IBP's margins where their per-class bounds are
exact, differentiable, and traced once."""

from absl.testing import parameterized
import numpy as np

from bounds_test_utils import CROWN_MODELS, NUM_CLASSES, TOLERANCE, apply_per_example, make_data, make_model
from bounds_test_utils import assert_traces_once_as_eps_and_beta_ramp, assert_weight_gradients_finite, sample_box
from tfrobprune.keras_compat import keras, tf
from tfrobprune.robust import crown_ibp
from tfrobprune.robust import crown_ibp_fused
from tfrobprune.robust.intervals import IntervalBounds
from tfrobprune.robust import margins

layers = keras.layers


def _cross_entropy(logits, y):
  """Per-example cross-entropy of [..., K] logits with labels broadcast over the leading axes."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(np.broadcast_to(y, logits.shape[:-1]), logits).numpy()


def _pgd_cross_entropy(model, x, y, box, steps=15):
  """Signed-gradient ascent on the cross-entropy inside the box; the loss at the points found, [batch]."""
  points = box.lower + tf.random.stateless_uniform(box.lower.shape, (3, 4)) * (box.upper - box.lower)
  for _ in range(steps):
    with tf.GradientTape() as tape:
      tape.watch(points)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(points, training=False)))
    points = tf.clip_by_value(points + (box.upper - box.lower) / 8. * tf.sign(tape.gradient(loss, points)),
                              box.lower, box.upper)
  return _cross_entropy(model(points, training=False), y)


def _linear_model(num_classes=NUM_CLASSES, seed=0):
  """Flatten -> Dense(K): every per-class bound (IBP folded, CROWN-IBP) is the exact range of its margin."""
  keras.utils.set_random_seed(seed)
  return keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(num_classes)])


class SoundnessTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(*CROWN_MODELS)
  def testSampledAndAttackedPoints_NeverExceedTheLossBounds(self, name):
    model = make_model(name)
    x, y = make_data(model, 3)
    eps = .05
    box = IntervalBounds.from_epsilon(x, eps)
    fused, ibp, _ = (t.numpy() for t in crown_ibp_fused.loss_bounds(model, x, y, eps, NUM_CLASSES))
    sampled = _cross_entropy(apply_per_example(model, sample_box(box, 64)), y[:, None]).max(axis=1)
    attacked = _pgd_cross_entropy(model, x, y, box)
    for bound in (fused, ibp, np.minimum(fused, ibp)):
      self.assertAllGreaterEqual(bound - np.maximum(sampled, attacked) + TOLERANCE, 0.)

  @parameterized.parameters(*CROWN_MODELS)
  def testIbpMarginsAndLossBound_AreThoseOfMarginBounds(self, name):
    model = make_model(name)
    x, y = make_data(model, 4)
    _, ibp, ibp_margins = crown_ibp_fused.loss_bounds(model, x, y, .03, NUM_CLASSES)
    expected = margins.margin_bounds(model, x, y, .03, NUM_CLASSES)
    self.assertAllClose(ibp_margins, expected, atol=1e-4)
    self.assertAllClose(ibp, margins.robust_cross_entropy(expected), atol=1e-4)


class TightnessTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(*CROWN_MODELS)
  def testAtZeroEpsilon_IsTheCrossEntropy(self, name):
    model = make_model(name)
    x, y = make_data(model, 4)
    fused, ibp, _ = crown_ibp_fused.loss_bounds(model, x, y, 0., NUM_CLASSES)
    expected = _cross_entropy(model(x, training=False), y)
    self.assertAllClose(fused, expected, atol=1e-4)
    self.assertAllClose(ibp, expected, atol=1e-4)

  @parameterized.parameters(*CROWN_MODELS)
  def testTrainingLoss_NeverLooserThanIbp_AndIbpsAtBetaZero(self, name):
    model = make_model(name)
    x, y = make_data(model, 8)
    _, ibp, _ = crown_ibp_fused.loss_bounds(model, x, y, .02, NUM_CLASSES)
    at_one, _ = crown_ibp_fused.robust_cross_entropy(model, x, y, .02, NUM_CLASSES, 1.)
    at_zero, _ = crown_ibp_fused.robust_cross_entropy(model, x, y, .02, NUM_CLASSES, 0.)
    self.assertAllLessEqual(at_one - ibp, 1e-6)
    self.assertAllClose(at_zero, ibp)

  @parameterized.parameters(0.01, 0.05, 0.2)
  def testWherePerClassBoundsAreExact_NeverLooserThanCrownIbpMarginsAndOftenTighter(self, eps):
    # Each margin's CROWN-IBP bound is exact here, and the margin loss adds their worst cases, each at its own point;
    # the fused bound's chords lie below exp(upper bound) and are maximised at one point for all classes.
    model = _linear_model()
    x, y = make_data(model, 32)
    fused, _, _ = crown_ibp_fused.loss_bounds(model, x, y, eps, NUM_CLASSES)
    from_margins = margins.robust_cross_entropy(crown_ibp.crown_ibp_margin_bounds(model, x, y, eps, NUM_CLASSES))
    self.assertAllLessEqual(fused - from_margins, 1e-5)
    self.assertGreater(np.mean((from_margins - fused).numpy() > 1e-3), 0.5)

  def testTwoClassLinearModel_IsTheExactWorstCase(self):
    model = _linear_model(num_classes=2)
    x, y = make_data(model, 8)
    y = y % 2
    fused, _, _ = crown_ibp_fused.loss_bounds(model, x, y, .1, 2)
    worst = margins.robust_cross_entropy(crown_ibp.crown_ibp_margin_bounds(model, x, y, .1, 2))
    self.assertAllClose(fused, worst, atol=1e-5)


class TrainingTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(("cnn_small", False), ("crown_chain", True))
  def testGradients_AreFiniteForAllWeights_EvenAtZeroEpsilon(self, name, in_tf_function):
    model = make_model(name)
    x, y = make_data(model, 4)
    assert_weight_gradients_finite(
        self, model, lambda eps: tf.reduce_mean(
            crown_ibp_fused.robust_cross_entropy(model, x, y, eps, NUM_CLASSES, .5)[0]), in_tf_function)

  def testTracesOnceAsEpsilonAndBetaRamp(self):
    model = make_model("mlp")
    x, y = make_data(model, 4)
    assert_traces_once_as_eps_and_beta_ramp(
        self, lambda x, y, eps, beta: crown_ibp_fused.robust_cross_entropy(model, x, y, eps, NUM_CLASSES, beta), x, y)

  def testUnsupportedModel_RaisesNamingTheLayer(self):
    model = make_model("residual")
    x, y = make_data(model, 2)
    with self.assertRaisesRegex(NotImplementedError, "'residual_add[_0-9]*' \\(Add\\)"):
      crown_ibp_fused.loss_bounds(model, x, y, .1, NUM_CLASSES)


if __name__ == "__main__":
  tf.test.main()
