"""Tests for tfrobprune.robust.objectives: loss values on hand-checkable linear models, and the one-call-per-step rule."""

import gc
import weakref

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune.robust import bound_registry
from tfrobprune.robust import margins
from tfrobprune.robust import objectives

EPS = 0.1


def _linear_model(weights, bias):
  """Flatten -> Dense(2) on 1x2x1 images, with the given kernel (2x2) and bias."""
  model = keras.Sequential([keras.Input((1, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
  model.layers[-1].set_weights([np.asarray(weights, np.float32), np.asarray(bias, np.float32)])
  return model


def _softplus(value):
  return float(np.log1p(np.exp(value)))


class CallCounter(keras.layers.Layer):
  """Identity layer that counts calls in training mode (what advances tfmot's pruning step)."""

  def __init__(self):
    super().__init__()
    self.training_calls = tf.Variable(0, trainable=False)

  def call(self, inputs, training=None):
    if training:
      self.training_calls.assign_add(1)
    return inputs


bound_registry.register_layer(CallCounter, lambda layer: [])  # an identity for interval bounds


class ObjectiveTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # Logit difference (class 1 - class 0) = x1 - x0 + 0.05; both examples have label 1.
    self.model = _linear_model([[0.0, -1.0], [0.0, 1.0]], [0.0, 0.05])
    self.x = tf.constant([[[[0.5], [0.5]]], [[[0.4], [0.6]]]], tf.float32)
    self.y = tf.constant([1, 1], tf.int64)
    margins = np.array([0.05, 0.25])  # logit_1 - logit_0 per example
    self.natural_loss = np.mean([_softplus(-m) for m in margins])
    # Worst case in the L-inf ball moves each pixel by eps against the margin: margin - eps * ||w1 - w0||_1.
    self.robust_loss = np.mean([_softplus(-(m - EPS * 2.0)) for m in margins])

  def _config(self, name, **kwargs):
    defaults = dict(eps=EPS, pgd_steps=20, pgd_step_size=0.02, rand_init=False) if name != "natural" else {}
    return objectives.ObjectiveConfig(name=name, **dict(defaults, **kwargs))

  def testNaturalLossIsCrossEntropy(self):
    loss, metrics = objectives.make_objective(self._config("natural"), 2)(self.model, self.x, self.y, 0)
    self.assertAllClose(loss, self.natural_loss, atol=1e-5)
    self.assertAllClose(metrics["natural_acc"], 1.0)

  def testPgdLossReachesTheWorstCaseOfALinearModel(self):
    loss, metrics = objectives.make_objective(self._config("pgd"), 2)(self.model, self.x, self.y, 0)
    self.assertAllClose(loss, self.robust_loss, atol=1e-4)
    self.assertAllClose(metrics["robust_acc"], 0.5)  # 0.05 - 0.2 < 0 flips; 0.25 - 0.2 > 0 holds

  def testPgdMixWeightsNaturalAndRobust(self):
    loss, metrics = objectives.make_objective(self._config("pgd", robust_weight=0.25), 2)(
        self.model, self.x, self.y, 0)
    self.assertAllClose(loss, 0.75 * self.natural_loss + 0.25 * self.robust_loss, atol=1e-4)
    self.assertAllClose(metrics["natural_loss"], self.natural_loss, atol=1e-5)

  def testEpsilonRampStartsAtZeroRobustLossEqualsNatural(self):
    config = self._config("pgd", eps_warmup_steps=5, eps_ramp_steps=10)
    objective = objectives.make_objective(config, 2)
    loss, metrics = objective(self.model, self.x, self.y, tf.constant(0, tf.int64))
    self.assertAllClose(metrics["eps"], 0.0)
    self.assertAllClose(loss, self.natural_loss, atol=1e-5)

  def testTradesWithZeroBetaIsNaturalLoss(self):
    config = self._config("trades", trades_beta=0.0)
    loss, _ = objectives.make_objective(config, 2)(self.model, self.x, self.y, 0)
    self.assertAllClose(loss, self.natural_loss, atol=1e-5)

  def testTradesKlTermIsPositiveAndBounded(self):
    config = self._config("trades", trades_beta=1.0, rand_init=True)
    _, metrics = objectives.make_objective(config, 2)(self.model, self.x, self.y, 0)
    self.assertGreater(float(metrics["robust_loss"]), 0.0)
    self.assertLess(float(metrics["robust_loss"]), 0.1)

  @parameterized.parameters(("ibp",), ("crown_ibp",), ("crown_ibp", "fused"))
  def testBoundObjectiveOnALinearModelIsExactWorstCase(self, name, bound="margins"):
    # For a linear model the interval bound of the margin is exact, so the verified loss equals PGD's optimum (and
    # the fused bound's chord of exp meets exp at the worst case, the interval's end, with two classes).
    config = self._config(name, robust_weight=1.0, crown_ibp_bound=bound)
    objective = objectives.make_objective(config, 2)
    loss, metrics = objective(self.model, self.x, self.y, tf.constant(10 ** 6, tf.int64))
    self.assertAllClose(metrics["kappa"], 0.0)
    self.assertAllClose(metrics["robust_loss"], self.robust_loss, atol=1e-4)
    self.assertAllClose(loss, self.robust_loss, atol=1e-4)
    self.assertAllClose(metrics["verified_acc"], 0.5)

  @parameterized.parameters((1.0, 0.0), (0.5, 0.5))
  def testIbpGradient_IsTheKappaMixOfNaturalAndRobustGradients(self, robust_weight, kappa):
    # With kappa 0 the clean pass is cut off from the gradient (it only feeds the metrics); the gradient must be
    # the robust loss's alone, and with kappa > 0 the mix.
    objective = objectives.make_objective(self._config("ibp", robust_weight=robust_weight), 2)
    step = tf.constant(10 ** 6, tf.int64)
    variables = self.model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
      loss, metrics = tf.function(lambda x, y: objective(self.model, x, y, step))(self.x, self.y)
      natural = objectives._cross_entropy(self.y, self.model(self.x, training=False))
      robust = tf.reduce_mean(margins.robust_cross_entropy(margins.margin_bounds(self.model, self.x, self.y, EPS, 2)))
      expected = kappa * natural + (1 - kappa) * robust
    self.assertAllClose(metrics["kappa"], kappa)
    self.assertAllClose(metrics["natural_loss"], self.natural_loss, atol=1e-5)
    for got, want in zip(tape.gradient(loss, variables), tape.gradient(expected, variables)):
      self.assertAllClose(got, want, atol=1e-5)

  @parameterized.parameters(("natural",), ("pgd",), ("trades",), ("ibp",), ("crown_ibp",), ("nfgsm",), ("fgsm_rs",),
                            ("fgsm_rs", dict(gradalign_weight=0.2)), ("fgsm", dict(gradalign_weight=0.2)),
                            ("crown_ibp", dict(crown_ibp_bound="fused")))
  def testCallsTheModelInTrainingModeOncePerStep(self, name, extra=None):
    counter = CallCounter()
    model = keras.Sequential([keras.Input((1, 2, 1)), counter, keras.layers.Flatten(), keras.layers.Dense(2)])
    objective = objectives.make_objective(self._config(name, **(extra or {})), 2)
    tf.function(lambda x, y: objective(model, x, y, tf.constant(0, tf.int64)))(self.x, self.y)
    self.assertEqual(int(counter.training_calls.numpy()), 1)

  @parameterized.parameters(
      dict(name="pgd", eps=0.0, match="needs eps > 0"),
      dict(name="pgd", eps=1.5, match="eps must be in"),
      dict(name="ibp", eps=0.1, norm="l2", match="L-inf"),
      dict(name="sam", eps=0.1, match="objective must be one of"),
      dict(name="pgd", eps=0.1, pgd_steps=0, match="pgd_steps"),
      dict(name="pgd", eps=0.1, robust_weight=1.5, match="robust_weight"),
  )
  def testConfigRejectsBadValues(self, match, **kwargs):
    with self.assertRaisesRegex(ValueError, match):
      objectives.ObjectiveConfig(**kwargs)

  def testAttackFunctionsAreCachedPerModelAndReleasedWithIt(self):
    objective = objectives.make_objective(self._config("pgd", pgd_steps=2), 2)
    model = _linear_model([[0.0, -1.0], [0.0, 1.0]], [0.0, 0.05])
    objective(model, self.x, self.y, 0)
    model_fn = objective.inference_fn(model)
    self.assertIs(objective.inference_fn(model), model_fn)  # built once per model
    model_ref, model_fn_ref = weakref.ref(model), weakref.ref(model_fn)
    stand_in = lambda x, target=model: target(x, training=False)  # noqa: E731
    other = _linear_model([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    objective.attack_through(other, stand_in)
    self.assertIs(objective.inference_fn(other), stand_in)
    del model, model_fn, stand_in
    gc.collect()
    self.assertIsNotNone(model_ref(), "the stand-in of a live model keeps what it calls")
    del other
    gc.collect()
    self.assertIsNone(model_ref())
    self.assertIsNone(model_fn_ref())

  @parameterized.parameters("ibp", "crown_ibp")
  def testBoundsOfABatchNormModelAreOfTheNetworkTheTrainingPassRuns(self, name):
    # Moving statistics far from this batch's: bounds by them would describe another network than the step trains.
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((1, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(4),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(), keras.layers.Dense(2)])
    model.get_layer("bn").set_weights([np.full(4, 1.5), np.full(4, 0.2), np.full(4, 3.0), np.full(4, 9.0)])
    x = tf.constant(np.random.default_rng(0).uniform(size=(6, 1, 2, 1)), tf.float32)
    y = tf.constant([0, 1, 0, 1, 1, 0], tf.int64)
    objective = objectives.make_objective(self._config(name), 2)

    def logit_margins(logits):  # logit_y - logit_j, the margins' value at eps 0
      return tf.gather(logits, y, batch_dims=1)[:, None] - logits

    at_zero = objective.margins(model, x, y, 0.0, 0)
    inference = logit_margins(model(x, training=False))
    training = logit_margins(model(x, training=True))
    self.assertGreater(float(tf.reduce_max(tf.abs(training - inference))), 0.1)
    self.assertAllClose(at_zero, training, atol=1e-5)
    model.get_layer("bn").trainable = False  # frozen (as when scores are learned): inference mode, moving statistics
    self.assertAllClose(objective.margins(model, x, y, 0.0, 0), logit_margins(model(x, training=True)), atol=1e-5)

  def testDefaultStepSizeFollowsMadry(self):
    self.assertAllClose(objectives.ObjectiveConfig(name="pgd", eps=0.1, pgd_steps=10).step_size, 0.025)


if __name__ == "__main__":
  absltest.main()
