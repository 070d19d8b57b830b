"""Tests for tfrobprune.train.overfit_monitor: what counts as a sharp drop, and warn / stop / fallback in the loop."""

import contextlib
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import attacks
from tfrobprune.robust import objectives
from tfrobprune.train import checkpointing
from tfrobprune.train import overfit_monitor
from tfrobprune.train import training

EPS = 0.05


def _data(n=128, seed=0):
  """Two classes told apart by mean brightness of 6x6 images."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n).astype(np.int64)
  x = np.clip(rng.normal(0.35 + 0.3 * y[:, None, None, None], 0.1, (n, 6, 6, 1)), 0, 1).astype(np.float32)
  return x, y


def _dataset(epoch):
  del epoch
  return tf.data.Dataset.from_tensor_slices(_data()).batch(32, drop_remainder=True)


def _phase(action, name="nfgsm", best_weights_path=None):
  """(trainer, monitor) of a small single-step phase with the given action."""
  model = models.build_model("mlp", (6, 6, 1), 2, seed=0)
  objective_config = objectives.ObjectiveConfig(name=name, eps=EPS)
  trainer = training.Trainer(model, objectives.make_objective(objective_config, 2), keras.optimizers.Adam(1e-2))
  config = overfit_monitor.OverfitConfig(action=action, examples=64, pgd_steps=3)
  held_out = overfit_monitor.held_out_examples((np.zeros((0, 6, 6, 1)), np.zeros(0)), *_data(), 64, seed=0)
  monitor = overfit_monitor.make_monitor(config, objective_config, trainer, lambda: held_out, 2, 0, "pretrain",
                                         log=lambda line: None, best_weights_path=best_weights_path)
  return trainer, monitor


def _checks(monitor, pgd, fgsm=None):
  """Patches the monitor's held-out checks to read `pgd` and `fgsm` accuracies, one per epoch (FGSM by default the
  same as PGD: no FGSM gap)."""
  stack = contextlib.ExitStack()
  stack.enter_context(mock.patch.object(monitor, "pgd_accuracy", side_effect=list(pgd)))
  stack.enter_context(mock.patch.object(monitor, "fgsm_accuracy", side_effect=list(pgd if fgsm is None else fgsm)))
  return stack


def _train(trainer, monitor, accuracies, epochs, checkpointer=None):
  """Trains `epochs` epochs while the monitor's PGD check reads `accuracies`, one per epoch."""
  with _checks(monitor, accuracies):
    return training.train(trainer, _dataset, epochs, epoch_end_fn=overfit_monitor.with_monitor(None, monitor),
                          checkpointer=checkpointer, on_resume=monitor.resume)


def _assert_weights_equal(actual, expected):
  for a, e in zip(actual, expected, strict=True):
    np.testing.assert_array_equal(a, e)


class SharpDropTest(parameterized.TestCase):

  @parameterized.parameters((0.6, 0.1, True), (0.45, 0.2, True), (0.3, 0.12, True), (0.2, 0.05, True),
                            (0.6, 0.45, False), (0.6, 0.31, False), (0.18, 0.085, False), (None, 0.0, False))
  def testSharpDrop_NeedsBelowHalfOfTheBestAndMoreThanPointOneLower(self, best, accuracy, expected):
    self.assertEqual(overfit_monitor.is_sharp_drop(accuracy, best, overfit_monitor.OverfitConfig()), expected)

  @parameterized.parameters((0.05, 0.7, True), (0.2, 0.45, True), (0.6, 0.7, False), (0.3, 0.55, False),
                            (0.02, 0.11, False))
  def testFgsmGap_NeedsPgdBelowHalfOfFgsmAndMoreThanPointOneLower(self, pgd, fgsm, expected):
    self.assertEqual(overfit_monitor.is_fgsm_gap(pgd, fgsm, overfit_monitor.OverfitConfig()), expected)

  def testConfig_RejectsUnknownActionNamingTheFlag(self):
    with self.assertRaisesRegex(ValueError, "on_overfit must be one of warn, stop, fallback"):
      overfit_monitor.OverfitConfig(action="ignore")


