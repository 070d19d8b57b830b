"""Tests for tfrobprune.prune.pruning_schedules: the sparsity targets of iterative prune/fine-tune rounds."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402

from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import pruning_schedules  # noqa: E402


class IterativeTargetsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("TwoRounds", 0.9, 2, [1 - 0.1**0.5, 0.9]),
      ("ThreeRoundsHalving", 0.875, 3, [0.5, 0.75, 0.875]),
      ("OneRound", 0.6, 1, [0.6]),
  )
  def testKeepsConstantFractionPerRound(self, final, rounds, expected):
    targets = pruning_schedules.iterative_targets(final, rounds)
    self.assertAllClose(targets, expected)
    self.assertEqual(targets[-1], final)

  @parameterized.named_parameters(("FinalOne", 1.0, 2, "1.0"), ("ZeroRounds", 0.5, 0, "0"))
  def testRejectsBadValue(self, final, rounds, shown):
    with self.assertRaisesRegex(ValueError, re.escape(shown)):
      pruning_schedules.iterative_targets(final, rounds)


if __name__ == "__main__":
  tf.test.main()
