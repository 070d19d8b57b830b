"""Tests for tfrobprune.train.distribute and the training loop under tf.distribute strategies.

This process splits its CPU into two logical devices at import, before TensorFlow initialises, so that `mirrored`
has two replicas. `multi_worker` runs as two `tfrobprune train` processes on 127.0.0.1, started when the pipeline
tests begin so that they train while this process runs the single-device and mirrored pipelines.
"""

from tfrobprune.train import distribute

distribute.configure_logical_cpus(2)  # before anything makes TensorFlow initialise its devices

# pylint: disable=g-import-not-at-top,g-bad-import-order
import contextlib
import dataclasses
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np

from tfrobprune import cli
from tfrobprune import config as config_lib
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune import pipeline
from tfrobprune.prune import drivers
from tfrobprune.prune import magnitude
from tfrobprune.prune import pruning_config
from tfrobprune.prune import wrapping
from tfrobprune.robust import objectives
from tfrobprune.train import checkpointing
from tfrobprune.train import training

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pipeline_test's tiny pre-train / prune / fine-tune / evaluate run (under a minute on 2 free cores). Both phases
# use PGD, so the attack runs in the replica function on the dense and on the tfmot-wrapped model.
_TINY = ["--dataset=synthetic", "--synthetic_examples=512,256", "--synthetic_shape=12,12,1", "--model=cnn_small",
         "--objective=pgd", "--pgd_steps=2", "--batch_size=64", "--pretrain_epochs=3", "--finetune_epochs=2",
         "--learning_rate=0.003", "--finetune_learning_rate=0.001", "--sparsity=0.5", "--prune_scope=global",
         "--prune_frequency=2", "--eval_pgd_steps=3", "--eval_pgd_restarts=1", "--noexport", "--noprogress",
         "--checkpoint_every_steps=4"]
# Distributed and single-device runs differ in PGD's random starts (each replica draws the starts of its part of the
# batch) and in summation order, so their accuracies agree only statistically: within 0.05 (13 of 256 test
# examples; seeds 0-2 differed by at most 0.008 at this 50% sparsity, while at 80% pruned PGD accuracy itself
# varied by 0.2 between seeds). With a deterministic objective the runs agree to float precision
# (testPrunedNaturalFineTuningEqualsTheSingleDeviceRun).
_ACCURACY_TOLERANCE = 0.05
_MULTI_WORKER_TIMEOUT = 480  # seconds for both workers; collective ops that hang fail the test instead
_QUIET = pipeline.RunOptions(progress=False, log=lambda line: None)


def _mirrored():
  return distribute.make_strategy("mirrored")


def _images(n, shape, classes, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n).astype(np.int64)
  x = np.clip(rng.normal(0.3 + 0.4 * y[:, None, None, None] / classes, 0.1, (n,) + shape), 0, 1).astype(np.float32)
  return x, y


def _batches(x, y, batch_size):
  return lambda epoch: tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True)


def _linear_model():
  keras.utils.set_random_seed(1)
  return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3, name="logits")])


def _config_from_flags(flags):
  with flagsaver.flagsaver():
    cli.flags.FLAGS.unparse_flags()
    cli.flags.FLAGS(["tfrobprune", *flags])
    return cli.config_from_flags()


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for sock in sockets:
    sock.bind(("127.0.0.1", 0))
  ports = [sock.getsockname()[1] for sock in sockets]
  for sock in sockets:
    sock.close()
  return ports


