"""Tests for tfrobprune.train.timing: parts timed into the progress record, added up across resumed processes."""

from absl.testing import absltest

from tfrobprune import config as config_lib
from tfrobprune.train import checkpointing
from tfrobprune.train import timing


class _Clock:
  """A clock that advances by the given seconds at each reading."""

  def __init__(self, *steps):
    self.now, self.steps = 0.0, list(steps)

  def __call__(self):
    self.now += self.steps.pop(0) if self.steps else 0.0
    return self.now


class RunTimerTest(absltest.TestCase):

  def _progress(self, directory):
    return checkpointing.RunProgress(directory, config_lib.RunConfig())

  def testParts_AreTimedInOrderAndTrainingPartsAddUp(self):
    timer = timing.RunTimer(self._progress(self.create_tempdir().full_path), clock=_Clock(0, 10, 0, 2, 0, 5))
    for name, training in (("pretrain", True), ("evaluate_dense", False), ("finetune_s0.9", True)):
      with timer.part(name, training=training):
        pass
    summary = timer.summary()
    self.assertEqual(summary["seconds"], {"pretrain": 10.0, "evaluate_dense": 2.0, "finetune_s0.9": 5.0})
    self.assertEqual(summary["order"], ["pretrain", "evaluate_dense", "finetune_s0.9"])
    self.assertEqual(summary["training_seconds"], 15.0)
    self.assertEqual(summary["total_seconds"], 17.0)
    lines = timing.markdown_lines(summary)
    self.assertIn("| pretrain (training) | 10.0 |", lines)
    self.assertIn("| training (pre-training + fine-tuning) | 15.0 |", lines)
    self.assertLess(lines.index("| pretrain (training) | 10.0 |"), lines.index("| evaluate_dense | 2.0 |"))

  def testInterruptedPart_KeepsItsSecondsAndTheResumingProcessAddsItsOwn(self):
    directory = self.create_tempdir().full_path
    first = timing.RunTimer(self._progress(directory), clock=_Clock(0, 7))
    with self.assertRaises(KeyboardInterrupt):
      with first.part("pretrain", training=True):
        raise KeyboardInterrupt  # a signal: the phase checkpoints and the process stops
    resumed = timing.RunTimer(self._progress(directory), clock=_Clock(0, 4, 0, 1))
    with resumed.part("pretrain", training=True):
      pass
    with resumed.part("export", done=True):  # finished earlier: not timed again
      pass
    self.assertEqual(resumed.summary()["seconds"], {"pretrain": 11.0})
    self.assertEqual(resumed.summary()["training_parts"], ["pretrain"])

  def testNoTiming_NoTable(self):
    self.assertEqual(timing.markdown_lines(None), [])


if __name__ == "__main__":
  absltest.main()
