"""Tests for tfrobprune.evaluate.evaluation: the attacks find the robustness a model is known to have by hand, and
accuracies on a trained model are ordered and reproducible."""

from absl.testing import absltest
import numpy as np

from tfrobprune.evaluate import evaluation
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import objectives
from tfrobprune.train import training


def _data(n, seed):
  """Two classes told apart by mean brightness of 6x6 images."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n).astype(np.int64)
  x = np.clip(rng.normal(0.35 + 0.3 * y[:, None, None, None], 0.1, (n, 6, 6, 1)), 0, 1).astype(np.float32)
  return x, y


def _brightness_model():
  """Logits (0, 2 * (mean pixel - 0.5)): class 1 iff the mean pixel of a 6x6 image exceeds 0.5. An L-inf
  perturbation of size eps moves the mean by at most eps, so an image is robust exactly when |mean - 0.5| > eps."""
  model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
  kernel = np.stack([np.full(36, -1 / 36), np.full(36, 1 / 36)], axis=1)
  model.layers[-1].set_weights([kernel.astype(np.float32), np.array([0.5, -0.5], np.float32)])
  return model


def _constant_images(brightness):
  """Two examples per class: uniform images of brightness (class 0, class 1), labels 0, 0, 1, 1."""
  values = np.repeat(np.asarray(brightness, np.float32), 2)
  return np.broadcast_to(values[:, None, None, None], (4, 6, 6, 1)).copy(), np.array([0, 0, 1, 1], np.int64)


class KnownRobustnessTest(tf.test.TestCase):
  """Models whose robustness is known by hand: the attacks must find exactly that."""

  def _evaluate(self, brightness):
    config = evaluation.EvalConfig(eps=0.1, pgd_steps=5, pgd_restarts=2, batch_size=4, verified=True)
    return evaluation.evaluate_model(_brightness_model(), *_constant_images(brightness), config, 2)

  def testAttacksFoolEveryExampleWithinEpsOfTheDecisionBoundary(self):
    results = self._evaluate((0.45, 0.55))  # 0.05 from the boundary, eps 0.1
    self.assertEqual(results["benign_acc"], 1.0)
    self.assertEqual(results["pgd_acc"], 0.0)
    self.assertEqual(results["fgsm_acc"], 0.0)
    self.assertEqual(results["verified_acc"], 0.0)

  def testNoAttackFoolsExamplesFartherThanEpsFromTheBoundary(self):
    results = self._evaluate((0.3, 0.7))  # 0.2 from the boundary, eps 0.1
    self.assertEqual(results, dict(results, benign_acc=1.0, pgd_acc=1.0, fgsm_acc=1.0, verified_acc=1.0,
                                   verified_acc_crown=1.0))


class EvaluateModelTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.build_model("mlp", (6, 6, 1), 2, seed=0)
    config = objectives.ObjectiveConfig(name="ibp", eps=0.03, robust_weight=0.5, eps_ramp_steps=64)
    trainer = training.Trainer(cls.model, objectives.make_objective(config, 2),
                               training.make_optimizer(training.TrainConfig(epochs=8, learning_rate=3e-3), 16))
    x, y = _data(512, 0)
    training.train(trainer, lambda epoch: tf.data.Dataset.from_tensor_slices((x, y)).batch(32), 8, progress=False)
    cls.x, cls.y = _data(200, 1)

  def _config(self, **kwargs):
    return evaluation.EvalConfig(**dict(dict(eps=0.03, pgd_steps=10, pgd_restarts=2, batch_size=64), **kwargs))

  def testBenignAccuracyMatchesPredictions(self):
    results = evaluation.evaluate_model(self.model, self.x, self.y, self._config(fgsm=False), 2)
    expected = np.mean(np.argmax(self.model(self.x, training=False), axis=1) == self.y)
    self.assertAlmostEqual(results["benign_acc"], expected)
    self.assertEqual(results["examples"], 200)
    self.assertNotIn("fgsm_acc", results)

  def testVerifiedAtMostPgdAtMostFgsmAndBenign(self):
    results = evaluation.evaluate_model(self.model, self.x, self.y, self._config(verified=True), 2)
    self.assertGreater(results["benign_acc"], 0.9)
    self.assertLessEqual(results["verified_acc"], results["pgd_acc"])
    self.assertLessEqual(results["verified_acc_crown"], results["pgd_acc"])
    self.assertLessEqual(results["verified_acc"], results["verified_acc_crown"] + 1e-9)
    self.assertLessEqual(results["pgd_acc"], results["fgsm_acc"] + 0.02)
    self.assertLessEqual(results["fgsm_acc"], results["benign_acc"])
    self.assertGreater(results["verified_acc"], 0.0)

  def testSameSeedSameFiguresAndAdversarialExamplesStayInTheBall(self):
    config = self._config(eps=0.15, max_examples=100)  # beyond the trained eps: some examples are fooled, some not
    first, x_adv = evaluation.evaluate_model(self.model, self.x, self.y, config, 2, return_adversarial=True, seed=3)
    second = evaluation.evaluate_model(self.model, self.x, self.y, config, 2, seed=3)
    self.assertEqual(first, second)
    self.assertEqual(x_adv.shape, (100, 6, 6, 1))
    x_eval, y_eval = evaluation.evaluation_examples(self.x, self.y, config, seed=3)  # the examples it attacked
    self.assertLessEqual(np.max(np.abs(x_adv - x_eval)), 0.15 + 1e-6)
    robust = np.argmax(self.model(x_adv, training=False), axis=1) == y_eval
    # Each adversarial example is misclassified exactly when the example was counted as not robust.
    self.assertEqual(robust.mean(), first["pgd_acc"])
    self.assertBetween(first["pgd_acc"], 0.1, first["benign_acc"] - 0.1)  # neither all fooled nor none

  def testMaxExamplesTakesEachClassShareOfAClassOrderedSplit(self):
    order = np.argsort(self.y, kind="stable")  # all of class 0 first, as a class-ordered loader returns them
    x_sorted, y_sorted = self.x[order], self.y[order]
    config = self._config(max_examples=40)
    _, y_eval = evaluation.evaluation_examples(x_sorted, y_sorted, config, seed=0)
    expected = np.bincount(y_sorted) * 40 / len(y_sorted)
    np.testing.assert_allclose(np.bincount(y_eval, minlength=2), expected, atol=1)
    self.assertEqual(evaluation.evaluate_model(self.model, x_sorted, y_sorted, config, 2, seed=0)["examples"], 40)

  def testConfigRejectsBadValues(self):
    for kwargs, match in ((dict(eps=-1.0), "eval eps"), (dict(pgd_restarts=0), "pgd_steps and pgd_restarts"),
                          (dict(norm="l2", verified=True), "L-inf"), (dict(batch_size=0), "batch_size")):
      with self.assertRaisesRegex(ValueError, match):
        evaluation.EvalConfig(**kwargs)


if __name__ == "__main__":
  absltest.main()