class StrategyTest(absltest.TestCase):

  def testMirroredHasOneReplicaPerLogicalCpuAndIsChief(self):
    strategy = _mirrored()
    self.assertEqual(strategy.num_replicas_in_sync, 2)
    self.assertEqual(distribute.strategy_name(strategy), "mirrored")
    self.assertTrue(distribute.is_chief(strategy))
    self.assertEqual(distribute.describe(strategy), {"strategy": "mirrored", "replicas": 2, "workers": 1,
                                                     "task": None})
    default = distribute.make_strategy("default")
    self.assertTrue(distribute.is_default(default))
    self.assertFalse(distribute.is_default(strategy))
    self.assertEqual(default.num_replicas_in_sync, 1)
    with self.assertRaisesRegex(ValueError, "distribute must be one of default, mirrored, multi_worker"):
      distribute.make_strategy("tpu")

  def testLogicalCpusCannotChangeOnceTensorFlowRuns(self):
    self.assertLen(tf.config.list_logical_devices("CPU"), 2)  # TensorFlow now runs, with this module's two CPUs
    distribute.configure_logical_cpus(2)  # what the process has: a no-op
    with self.assertRaisesRegex(RuntimeError, r"--logical_cpus=3 must be applied before TensorFlow initialises"):
      distribute.configure_logical_cpus(3)
    self.assertLen(tf.config.list_logical_devices("CPU"), 2)

  def testMultiWorkerNeedsAValidTfConfig(self):
    cases = [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "'worker' list of host:port"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "needs a 'task'"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
         r"index must be in \[0, 1\)"),
    ]
    for value, pattern in cases:
      with self.subTest(tf_config=value):
        environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        if value is not None:
          environ["TF_CONFIG"] = value
        with mock.patch.dict(os.environ, environ, clear=True):
          with self.assertRaisesRegex(ValueError, pattern):
            distribute.make_strategy("multi_worker")

  def testCommandLineNamesTheMissingTfConfigInOneLine(self):
    stderr = io.StringIO()
    environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    with mock.patch.dict(os.environ, environ, clear=True), contextlib.redirect_stderr(stderr):
      with flagsaver.flagsaver(distribute="multi_worker", output_dir=self.create_tempdir().full_path):
        self.assertEqual(cli.main(["tfrobprune", "train"]), 2)
    self.assertRegex(stderr.getvalue(), r"^tfrobprune: error: --distribute=multi_worker needs the TF_CONFIG")

  def testChiefIsTheChiefTaskOrWorkerZeroWithoutOne(self):
    self.assertTrue(distribute.is_chief_task(None, 0, {}))
    self.assertTrue(distribute.is_chief_task("worker", 0, {"worker": ["a:1", "b:1"]}))
    self.assertFalse(distribute.is_chief_task("worker", 1, {"worker": ["a:1", "b:1"]}))
    self.assertTrue(distribute.is_chief_task("chief", 0, {"chief": ["a:1"], "worker": ["b:1"]}))
    self.assertFalse(distribute.is_chief_task("worker", 0, {"chief": ["a:1"], "worker": ["b:1"]}))

  def testGlobalBatchMustSplitEvenlyOverReplicas(self):
    distribute.check_global_batch(32, _mirrored())
    with self.assertRaisesRegex(ValueError, r"--batch_size=33 is the global batch and must be a multiple of the "
                                r"2 replicas of the mirrored strategy; use e.g. --batch_size=32"):
      distribute.check_global_batch(33, _mirrored())

  def testRunConfigRecordsTheStrategyAndOldRecordsStillResume(self):
    with self.assertRaisesRegex(ValueError, "distribute must be one of"):
      config_lib.RunConfig(distribute="tpu")
    mirrored = config_lib.RunConfig(distribute="mirrored")
    self.assertEqual(config_lib.RunConfig.from_dict(json.loads(mirrored.to_json())), mirrored)
    default = config_lib.RunConfig().to_dict()
    recorded_before_the_field = {k: v for k, v in default.items() if k != "distribute"}
    self.assertEqual(config_lib.differing_fields(recorded_before_the_field, default), [])
    self.assertEqual(config_lib.differing_fields(recorded_before_the_field, mirrored.to_dict()), ["distribute"])
    self.assertEqual(_config_from_flags(["--distribute=mirrored"]).distribute, "mirrored")