class MonitorTest(tf.test.TestCase):

  def testHeldOutExamples_AreStratifiedFromTheValidationSplitElseTraining(self):
    x, y = _data()
    order = np.argsort(y, kind="stable")  # stored class by class, as an image folder is
    proportional = 16 * np.bincount(y) / len(y)  # the classes' shares of the data, in 16 examples
    x_val, y_val = overfit_monitor.held_out_examples((x[order], y[order]), x[:0], y[:0], 16, seed=0)
    self.assertLessEqual(np.abs(np.bincount(y_val, minlength=2) - proportional).max(), 1.0)
    self.assertEqual(x_val.dtype, np.float32)
    _, y_train = overfit_monitor.held_out_examples((x[:0], y[:0]), x[order], y[order], 16, seed=0)
    self.assertLessEqual(np.abs(np.bincount(y_train, minlength=2) - proportional).max(), 1.0)

  def testOnlySingleStepPhasesAreWatched(self):
    self.assertIsNotNone(_phase("warn")[1])
    self.assertIsNone(_phase("warn", name="pgd")[1])

  def testPgdCheck_IsPgdAccuracyAtTheFinalEpsFromSeededStarts_AndRepeatsExactly(self):
    trainer, monitor = _phase("warn")
    first = monitor.pgd_accuracy()
    self.assertEqual(monitor.pgd_accuracy(), first)
    self.assertEqual(monitor.examples, 64)
    (x, y), = monitor.batches  # 64 examples: one batch, index 0
    model_fn = attacks.inference_fn(trainer.model)
    accuracy = lambda images: np.mean(np.argmax(model_fn(images), axis=1) == y.numpy())  # noqa: E731
    x_adv = attacks.pgd(model_fn, x, y, EPS, 2.5 * EPS / 3, 3, seed=tf.constant([0, 0], tf.int64))
    self.assertAllClose(first, accuracy(x_adv))
    self.assertLessEqual(first, accuracy(x))
    self.assertAllClose(monitor.fgsm_accuracy(), accuracy(attacks.fgsm(model_fn, x, y, EPS)))

  def testWarn_FlagsTheSharpDropNotTheGentleOne_AndTrainsOn(self):
    trainer, monitor = _phase("warn")
    history = _train(trainer, monitor, [0.5, 0.45, 0.1, 0.4], 4)
    self.assertLen(history, 4)
    self.assertEqual([bool(entry.get(overfit_monitor.EVENT)) for entry in history], [False, False, True, False])
    events = overfit_monitor.events(history, "pretrain")
    self.assertEqual(events, [{"phase": "pretrain", "epoch": 3, "pgd_acc": 0.1, "best_before": 0.5,
                               "fgsm_acc": 0.1, "fallback": False, "stopped": False, "restored_best": False}])
    self.assertIsInstance(trainer.objective, objectives.SingleStepObjective)

  def testFgsmGapFromTheFirstEpoch_IsAnEvent_AndFallbackSwitchesToPgd(self):
    trainer, monitor = _phase("fallback")
    with _checks(monitor, pgd=[0.04, 0.3, 0.35], fgsm=[0.7, 0.4, 0.4]):
      history = training.train(trainer, _dataset, 3, epoch_end_fn=overfit_monitor.with_monitor(None, monitor))
    self.assertEqual([bool(entry.get(overfit_monitor.EVENT)) for entry in history], [True, False, False])
    self.assertEqual([bool(entry.get(overfit_monitor.FALLBACK)) for entry in history], [True, True, True])
    self.assertNotIsInstance(trainer.objective, objectives.SingleStepObjective)
    (event,) = overfit_monitor.events(history, "pretrain")
    self.assertEqual((event["epoch"], event["pgd_acc"], event["best_before"], event["fgsm_acc"]), (1, 0.04, None, 0.7))

  def testStop_EndsThePhaseAfterTheEpoch_AndAResumedPhaseStaysEnded(self):
    directory = self.create_tempdir().full_path
    trainer, monitor = _phase("stop")
    history = _train(trainer, monitor, [0.5, 0.1], 4, checkpointing.PhaseCheckpointer(directory, trainer))
    self.assertLen(history, 2)
    self.assertTrue(overfit_monitor.events(history, "pretrain")[0]["stopped"])
    resumed_trainer, resumed_monitor = _phase("stop")
    resumed = _train(resumed_trainer, resumed_monitor, [], 4, checkpointing.PhaseCheckpointer(directory,
                                                                                              resumed_trainer))
    self.assertLen(resumed, 2)
    self.assertEqual(int(resumed_trainer.schedule_step.numpy()), 8)

  def testStopWithASnapshotFile_EndsWithTheBestEpochsWeights_AlsoAfterAResume(self):
    directory = self.create_tempdir().full_path
    snapshot = os.path.join(directory, "best_weights.npz")
    accuracies = [0.3, 0.5, 0.45, 0.1]  # best after epoch 2, collapse after epoch 4
    trainer, monitor = _phase("stop", best_weights_path=snapshot)
    weights_after = []
    record = lambda epoch, metrics: weights_after.append(trainer.model.get_weights()) or {}  # noqa: E731
    with _checks(monitor, accuracies):
      history = training.train(trainer, _dataset, 4, epoch_end_fn=overfit_monitor.with_monitor(record, monitor))
    self.assertTrue(history[-1][overfit_monitor.RESTORED])
    self.assertTrue(overfit_monitor.events(history, "pretrain")[0]["restored_best"])
    _assert_weights_equal(trainer.model.get_weights(), weights_after[1])
    self.assertFalse(np.allclose(weights_after[1][0], weights_after[3][0]))  # the premise: training moved them

    # The same phase killed in epoch 4 and resumed by a fresh process: back to the same weights, from the file.
    os.remove(snapshot)
    killed_dir = self.create_tempdir().full_path
    trainer, monitor = _phase("stop", best_weights_path=os.path.join(killed_dir, "best_weights.npz"))
    calls = []
    with self.assertRaises(training.TrainingInterrupted):
      with _checks(monitor, accuracies[:3]):
        training.train(trainer, _dataset, 4, epoch_end_fn=overfit_monitor.with_monitor(None, monitor),
                       checkpointer=checkpointing.PhaseCheckpointer(killed_dir, trainer),
                       should_stop=lambda: calls.append(1) or len(calls) == 13)  # in epoch 4
    resumed_trainer, resumed_monitor = _phase("stop", best_weights_path=os.path.join(killed_dir,
                                                                                       "best_weights.npz"))
    resumed = _train(resumed_trainer, resumed_monitor, accuracies[3:], 4,
                     checkpointing.PhaseCheckpointer(killed_dir, resumed_trainer))
    self.assertTrue(resumed[-1][overfit_monitor.RESTORED])
    _assert_weights_equal(resumed_trainer.model.get_weights(), weights_after[1])

  def testStopWithoutASnapshotFile_EndsWithTheEpochsOwnWeights(self):
    trainer, monitor = _phase("stop")
    history = _train(trainer, monitor, [0.5, 0.1], 2)
    self.assertNotIn(overfit_monitor.RESTORED, history[-1])
    self.assertTrue(history[-1][training.STOP_PHASE])

  def testFallback_SwitchesTheRestOfThePhaseToPgd_AlsoAfterAResume(self):
    directory = self.create_tempdir().full_path
    trainer, monitor = _phase("fallback")
    calls = []
    with self.assertRaises(training.TrainingInterrupted):
      with _checks(monitor, [0.5, 0.1]):
        training.train(trainer, _dataset, 4, epoch_end_fn=overfit_monitor.with_monitor(None, monitor),
                       checkpointer=checkpointing.PhaseCheckpointer(directory, trainer),
                       should_stop=lambda: calls.append(1) or len(calls) == 10)  # in epoch 3, after the switch
    self.assertIsInstance(trainer.objective, objectives.PGDObjective)
    self.assertNotIsInstance(trainer.objective, objectives.SingleStepObjective)
    self.assertEqual(trainer.objective.config.pgd_steps, 3)
    resumed_trainer, resumed_monitor = _phase("fallback")
    history = _train(resumed_trainer, resumed_monitor, [0.3, 0.35], 4,
                     checkpointing.PhaseCheckpointer(directory, resumed_trainer))
    self.assertNotIsInstance(resumed_trainer.objective, objectives.SingleStepObjective)
    self.assertEqual([bool(entry.get(overfit_monitor.FALLBACK)) for entry in history], [False, True, True, True])
    self.assertEqual(resumed_monitor.best, 0.5)


if __name__ == "__main__":
  absltest.main()
