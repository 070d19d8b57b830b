"""Tests for tfrobprune.train.best_weights: a snapshot restores exactly, is written atomically, and refuses a model
it does not fit."""

import os

from absl.testing import absltest
import numpy as np

from tfrobprune import models
from tfrobprune.train import best_weights


def _model(seed):
  return models.build_model("mlp", (4, 4, 1), 3, seed=seed)


class BestWeightsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.directory = self.create_tempdir().full_path
    self.path = os.path.join(self.directory, "phase", "best_weights.npz")

  def testRestore_SetsEveryWeightToTheSnapshot(self):
    saved, other = _model(0), _model(1)
    best_weights.BestWeights(self.path).save(saved)
    self.assertTrue(best_weights.BestWeights(self.path).restore(other))
    for restored, expected in zip(other.get_weights(), saved.get_weights(), strict=True):
      np.testing.assert_array_equal(restored, expected)
    self.assertEqual(os.listdir(os.path.dirname(self.path)), ["best_weights.npz"])  # no temporary file left

  def testNoSnapshot_LeavesTheModelAsItIs(self):
    model = _model(0)
    before = model.get_weights()
    self.assertFalse(best_weights.BestWeights(self.path).restore(model))
    np.testing.assert_array_equal(model.get_weights()[0], before[0])

  def testSnapshotOfAnotherModel_IsAnErrorNamingTheFile(self):
    best_weights.BestWeights(self.path).save(models.build_model("mlp", (6, 6, 1), 3, seed=0))
    with self.assertRaisesRegex(ValueError, "best_weights.npz does not hold weights of this model"):
      best_weights.BestWeights(self.path).restore(_model(0))


if __name__ == "__main__":
  absltest.main()
