"""Tests for tfrobprune.train.checkpointing: rotation, corrupt-checkpoint fallback, progress file and config checks."""

import glob
import json
import os

from absl.testing import absltest
import numpy as np

from tfrobprune import config
from tfrobprune.keras_compat import tf
from tfrobprune import models
from tfrobprune.robust import objectives
from tfrobprune.train import checkpointing
from tfrobprune.train import training


def _trainer():
  model = models.build_model("mlp", (4, 4, 1), 2, seed=0)
  objective = objectives.make_objective(objectives.ObjectiveConfig(), 2)
  return training.Trainer(model, objective, training.make_optimizer(training.TrainConfig(), 10))


class PhaseCheckpointerTest(tf.test.TestCase):

  def testRestoresModelOptimizerStepsAndLoopState(self):
    directory = self.create_tempdir().full_path
    trainer = _trainer()
    trainer.schedule_step.assign(7)
    weights = [w + 1.0 for w in trainer.model.get_weights()]
    trainer.model.set_weights(weights)
    checkpointing.PhaseCheckpointer(directory, trainer).save(2, 5, {"history": [{"loss": 0.25}], "count": 5})
    fresh = _trainer()
    epoch, step, state = checkpointing.PhaseCheckpointer(directory, fresh).restore_latest()
    self.assertEqual((epoch, step, state), (2, 5, {"history": [{"loss": 0.25}], "count": 5}))
    self.assertEqual(int(fresh.schedule_step.numpy()), 7)
    for expected, actual in zip(weights, fresh.model.get_weights()):
      self.assertAllEqual(expected, actual)

  def testNoCheckpointRestoresNothing(self):
    self.assertIsNone(checkpointing.PhaseCheckpointer(self.create_tempdir().full_path, _trainer()).restore_latest())

  def testCorruptLatestCheckpointFallsBackToThePreviousOne(self):
    directory = self.create_tempdir().full_path
    trainer = _trainer()
    checkpointer = checkpointing.PhaseCheckpointer(directory, trainer, max_to_keep=3)
    checkpointer.save(1, 0, {"marker": "first"})
    checkpointer.save(2, 0, {"marker": "second"})
    latest = checkpointer.manager.latest_checkpoint
    for path in glob.glob(latest + ".data-*"):
      with open(path, "r+b") as handle:  # truncate the tensor data: a torn write
        handle.truncate(16)
    epoch, _, state = checkpointing.PhaseCheckpointer(directory, _trainer()).restore_latest()
    self.assertEqual((epoch, state["marker"]), (1, "first"))

  def testKeepsOnlyTheLastK(self):
    directory = self.create_tempdir().full_path
    checkpointer = checkpointing.PhaseCheckpointer(directory, _trainer(), max_to_keep=2)
    for epoch in range(4):
      checkpointer.save(epoch, 0, {})
    self.assertLen(checkpointer.manager.checkpoints, 2)
    self.assertLen(glob.glob(os.path.join(directory, "ckpt-*.index")), 2)

  def testRejectsBadSettings(self):
    with self.assertRaisesRegex(ValueError, "max_to_keep"):
      checkpointing.PhaseCheckpointer(self.create_tempdir().full_path, _trainer(), max_to_keep=0)


class RunProgressTest(absltest.TestCase):

  def testRecordsFinishedPartsAcrossInstances(self):
    directory = self.create_tempdir().full_path
    progress = checkpointing.RunProgress(directory, config.RunConfig())
    self.assertFalse(progress.resumed)
    progress.complete("pretrain", {"history": [1.5]})
    again = checkpointing.RunProgress(directory, config.RunConfig())
    self.assertTrue(again.resumed)
    self.assertEqual(again.get("pretrain"), {"history": [1.5]})
    self.assertIsNone(again.get("export"))

  def testDifferentSettingsAreRefusedByName(self):
    directory = self.create_tempdir().full_path
    checkpointing.RunProgress(directory, config.RunConfig())
    with self.assertRaisesRegex(checkpointing.ConfigMismatchError, r"\(model, seed\).*--overwrite"):
      checkpointing.RunProgress(directory, config.RunConfig(model="mlp", seed=2))
    checkpointing.RunProgress(directory, config.RunConfig(export=False))  # export does not change results

  def testOverwriteStartsAfresh(self):
    directory = self.create_tempdir().full_path
    checkpointing.RunProgress(directory, config.RunConfig()).complete("pretrain", {})
    os.makedirs(os.path.join(directory, "checkpoints", "pretrain"))
    progress = checkpointing.RunProgress(directory, config.RunConfig(seed=3), overwrite=True)
    self.assertIsNone(progress.get("pretrain"))
    self.assertFalse(os.path.exists(os.path.join(directory, "checkpoints")))
    with open(os.path.join(directory, checkpointing.PROGRESS_FILE)) as handle:
      self.assertEqual(json.load(handle)["config"]["seed"], 3)

  def testUnreadableProgressFileIsNamed(self):
    directory = self.create_tempdir().full_path
    with open(os.path.join(directory, checkpointing.PROGRESS_FILE), "w") as handle:
      handle.write("{not json")
    with self.assertRaisesRegex(checkpointing.ConfigMismatchError, "progress.json is unreadable"):
      checkpointing.RunProgress(directory, config.RunConfig())


if __name__ == "__main__":
  absltest.main()
