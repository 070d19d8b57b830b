"""Tests for tfrobprune.deploy.export: `export_all` writes every artifact, re-measures it and records it."""

import hashlib
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import export  # noqa: E402
from tfrobprune.deploy import tflite  # noqa: E402
from tfrobprune.deploy import tflite_runner  # noqa: E402
from tfrobprune.evaluate import evaluation  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import stats  # noqa: E402
from tfrobprune.robust import square  # noqa: E402

_SQUARE = dict(square_eps=0.2, square_examples=24, square_queries=200, square_seed=5)


def _predict(model, images):
  return model(images, training=False).numpy()


class _Shared:
  """One trained, pruned (80%) cnn_small and one `export_all` run, built once for all test classes."""

  built = None

  @classmethod
  def get(cls):
    if cls.built is None:
      cls.built = cls()
    return cls.built

  def __init__(self):
    (self.x_train, self.y_train, self.x_test, self.y_test, self.dense,
     self.model) = deploy_test_utils.pruned_fixture()
    self.keras_logits = _predict(self.model, self.x_test)
    self.keras_predictions = np.argmax(self.keras_logits, axis=1)
    eval_config = evaluation.EvalConfig(eps=0.1, pgd_steps=5, pgd_restarts=1, fgsm=False, batch_size=128)
    self.keras_results, self.x_adv = evaluation.evaluate_model(self.model, self.x_test, self.y_test, eval_config,
                                                               deploy_test_utils.CLASSES, return_adversarial=True)
    self.output_dir = tempfile.mkdtemp(prefix="export_test-")
    self.sparsity = stats.parameter_counts(self.model)["sparsity"]
    self.artifacts = export.export_all(
        self.model, self.output_dir, model_name=deploy_test_utils.MODEL_NAME, x_test=self.x_test, y_test=self.y_test,
        x_adv=self.x_adv, keras_predictions=self.keras_predictions, representative_images=self.x_train,
        source_run={"config": {"model": deploy_test_utils.MODEL_NAME}}, sparsity=self.sparsity, dense_model=self.dense,
        pqat_data=(self.x_train, self.y_train), **_SQUARE)
    self.export_dir = os.path.join(self.output_dir, "export")
    self.saved_model_path = os.path.join(self.export_dir, "saved_model", deploy_test_utils.MODEL_NAME, "1")
    with open(os.path.join(self.export_dir, "manifest.json")) as handle:
      self.manifest = json.load(handle)


def tearDownModule():
  if _Shared.built is not None:
    shutil.rmtree(_Shared.built.output_dir, ignore_errors=True)


