"""Tests for tfrobprune.prune.global_allocation: per-layer targets of one global magnitude threshold, by hand."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

import prune_test_utils  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import global_allocation  # noqa: E402


class GlobalMagnitudeTargetsTest(tf.test.TestCase, parameterized.TestCase):

  def _hand_model(self):
    # |d0| = .1 .4 .2 .9; |d1| = .3 .5 .6 .7 .05 .8; sorted: .05(d1) .1(d0) .2(d0) .3(d1) .4(d0) .5(d1) ...
    model = prune_test_utils.dense_model([2, 3], 2, use_bias=False)
    model.get_layer("d0").set_weights([np.array([[0.1, -0.4], [0.2, 0.9]], np.float32)])
    model.get_layer("d1").set_weights([np.array([[0.3, -0.5, 0.6], [0.7, -0.05, 0.8]], np.float32)])
    return model

  @parameterized.named_parameters(
      ("Half", 0.5, (), {"d0": 3 / 4, "d1": 2 / 6}),
      ("ThreeTenths", 0.3, (), {"d0": 2 / 4, "d1": 1 / 6}),
      ("Zero", 0.0, (), {"d0": 0.0, "d1": 0.0}),
      ("HalfWithoutD0", 0.5, ("d0",), {"d1": 3 / 6}),
  )
  def testHandMadeWeights_GivesHandCheckedLayerTargets(self, sparsity, exclude, expected):
    targets = global_allocation.global_magnitude_targets(self._hand_model(), sparsity, exclude)
    self.assertEqual(list(targets), list(expected))
    self.assertAllClose(list(targets.values()), list(expected.values()))

  def testRejectsUnknownExcludedLayer(self):
    with self.assertRaisesRegex(ValueError, "d7"):
      global_allocation.global_magnitude_targets(self._hand_model(), 0.5, ("d7",))


if __name__ == "__main__":
  tf.test.main()
