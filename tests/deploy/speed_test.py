"""Tests for tfrobprune.deploy.speed: interleaved rounds (through an injected clock) and the dense-vs-pruned table
of real exported files. No assertion depends on how fast anything ran."""

import os
import shutil
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import saved_model  # noqa: E402
from tfrobprune.deploy import speed  # noqa: E402
from tfrobprune.deploy import tflite  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune import models  # noqa: E402

_SHAPE = (12, 12, 1)


class FakeClock:
  """A clock that functions advance by their nominal cost; it logs each reading beside the calls."""

  def __init__(self, log):
    self.now, self.log = 0.0, log

  def __call__(self):
    self.log.append("tick")
    return self.now

  def call(self, name, seconds):
    def run():
      self.log.append(name)
      self.now += seconds
    return run


class InterleavedMediansTest(tf.test.TestCase):

  def testRoundsAlternateTheOrderOfTheModels(self):
    log = []
    clock = FakeClock(log)
    calls = {"dense": clock.call("dense", 0.003), "pruned": clock.call("pruned", 0.001)}
    medians, per_round = speed.interleaved_medians(calls, rounds=4, calls_per_round=2, clock=clock)
    warmup = ["dense"] * 3 + ["pruned"] * 3
    self.assertEqual(log[:6], warmup)
    rounds = [name for name in log[6:] if name != "tick"]
    pairs = [rounds[i:i + 4] for i in range(0, len(rounds), 4)]
    self.assertEqual(pairs, [["dense", "dense", "pruned", "pruned"], ["pruned", "pruned", "dense", "dense"]] * 2)
    self.assertEqual(log[6:10], ["tick", "dense", "dense", "tick"])  # only the calls sit between two readings
    self.assertEqual(per_round, 2)
    self.assertAlmostEqual(medians["dense"], 3.0)
    self.assertAlmostEqual(medians["pruned"], 1.0)

  def testMedianIgnoresARoundSpoiledByAnInterruption(self):
    log, costs = [], iter([0.001] * 3 + [0.001, 0.050, 0.001, 0.001, 0.001])
    clock = FakeClock(log)

    def call():
      clock.now += next(costs)

    medians, _ = speed.interleaved_medians({"model": call}, rounds=5, calls_per_round=1, clock=clock)
    self.assertAlmostEqual(medians["model"], 1.0)

  def testCalibrationMakesRoundsAtLeastTheMinimumLong(self):
    log = []
    clock = FakeClock(log)
    calls = {"slow": clock.call("slow", 0.004), "fast": clock.call("fast", 0.001)}
    _, per_round = speed.interleaved_medians(calls, rounds=1, min_round_seconds=0.02, clock=clock)
    self.assertEqual(per_round, 5)  # the slowest call, 4 ms, five times per round

  def testBadArguments_Raise(self):
    with self.assertRaisesRegex(ValueError, "rounds"):
      speed.interleaved_medians({"a": lambda: None}, rounds=0)
    with self.assertRaisesRegex(ValueError, "calls_per_round"):
      speed.interleaved_medians({"a": lambda: None}, rounds=1, calls_per_round=0)
    with self.assertRaisesRegex(ValueError, "at least one"):
      speed.interleaved_medians({}, rounds=1)


class CompareModelsTest(tf.test.TestCase):
  """cnn_small and a copy with a quarter of its channels; the pruned one exported as export_all lays it out."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dense = models.build_model("cnn_small", _SHAPE, 10, seed=0)
    cls.pruned = deploy_test_utils.narrower_copy(cls.dense, 0.25)
    cls.export_dir = tempfile.mkdtemp(prefix="speed_test-")
    tflite_dir = os.path.join(cls.export_dir, "tflite")
    os.makedirs(tflite_dir)
    tflite.export_tflite(cls.dense, os.path.join(tflite_dir, "dense_float32.tflite"), "float32")
    tflite.export_tflite(cls.pruned, os.path.join(tflite_dir, "float32.tflite"), "float32")
    for version in (1, 2):
      saved_model.export_saved_model(cls.pruned, os.path.join(cls.export_dir, "saved_model"), "cnn_small", version)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.export_dir, ignore_errors=True)
    super().tearDownClass()

  def testExportedFiles_AreTheFloatTfliteFilesAndTheNewestSavedModel(self):
    files = speed.exported_files(self.export_dir, "cnn_small")
    tflite_dir = os.path.join(self.export_dir, "tflite")
    self.assertEqual(files, {
        "dense": {"tflite": os.path.join(tflite_dir, "dense_float32.tflite"), "saved_model": None},
        "pruned": {"tflite": os.path.join(tflite_dir, "float32.tflite"),
                   "saved_model": os.path.join(self.export_dir, "saved_model", "cnn_small", "2")}})

  def testTimesTheExportedFilesAndATemporaryDenseSavedModel_PositiveMediansForBoth(self):
    with mock.patch.object(speed, "measure_speed", wraps=speed.measure_speed) as measured:
      result = speed.compare_models(self.dense, self.pruned, self.export_dir, "cnn_small", rounds=3,
                                    min_round_seconds=0.001)
    files = measured.call_args.args[0]
    self.assertEqual(files["pruned"], speed.exported_files(self.export_dir, "cnn_small")["pruned"])
    self.assertEqual(files["dense"]["tflite"], os.path.join(self.export_dir, "tflite", "dense_float32.tflite"))
    self.assertFalse(files["dense"]["saved_model"].startswith(self.export_dir))
    self.assertFalse(os.path.exists(files["dense"]["saved_model"]))  # the temporary directory is gone
    for metric in (speed.TFLITE_BATCH1, speed.SAVEDMODEL_BATCH128):
      self.assertEqual(list(result[metric]), ["dense", "pruned"])
      for name in ("dense", "pruned"):
        self.assertGreater(result[metric][name], 0.0, (metric, name))
    self.assertEqual(result["tflite_runtime"], {"dense": "xnnpack", "pruned": "xnnpack"})
    self.assertEqual(result["rounds"], 3)

  def testWithoutExport_WritesEveryFileTemporarilyAndCallsTheClockPerRound(self):
    readings = []

    def clock():
      readings.append(None)
      return len(readings) * 1e-3

    result = speed.compare_models(self.dense, self.pruned, rounds=2, min_round_seconds=0.0, clock=clock)
    # Per runtime: one calibration call per model (2 readings each), then 2 rounds x 2 models (2 readings each).
    self.assertLen(readings, 2 * (2 * 2 + 2 * 2 * 2))
    self.assertEqual(sorted(result[speed.SAVEDMODEL_BATCH128]), ["dense", "pruned"])

  def testModelsOfDifferentInputShapes_Raise(self):
    other = models.build_model("cnn_small", (16, 16, 1), 10, seed=0)
    with self.assertRaisesRegex(ValueError, "input shape|shape"):
      speed.compare_models(self.dense, other)

  def testMissingFile_RaisesNamingTheModel(self):
    files = {"pruned": {"tflite": os.path.join(self.export_dir, "tflite", "float32.tflite"), "saved_model": None}}
    with self.assertRaisesRegex(ValueError, "saved_model file for model 'pruned'"):
      speed.measure_speed(files, _SHAPE)

  def testExportDirWithoutModelName_Raises(self):
    with self.assertRaisesRegex(ValueError, "model_name"):
      speed.compare_models(self.dense, self.pruned, self.export_dir)


if __name__ == "__main__":
  tf.test.main()
