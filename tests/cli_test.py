"""Tests for tfrobprune.cli: flags -> config, one-line errors for bad input, signals, kill -9 and resume, and the
train -> export -> serve -> bench-tflite commands with export on.

The command runs in child processes, as a user runs it.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np

from tfrobprune import cli
from tfrobprune import config as config_lib
from tfrobprune import pipeline

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = ["--dataset=synthetic", "--synthetic_examples=256,64", "--synthetic_shape=12,12,1", "--model=cnn_small",
         "--pgd_steps=2", "--batch_size=32", "--pretrain_epochs=2", "--finetune_epochs=2", "--eval_pgd_steps=3",
         "--eval_pgd_restarts=1", "--noexport", "--noprogress", "--deterministic", "--checkpoint_every_steps=2"]


def _command(*flags, command="train"):
  return [sys.executable, "-m", "tfrobprune.cli", command, *flags]


def _env():
  return dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run(*flags, command="train"):
  return subprocess.run(_command(*flags, command=command), capture_output=True, text=True, env=_env(), cwd=_ROOT,
                        timeout=600)


def _free_port():
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _get(url, body=None, timeout=30):
  """(status, parsed JSON body) of a GET, or of a POST of `body` (a dict) when given."""
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as error:
    return error.code, json.loads(error.read() or b"{}")


def _report(output_dir):
  """report.json without its `timing` (wall seconds differ between any two runs)."""
  with open(os.path.join(output_dir, "report.json")) as handle:
    report = json.load(handle)
  report.pop("timing", None)
  return report


class ConfigFromFlagsTest(absltest.TestCase):

  @flagsaver.flagsaver(objective="pgd", pretrain_objective="natural", eps=0.2, sparsity=["0.5", "0.9"],
                       prune_m_by_n=None, eps_ramp_epochs=1.0, batch_size=100, max_train_examples=1000)
  def testFlagsBecomeTheRunConfig(self):
    config = cli.config_from_flags()
    self.assertEqual(config.pretrain_objective.name, "natural")
    self.assertEqual(config.finetune_objective.name, "pgd")
    self.assertEqual(config.finetune_objective.eps, 0.2)
    self.assertEqual(config.sparsities, (0.5, 0.9))
    self.assertEqual(config.evaluation.eps, 0.2)
    self.assertEqual(config.pretrain_objective.eps_ramp_steps, 0)  # natural pre-training has no ramp
    self.assertEqual(config.finetune_objective.eps_ramp_steps, 0)  # fine-tuning starts at the full epsilon

  @flagsaver.flagsaver(objective="ibp", eps_ramp_epochs=2.0, batch_size=100, max_train_examples=1000)
  def testRampEpochsBecomeStepsOfTheLoadedDataAndBoundObjectivesTurnOnCertification(self):
    config = cli.config_from_flags()
    self.assertEqual(config.pretrain_objective.eps_ramp_epochs, 2.0)  # steps only once the data is loaded
    resolved = config_lib.with_epochs_in_steps(config, 1000)
    self.assertEqual((resolved.pretrain_objective.eps_ramp_steps, resolved.pretrain_objective.eps_ramp_epochs), (20, 0))
    self.assertTrue(config.evaluation.verified)


def _config_of(name):
  """The run config (as a dict) of the shipped flagfile configs/`name`."""
  with flagsaver.flagsaver():
    cli.flags.FLAGS.unparse_flags()
    cli.flags.FLAGS(["tfrobprune", f"--flagfile={os.path.join(_ROOT, 'configs', name)}"])
    return cli.config_from_flags().to_dict()


class FlagfilesTest(absltest.TestCase):

  def testEveryShippedFlagfileGivesAValidConfig(self):
    configs_dir = os.path.join(_ROOT, "configs")
    names = sorted(name for name in os.listdir(configs_dir) if name.endswith(".cfg"))
    self.assertContainsSubset({"fmnist_pgd_s90.cfg", "fmnist_pgd_s90_ablation.cfg", "fmnist_ibp_s90.cfg",
                               "smoke_synthetic.cfg"}, names)
    cwd = os.getcwd()
    os.chdir(_ROOT)  # flagfiles include each other by paths relative to the checkout
    try:
      for name in names:
        with self.subTest(name=name), flagsaver.flagsaver():
          cli.flags.FLAGS.unparse_flags()
          cli.flags.FLAGS(["tfrobprune", f"--flagfile=configs/{name}"])
          config = cli.config_from_flags()
          self.assertEqual(config.pretrain_objective.name != "natural" or "ablation" in name, True)
    finally:
      os.chdir(cwd)

  def testReferenceRunIsThePapersSetting(self):
    with flagsaver.flagsaver():
      cli.flags.FLAGS.unparse_flags()
      cli.flags.FLAGS(["tfrobprune", f"--flagfile={os.path.join(_ROOT, 'configs', 'fmnist_pgd_s90.cfg')}"])
      config = cli.config_from_flags()
    self.assertEqual((config.data.dataset, config.model), ("fashion_mnist", "cnn_small"))
    self.assertEqual((config.pretrain_objective.name, config.finetune_objective.name), ("pgd", "pgd"))
    self.assertEqual((config.pretrain_objective.eps, config.evaluation.eps, config.sparsities), (0.1, 0.1, (0.9,)))

  def testNfgsmFlagfile_IsTheReferenceWithNfgsmInBothPhasesAtTwiceTheLearningRates(self):
    reference, nfgsm = _config_of("fmnist_pgd_s90.cfg"), _config_of("fmnist_nfgsm_s90.cfg")
    for phase in ("pretrain_objective", "finetune_objective"):
      self.assertEqual((nfgsm[phase]["name"], nfgsm[phase]["nfgsm_noise"], nfgsm[phase]["pgd_step_size"]),
                       ("nfgsm", 2.0, 0.0))  # 0: the method's step, eps
      for config in (reference, nfgsm):
        for field in ("name", "pgd_steps", "pgd_step_size"):
          config[phase].pop(field)
    for phase in ("pretrain", "finetune"):  # N-FGSM trains at twice the reference's learning rates
      self.assertEqual(nfgsm[phase].pop("learning_rate"), 2 * reference[phase].pop("learning_rate"))
    self.assertEqual(nfgsm, reference)

  def testCrownIbpFlagfile_IsTheIbpFlagfileWithFusedCrownIbpInBothPhases(self):
    ibp, crown = _config_of("fmnist_ibp_s90.cfg"), _config_of("fmnist_crown_ibp_s90.cfg")
    for phase in ("pretrain_objective", "finetune_objective"):
      self.assertEqual((crown[phase].pop("name"), crown[phase].pop("crown_ibp_bound")), ("crown_ibp", "fused"))
      self.assertEqual((ibp[phase].pop("name"), ibp[phase].pop("crown_ibp_bound")), ("ibp", "margins"))
    self.assertEqual(crown, ibp)
    self.assertTrue(crown["evaluation"]["verified"])

  def testChannelFlagfile_PrunesHalfTheChannelsOfTheReferenceSetting(self):
    with flagsaver.flagsaver():
      cli.flags.FLAGS.unparse_flags()
      cli.flags.FLAGS(["tfrobprune", f"--flagfile={os.path.join(_ROOT, 'configs', 'fmnist_pgd_channels.cfg')}"])
      config = cli.config_from_flags()
    self.assertEqual((config.data.dataset, config.model, config.finetune_objective.eps), ("fashion_mnist",
                                                                                          "cnn_small", 0.1))
    self.assertEqual((config.prune_structure, config.channel_sparsity, config.channel_norm, config.sparsities),
                     ("channels", 0.5, "l2", (0.0,)))


class CommandLineTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._reference = None

  def _reference_report(self):
    """The report of one uninterrupted deterministic run, shared by the interruption tests."""
    if CommandLineTest._reference is None:
      reference_dir = self.create_tempdir().full_path
      result = _run(*_TINY, f"--output_dir={reference_dir}")
      self.assertEqual(result.returncode, 0, result.stderr)
      CommandLineTest._reference = _report(reference_dir)
    return CommandLineTest._reference

  def _assert_one_line_error(self, result, pattern):
    self.assertNotEqual(result.returncode, 0)
    self.assertNotIn("Traceback", result.stderr)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() and "cuda" not in line.lower()]
    self.assertTrue(errors, result.stderr)
    self.assertRegex(errors[-1], pattern)

  def testBadInputGetsAOneLineErrorNamingIt(self):
    cases = [
        (["--sparsity=1.5"], r"--sparsity takes comma-separated numbers in \[0, 1\)"),
        (["--sparsity=abc"], "--sparsity takes comma-separated numbers"),
        (["--eps=-0.1"], "eps"),
        (["--eps=2"], "eps"),
        (["--model=resnet"], "model"),
        (["--pgd_steps=0"], "pgd_steps"),
        (["--dataset=mnist", "--data_dir=/nonexistent/mnist"], "/nonexistent/mnist"),
        (["--prune_m_by_n=2:4"], "conv1"),
        (["--synthetic_shape=12,12"], "--synthetic_shape takes 3"),
        (["--batch_size=1000"], "smaller than one batch"),
    ]
    for flags, pattern in cases:
      with self.subTest(flags=flags):
        output_dir = self.create_tempdir().full_path
        self._assert_one_line_error(_run(*_TINY, f"--output_dir={output_dir}", *flags), pattern)
        self.assertFalse(os.path.exists(os.path.join(output_dir, "models")), "no training before the error")
        self.assertFalse(os.path.exists(os.path.join(output_dir, "report.json")))

  def testMissingOutputDirAndUnknownCommand(self):
    self._assert_one_line_error(_run(*_TINY), "--output_dir is required")
    result = subprocess.run([sys.executable, "-m", "tfrobprune.cli", "fly"], capture_output=True, text=True,
                            env=_env(), cwd=_ROOT, timeout=300)
    self._assert_one_line_error(result, "usage: tfrobprune")

  def testSigtermCheckpointsAndRerunResumesToTheSameReport(self):
    output_dir = self.create_tempdir().full_path
    process = subprocess.Popen(_command(*_TINY, f"--output_dir={output_dir}"), env=_env(), cwd=_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self._wait_for_checkpoint(output_dir, "pretrain")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    self.assertEqual(process.returncode, 143, stderr)
    self.assertIn("rerun the same command to resume", stderr)
    resumed = _run(*_TINY, f"--output_dir={output_dir}")
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    self.assertIn("resuming", resumed.stdout.lower())
    self.assertEqual(_report(output_dir), self._reference_report())

  def testKill9InEachPhaseThenResumeGivesTheUninterruptedReport(self):
    for phase in ("pretrain", "finetune_s0.9"):
      with self.subTest(phase=phase):
        output_dir = self.create_tempdir().full_path
        process = subprocess.Popen(_command(*_TINY, f"--output_dir={output_dir}"), env=_env(), cwd=_ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_for_checkpoint(output_dir, phase)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        resumed = _run(*_TINY, f"--output_dir={output_dir}")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertEqual(_report(output_dir), self._reference_report())

  def testConsoleShowsProgressBarsAndNoTensorflowLogLines(self):
    output_dir = self.create_tempdir().full_path
    with_progress = [flag for flag in _TINY if flag != "--noprogress"]
    result = _run(*with_progress, f"--output_dir={output_dir}", "--pretrain_epochs=1", "--finetune_epochs=1")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("[pretrain] epoch 1/1", result.stdout)
    self.assertIn("[finetune_s0.9] epoch 1/1", result.stdout)
    self.assertNotRegex(result.stderr, re.compile(r"^[IWEF]\d{4} ", re.MULTILINE))  # TensorFlow's C++ and absl lines
    self.assertNotIn("cuInit", result.stderr)

  def testOtherFlagsRefuseToResumeAndNameTheFlag(self):
    output_dir = self.create_tempdir().full_path
    self.assertEqual(_run(*_TINY, f"--output_dir={output_dir}", "--pretrain_epochs=1", "--finetune_epochs=1")
                     .returncode, 0)
    result = _run(*_TINY, f"--output_dir={output_dir}", "--pretrain_epochs=1", "--finetune_epochs=1", "--seed=5")
    self._assert_one_line_error(result, r"different settings \(seed\).*--overwrite")

  def testTrainWithExportThenExportServeAndBenchTflite(self):
    run_dir = self.create_tempdir().full_path
    with_export = [flag for flag in _TINY if flag != "--noexport"] + ["--export", "--pretrain_epochs=1",
                                                                      "--finetune_epochs=1",
                                                                      "--artifact_square_examples=8"]
    trained = _run(*with_export, f"--output_dir={run_dir}")
    self.assertEqual(trained.returncode, 0, trained.stderr)
    self.assertIn("saved_model", _report(run_dir)["artifacts"])
    self.assertEqual(_report(run_dir)["artifacts"]["int8_full"]["square_examples"], 8)
    self.assertEqual(sorted(_report(run_dir)["speed"]["savedmodel_batch128_ms"]), ["dense", "pruned"])
    versions_dir = os.path.join(run_dir, "export", "saved_model", "cnn_small")
    self.assertEqual(os.listdir(versions_dir), ["1"])

    exported = _run(f"--run_dir={run_dir}", command="export")
    self.assertEqual(exported.returncode, 0, exported.stderr)
    self.assertEqual(sorted(os.listdir(versions_dir)), ["1", "2"])
    self.assertRegex(exported.stdout, r"(?m)^saved_model: [0-9,]+ bytes, benign [0-9.]+, agreement 1\.0$")

    images = np.random.default_rng(0).random((3, 12, 12, 1), np.float32)
    served = self._predict_with_served_model(os.path.join(run_dir, "export", "saved_model"), images)
    keras_model = pipeline.load_model(os.path.join(run_dir, "models", "finetune_s0.9.keras"))
    self.assertEqual(served, np.argmax(keras_model(images, training=False), axis=1).tolist())

    bench_json = os.path.join(self.create_tempdir().full_path, "bench.json")
    bench = _run(f"--export_dir={os.path.join(run_dir, 'export')}", "--bench_runs=3", "--bench_rounds=2",
                 f"--bench_output={bench_json}", command="bench-tflite")
    self.assertEqual(bench.returncode, 0, bench.stderr)
    with open(bench_json) as handle:
      benched = json.load(handle)
    tflite_files = sorted(name[:-len(".tflite")] for name in os.listdir(os.path.join(run_dir, "export", "tflite")))
    self.assertEqual(sorted(benched["artifacts"]), tflite_files)
    for name in tflite_files:
      self.assertIn(f"| {name} |", bench.stdout)
    # The export sits in a run, so the dense-vs-pruned table comes too; --run_dir shows the same.
    self.assertEqual(benched["cost_and_speed"]["pruned"]["macs"], _report(run_dir)["pruned"]["macs"])
    by_run = _run(f"--run_dir={run_dir}", "--bench_runs=2", "--bench_rounds=2", command="bench-tflite")
    self.assertEqual(by_run.returncode, 0, by_run.stderr)
    for output in (bench.stdout, by_run.stdout):
      self.assertRegex(output, r"\| MACs per example \| [0-9,]+ \| [0-9,]+ \| [0-9.]+x \|")
      self.assertIn("| SavedModel serving_default, batch 128 (ms) |", output)

  def _predict_with_served_model(self, export_dir, images):
    """Starts `tfrobprune serve` on free loopback ports, makes one REST Predict call, stops it with SIGTERM; returns
    the served classes."""
    rest_port = _free_port()
    server = subprocess.Popen(
        _command(f"--export_dir={export_dir}", "--model_name=cnn_small", "--host=127.0.0.1",
                 f"--grpc_port={_free_port()}", f"--rest_port={rest_port}", "--max_batch=8", command="serve"),
        env=_env(), cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{rest_port}/v1/models/cnn_small"
    try:
      status = self._wait_until_serving(server, base)
      self.assertEqual(status["model_version_status"][0]["version"], "2")  # the newest version is served
      code, answer = _get(base + ":predict", {"instances": images.tolist()})
      self.assertEqual(code, 200, answer)
    finally:
      server.send_signal(signal.SIGTERM)
      _, stderr = server.communicate(timeout=60)
    self.assertEqual(server.returncode, 0, stderr)
    return [row["classes"] for row in answer["predictions"]]

  def _wait_until_serving(self, server, url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
      if server.poll() is not None:
        self.fail(f"serve exited with {server.returncode}: {server.communicate()[1]}")
      try:
        code, status = _get(url, timeout=5)
        if code == 200:
          return status
      except OSError:
        pass
      time.sleep(0.2)
    self.fail(f"serve did not answer on {url} within {timeout} s")

  def _wait_for_checkpoint(self, output_dir, phase, timeout=300):
    index = os.path.join(output_dir, "checkpoints", phase, "checkpoint")
    deadline = time.time() + timeout
    while not os.path.exists(index):
      if time.time() > deadline:
        self.fail(f"no checkpoint of {phase} after {timeout} s")
      time.sleep(0.05)


if __name__ == "__main__":
  absltest.main()
