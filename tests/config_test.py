"""Tests for tfrobprune.config: validation, JSON round trip and the resume check's differing fields."""

import json

from absl.testing import absltest

from tfrobprune import config
from tfrobprune.prune import pruning_config
from tfrobprune.prune import scores
from tfrobprune.robust import objectives


class RunConfigTest(absltest.TestCase):

  def testRoundTripsThroughJson(self):
    original = config.RunConfig(
        data=config.DataConfig(dataset="synthetic", synthetic_examples=(64, 32), synthetic_shape=(8, 8, 1)),
        pretrain_objective=objectives.ObjectiveConfig(name="pgd", eps=0.1),
        pruning=pruning_config.PruningConfig(target_sparsity=0.5, exclude_layers=("conv1",), m_by_n=(2, 4)),
        sparsities=(0.5, 0.9), scores=scores.ScoreConfig(epochs=3, scope="global"))
    restored = config.RunConfig.from_dict(json.loads(original.to_json()))
    self.assertEqual(restored, original)

  def testRejectsBadValuesNamingThem(self):
    cases = [
        (dict(model="resnet"), "model must be one of"),
        (dict(sparsities=(1.0,)), r"sparsity must be in \[0, 1\), got 1.0"),
        (dict(sparsities=()), "at least one"),
        (dict(prune_rounds=0), "prune_rounds"),
        (dict(prune_criterion="random"), "prune_criterion must be one of"),
        (dict(prune_criterion="scores", distribute="mirrored"), "one device"),
    ]
    for kwargs, pattern in cases:
      with self.assertRaisesRegex(ValueError, pattern):
        config.RunConfig(**kwargs)
    with self.assertRaisesRegex(ValueError, "dataset must be one of"):
      config.DataConfig(dataset="imagenet")
    with self.assertRaisesRegex(ValueError, "image_size"):
      config.DataConfig(dataset="image_folder")

  def testDifferingFieldsNamesNestedKeys(self):
    a = config.RunConfig().to_dict()
    b = config.RunConfig(seed=3, pretrain_objective=objectives.ObjectiveConfig(name="pgd", eps=0.2)).to_dict()
    self.assertEqual(config.differing_fields(a, b),
                     ["pretrain_objective.eps", "pretrain_objective.name", "seed"])
    self.assertEqual(config.differing_fields(a, a), [])


if __name__ == "__main__":
  absltest.main()
