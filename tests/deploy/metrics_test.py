"""Tests for tfrobprune.deploy.metrics: accuracy with tied top logits splitting the credit."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from tfrobprune.deploy import metrics  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402


class TieAwareAccuracyTest(tf.test.TestCase):

  def testTiedTopLogits_SplitTheCredit(self):
    logits = np.array([[1., 1., 0.], [2., 0., 0.], [0., 0., 0.], [0., 3., 3.]], np.float32)
    # Row 0: label 0 tied with class 1 (1/2); row 1: right (1); row 2: three-way tie (1/3); row 3: label 0 not on top.
    self.assertAlmostEqual(metrics.tie_aware_accuracy(logits, [0, 0, 1, 0]), (.5 + 1. + 1. / 3 + 0.) / 4)

  def testWithoutTies_IsArgmaxAccuracy(self):
    logits = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 10, 50)
    self.assertAlmostEqual(metrics.tie_aware_accuracy(logits, labels), float(np.mean(logits.argmax(1) == labels)))

  def testNoRows_IsNone(self):
    self.assertIsNone(metrics.tie_aware_accuracy(np.zeros((0, 3)), []))


if __name__ == "__main__":
  tf.test.main()