class ExportTestCase(tf.test.TestCase, parameterized.TestCase):
  """Gives each test the shared fixture's attributes (self.model, self.x_test, self.artifacts, ...)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    for name, value in vars(_Shared.get()).items():
      setattr(cls, name, value)


class ExportAllTest(ExportTestCase):

  def testFixture_PrunedModelIsSparseAndAccurate(self):
    self.assertAlmostEqual(self.sparsity, 0.8, delta=0.01)
    self.assertGreater(self.keras_results["benign_acc"], 0.9)

  def testVerifiedInAFreshProcess_ReproducesKerasWithoutTheStandardizeClass(self):
    # export_all's 'saved_model' figures come from verify_saved_model_in_subprocess (one child process per run).
    figures, entry = self.artifacts["saved_model"], self.manifest["artifacts"]["saved_model"]
    self.assertIn("fresh process", figures["runtime"])
    self.assertEqual(figures["benign_acc"], self.keras_results["benign_acc"])
    self.assertEqual(figures["transfer_pgd_acc"], self.keras_results["pgd_acc"])
    self.assertEqual(figures["agreement"], 1.0)
    self.assertEqual(figures["adversarial_agreement"], 1.0)
    self.assertLess(figures["max_abs_logit_diff"], 1e-5)
    self.assertTrue(entry["loaded_without_tfrobprune_models"])
    self.assertEqual(entry["signature"]["inputs"], {"images": ["float32", [None, *deploy_test_utils.SHAPE]]})
    self.assertEqual(entry["signature"]["outputs"]["classes"], ["int64", [None]])

  def testReportsEveryArtifactWithItsFigures(self):
    expected = {"saved_model", "dense_float32", "pqat_int8", *tflite.TFLITE_VARIANTS}
    self.assertEqual(set(self.artifacts), expected)
    for name, figures in self.artifacts.items():
      for key in ("bytes", "gzip_bytes", "benign_acc", "transfer_pgd_acc", "agreement", "runtime",
                  "size_ratio_vs_dense_float"):
        self.assertIn(key, figures, name)
      self.assertNotIn("pgd_acc", figures, name)  # a transfer figure, named as one
      self.assertEqual("square_acc" in figures, name != "saved_model", name)  # every flatbuffer is attacked
    self.assertEqual(self.artifacts["int8_sparse"]["runtime"], "builtin_no_delegates")
    self.assertEqual(self.artifacts["float32"]["runtime"], "xnnpack")
    self.assertIn("fresh process", self.artifacts["saved_model"]["runtime"])
    self.assertEqual(self.artifacts["dense_float32"]["size_ratio_vs_dense_float"], 1.0)
    for variant in tflite.TFLITE_VARIANTS:
      self.assertBetween(self.artifacts[variant]["pgd_ties"], 0.0, 1.0)
    self.assertEqual(self.artifacts["float32"]["benign_ties"], 0.0)
    self.assertGreater(self.artifacts["int8_sparse"]["size_ratio_vs_dense_float"], 4.0)

  @parameterized.named_parameters(("SavedModel", "saved_model"), ("Float32", "float32"),
                                  ("Float32Sparse", "float32_sparse"))
  def testLosslessArtifacts_ReproduceKerasAccuracies(self, name):
    figures = self.artifacts[name]
    self.assertEqual(figures["benign_acc"], self.keras_results["benign_acc"])
    self.assertEqual(figures["transfer_pgd_acc"], self.keras_results["pgd_acc"])
    self.assertEqual(figures["agreement"], 1.0)
    self.assertLess(figures["max_abs_logit_diff"], 1e-4)

  def testSquareOnEachFlatbuffer_AttacksItsOwnInterpreter(self):
    x, y = self.x_test[:24], self.y_test[:24]
    _, keras_robust = square.square_attack(square.keras_logits_fn(self.model), x, y, 0.2, n_queries=200, seed=5)
    self.assertLess(keras_robust.mean(), self.keras_results["benign_acc"])  # the attack bites at this budget
    for name in ("float32", "float32_sparse"):  # the same function as Keras: the same examples broken
      self.assertEqual(self.artifacts[name]["square_acc"], keras_robust.mean(), name)
    for name, figures in self.artifacts.items():
      if name == "saved_model":
        continue
      self.assertEqual((figures["square_examples"], figures["square_queries"] <= 201), (24, True), name)
      logits, _ = tflite_runner.run_tflite(os.path.join(self.export_dir, self.manifest["artifacts"][name]["path"]), x)
      self.assertLessEqual(figures["square_acc"], np.mean(square.margins(logits, y) >= 0), name)  # ties count 1
      self.assertBetween(figures["square_ties"], 0.0, 1.0)

  def testInt8Artifacts_AgreeWithKeras(self):
    for variant in ("int8_dynamic", "int8_full", "int8_sparse", "int8_float_logits", "pqat_int8"):
      self.assertGreaterEqual(self.artifacts[variant]["agreement"], 0.9, variant)

  def testManifest_ChecksumsAndSizesMatchTheFiles(self):
    artifacts = self.manifest["artifacts"]
    for name, entry in artifacts.items():
      path = os.path.join(self.export_dir, entry["path"])
      if name == "saved_model":
        for relative, digest in entry["files"].items():
          with open(os.path.join(path, relative), "rb") as handle:
            self.assertEqual(hashlib.sha256(handle.read()).hexdigest(), digest, relative)
        self.assertEqual(entry["bytes"], sum(os.path.getsize(os.path.join(path, f)) for f in entry["files"]))
        continue
      with open(path, "rb") as handle:
        content = handle.read()
      self.assertEqual(entry["sha256"], hashlib.sha256(content).hexdigest(), name)
      self.assertEqual(entry["bytes"], len(content), name)
      self.assertEqual(entry["gzip_bytes"], self.artifacts[name]["gzip_bytes"], name)
      self.assertIn(entry["runtime"], ("xnnpack", "builtin_no_delegates"))
      self.assertIn("quantization", entry)

  def testManifest_RecordsTheRunSparsityAndKerasReference(self):
    self.assertEqual(self.manifest["source_run"], {"config": {"model": deploy_test_utils.MODEL_NAME}})
    self.assertAlmostEqual(self.manifest["sparsity"], self.sparsity)
    self.assertEqual(self.manifest["keras"]["benign_acc"], self.keras_results["benign_acc"])
    self.assertEqual(self.manifest["keras"]["pgd_acc"], self.keras_results["pgd_acc"])
    self.assertEqual(self.manifest["square_attack"],
                     {"eps": 0.2, "norm": "linf", "examples": 24, "queries": 200, "seed": 5})
    self.assertEqual(self.manifest["artifacts"]["int8_full"]["square_acc"], self.artifacts["int8_full"]["square_acc"])
    self.assertEqual(self.manifest["artifacts"]["saved_model"]["path"],
                     os.path.join("saved_model", deploy_test_utils.MODEL_NAME, "1"))
    self.assertIn("FULLY_CONNECTED", self.manifest["artifacts"]["int8_sparse"]["xnnpack_error"])
    leftovers = [name for _, _, names in os.walk(self.export_dir) for name in names if name.startswith(".")]
    self.assertEqual(leftovers, [])

  def testPqat_KeepsEveryPrunedWeightZeroAndIsSparseEncoded(self):
    entry = self.manifest["artifacts"]["pqat_int8"]
    self.assertEqual(entry["zeros_kept"], {"conv1": 1.0, "conv2": 1.0, "fc1": 1.0, "logits": 1.0})
    self.assertNotEmpty(entry["sparse_encoding"])
    self.assertLess(entry["bytes"], 0.8 * self.artifacts["int8_full"]["bytes"])
    self.assertIn("quantization-aware", entry["quantization"])

  def testMismatchedAdversarialExamples_Raise(self):
    with self.assertRaisesRegex(ValueError, "x_adv"):
      export.export_all(self.model, self.create_tempdir().full_path, model_name="m", x_test=self.x_test,
                        y_test=self.y_test, x_adv=self.x_adv[:3], keras_predictions=self.keras_predictions,
                        representative_images=self.x_train, source_run={}, sparsity=0.8)


if __name__ == "__main__":
  tf.test.main()
