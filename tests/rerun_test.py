"""End-to-end test of `tfrobprune evaluate` (tfrobprune.rerun): a finished tiny run with its export, re-evaluated with
AutoAttack and its TFLite files attacked by Square, through the command line as a user runs it."""

import json
import os
import shutil
import subprocess
import sys

from absl.testing import absltest

from tfrobprune import cli  # noqa: F401  (run as a subprocess below; the import gives Bazel the dependency)
from tfrobprune import config
from tfrobprune.evaluate import autoattack
from tfrobprune.evaluate import evaluation
from tfrobprune import pipeline
from tfrobprune import rerun
from tfrobprune.robust import objectives
from tfrobprune.train import training

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_run(output_dir):
  """A finished run on 12x12 synthetic data (10 classes), exported; evaluated with PGD only."""
  pgd = objectives.ObjectiveConfig(name="pgd", eps=0.1, pgd_steps=2)
  run_config = config.RunConfig(
      data=config.DataConfig(dataset="synthetic", synthetic_examples=(256, 64), synthetic_shape=(12, 12, 1)),
      pretrain=training.TrainConfig(epochs=2, batch_size=32, learning_rate=3e-3), pretrain_objective=pgd,
      finetune=training.TrainConfig(epochs=1, batch_size=32), finetune_objective=pgd, sparsities=(0.8,),
      evaluation=evaluation.EvalConfig(eps=0.1, pgd_steps=3, pgd_restarts=1, batch_size=64), export=True)
  return pipeline.run(run_config, output_dir, pipeline.RunOptions(progress=False, log=lambda line: None))


def _evaluate(*flags):
  env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "tfrobprune.cli", "evaluate", *flags], capture_output=True, text=True,
                        env=env, cwd=_ROOT, timeout=1200)


class EvaluateCommandTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.run_dir = os.path.join(absltest.get_default_test_tmpdir(), "run")
    cls.report = _tiny_run(cls.run_dir)

  def testWritesEvaluationJsonWithTheReportsFieldsAutoAttackAndTheArtifactsSquareAccuracy(self):
    with open(os.path.join(self.run_dir, "report.json")) as handle:
      report_before = handle.read()
    result = _evaluate(f"--run_dir={self.run_dir}", "--eval_attack=pgd,autoattack", "--eval_examples=20",
                       "--artifacts")
    self.assertEqual(result.returncode, 0, result.stderr)
    with open(os.path.join(self.run_dir, rerun.EVALUATION_FILE)) as handle:
      record = json.load(handle)
    self.assertEqual(record["evaluation"]["attacks"], ["pgd", "autoattack"])
    self.assertEqual(record["evaluation"]["max_examples"], 20)
    self.assertEqual(record["evaluation"]["pgd_steps"], 3)  # the run's own setting, not overridden
    for row in (record["dense"], record["pruned"]):
      self.assertContainsSubset(set(self.report["dense"]) | {"autoattack_acc", "autoattack", "masking_checks"},
                                set(row))
      self.assertEqual(row["examples"], 20)
      self.assertLessEqual(row["autoattack_acc"], row["benign_acc"])
      self.assertEqual([stage["attack"] for stage in row["autoattack"]["stages"]],
                       list(autoattack.VERSIONS["standard"]))
      self.assertEqual(row["autoattack"]["budget"]["n_queries"], 5000)  # the standard ensemble
    self.assertEqual(record["pruned"]["target_sparsity"], 0.8)
    self.assertIn("autoattack", record["ratios"])
    tflite_files = sorted(name[:-len(".tflite")] for name in os.listdir(os.path.join(self.run_dir, "export", "tflite")))
    self.assertEqual(sorted(record["artifacts"]), tflite_files)
    for row in record["artifacts"].values():
      self.assertBetween(row["square_acc"], 0.0, 1.0)
      self.assertEqual(row["square_examples"], 20)
    self.assertIn("[evaluate dense] apgd-ce:", result.stdout)  # progress bars, per model and attack
    self.assertIn("[evaluate s0.8] square:", result.stdout)
    self.assertIn("| s0.8 |", result.stdout)
    with open(os.path.join(self.run_dir, "report.json")) as handle:
      self.assertEqual(handle.read(), report_before)  # the run itself is left as it was

  def testMissingOrCorruptRunGetsAOneLineErrorNamingIt(self):
    missing = os.path.join(self.create_tempdir().full_path, "nothing")
    corrupt = self.create_tempdir().full_path
    with open(os.path.join(corrupt, "report.json"), "w") as handle:
      handle.write("{\"config\": ")
    no_models = self.create_tempdir().full_path
    shutil.copy(os.path.join(self.run_dir, "report.json"), no_models)
    for flags, pattern in (([f"--run_dir={missing}"], "holds no finished run"),
                           ([f"--run_dir={corrupt}"], "report.json is corrupt"),
                           ([f"--run_dir={no_models}"], "dense.keras"),
                           ([], "--run_dir is required"),
                           ([f"--run_dir={self.run_dir}", "--eval_attack=pgd,fab"], "--eval_attack takes")):
      with self.subTest(flags=flags):
        result = _evaluate(*flags, "--noprogress")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stderr)
        self.assertRegex(result.stderr, pattern)
    self.assertFalse(os.path.exists(os.path.join(corrupt, rerun.EVALUATION_FILE)))


if __name__ == "__main__":
  absltest.main()
