"""Tests for tfrobprune.config: validation, JSON round trip and the resume check's differing fields."""

import json

from absl.testing import absltest

from tfrobprune import config
from tfrobprune.prune import pruning_config
from tfrobprune.prune import scores
from tfrobprune.robust import objectives
from tfrobprune.train import training


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
      config.DataConfig(dataset="image_folder", image_size=(0, 4))
    self.assertIsNone(config.DataConfig(dataset="image_folder").image_size)  # the first image's size

  def testChannelStructureFields_RoundTripValidateAndResumeRecordsWithoutThem(self):
    original = config.RunConfig(prune_structure="channels", channel_sparsity=0.6, channel_norm="l1")
    self.assertEqual(config.RunConfig.from_dict(json.loads(original.to_json())), original)
    for kwargs, pattern in [(dict(prune_structure="filters"), "prune_structure must be one of"),
                            (dict(channel_sparsity=1.0), r"channel_sparsity must be in \[0, 1\)"),
                            (dict(channel_norm="linf"), "channel_norm must be one of"),
                            (dict(prune_structure="channels", prune_criterion="scores"), "prune_criterion 'scores'")]:
      with self.assertRaisesRegex(ValueError, pattern):
        config.RunConfig(**kwargs)
    record = config.RunConfig().to_dict()
    old_record = {key: value for key, value in record.items()
                  if key not in ("prune_structure", "channel_sparsity", "channel_norm")}
    self.assertEqual(config.differing_fields(old_record, record), [])
    self.assertEqual(config.RunConfig.from_dict(old_record).prune_structure, "unstructured")

  def testArtifactSquareExamples_RoundTripsValidatesAndResumesRecordsWithoutIt(self):
    original = config.RunConfig(artifact_square_examples=0)
    self.assertEqual(config.RunConfig.from_dict(json.loads(original.to_json())), original)
    with self.assertRaisesRegex(ValueError, "artifact_square_examples must be >= 0, got -1"):
      config.RunConfig(artifact_square_examples=-1)
    record = config.RunConfig().to_dict()
    old_record = {key: value for key, value in record.items() if key != "artifact_square_examples"}
    self.assertEqual(config.differing_fields(old_record, record), [])
    self.assertEqual(config.RunConfig.from_dict(old_record).artifact_square_examples, 1000)

  def testSingleStepAndOverfitFields_RoundTripAndResumeRecordsWithoutThem(self):
    from tfrobprune.train import overfit_monitor  # pylint: disable=g-import-not-at-top
    original = config.RunConfig(
        pretrain_objective=objectives.ObjectiveConfig(name="fgsm_rs", eps=0.1, gradalign_weight=0.2),
        finetune_objective=objectives.ObjectiveConfig(name="crown_ibp", eps=0.1, crown_ibp_bound="fused"),
        overfit=overfit_monitor.OverfitConfig(action="fallback", examples=256))
    self.assertEqual(config.RunConfig.from_dict(json.loads(original.to_json())), original)
    record = json.loads(config.RunConfig(pretrain_objective=objectives.ObjectiveConfig(name="pgd", eps=0.1)).to_json())
    old_record = json.loads(json.dumps(record))
    del old_record["overfit"]
    for name in ("nfgsm_noise", "gradalign_weight", "crown_ibp_bound"):
      del old_record["pretrain_objective"][name], old_record["finetune_objective"][name]
    self.assertEqual(config.differing_fields(old_record, record), [])
    self.assertEqual(config.RunConfig.from_dict(old_record), config.RunConfig.from_dict(record))

  def testDifferingFieldsNamesNestedKeys(self):
    a = config.RunConfig().to_dict()
    b = config.RunConfig(seed=3, pretrain_objective=objectives.ObjectiveConfig(name="pgd", eps=0.2)).to_dict()
    self.assertEqual(config.differing_fields(a, b),
                     ["pretrain_objective.eps", "pretrain_objective.name", "seed"])
    self.assertEqual(config.differing_fields(a, a), [])

  def testEpochRampsBecomeStepsOfTheTrainingSetAndMatchRecordsWithoutEpochFields(self):
    train = dict(pretrain=training.TrainConfig(batch_size=10), finetune=training.TrainConfig(batch_size=20))
    in_epochs = config.RunConfig(
        **train, pretrain_objective=objectives.ObjectiveConfig(name="pgd", eps=0.1, eps_warmup_epochs=0.5,
                                                               eps_ramp_epochs=2.0),
        finetune_objective=objectives.ObjectiveConfig(name="pgd", eps=0.1, eps_ramp_epochs=1.0))
    resolved = config.with_epochs_in_steps(in_epochs, 1234)  # 123 pre-training and 61 fine-tuning steps per epoch
    pretrain, finetune = resolved.pretrain_objective, resolved.finetune_objective
    self.assertEqual((pretrain.eps_warmup_steps, pretrain.eps_ramp_steps, finetune.eps_ramp_steps), (61, 246, 61))
    self.assertEqual((pretrain.eps_warmup_epochs, pretrain.eps_ramp_epochs, finetune.eps_ramp_epochs), (0, 0, 0))
    # A run recorded before the epoch fields existed (steps only) resumes against the resolved config.
    old_record = json.loads(resolved.to_json())
    for phase in ("pretrain_objective", "finetune_objective"):
      del old_record[phase]["eps_warmup_epochs"], old_record[phase]["eps_ramp_epochs"]
    self.assertEqual(config.differing_fields(old_record, json.loads(resolved.to_json())), [])
    with self.assertRaisesRegex(ValueError, "in steps or in epochs, not both"):
      objectives.ObjectiveConfig(name="pgd", eps=0.1, eps_ramp_steps=5, eps_ramp_epochs=1.0)
    with self.assertRaisesRegex(ValueError, "in_steps"):
      objectives.make_objective(in_epochs.pretrain_objective, num_classes=10)


if __name__ == "__main__":
  absltest.main()
