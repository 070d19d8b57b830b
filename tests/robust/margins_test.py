"""Tests for tfrobprune.robust.margins: the folded specification against naive and pairwise bounds, exactness at
zero epsilon, argument checks, soundness on sampled points, and the robust cross-entropy."""

from absl.testing import parameterized
import numpy as np

from bounds_test_utils import (CROWN_MODELS, NUM_CLASSES, TOLERANCE, apply_per_example, make_data,
                                            make_model, sample_box)
from tfrobprune.keras_compat import keras, tf
from tfrobprune.robust import bound_registry
from tfrobprune.robust import crown_ibp
from tfrobprune.robust import interval_propagation
from tfrobprune.robust.intervals import IntervalBounds
# Tests name local results `margins`; the module is `margins_lib`.
from tfrobprune.robust import margins as margins_lib

layers = keras.layers


def _margins(logits, y):
  """logit_y - logit_j for [..., K] logits and labels broadcast against them."""
  return np.take_along_axis(logits, y[..., None], axis=-1) - logits


class MarginBoundsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters("mlp", "cnn_small", "conv_pool", "residual")
  def testFoldedSpec_NeverLooserThanNaiveLogitDifference(self, name):
    model = make_model(name)
    x, y = make_data(model, 4)
    logits = interval_propagation.propagate_bounds(model, IntervalBounds.from_epsilon(x, .05))
    naive = np.take_along_axis(logits.lower.numpy(), y[:, None], axis=1) - logits.upper.numpy()
    folded = margins_lib.margin_bounds(model, x, y, .05, NUM_CLASSES).numpy()
    others = np.arange(NUM_CLASSES)[None] != y[:, None]
    self.assertAllGreaterEqual(folded[others] - naive[others], -TOLERANCE)
    self.assertTrue(np.any(folded[others] > naive[others] + TOLERANCE))

  @parameterized.parameters("mlp", "cnn_small")
  def testPairwiseFinalDense_EqualsFoldingTheSpecInValueAndGradient(self, name):
    model = make_model(name)
    x, y = make_data(model, 6)
    last = model.layers[-1]
    with tf.GradientTape(persistent=True) as tape:
      penultimate = interval_propagation.propagate_bounds(model, IntervalBounds.from_epsilon(x, .05),
                                                          stop_before_last=True)
      pairwise = margins_lib._pairwise_margins(last.kernel, last.bias, penultimate, tf.constant(y, tf.int32))
      folded = margins_lib._folded_margins(bound_registry.layer_steps(last), penultimate,
                                           margins_lib.margin_spec(y, NUM_CLASSES))
      losses = [tf.reduce_sum(tf.nn.softplus(-margins) * np.arange(1, NUM_CLASSES + 1)) for margins in (pairwise,
                                                                                                         folded)]
    self.assertAllClose(pairwise, folded, atol=TOLERANCE, rtol=1e-5)
    self.assertAllClose(margins_lib.margin_bounds(model, x, y, .05, NUM_CLASSES), folded, atol=TOLERANCE, rtol=1e-5)
    for fast, reference in zip(*(tape.gradient(loss, model.trainable_variables) for loss in losses)):
      # Summation order differs: compare to the gradient's own scale (the random models' margins are large).
      self.assertAllClose(fast, reference, atol=1e-6 * float(tf.reduce_max(tf.abs(reference))), rtol=1e-3)

  def testLabelEntry_IsZero(self):
    model = make_model("mlp")
    x, y = make_data(model, 5)
    for fn in (margins_lib.margin_bounds, crown_ibp.crown_ibp_margin_bounds, crown_ibp.tightest_margin_bounds):
      self.assertAllEqual(np.take_along_axis(fn(model, x, y, .1, NUM_CLASSES).numpy(), y[:, None], axis=1),
                          np.zeros([5, 1]))

  @parameterized.parameters("mlp", "cnn_small", "crown_chain")
  def testZeroEpsilon_MarginBoundsAreTheMargins(self, name):
    model = make_model(name)
    x, y = make_data(model, 3)
    expected = _margins(model(x, training=False).numpy(), y)
    for fn in (margins_lib.margin_bounds, crown_ibp.crown_ibp_margin_bounds):
      self.assertAllClose(fn(model, x, y, 0., NUM_CLASSES), expected, atol=TOLERANCE, msg=fn.__name__)

  def testWrongNumClasses_RaisesValueError(self):
    model = make_model("mlp")
    x, y = make_data(model, 2)
    with self.assertRaisesRegex(ValueError, "num_classes=3"):
      margins_lib.margin_bounds(model, x, y % 3, .1, 3)

  def testNonAffineLastLayer_RaisesValueError(self):
    model = keras.Sequential([keras.Input((2,)), layers.Dense(2), layers.ReLU(name="last_relu")])
    with self.assertRaisesRegex(ValueError, "last_relu"):
      margins_lib.margin_bounds(model, np.zeros([1, 2]), np.zeros([1], np.int64), .1, 2)

  def testMergeAsLastLayer_RaisesValueError(self):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, layers.Add(name="last_add")([layers.Dense(2)(inputs), layers.Dense(2)(inputs)]))
    with self.assertRaisesRegex(ValueError, "last_add"):
      margins_lib.margin_bounds(model, np.zeros([1, 2], np.float32), np.zeros([1], np.int64), .1, 2)

  def testMarginBounds_TracesOnceInTfFunction(self):
    model = make_model("cnn_small")
    compiled = tf.function(lambda x, y, eps: margins_lib.margin_bounds(model, x, y, eps, NUM_CLASSES))
    for seed in (1, 2):
      x, y = make_data(model, 4, seed)
      compiled(tf.constant(x), tf.constant(y), tf.constant(.01 * seed))
    self.assertEqual(compiled.experimental_get_tracing_count(), 1)


class SoundnessTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters("mlp", "cnn_small", "conv_pool", "crown_chain", "residual")
  def testRandomModel_SampledMarginsNeverBelowMarginBounds(self, name):
    model = make_model(name)
    x, y = make_data(model, 4)
    margins = _margins(apply_per_example(model, sample_box(IntervalBounds.from_epsilon(x, .05), 64)), y[:, None])
    lower_bounds = {"ibp": margins_lib.margin_bounds(model, x, y, .05, NUM_CLASSES)}
    if name in CROWN_MODELS:
      lower_bounds["crown_ibp"] = crown_ibp.crown_ibp_margin_bounds(model, x, y, .05, NUM_CLASSES)
    for method, lower in lower_bounds.items():
      with self.subTest(method):
        self.assertAllGreaterEqual(margins - lower.numpy()[:, None] + TOLERANCE, 0.)


class RobustCrossEntropyTest(tf.test.TestCase):

  def testEqualsSoftmaxCrossEntropyOfNegatedMargins(self):
    model = make_model("mlp")
    x, y = make_data(model, 4)
    margins = margins_lib.margin_bounds(model, x, y, .05, NUM_CLASSES)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=-margins)
    self.assertAllClose(margins_lib.robust_cross_entropy(margins), expected)

  def testUpperBoundsCleanCrossEntropy_AndEqualsItAtZeroEpsilon(self):
    model = make_model("mlp")
    x, y = make_data(model, 4)
    clean = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(x, training=False))
    self.assertAllClose(margins_lib.robust_cross_entropy(margins_lib.margin_bounds(model, x, y, 0., NUM_CLASSES)),
                        clean, atol=TOLERANCE)
    self.assertAllGreaterEqual(
        margins_lib.robust_cross_entropy(margins_lib.margin_bounds(model, x, y, .05, NUM_CLASSES)) - clean, 0.)


if __name__ == "__main__":
  tf.test.main()
