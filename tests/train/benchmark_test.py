"""Tests for tfrobprune.train.benchmark: every figure of the performance issue is produced and consistent.

No timing thresholds here: the targets are checked by reading `bin/bench`'s output, not in unit tests.
"""

from absl.testing import absltest

from tfrobprune.train import benchmark

_TINY = benchmark.BenchConfig(model="mlp", batch_size=8, pgd_steps=2, steps=1, repeats=3, min_seconds=0.0,
                              extra_models=("mlp",), batch_sizes=(4,), input_shape=(6, 6, 1), num_classes=3)


def _median_of_round_ratios(figures, numerator, denominator, scale=1.0):
  ratios = sorted(timings[numerator] / (scale * timings[denominator]) for timings in figures["rounds"])
  return ratios[len(ratios) // 2]


class BenchmarkTest(absltest.TestCase):

  def testProducesEveryFigureAndConsistentRatios(self):
    figures = benchmark.run_benchmark(_TINY, log=lambda line: None)
    for key in ("natural_step_ms", "pgd_step_ms", "pgd_steps", "ibp_step_ms", "eager_pgd_step_ms",
                "pgd_over_k_plus_1_natural", "ibp_over_natural", "eager_over_compiled", "crown_ibp_step_ms",
                "benign_eval_step_ms", "pgd_eval_step_ms"):
      self.assertIn(key, figures)
    for key, value in figures.items():
      if key.endswith("_ms"):
        self.assertGreater(value, 0.0, key)
    # Every ratio is the median of the ratios of steps timed in the same interleaved round.
    self.assertLen(figures["rounds"], 3)
    self.assertAlmostEqual(figures["pgd_over_k_plus_1_natural"],
                           _median_of_round_ratios(figures, "pgd_step_ms", "natural_step_ms", 3), places=2)
    self.assertAlmostEqual(figures["ibp_over_natural"],
                           _median_of_round_ratios(figures, "ibp_step_ms", "natural_step_ms"), places=2)
    self.assertAlmostEqual(figures["eager_over_compiled"],
                           _median_of_round_ratios(figures, "eager_pgd_step_ms", "pgd_step_ms"), places=2)
    for name in ("natural_step_ms", "ibp_step_ms"):
      self.assertAlmostEqual(figures[name], sorted(timings[name] for timings in figures["rounds"])[1], places=2)
    self.assertIn(figures["onednn"], (True, False, None))
    self.assertIsInstance(figures["cpu"], str)
    self.assertEqual(set(figures["by_batch_size"]), {"4"})
    self.assertEqual(set(figures["by_model"]), {"mlp"})
    table = benchmark.format_table(figures)
    self.assertIn("| pgd_over_k_plus_1_natural |", table)
    self.assertIn("| 4 |", table)

  def testMedianRatio_PairsTimingsOfTheSameRound(self):
    # Round ratios 2, 3 and 1.5: their median is 2, while the ratio of the medians (3 / 2) mixes rounds.
    rounds = [{"a": 2.0, "b": 1.0}, {"a": 9.0, "b": 3.0}, {"a": 3.0, "b": 2.0}]
    self.assertAlmostEqual(benchmark._median_ratio(rounds, "a", "b"), 2.0)  # pylint: disable=protected-access
    self.assertAlmostEqual(benchmark._median_ratio(rounds, "a", "b", 4.0), 0.5)  # pylint: disable=protected-access

  def testRejectsBadSettings(self):
    with self.assertRaisesRegex(ValueError, "pgd_steps must be >= 1"):
      benchmark.BenchConfig(pgd_steps=0)
    with self.assertRaisesRegex(ValueError, "min_seconds must be >= 0"):
      benchmark.BenchConfig(min_seconds=-1.0)
    with self.assertRaisesRegex(ValueError, "unknown model"):
      benchmark.BenchConfig(model="resnet")


if __name__ == "__main__":
  absltest.main()
