"""Tests for tfrobprune.evaluate.autoattack: the ensemble's bookkeeping on a real trained model with the real attacks.

Budgets are small (the attacks' own strength is tested beside them in tests/robust); what is tested here is what the
ensemble adds: the worst case over attacks, the order and the examples each attack gets, padding and compilation.
"""

from absl.testing import absltest
import numpy as np

import eval_test_utils as utils
from tfrobprune.evaluate import autoattack
from tfrobprune.keras_compat import tf
from tfrobprune import models

_BUDGET = autoattack.Budget(nb_iter=8, num_targets=2, n_queries=60)
_EPS = 0.2  # beyond the training eps: some examples fall to each attack, some survive all


def _cached_stages(names=autoattack.VERSIONS["standard"]):
  """The stages of `names`, each built once and reused by every run with the same batch size."""
  built = {}

  def builder(name):
    def build(target, budget):
      key = (name, target.batch_size)
      if key not in built:
        built[key] = autoattack.ATTACK_BUILDERS[name](target, budget)
      return built[key]
    return build

  return {name: autoattack.Stage(name, builder(name)) for name in names}


class AutoAttackTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = utils.trained_model(epochs=2)
    cls.x, cls.y = utils.test_examples(24)

  def _run(self, x, y, stages=None, eps=_EPS, batch_size=8):
    return autoattack.run_autoattack(self.model, x, y, eps, utils.NUM_CLASSES, budget=_BUDGET, batch_size=batch_size,
                                     seed=5, attack_stages=stages)

  def testWorstCaseIsExactlyTheAndOfEachAttackRunAlone(self):
    # One example per batch: each attack draws for an example what it draws for it inside the ensemble.
    x, y = self.x[:12], self.y[:12]
    stages = _cached_stages()
    ensemble = self._run(x, y, tuple(stages.values()), batch_size=1)
    alone = {name: self._run(x, y, (stage,), batch_size=1).robust for name, stage in stages.items()}
    np.testing.assert_array_equal(ensemble.robust, np.logical_and.reduce(list(alone.values())))
    order = list(stages)
    for index, name in enumerate(order):  # and where an attack ran in the ensemble, it found what it finds alone
      ran = ensemble.robust_against(order[:index])
      np.testing.assert_array_equal(ensemble.stage_robust(name)[ran], alone[name][ran])
    self.assertBetween(ensemble.robust_acc, 0.01, np.mean(ensemble.correct) - 0.01)  # neither all nor none fooled

  def testEachAttackRunsOnlyOnTheExamplesEveryEarlierOneFailedOn(self):
    seen = {}

    def recording(name):
      def build(target, budget):
        attack = autoattack.ATTACK_BUILDERS[name](target, budget)

        def run(x, y, seed):
          rows = [int(np.flatnonzero(np.all(self.x == image, axis=(1, 2, 3)))[0]) for image in x]
          seen.setdefault(name, set()).update(rows)  # padding repeats a row of the batch: no new example
          return attack(x, y, seed)
        return run
      return autoattack.Stage(name, build)

    result = self._run(self.x, self.y, tuple(recording(name) for name in autoattack.VERSIONS["standard"]))
    for index, name in enumerate(result.stage_names):
      still_robust = result.correct & ~((result.fooled_by >= 0) & (result.fooled_by < index))
      self.assertEqual(seen.get(name, set()), set(np.flatnonzero(still_robust)), name)
      self.assertEqual(result.attacked[index], int(np.sum(still_robust)))
    self.assertLess(len(seen["square"]), len(seen["apgd-ce"]))  # the examples shrink along the way

  def testFooledExamplesHaveAMisclassifiedPointInTheBallAndTheBreakdownFalls(self):
    result = self._run(self.x, self.y)
    fooled = result.fooled_by >= 0
    self.assertTrue(fooled.any())
    np.testing.assert_array_less(np.abs(result.x_adv - self.x).max(axis=(1, 2, 3)), _EPS + 1e-6)
    self.assertAllInRange(result.x_adv, 0.0, 1.0)
    predictions = np.argmax(self.model(result.x_adv, training=False), axis=1)
    np.testing.assert_array_equal(predictions[fooled] != self.y[fooled], True)
    breakdown = result.breakdown()
    accuracies = [breakdown["clean_acc"]] + [row["robust_acc"] for row in breakdown["stages"]]
    self.assertEqual(accuracies, sorted(accuracies, reverse=True))
    self.assertEqual(accuracies[-1], result.robust_acc)
    self.assertEqual([row["attack"] for row in breakdown["stages"]], ["apgd-ce", "apgd-t", "fab-t", "square"])
    self.assertEqual(breakdown["examples"], 24)
    self.assertTrue(all(row["seconds"] >= 0 for row in breakdown["stages"]))

  def testEpsZeroLeavesExactlyTheCleanAccuracy(self):
    result = self._run(self.x, self.y, eps=0.0)
    clean = np.argmax(self.model(self.x, training=False), axis=1) == self.y
    np.testing.assert_array_equal(result.robust, clean)
    self.assertEqual(result.robust_acc, np.mean(clean))
    np.testing.assert_array_equal(result.x_adv, self.x)

  def testPaddedLastBatchGivesTheUnpaddedResultsAndCompilesOnce(self):
    model_fn = autoattack.attack_model_fn(self.model, lambda images: self.model(images, training=False))
    target = lambda size: autoattack.Target(self.model, model_fn, _EPS, "linf", 10, size, utils.SHAPE)  # noqa: E731
    padded_fn = autoattack.ATTACK_BUILDERS["apgd-ce"](target(8), _BUDGET)
    exact_fn = autoattack.ATTACK_BUILDERS["apgd-ce"](target(5), _BUDGET)
    seed = autoattack.batch_seed(0, "apgd-ce", 0)
    correct = np.argmax(self.model(self.x, training=False), axis=1) == self.y
    x, y = self.x[correct][:5], self.y[correct][:5]
    x_exact, robust_exact = exact_fn(x, y, seed)
    pad = autoattack._pad  # pylint: disable=protected-access
    x_padded, robust_padded = padded_fn(pad(x, 8), pad(y, 8), seed)
    np.testing.assert_array_equal(robust_padded[:5], robust_exact)
    np.testing.assert_allclose(x_padded[:5], x_exact, atol=1e-6)
    for start in (0, 8):
      padded_fn(self.x[start:start + 8], self.y[start:start + 8], seed)
    self.assertEqual(padded_fn.function.experimental_get_tracing_count(), 1)

  def testTargetedApgdIsSkippedWithFewerThanFourClassesAndSaysWhy(self):
    model = models.build_model("mlp", utils.SHAPE, 3, seed=0)
    x = self.x[:6]
    y = np.argmax(model(x, training=False), axis=1)  # all classified "correctly"
    result = autoattack.run_autoattack(model, x, y, 0.0, 3, budget=_BUDGET, batch_size=6)
    rows = result.breakdown()["stages"]
    self.assertEqual(rows[1]["attack"], "apgd-t")
    self.assertEqual(rows[1]["examples"], 0)
    self.assertIn("needs at least 4 classes, the data has 3", rows[1]["skipped"])
    self.assertEqual([row["examples"] for row in rows], [6, 0, 6, 6])  # the others ran
    self.assertNotIn("skipped", rows[2])

  def testRejectsUnknownVersionsAttacksAndBudgets(self):
    with self.assertRaisesRegex(ValueError, "version must be one of standard"):
      autoattack.stages("plus")
    with self.assertRaisesRegex(ValueError, "unknown AutoAttack attack"):
      autoattack.stages(names=("apgd-ce", "fab"))
    with self.assertRaisesRegex(ValueError, "nb_iter must be >= 1"):
      autoattack.Budget(nb_iter=0)
    self.assertEqual([s.name for s in autoattack.stages()], ["apgd-ce", "apgd-t", "fab-t", "square"])


if __name__ == "__main__":
  absltest.main()
