"""Tests for tfrobprune.train.training: the compiled loop learns, traces once, and stops cleanly on a non-finite loss."""

import io
from unittest import mock

from absl.testing import absltest
import numpy as np

from tfrobprune.keras_compat import tf
from tfrobprune import models
from tfrobprune.robust import objectives
from tfrobprune.train import checkpointing
from tfrobprune.train import training


def _dataset(n=256, batch=32, seed=0):
  """Two classes told apart by mean brightness of 6x6 images."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n).astype(np.int64)
  x = np.clip(rng.normal(0.35 + 0.3 * y[:, None, None, None], 0.1, (n, 6, 6, 1)), 0, 1).astype(np.float32)
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)


def _trainer(objective_name="natural", learning_rate=1e-2, epochs=3, **objective_kwargs):
  model = models.build_model("mlp", (6, 6, 1), 2, seed=0)
  config = objectives.ObjectiveConfig(name=objective_name, **objective_kwargs)
  train_config = training.TrainConfig(epochs=epochs, learning_rate=learning_rate, lr_schedule="cosine")
  optimizer = training.make_optimizer(train_config, steps_per_epoch=8)
  return training.Trainer(model, objectives.make_objective(config, 2), optimizer)


class TrainTest(tf.test.TestCase):

  def testNaturalTrainingLearnsAndTracesOnce(self):
    trainer = _trainer(epochs=6)
    history = training.train(trainer, lambda epoch: _dataset(), 6, progress=False)
    self.assertLen(history, 6)
    self.assertLess(history[-1]["loss"], history[0]["loss"])
    self.assertGreater(history[-1]["natural_acc"], 0.9)
    self.assertEqual(trainer.train_step.experimental_get_tracing_count(), 1)

  def testPgdTrainingTracesOnceAcrossEpochsAndEpsilonRamp(self):
    trainer = _trainer("pgd", eps=0.05, pgd_steps=3, eps_ramp_steps=12)
    history = training.train(trainer, lambda epoch: _dataset(), 3, progress=False)
    self.assertEqual(trainer.train_step.experimental_get_tracing_count(), 1)
    self.assertAllClose(history[-1]["eps"], 0.05 * np.mean(np.minimum(np.arange(16, 24) / 12, 1.0)), atol=1e-6)

  def testProgressFactoryGetsEachEpochAndEveryStepAndTheLibraryPrintsNothing(self):
    calls, updates = [], []

    class _Bar:

      def update(self, current, values=None):
        updates.append((current, dict(values)))

    def progress(phase, epoch, epochs, steps):
      calls.append((phase, epoch, epochs, steps))
      return _Bar()

    with mock.patch("sys.stdout", new_callable=io.StringIO) as stdout:
      training.train(_trainer(epochs=2), lambda epoch: _dataset(), 2, progress=progress, phase="pretrain")
      training.train(_trainer(epochs=1), lambda epoch: _dataset(), 1)  # default: no progress bars
    self.assertEqual(calls, [("pretrain", 0, 2, 8), ("pretrain", 1, 2, 8)])
    self.assertEqual([current for current, _ in updates], list(range(1, 9)) * 2)
    self.assertIn("loss", updates[0][1])
    self.assertEqual(stdout.getvalue(), "")

  def testScheduleStepCountsOptimizerSteps(self):
    trainer = _trainer(epochs=2)
    training.train(trainer, lambda epoch: _dataset(), 2, progress=False)
    self.assertEqual(int(trainer.schedule_step.numpy()), 16)
    self.assertEqual(int(trainer.optimizer.iterations.numpy()), 16)

  def testNonFiniteLossStopsWithoutTouchingTheWeights(self):
    trainer = _trainer()
    bad = _dataset().map(lambda x, y: (x * np.nan, y))
    before = [w.copy() for w in trainer.model.get_weights()]
    with self.assertRaisesRegex(training.NonFiniteLossError, "not finite at step 0"):
      training.train(trainer, lambda epoch: bad, 1, progress=False)
    for old, new in zip(before, trainer.model.get_weights()):
      self.assertAllEqual(old, new)

  def testEpochEndFunctionAddsMetricsAndSummariesAreWritten(self):
    trainer = _trainer(epochs=1)
    log_dir = self.create_tempdir().full_path
    writer = tf.summary.create_file_writer(log_dir)
    history = training.train(trainer, lambda epoch: _dataset(), 1, progress=False, summary_writer=writer,
                             epoch_end_fn=lambda epoch, metrics: {"val_acc": 0.5}, phase="pretrain")
    self.assertEqual(history[0]["val_acc"], 0.5)
    self.assertNotEmpty(tf.io.gfile.glob(f"{log_dir}/events.out.tfevents*"))

  def testStopCheckpointsAndResumeMatchesAnUninterruptedRun(self):
    uninterrupted = _trainer("pgd", eps=0.05, pgd_steps=2, epochs=2)
    training.train(uninterrupted, lambda epoch: _dataset(seed=epoch), 2, progress=False)

    directory = self.create_tempdir().full_path
    first = _trainer("pgd", eps=0.05, pgd_steps=2, epochs=2)
    calls = []
    with self.assertRaisesRegex(training.TrainingInterrupted, "epoch 1, after step 5"):
      training.train(first, lambda epoch: _dataset(seed=epoch), 2, progress=False,
                     checkpointer=checkpointing.PhaseCheckpointer(directory, first),
                     should_stop=lambda: calls.append(1) or len(calls) == 5)
    resumed = _trainer("pgd", eps=0.05, pgd_steps=2, epochs=2)
    history = training.train(resumed, lambda epoch: _dataset(seed=epoch), 2, progress=False,
                             checkpointer=checkpointing.PhaseCheckpointer(directory, resumed))
    self.assertEqual([h["epoch"] for h in history], [1, 2])
    self.assertEqual(int(resumed.schedule_step.numpy()), 16)
    for expected, actual in zip(uninterrupted.model.get_weights(), resumed.model.get_weights()):
      self.assertAllClose(expected, actual, atol=1e-6)

  def testPeriodicCheckpointsRotate(self):
    directory = self.create_tempdir().full_path
    trainer = _trainer(epochs=2)
    checkpointer = checkpointing.PhaseCheckpointer(directory, trainer, every_steps=3, max_to_keep=2)
    training.train(trainer, lambda epoch: _dataset(), 2, progress=False, checkpointer=checkpointer)
    self.assertLen(checkpointer.manager.checkpoints, 2)
    self.assertEqual(checkpointer.restore_latest()[:2], (2, 0))


class LearningRateTest(tf.test.TestCase):

  def testCosineWarmupAndStepSchedules(self):
    def schedule(**kwargs):
      return training.learning_rate_schedule(training.TrainConfig(epochs=1, learning_rate=1.0, **kwargs), 100)

    cosine = schedule(lr_schedule="cosine")
    self.assertAllClose([cosine(0), cosine(50), cosine(100)], [1.0, 0.5, 0.0], atol=1e-6)
    step = schedule(lr_schedule="step")
    self.assertAllClose([step(s) for s in (10, 60, 80)], [1.0, 0.1, 0.01])
    self.assertAllClose(schedule(warmup_epochs=0.1)(4), 0.5)

  def testConfigRejectsBadValues(self):
    for kwargs, match in ((dict(batch_size=0), "batch_size"), (dict(learning_rate=0.0), "learning_rate"),
                          (dict(lr_schedule="exp"), "lr_schedule"), (dict(optimizer="lion"), "optimizer")):
      with self.assertRaisesRegex(ValueError, match):
        training.TrainConfig(**kwargs)


if __name__ == "__main__":
  absltest.main()