class MirroredTrainingTest(tf.test.TestCase):

  def _one_step(self, strategy, x, y):
    with strategy.scope():
      model = _linear_model()
      optimizer = training.make_optimizer(training.TrainConfig(learning_rate=0.5, optimizer="sgd"), 1)
      trainer = training.Trainer(model, objectives.make_objective(objectives.ObjectiveConfig(), 3), optimizer,
                                 weight_decay=0.1)
    training.train(trainer, _batches(x, y, len(x)), 1, progress=False)
    return model.get_weights()

  def testOneStepOnTwoReplicasEqualsTheSingleDeviceStepOnTheGlobalBatch(self):
    x, y = _images(16, (4, 4, 1), 3)
    initial = _linear_model().get_weights()
    single = self._one_step(distribute.make_strategy("default"), x, y)
    mirrored = self._one_step(_mirrored(), x, y)
    for before, one, two in zip(initial, single, mirrored):
      self.assertGreater(np.abs(one - before).max(), 1e-2)  # the step moved the weights
      self.assertAllClose(two, one, atol=1e-5, rtol=0)  # a missing 1/replicas would double the step

  def testNonFiniteLossOnOneReplicaSkipsTheUpdateOnEveryReplica(self):
    x, y = _images(16, (4, 4, 1), 3)
    x[3] = np.nan  # in the first replica's half of the batch only
    strategy = _mirrored()
    with strategy.scope():
      model = _linear_model()
      trainer = training.Trainer(model, objectives.make_objective(objectives.ObjectiveConfig(), 3),
                                 keras.optimizers.Adam(0.1))
    before = model.get_weights()
    with self.assertRaisesRegex(training.NonFiniteLossError, "not finite at step 0"):
      training.train(trainer, _batches(x, y, 16), 1, progress=False)
    for old, new in zip(before, model.get_weights()):
      self.assertAllEqual(old, new)
    self.assertEqual(int(trainer.optimizer.iterations.numpy()), 0)

  def testPrunedPgdFineTuningKeepsMasksIdenticalOnEveryReplica(self):
    strategy = _mirrored()
    x, y = _images(128, (12, 12, 1), 3)
    dense = models.build_model("cnn_small", (12, 12, 1), 3, seed=0)
    with strategy.scope():
      wrapped = magnitude.prune_model(dense, pruning_config.PruningConfig(target_sparsity=0.7, frequency=2, end_step=6))
      objective = objectives.make_objective(objectives.ObjectiveConfig(name="pgd", eps=0.1, pgd_steps=2), 3)
      trainer = training.Trainer(wrapped, objective, keras.optimizers.Adam(1e-3))
    driver = drivers.PruningStepDriver(wrapped)
    training.train(trainer, _batches(x, y, 32), 2, pruning_driver=driver, progress=False)
    self.assertEqual(trainer.train_step.experimental_get_tracing_count(), 1)
    wrappers = wrapping.pruning_wrapper.collect_prunable_layers(wrapped)
    self.assertLen(wrappers, 4)
    for wrapper in wrappers:
      kernel, mask, threshold = wrapper.pruning_vars[0]
      masks = [m.numpy() for m in strategy.experimental_local_results(mask)]
      self.assertLen(masks, 2)
      self.assertAlmostEqual(1 - masks[0].mean(), 0.7, delta=0.01, msg=wrapper.name)
      for name, variable in (("mask", mask), ("threshold", threshold), ("kernel", kernel),
                             ("pruning_step", wrapper.pruning_step)):
        values = [v.numpy() for v in strategy.experimental_local_results(variable)]
        self.assertAllEqual(values[1], values[0], msg=f"{wrapper.name} {name}")
      self.assertEqual(int(wrapper.pruning_step.numpy()), 8)
    stripped = distribute.strip_pruning(wrapped, strategy)
    self.assertFalse(any(isinstance(w, tf.distribute.DistributedValues) for w in stripped.weights))
    for wrapper in wrappers:
      kernel, mask, _ = wrapper.pruning_vars[0]
      self.assertAllEqual(stripped.get_layer(wrapper.layer.name).kernel.numpy(), kernel.numpy() * mask.numpy())
      self.assertAlmostEqual(float(np.mean(stripped.get_layer(wrapper.layer.name).kernel.numpy() == 0)), 0.7,
                             delta=0.01)

  def testPrunedNaturalFineTuningEqualsTheSingleDeviceRun(self):
    x, y = _images(128, (12, 12, 1), 3)
    dense = models.build_model("cnn_small", (12, 12, 1), 3, seed=0)
    results = []
    for strategy in (distribute.make_strategy("default"), _mirrored()):
      with strategy.scope():
        wrapped = magnitude.prune_model(dense, pruning_config.PruningConfig(target_sparsity=0.7, frequency=2, end_step=6))
        trainer = training.Trainer(wrapped, objectives.make_objective(objectives.ObjectiveConfig(), 3),
                                   keras.optimizers.Adam(1e-3))
      history = training.train(trainer, _batches(x, y, 32), 2, pruning_driver=drivers.PruningStepDriver(wrapped),
                               progress=False)
      results.append((history, distribute.strip_pruning(wrapped, strategy).get_weights()))
    (single_history, single), (mirrored_history, mirrored) = results
    self.assertAllClose(mirrored_history[-1]["loss"], single_history[-1]["loss"], atol=1e-6, rtol=0)
    for one, two in zip(single, mirrored):
      self.assertAllEqual(two == 0, one == 0)  # the same masks
      self.assertAllClose(two, one, atol=1e-5, rtol=0)

  def testStopAndResumeUnderMirroredMatchesAnUninterruptedRun(self):
    strategy = _mirrored()
    x, y = _images(128, (4, 4, 1), 3)

    def trainer():
      with strategy.scope():
        optimizer = training.make_optimizer(training.TrainConfig(epochs=2, learning_rate=0.05), 4)
        return training.Trainer(_linear_model(), objectives.make_objective(objectives.ObjectiveConfig(), 3),
                                optimizer)

    uninterrupted = trainer()
    training.train(uninterrupted, _batches(x, y, 32), 2, progress=False)
    directory = self.create_tempdir().full_path
    first, polls = trainer(), []
    with self.assertRaisesRegex(training.TrainingInterrupted, "epoch 2, after step 1"):
      training.train(first, _batches(x, y, 32), 2, progress=False,
                     checkpointer=checkpointing.PhaseCheckpointer(directory, first),
                     should_stop=lambda: polls.append(1) or len(polls) == 5)
    resumed = trainer()
    training.train(resumed, _batches(x, y, 32), 2, progress=False,
                   checkpointer=checkpointing.PhaseCheckpointer(directory, resumed))
    self.assertEqual(int(resumed.optimizer.iterations.numpy()), 8)
    for expected, actual in zip(uninterrupted.model.get_weights(), resumed.model.get_weights()):
      self.assertAllClose(actual, expected, atol=1e-6, rtol=0)


