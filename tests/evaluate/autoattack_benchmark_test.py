"""Tests for tfrobprune.evaluate.autoattack_benchmark: the `autoattack_s_per_1k` figure of bin/bench is produced from a
PGD-trained model (here a tiny one on synthetic data) and reaches bin/bench's table. No timing thresholds."""

import dataclasses
import os

from absl.testing import absltest

from tfrobprune.evaluate import autoattack
from tfrobprune.evaluate import autoattack_benchmark
from tfrobprune import pipeline
from tfrobprune.train import benchmark

_TINY = autoattack_benchmark.AutoAttackBenchConfig(
    examples=40, model="mlp", dataset="synthetic", train_epochs=1, pgd_steps=2, batch_size=64, attack_batch_size=40,
    budget=autoattack.Budget(nb_iter=3, num_targets=2, n_queries=20), input_shape=(8, 8, 1), num_classes=10)


class AutoAttackBenchmarkTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.lines = []
    cls.figures = autoattack_benchmark.measure(_TINY, log=cls.lines.append)

  def testFigureIsTheEnsembleTimeScaledToAThousandExamples(self):
    figures = self.figures
    self.assertEqual(figures["autoattack_examples"], 40)
    stages = figures["autoattack_stages"]
    self.assertEqual([row["attack"] for row in stages], list(autoattack.VERSIONS["standard"]))
    self.assertAlmostEqual(figures["autoattack_s_per_1k"], sum(row["seconds"] for row in stages) * 25, delta=0.6)
    for row in stages:
      self.assertAlmostEqual(row["s_per_1k"], row["seconds"] * 25, delta=0.2)
    self.assertEqual(stages[-1]["robust_acc"], figures["autoattack_acc"])
    self.assertGreater(figures["autoattack_clean_acc"], 0.5)  # the PGD training learned the classes
    self.assertIn("trained mlp with PGD-2 for 1 epochs", self.lines[0])

  def testBenchTableShowsTheFigureAndEachAttack(self):
    table = benchmark.format_table(self.figures)
    self.assertIn(f"{self.figures['autoattack_s_per_1k']} s per 1,000 examples", table)
    for name in autoattack.VERSIONS["standard"]:
      self.assertIn(f"| {name} |", table)

  def testASavedModelIsAttackedAsItIs(self):
    path = os.path.join(self.create_tempdir().full_path, "model.keras")
    trained = autoattack_benchmark._pgd_trained(_TINY, autoattack_benchmark._data(_TINY))  # pylint: disable=protected-access
    pipeline.save_model(trained, path)
    lines = []
    figures = autoattack_benchmark.measure(dataclasses.replace(_TINY, model_path=path), log=lines.append)
    self.assertEqual(figures["autoattack_model"], path)
    self.assertNotIn("trained", " ".join(lines))


if __name__ == "__main__":
  absltest.main()
