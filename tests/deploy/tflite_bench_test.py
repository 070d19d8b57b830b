"""Tests for tfrobprune.deploy.tflite_bench: LiteRT latency and size of the TFLite artifacts of a tiny export."""

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import tflite  # noqa: E402
from tfrobprune.deploy import tflite_bench  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402

_SHAPE = (12, 12, 1)
_ARTIFACTS = ("dense_float32", "float32", "int8_sparse")


class BenchTfliteTest(tf.test.TestCase):
  """A dense and a 90%-pruned cnn_small exported the way export_all lays them out (export_dir/tflite/)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    dense = models.build_model("cnn_small", _SHAPE, 10, seed=0)
    pruned = wrapping.strip(wrapping.fixed_mask_prune(dense, deploy_test_utils.magnitude_masks(dense, 0.9)))
    cls.images = np.random.default_rng(0).random((8,) + _SHAPE, np.float32)
    cls.export_dir = tempfile.mkdtemp(prefix="tflite_bench_test-")
    tflite_dir = os.path.join(cls.export_dir, "tflite")
    os.makedirs(tflite_dir)
    tflite.export_tflite(dense, os.path.join(tflite_dir, "dense_float32.tflite"), "float32")
    tflite.export_tflite(pruned, os.path.join(tflite_dir, "float32.tflite"), "float32")
    tflite.export_tflite(pruned, os.path.join(tflite_dir, "int8_sparse.tflite"), "int8_sparse", cls.images)
    cls.output_path = os.path.join(cls.export_dir, "bench.json")
    cls.results = tflite_bench.bench_tflite(cls.export_dir, cls.images, runs=5, threads=(1, 2),
                                            output_path=cls.output_path)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.export_dir, ignore_errors=True)
    super().tearDownClass()

  def testMeasuresAPositiveMedianForEachArtifactAndThreadCount(self):
    self.assertEqual(list(self.results["artifacts"]), list(_ARTIFACTS))  # baseline first, then variant order
    for name, figures in self.results["artifacts"].items():
      for threads in ("1", "2"):
        self.assertGreater(figures["median_ms"][threads], 0.0, (name, threads))
        self.assertGreaterEqual(figures["p90_ms"][threads], figures["median_ms"][threads], (name, threads))
        self.assertIn(figures["runtime"][threads], ("xnnpack", "builtin_no_delegates"))

  def testComparesSizesWithTheDenseFloatBaseline(self):
    artifacts = self.results["artifacts"]
    self.assertEqual(self.results["baseline"], "dense_float32")
    self.assertEqual(artifacts["dense_float32"]["size_ratio_vs_dense_float"], 1.0)
    self.assertGreater(artifacts["int8_sparse"]["size_ratio_vs_dense_float"], 4.0)
    self.assertEqual(artifacts["int8_sparse"]["runtime"]["1"], "builtin_no_delegates")

  def testTableListsEveryArtifactWithBothThreadCounts(self):
    table = tflite_bench.format_table(self.results)
    self.assertIn("median ms (1 thread)", table)
    self.assertIn("median ms (2 threads)", table)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "artifact" not in line]
    self.assertEqual([row.split("|")[1].strip() for row in rows], list(_ARTIFACTS))
    self.assertIn("builtin_no_delegates", rows[2])

  def testWritesTheResultsAsJson(self):
    with open(self.output_path) as handle:
      self.assertEqual(json.load(handle), json.loads(json.dumps(self.results)))

  def testWithoutBaseline_RatiosAreNone(self):
    directory = self.create_tempdir().full_path
    shutil.copy(os.path.join(self.export_dir, "tflite", "float32.tflite"), directory)
    results = tflite_bench.bench_tflite(directory, self.images, runs=2, threads=(1,))
    self.assertIsNone(results["baseline"])
    self.assertIsNone(results["artifacts"]["float32"]["size_ratio_vs_dense_float"])
    self.assertIn("| float32 |", tflite_bench.format_table(results))

  def testNoTfliteFiles_RaisesNamingTheDirectory(self):
    directory = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, directory):
      tflite_bench.bench_tflite(directory, self.images)

  def testBadRunsOrThreads_Raise(self):
    for kwargs in (dict(runs=0), dict(threads=(0,)), dict(threads=())):
      with self.assertRaises(ValueError):
        tflite_bench.bench_tflite(self.export_dir, self.images, **kwargs)


if __name__ == "__main__":
  tf.test.main()
