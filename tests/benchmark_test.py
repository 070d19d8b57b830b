"""Tests for tfrobprune.benchmark: every figure of the performance issue is produced and consistent.

No timing thresholds here: the targets are checked by reading `bin/bench`'s output, not in unit tests.
"""

from absl.testing import absltest

from tfrobprune import benchmark

_TINY = benchmark.BenchConfig(model="mlp", batch_size=8, pgd_steps=2, steps=1, repeats=1, extra_models=("mlp",),
                              batch_sizes=(4,), input_shape=(6, 6, 1), num_classes=3)


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
    self.assertAlmostEqual(figures["pgd_over_k_plus_1_natural"],
                           figures["pgd_step_ms"] / (3 * figures["natural_step_ms"]), places=2)
    self.assertAlmostEqual(figures["eager_over_compiled"], figures["eager_pgd_step_ms"] / figures["pgd_step_ms"],
                           places=2)
    self.assertEqual(set(figures["by_batch_size"]), {"4"})
    self.assertEqual(set(figures["by_model"]), {"mlp"})
    table = benchmark.format_table(figures)
    self.assertIn("| pgd_over_k_plus_1_natural |", table)
    self.assertIn("| 4 |", table)

  def testRejectsBadSettings(self):
    with self.assertRaisesRegex(ValueError, "pgd_steps must be >= 1"):
      benchmark.BenchConfig(pgd_steps=0)
    with self.assertRaisesRegex(ValueError, "unknown model"):
      benchmark.BenchConfig(model="resnet")


if __name__ == "__main__":
  absltest.main()