class _Workers:
  """The processes of one multi-worker cluster on 127.0.0.1, worker i running `python <arguments[i]>`."""

  def __init__(self, arguments, output_dirs=()):
    self.output_dirs = output_dirs
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(len(arguments))]
    logs = tempfile.mkdtemp(prefix="worker-logs-")
    self.processes = []
    for index, worker_arguments in enumerate(arguments):
      tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
      env = dict(os.environ, TF_CONFIG=json.dumps(tf_config),
                 PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
      # Files, not pipes: TensorFlow logs every collective, which would fill a pipe nobody reads yet.
      stdout = open(os.path.join(logs, f"worker{index}.out"), "w+")
      stderr = open(os.path.join(logs, f"worker{index}.err"), "w+")
      self.processes.append((subprocess.Popen([sys.executable, *worker_arguments], env=env, cwd=_ROOT,
                                              stdout=stdout, stderr=stderr), stdout, stderr))

  @classmethod
  def train(cls, flags, output_dirs):
    """One `tfrobprune train --distribute=multi_worker` worker per output directory."""
    return cls([["-m", "tfrobprune.cli", "train", *flags, "--distribute=multi_worker", f"--output_dir={output_dir}"]
                for output_dir in output_dirs], output_dirs)

  def wait(self):
    """[(exit code, stdout, stderr)] of every worker; a worker still running after the timeout is killed."""
    results = []
    for process, stdout, stderr in self.processes:
      try:
        process.wait(timeout=_MULTI_WORKER_TIMEOUT)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      stdout.seek(0)
      stderr.seek(0)
      results.append((process.returncode, stdout.read(), stderr.read()))
      stdout.close()
      stderr.close()
    return results

  def kill(self):
    for process, _, _ in self.processes:
      if process.poll() is None:
        process.kill()
        process.wait()


# A worker of `AgreementOnThreeWorkersTest`: all workers agree on 7, then each offers its own value (argv[1]).
_AGREEMENT_WORKER = """
import sys
from tfrobprune.train import distribute
strategy = distribute.make_strategy("multi_worker")
distribute.check_workers_agree(strategy, 7, "a value every worker holds")
print("agreed on 7", flush=True)
try:
  distribute.check_workers_agree(strategy, int(sys.argv[1]), "the test's values")
except ValueError as error:
  print("refused:", error)
else:
  print("went on")
"""


class AgreementOnThreeWorkersTest(absltest.TestCase):

  def testEveryWorkerRefusesWhenTheyDisagreeEvenTheOneHoldingTheMean(self):
    # Worker 1 holds 2, the mean of 1, 2, 3: it must refuse with the others, or it goes on alone and hangs.
    workers = _Workers([["-c", _AGREEMENT_WORKER, str(value)] for value in (1, 2, 3)])
    try:
      results = workers.wait()
    finally:
      workers.kill()
    for index, (code, stdout, stderr) in enumerate(results):
      with self.subTest(worker=index):
        self.assertEqual(code, 0, f"{stdout}\n{stderr[-3000:]}")
        self.assertIn("agreed on 7", stdout)
        self.assertRegex(stdout, rf"refused: The workers disagree about the test's values \(this worker, "
                         rf"worker:{index}, is one of 3 different states among 3 replicas\)")


class PipelineUnderStrategiesTest(absltest.TestCase):
  """The tiny run of `_TINY` on one device, on two mirrored replicas, and on two workers of two processes."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    run_dir = tempfile.mkdtemp(prefix="multi-worker-")
    cls.workers = _Workers.train(_TINY, [run_dir, run_dir])  # one shared output directory, as on a shared filesystem
    # The chief's directory holds a run with pre-training finished, the other worker's directory is empty.
    resumed_dir = tempfile.mkdtemp(prefix="resumed-")
    progress = {"config": json.loads(_config_from_flags(_TINY + ["--distribute=multi_worker"]).to_json()),
                "completed": {"pretrain": {"history": []}}}
    with open(os.path.join(resumed_dir, checkpointing.PROGRESS_FILE), "w") as handle:
      json.dump(progress, handle)
    cls.disagreeing_workers = _Workers.train(_TINY, [resumed_dir, tempfile.mkdtemp(prefix="empty-")])
    cls.config = _config_from_flags(_TINY)
    cls.reference = pipeline.run(cls.config, tempfile.mkdtemp(prefix="single-"), _QUIET)

  @classmethod
  def tearDownClass(cls):
    cls.workers.kill()
    cls.disagreeing_workers.kill()
    super().tearDownClass()

  def _assert_matches_the_single_device_run(self, report):
    self.assertAlmostEqual(report["pruned"]["sparsity"], self.reference["pruned"]["sparsity"], places=6)
    self.assertAlmostEqual(report["pruned"]["sparsity"], 0.5, delta=0.001)
    for model in ("dense", "pruned"):
      for metric in ("benign_acc", "pgd_acc"):
        with self.subTest(model=model, metric=metric):
          self.assertAlmostEqual(report[model][metric], self.reference[model][metric], delta=_ACCURACY_TOLERANCE)
    self.assertGreater(report["dense"]["benign_acc"], 0.8)  # both learnt: the comparison is not of chance levels

  def testMirroredRunMatchesTheSingleDeviceRun(self):
    self.assertEqual(self.reference["distribute"], {"strategy": "default", "replicas": 1, "workers": 1,
                                                    "task": None})
    config = dataclasses.replace(self.config, distribute="mirrored")
    report = pipeline.run(config, self.create_tempdir().full_path,
                          dataclasses.replace(_QUIET, strategy=_mirrored()))
    self.assertEqual(report["config"]["distribute"], "mirrored")
    self.assertEqual(report["distribute"], {"strategy": "mirrored", "replicas": 2, "workers": 1, "task": None})
    self._assert_matches_the_single_device_run(report)

  def testMultiWorkerRunOnTwoProcessesMatchesTheSingleDeviceRun(self):
    (chief_code, chief_out, chief_err), (worker_code, worker_out, worker_err) = self.workers.wait()
    self.assertEqual(chief_code, 0, f"the chief failed or hung:\n{chief_out}\n{chief_err[-3000:]}")
    self.assertEqual(worker_code, 0, f"worker 1 failed or hung:\n{worker_out}\n{worker_err[-3000:]}")
    self.assertIn("this process is the chief", chief_out)
    self.assertIn("This worker has finished; the chief wrote the report.", worker_out)
    private = re.search(r"writes into (\S+) \(deleted", worker_out).group(1)
    self.assertFalse(os.path.exists(private), "the non-chief worker's directory is deleted")
    with open(os.path.join(self.workers.output_dirs[0], "report.json")) as handle:
      report = json.load(handle)
    self.assertEqual(report["config"]["distribute"], "multi_worker")
    self.assertEqual(report["distribute"], {"strategy": "multi_worker", "replicas": 2, "workers": 2,
                                            "task": "worker:0"})
    self._assert_matches_the_single_device_run(report)

  def testWorkersThatDisagreeWhereTheRunStandsBothStopWithAOneLineError(self):
    for code, stdout, stderr in self.disagreeing_workers.wait():
      self.assertEqual(code, 2, f"{stdout}\n{stderr[-3000:]}")
      errors = [line for line in stderr.splitlines() if line.startswith("tfrobprune: error:")]
      self.assertLen(errors, 1, stderr[-3000:])
      self.assertRegex(errors[0], "The workers disagree about the finished parts and checkpoints of the run")

if __name__ == "__main__":
  absltest.main()
