"""Tests for tfrobprune.robust.single_step: where N-FGSM and FGSM-RS may go, what GradAlign measures, and the
single-step objectives' one training-mode call (tfmot's pruning step advances once per step)."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.prune import drivers
from tfrobprune.prune import magnitude
from tfrobprune.prune import pruning_config
from tfrobprune.robust import attacks
from tfrobprune.robust import objectives
from tfrobprune.robust import single_step
from tfrobprune.train import training

EPS = 0.1


def _data(batch=64, shape=(8, 8, 1), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0., 1., (batch,) + shape).astype(np.float32)
  x[: batch // 4] = np.round(x[: batch // 4])  # pixels at 0 and 1, where clipping to the pixel range matters
  return tf.constant(x), tf.constant(rng.integers(0, 10, batch), tf.int64)


def _binary_linear_model():
  """Logits (x . w0, x . w1): the input gradient of the cross-entropy is (p1 - y)(w1 - w0), one direction."""
  model = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
  model.layers[-1].set_weights([np.array([[1., -2.], [0.5, 3.], [-1., 1.], [2., 0.]], np.float32),
                                np.array([0.1, -0.2], np.float32)])
  return model


def _linear_case(batch=16):
  """Images for `_binary_linear_model`, labels 0 and 1, and each example's ascent direction sign(grad_x CE): the
  gradient is (p1 - y)(w1 - w0), so sign(w1 - w0) for label 0 and its opposite for label 1."""
  rng = np.random.default_rng(3)
  x = rng.uniform(0., 1., (batch, 2, 2, 1)).astype(np.float32)
  y = np.arange(batch) % 2
  weights = _binary_linear_model().layers[-1].get_weights()[0]
  direction = np.sign(weights[:, 1] - weights[:, 0]).reshape(1, 2, 2, 1) * np.where(y == 0, 1., -1.)[:, None, None,
                                                                                                       None]
  return x, tf.constant(y, tf.int64), direction.astype(np.float32)


class PerturbationTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.build_model("cnn_small", (8, 8, 1), 10, seed=0)
    cls.model_fn = staticmethod(attacks.inference_fn(cls.model))

  @parameterized.parameters((2.0, 1.0), (2.0, 1.25), (1.0, 0.5))
  def testNfgsm_StaysWithinNoisePlusStepAndThePixelRange_NotTheEpsBall(self, noise, step):
    x, y = _data()
    x_adv = single_step.nfgsm(self.model_fn, x, y, EPS, step * EPS, noise, seed=tf.constant([1, 2], tf.int64))
    distance = np.abs((x_adv - x).numpy())
    self.assertLessEqual(distance.max(), (noise + step) * EPS + 1e-6)
    self.assertGreater(distance.max(), 1.2 * EPS)  # no projection back to the eps ball
    self.assertAllInRange(x_adv, 0., 1.)

  def testFgsmRs_StaysInTheEpsBallAndThePixelRange(self):
    x, y = _data()
    x_adv = single_step.fgsm_rs(self.model_fn, x, y, EPS, 1.25 * EPS, seed=tf.constant([1, 2], tf.int64))
    distance = np.abs((x_adv - x).numpy())
    self.assertLessEqual(distance.max(), EPS + 1e-6)
    self.assertGreater(np.mean(distance > 0.99 * EPS), 0.3)  # the 1.25 eps step reaches the ball's faces
    self.assertAllInRange(x_adv, 0., 1.)

  def testNfgsm_IsOneSignedStepFromTheClippedNoise_Exactly(self):
    x, y, direction = _linear_case()
    seed = tf.constant([5, 6], tf.int64)
    x_adv = single_step.nfgsm(attacks.inference_fn(_binary_linear_model()), x, y, EPS, EPS, noise=2.0, seed=seed)
    start = np.clip(x + attacks.random_start(tf.shape(x), "linf", 2 * EPS, seed).numpy(), 0., 1.)
    self.assertAllClose(x_adv, np.clip(start + EPS * direction, 0., 1.))
    self.assertGreater(np.abs(x_adv - x).max(), 2 * EPS)  # the noise alone goes past the eps ball

  def testFgsmRs_IsAOnePointTwoFiveEpsStepFromAStartInTheBall_ProjectedBack_Exactly(self):
    x, y, direction = _linear_case()
    seed = tf.constant([7, 8], tf.int64)
    x_adv = single_step.fgsm_rs(attacks.inference_fn(_binary_linear_model()), x, y, EPS, 1.25 * EPS, seed=seed)
    start = np.clip(x + attacks.random_start(tf.shape(x), "linf", EPS, seed).numpy(), 0., 1.)
    stepped = np.clip(start + 1.25 * EPS * direction, 0., 1.)
    self.assertAllClose(x_adv, np.clip(x + np.clip(stepped - x, -EPS, EPS), 0., 1.))

  def testFgsm_IsOneSignedStepFromTheCleanImage_ProjectedBack_Exactly(self):
    x, y, direction = _linear_case()
    model_fn = attacks.inference_fn(_binary_linear_model())
    self.assertAllClose(single_step.fgsm(model_fn, x, y, EPS, EPS), np.clip(x + EPS * direction, 0., 1.))
    # GradAlign's recipe, a 1.25 eps step from the clean image, projects back to the same point.
    self.assertAllClose(single_step.fgsm(model_fn, x, y, EPS, 1.25 * EPS), np.clip(x + EPS * direction, 0., 1.))

  def testFgsmObjective_TrainsOnFgsmPoints(self):
    x, y, direction = _linear_case()
    model = _binary_linear_model()
    objective = objectives.make_objective(objectives.ObjectiveConfig(name="fgsm", eps=EPS, robust_weight=1.0), 2)
    self.assertAllClose(objective.adversarial_examples(model, tf.constant(x), y, EPS, 0),
                        np.clip(x + EPS * direction, 0., 1.))

  def testNfgsmWithoutNoise_IsFgsm(self):
    x, y = _data()
    self.assertAllClose(single_step.nfgsm(self.model_fn, x, y, EPS, EPS, noise=0.),
                        attacks.fgsm(self.model_fn, x, y, EPS))

  def testSameSeed_SameNoise_OtherSeed_OtherNoise(self):
    x, y = _data()
    run = lambda seed: single_step.nfgsm(self.model_fn, x, y, EPS, EPS, seed=tf.constant(seed, tf.int64)).numpy()
    self.assertAllEqual(run([3, 4]), run([3, 4]))
    self.assertNotAllClose(run([3, 4]), run([3, 5]))

  def testNegativeStep_Raises(self):
    x, y = _data(4)
    with self.assertRaisesRegex(ValueError, "step_size must be >= 0"):
      single_step.nfgsm(self.model_fn, x, y, EPS, -0.1)


class GradAlignTest(tf.test.TestCase):

  def testPenalty_IsZeroForABinaryLinearModel(self):
    model = _binary_linear_model()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0., 1., (16, 2, 2, 1)).astype(np.float32), rng.integers(0, 2, 16)
    penalty = single_step.gradalign_penalty(attacks.inference_fn(model), x, y, 0.3, seed=tf.constant([0, 1]))
    self.assertAllClose(penalty, 0., atol=1e-6)

  def testPenalty_LeavesOutExamplesWithAZeroGradient(self):
    # A ReLU unit that is off on the whole ball around a dark image: there the input gradient is exactly 0.
    model = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(1, activation="relu"),
                              keras.layers.Dense(2)])
    model.layers[-2].set_weights([np.ones((4, 1), np.float32), np.array([-2.], np.float32)])
    model.layers[-1].set_weights([np.array([[1., -1.]], np.float32), np.zeros(2, np.float32)])
    rng = np.random.default_rng(0)
    bright = rng.uniform(0.8, 1., (8, 2, 2, 1)).astype(np.float32)
    dark = np.zeros((8, 2, 2, 1), np.float32)
    y = np.zeros(16, np.int64)
    seed = tf.constant([0, 1])
    mixed = single_step.gradalign_penalty(attacks.inference_fn(model), np.concatenate([bright, dark]), y, 0.1, seed)
    self.assertAllClose(mixed, 0., atol=1e-6)  # the bright examples' gradients are aligned; the dark ones don't count
    only_dark = single_step.gradalign_penalty(attacks.inference_fn(model), dark, y[:8], 0.1, seed)
    self.assertEqual(float(only_dark), 0.)

  def testPenalty_IsPositiveAndDoublyDifferentiable_ThroughThePolyphaseGradient(self):
    model = models.build_model("cnn_small", (8, 8, 1), 10, seed=0)
    x, y = _data(16)

    def gradients(model_fn):
      with tf.GradientTape() as tape:
        penalty = single_step.gradalign_penalty(model_fn, x, y, 0.3, seed=tf.constant([0, 1]))
      return penalty, tape.gradient(penalty, model.trainable_variables)

    penalty, through_attack_fn = gradients(attacks.inference_fn(model))
    plain_penalty, plain = gradients(lambda z: model(z, training=False))
    self.assertBetween(float(penalty), 1e-3, 2.)
    self.assertAllClose(penalty, plain_penalty, atol=1e-6)
    for ours, reference in zip(through_attack_fn, plain):
      self.assertAllClose(ours, reference, atol=1e-6)
    self.assertGreater(max(float(tf.reduce_max(tf.abs(g))) for g in plain), 0.)


class SingleStepObjectiveTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(("nfgsm", 0.), ("fgsm_rs", 0.), ("fgsm_rs", 0.5), ("fgsm", 0.5))
  def testTrainingSteps_AdvanceThePruningStepOncePerStep(self, name, gradalign_weight):
    model = models.build_model("cnn_small", (8, 8, 1), 10, seed=0)
    wrapped = magnitude.prune_model(model, pruning_config.PruningConfig(target_sparsity=0.5, begin_step=0,
                                                                         end_step=4, frequency=1))
    config = objectives.ObjectiveConfig(name=name, eps=EPS, gradalign_weight=gradalign_weight)
    trainer = training.Trainer(wrapped, objectives.make_objective(config, 10), keras.optimizers.Adam(1e-3))
    driver = drivers.PruningStepDriver(wrapped)
    x, y = _data(32)
    driver.on_train_begin()
    for step in range(3):
      driver.on_step_begin(step)
      metrics = trainer.train_step(x, y)
      self.assertTrue(np.isfinite(float(metrics["loss"])))
    steps = {int(layer.pruning_step.numpy()) for layer in wrapped.layers if hasattr(layer, "pruning_step")}
    self.assertEqual(steps, {3})
    self.assertEqual("gradalign" in metrics, gradalign_weight > 0)

  def testDefaultStepSizes_AreTheMethods(self):
    self.assertAllClose(objectives.ObjectiveConfig(name="nfgsm", eps=0.1).step_size, 0.1)
    self.assertAllClose(objectives.ObjectiveConfig(name="fgsm_rs", eps=0.1).step_size, 0.125)
    self.assertAllClose(objectives.ObjectiveConfig(name="fgsm", eps=0.1).step_size, 0.1)
    self.assertAllClose(objectives.ObjectiveConfig(name="nfgsm", eps=0.1, pgd_step_size=0.125).step_size, 0.125)

  def testConfig_RejectsGradAlignOutsideSingleStepObjectivesAndL2(self):
    with self.assertRaisesRegex(ValueError, "gradalign_weight applies to"):
      objectives.ObjectiveConfig(name="pgd", eps=0.1, gradalign_weight=0.1)
    with self.assertRaisesRegex(ValueError, "norm must be 'linf'"):
      objectives.ObjectiveConfig(name="nfgsm", eps=0.1, norm="l2")


if __name__ == "__main__":
  absltest.main()
