"""Resuming runs of the learned-scores criterion and of the mirrored strategy: the uninterrupted report, bit for bit.

tests/cli_test.py kills magnitude-pruning runs on one device; here `tfrobprune train` runs with
`--prune_criterion=scores` and with `--distribute=mirrored --logical_cpus=2` in child processes, is killed with
SIGKILL once its fine-tuning has written a checkpoint, and is run again with the same flags. With `--deterministic`
the resumed report must equal an uninterrupted run's.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
from absl.testing import flagsaver

from tfrobprune import cli
from tfrobprune import pipeline
from tfrobprune.train import training

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tiny synthetic data; fine-tuning checkpoints every 2 of its 16 steps, so a kill lands inside it.
_TINY = ["--dataset=synthetic", "--synthetic_examples=256,64", "--synthetic_shape=12,12,1", "--model=cnn_small",
         "--pgd_steps=2", "--batch_size=32", "--pretrain_epochs=1", "--finetune_epochs=2", "--eval_pgd_steps=3",
         "--eval_pgd_restarts=1", "--noexport", "--noprogress", "--deterministic", "--checkpoint_every_steps=2"]
_SCORES = ["--prune_criterion=scores", "--score_epochs=1"]
_MIRRORED = ["--distribute=mirrored", "--logical_cpus=2"]
_PHASE = "finetune_s0.9"
_TIMEOUT = 600


def _command(flags, output_dir):
  return [sys.executable, "-m", "tfrobprune.cli", "train", *flags, f"--output_dir={output_dir}"]


def _env():
  return dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run(flags, output_dir):
  return subprocess.run(_command(flags, output_dir), capture_output=True, text=True, env=_env(), cwd=_ROOT,
                        timeout=_TIMEOUT)


def _report(output_dir):
  """report.json without its `timing` (wall seconds differ between any two runs)."""
  with open(os.path.join(output_dir, "report.json")) as handle:
    report = json.load(handle)
  report.pop("timing", None)
  return report


def _config_from_flags(flags):
  with flagsaver.flagsaver():
    cli.flags.FLAGS.unparse_flags()
    cli.flags.FLAGS(["tfrobprune", *flags])
    return cli.config_from_flags()


class Kill9AndResumeTest(absltest.TestCase):

  def _assert_killed_and_resumed_run_gives_the_report_of_an_uninterrupted_one(self, flags):
    reference_dir, output_dir = tempfile.mkdtemp(prefix="uninterrupted-"), tempfile.mkdtemp(prefix="killed-")
    process = subprocess.Popen(_command(flags, output_dir), env=_env(), cwd=_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
      self._wait_for_checkpoint(output_dir, _PHASE, process)
    finally:
      process.send_signal(signal.SIGKILL)
      process.wait(timeout=60)
    self.assertEqual(process.returncode, -signal.SIGKILL)
    self.assertFalse(os.path.exists(os.path.join(output_dir, "report.json")), "killed before it finished")
    resumed = _run(flags, output_dir)
    self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
    self.assertIn("Resuming the run", resumed.stdout)
    uninterrupted = _run(flags, reference_dir)
    self.assertEqual(uninterrupted.returncode, 0, uninterrupted.stderr[-3000:])
    self.assertEqual(_report(output_dir), _report(reference_dir))
    return resumed

  def testScoresRunKilledInFineTuningResumesToTheUninterruptedReport(self):
    resumed = self._assert_killed_and_resumed_run_gives_the_report_of_an_uninterrupted_one(_TINY + _SCORES)
    self.assertIn(f"[scores_{_PHASE}] masks learned earlier", resumed.stdout)
    self.assertNotIn("-sparse mask with objective", resumed.stdout)  # the score learning did not run again

  def testMirroredRunKilledInFineTuningResumesToTheUninterruptedReport(self):
    self._assert_killed_and_resumed_run_gives_the_report_of_an_uninterrupted_one(_TINY + _MIRRORED)

  def _wait_for_checkpoint(self, output_dir, phase, process):
    index = os.path.join(output_dir, "checkpoints", phase, "checkpoint")
    deadline = time.time() + _TIMEOUT
    while not os.path.exists(index):
      if process.poll() is not None:
        self.fail(f"the run ended (exit code {process.returncode}) before {phase} wrote a checkpoint")
      if time.time() > deadline:
        self.fail(f"no checkpoint of {phase} after {_TIMEOUT} s")
      time.sleep(0.05)


class ScoresResumeTest(absltest.TestCase):

  def testInterruptedScoresPhaseLoadsItsMasksInsteadOfLearningThemAgain(self):
    config = _config_from_flags(_TINY + _SCORES)
    reference = pipeline.run(config, tempfile.mkdtemp(prefix="uninterrupted-"),
                             pipeline.RunOptions(progress=False, log=lambda line: None))
    output_dir, polls = tempfile.mkdtemp(prefix="interrupted-"), []
    stop_in_finetune = pipeline.RunOptions(progress=False, log=lambda line: None, checkpoint_every_steps=2,
                                           should_stop=lambda: polls.append(1) or len(polls) == 12)
    with self.assertRaisesRegex(training.TrainingInterrupted, "epoch 1"):
      pipeline.run(config, output_dir, stop_in_finetune)
    lines = []
    resumed = pipeline.run(config, output_dir, pipeline.RunOptions(progress=False, log=lines.append))
    self.assertIn(f"[scores_{_PHASE}] masks learned earlier; loading {output_dir}/models/{_PHASE}_masks.npz.", lines)
    self.assertEqual([line for line in lines if line.startswith("[scores] ")], [])  # no score epoch ran again
    self.assertEqual(dict(resumed, timing=None), dict(reference, timing=None))  # wall seconds differ


if __name__ == "__main__":
  absltest.main()
