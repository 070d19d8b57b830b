"""Tests for tfrobprune.train.benchmark: every figure of the performance issue is produced and consistent.

No timing thresholds here: the targets are checked by reading `bin/bench`'s output, not in unit tests. What is
checked is what the figures are made of: the recorded rounds, the interleaving, the oneDNN setting of the process.
"""

import json
import os
import subprocess
import sys
import time

from absl.testing import absltest

from tfrobprune.robust import input_gradients
from tfrobprune.train import benchmark

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TINY = benchmark.BenchConfig(model="mlp", batch_size=8, pgd_steps=2, steps=1, repeats=3, min_seconds=0.0,
                              extra_models=("mlp",), batch_sizes=(4,), input_shape=(6, 6, 1), num_classes=3)
# The smallest benchmark a child process can run (no extra tables).
_CHILD = ("from tfrobprune.train import benchmark; import json; "
          "config = benchmark.BenchConfig(model='mlp', batch_size=4, pgd_steps=1, steps=1, repeats=1, min_seconds=0.0, "
          "extra_models=(), batch_sizes=(), input_shape=(4, 4, 1), num_classes=2); "
          "print(json.dumps(benchmark.run_benchmark(config, log=lambda line: None)['onednn']))")


def _onednn_in_child(setting):
  """The benchmark's 'onednn' figure in a fresh process run with TF_ENABLE_ONEDNN_OPTS=`setting`."""
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=_ROOT,
                          timeout=300, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


class BenchmarkTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.figures = benchmark.run_benchmark(_TINY, log=lambda line: None)

  def testProducesEveryFigureOfTheTable(self):
    figures = self.figures
    for key in ("natural_step_ms", "pgd_step_ms", "trades_step_ms", "ibp_step_ms", "crown_ibp_step_ms",
                "crown_ibp_fused_step_ms", "nfgsm_step_ms", "eager_pgd_step_ms", "benign_eval_step_ms",
                "pgd_eval_step_ms"):
      self.assertGreater(figures[key], 0.0, key)
    self.assertEqual(set(figures["by_batch_size"]), {"4"})
    self.assertEqual(set(figures["by_model"]), {"mlp"})
    self.assertEqual(figures["pgd_steps"], 2)
    table = benchmark.format_table(figures)
    for row in ("| pgd_over_k_plus_1_natural |", "| 4 |", f"| onednn | {figures['onednn']} |"):
      self.assertIn(row, table)

  def testEachStepFigureIsTheMedianOfItsRecordedRounds(self):
    rounds = self.figures["rounds"]
    self.assertLen(rounds, 3)
    for name in ("natural_step_ms", "pgd_step_ms", "ibp_step_ms", "eager_pgd_step_ms"):
      self.assertAlmostEqual(self.figures[name], sorted(timings[name] for timings in rounds)[1], places=2)

  def testEachRatioIsTheRatioOfOneRecordedRoundAndTheMiddleOne(self):
    # With 3 rounds the median of the per-round ratios is the ratio of steps timed in one and the same round.
    k_plus_1 = self.figures["pgd_steps"] + 1
    for ratio, numerator, denominator, scale in (
        ("pgd_over_k_plus_1_natural", "pgd_step_ms", "natural_step_ms", k_plus_1),
        ("ibp_over_natural", "ibp_step_ms", "natural_step_ms", 1),
        ("crown_ibp_over_natural", "crown_ibp_step_ms", "natural_step_ms", 1),
        ("crown_ibp_fused_over_natural", "crown_ibp_fused_step_ms", "natural_step_ms", 1),
        ("nfgsm_over_natural", "nfgsm_step_ms", "natural_step_ms", 1),
        ("eager_over_compiled", "eager_pgd_step_ms", "pgd_step_ms", 1)):
      per_round = sorted(t[numerator] / (scale * t[denominator]) for t in self.figures["rounds"])
      with self.subTest(ratio=ratio):
        self.assertAlmostEqual(self.figures[ratio], per_round[1], delta=0.002 + 1e-3 * per_round[1])

  def testOnednnFigureIsTheProcessSetting(self):
    self.assertEqual(self.figures["onednn"], input_gradients.onednn_enabled())
    self.assertIs(_onednn_in_child("0"), False)  # TensorFlow's switch turns its oneDNN kernels off

  def testRoundsRunEveryStepOnceInTurnAndTimeWhatTheStepsTake(self):
    calls = []

    def step(name, seconds):
      def run():
        calls.append(name)
        time.sleep(seconds)
      return run

    config = benchmark.BenchConfig(steps=2, repeats=3, min_seconds=0.0)
    medians, rounds = benchmark._interleaved_ms_per_step(  # pylint: disable=protected-access
        {"a": step("a", 0.02), "b": step("b", 0.005)}, config)
    # Warm-up and sizing (2 calls each), then 3 rounds of a, a, b, b: the drift of a round hits both steps.
    self.assertEqual(calls, ["a", "a", "b", "b"] + ["a", "a", "b", "b"] * 3)
    self.assertLen(rounds, 3)
    for timings in rounds:
      self.assertGreaterEqual(timings["a"], 20.0)  # a sleep lasts at least what it asks for
      self.assertGreaterEqual(timings["b"], 5.0)
    self.assertEqual(medians["a"], sorted(timings["a"] for timings in rounds)[1])

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
