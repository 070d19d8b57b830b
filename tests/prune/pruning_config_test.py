"""Tests for tfrobprune.prune.pruning_config: validation that names the bad value, JSON round trip."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402

from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402


class PruningConfigTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("TargetOne", dict(target_sparsity=1.0), "1.0"),
      ("TargetNegative", dict(target_sparsity=-0.1), "-0.1"),
      ("TargetString", dict(target_sparsity="0.5"), "'0.5'"),
      ("UnknownSchedule", dict(target_sparsity=0.5, schedule="cubic"), "'cubic'"),
      ("UnknownScope", dict(target_sparsity=0.5, scope="network"), "'network'"),
      ("InitialAboveTarget", dict(target_sparsity=0.5, initial_sparsity=0.6), "0.6"),
      ("NegativeBegin", dict(target_sparsity=0.5, begin_step=-1), "-1"),
      ("EndNotAfterBegin", dict(target_sparsity=0.5, begin_step=200, end_step=200), "200"),
      ("ZeroFrequency", dict(target_sparsity=0.5, frequency=0), "0"),
      ("EndOffFrequencyGrid", dict(target_sparsity=0.5, end_step=1050), "1050"),
      ("ExcludeString", dict(target_sparsity=0.5, exclude_layers="conv1"), "'conv1'"),
      ("MByNReversed", dict(target_sparsity=0.5, m_by_n=(4, 2)), "(4, 2)"),
      ("MByNThreeValues", dict(target_sparsity=0.5, m_by_n=(1, 2, 4)), "(1, 2, 4)"),
      ("MByNGlobal", dict(target_sparsity=0.5, m_by_n=(2, 4), scope="global"), "(2, 4)"),
  )
  def testRejectsBadValue_NamingIt(self, kwargs, shown):
    with self.assertRaisesRegex(ValueError, re.escape(shown)):
      pruning_config.PruningConfig(**kwargs)

  def testConstantSchedule_IgnoresPolynomialFields(self):
    config = pruning_config.PruningConfig(0.5, schedule="constant", begin_step=5000, end_step=10, frequency=7)
    self.assertEqual(config.begin_step, 5000)

  def testRoundTripsThroughJsonDict(self):
    config = pruning_config.PruningConfig(0.75, schedule="constant", begin_step=5, scope="layer",
                                          exclude_layers=("conv1", "logits"), m_by_n=(2, 4))
    restored = pruning_config.PruningConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    self.assertEqual(restored, config)
    self.assertEqual(restored.exclude_layers, ("conv1", "logits"))
    self.assertEqual(restored.m_by_n, (2, 4))

  def testFromDict_RejectsUnknownField(self):
    with self.assertRaisesRegex(ValueError, "sparsity_target"):
      pruning_config.PruningConfig.from_dict({"sparsity_target": 0.5})


if __name__ == "__main__":
  tf.test.main()
