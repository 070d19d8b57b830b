"""Tests for tfrobprune.evaluate.evaluation: the attacks find the robustness a model is known to have by hand,
accuracies on a trained model are ordered and reproducible, batches have one shape, and AutoAttack joins the figures
with its breakdown, checks and progress bars."""

import json
from unittest import mock

from absl.testing import absltest
import numpy as np

from tfrobprune import config as config_lib
import eval_test_utils
from tfrobprune.evaluate import autoattack
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


class FixedShapeBatchesTest(tf.test.TestCase):
  """The last partial batch is padded: the same figures as unpadded batches, and one trace per function."""

  def testPaddedLastBatchGivesTheUnpaddedFiguresAndNeverRetraces(self):
    model = models.build_model("mlp", (6, 6, 1), 2, seed=0)
    x, y = _data(70, 2)
    config = evaluation.EvalConfig(eps=0.1, pgd_steps=3, pgd_restarts=2, batch_size=32)
    made = []
    original = evaluation._CompiledEval  # pylint: disable=protected-access

    def recording(*args, **kwargs):
      made.append(original(*args, **kwargs))
      return made[-1]

    with mock.patch.object(evaluation, "_CompiledEval", recording):
      results = evaluation.evaluate_model(model, x, y, config, 2, seed=4)
    compiled = made[0]
    for function in (compiled.benign, compiled.fgsm, compiled.pgd):
      self.assertEqual(function.experimental_get_tracing_count(), 1)  # batches of 24, 24 and 22 padded to 24
    size = autoattack.balanced_batch_size(70, 32)
    self.assertEqual(size, 24)
    unpadded = original(model, config, 2, seed=4)  # traces per shape
    counts = {"benign_acc": 0, "fgsm_acc": 0, "pgd_acc": 0}
    for index, start in enumerate(range(0, 70, size)):
      xb, yb = tf.constant(x[start:start + size]), tf.constant(y[start:start + size])
      counts["benign_acc"] += int(np.sum(unpadded.benign(xb, yb)))
      counts["fgsm_acc"] += int(np.sum(unpadded.fgsm(xb, yb)))
      counts["pgd_acc"] += int(np.sum(unpadded.pgd(xb, yb, tf.constant(index, tf.int64))[1]))
    self.assertEqual({key: results[key] for key in counts}, {key: value / 70 for key, value in counts.items()})


class AutoAttackEvaluationTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = eval_test_utils.trained_model(epochs=2)
    cls.x, cls.y = eval_test_utils.test_examples(80)

  def testAutoAttackAtMostPgdWithBreakdownChecksAndProgress(self):
    config = evaluation.EvalConfig(eps=0.2, pgd_steps=10, pgd_restarts=2, batch_size=50, attacks=("pgd", "autoattack"))
    bars = []
    progress = lambda name, attack, examples: bars.append(_Bar(name, attack, examples)) or bars[-1]  # noqa: E731
    results = evaluation.evaluate_model(self.model, self.x, self.y, config, 10, seed=1, progress=progress, name="s0.9",
                                        autoattack_budget=autoattack.Budget(nb_iter=20, num_targets=3, n_queries=200))
    self.assertLessEqual(results["autoattack_acc"], results["pgd_acc"])
    self.assertLess(results["autoattack_acc"], results["benign_acc"])
    self.assertGreater(results["autoattack_acc"], 0.0)
    self.assertEqual(results["autoattack"]["robust_acc"], results["autoattack_acc"])
    self.assertEqual(results["autoattack"]["clean_acc"], results["benign_acc"])
    self.assertEqual([row["attack"] for row in results["autoattack"]["stages"]], list(autoattack.VERSIONS["standard"]))
    self.assertTrue(results["masking_checks"]["passed"], results["masking_checks"])
    self.assertEqual([(bar.name, bar.attack) for bar in bars],
                     [("s0.9", "pgd")] + [("s0.9", name) for name in autoattack.VERSIONS["standard"]])
    self.assertEqual(bars[0].updates[-1], (80, results["pgd_acc"]))
    for bar, row in zip(bars[1:], results["autoattack"]["stages"]):  # each attack: its examples, then its figure
      self.assertEqual(bar.examples, row["examples"])
      self.assertEqual(bar.updates[-1], (row["examples"], row["robust_acc"]))

  def testAutoAttackAloneReportsNoPgdAccuracy(self):
    config = evaluation.EvalConfig(eps=0.0, batch_size=80, fgsm=False, attacks=("autoattack",))
    results = evaluation.evaluate_model(self.model, self.x, self.y, config, 10,
                                        autoattack_budget=autoattack.Budget(nb_iter=2, num_targets=1, n_queries=5))
    self.assertNotIn("pgd_acc", results)
    self.assertEqual(results["autoattack_acc"], results["benign_acc"])  # eps 0: nothing to find


class _Bar:
  """A progress bar that records its updates as (examples done, robust accuracy)."""

  def __init__(self, name, attack, examples):
    self.name, self.attack, self.examples, self.updates = name, attack, examples, []

  def update(self, done, values):
    self.updates.append((done, dict(values)["robust_acc"]))


class EvalConfigTest(absltest.TestCase):

  def testAttacksRoundTripThroughTheRunConfigAndOldRecordsResume(self):
    original = config_lib.RunConfig(evaluation=evaluation.EvalConfig(attacks=("pgd", "autoattack")))
    restored = config_lib.RunConfig.from_dict(json.loads(original.to_json()))
    self.assertEqual(restored, original)
    self.assertEqual(restored.evaluation.attacks, ("pgd", "autoattack"))
    recorded = json.loads(config_lib.RunConfig().to_json())
    del recorded["evaluation"]["attacks"]  # a run recorded before --eval_attack existed
    self.assertEqual(config_lib.differing_fields(recorded, json.loads(config_lib.RunConfig().to_json())), [])
    self.assertEqual(config_lib.RunConfig.from_dict(recorded).evaluation.attacks, ("pgd",))

  def testAttacksMustBeDistinctKnownNames(self):
    for attacks in ((), ("pgd", "pgd"), ("fgsm",), ("pgd", "auto")):
      with self.assertRaisesRegex(ValueError, "--eval_attack"):
        evaluation.EvalConfig(attacks=attacks)
    self.assertEqual(evaluation.EvalConfig(attacks="pgd, autoattack").attacks, ("pgd", "autoattack"))


if __name__ == "__main__":
  absltest.main()
