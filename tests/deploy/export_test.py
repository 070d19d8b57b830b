"""Tests for tfrobprune.deploy.export: every artifact is loaded in its runtime and re-measured against the Keras model."""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

from tfrobprune.deploy import export  # noqa: E402
from tfrobprune.evaluate import evaluation  # noqa: E402
from tfrobprune.keras_compat import keras, tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.prune import pruning  # noqa: E402

_SHAPE = (12, 12, 1)
_CLASSES = 10
_MODEL_NAME = "cnn_small"


def _synthetic(count, shape=_SHAPE, seed=0):
  """Ten fixed random templates plus noise: learnable with a margin, pixels in [0, 1]."""
  templates = np.random.default_rng(123).random((_CLASSES,) + shape, np.float32)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, _CLASSES, count)
  images = 0.7 * templates[labels] + 0.3 * rng.random((count,) + shape, np.float32)
  return images.astype(np.float32), labels.astype(np.int64)


def _fine_tune_pruned(dense_model, x, y, sparsity, steps):
  """Prunes with tfmot for real: prune_model, a custom loop driven by PruningStepDriver, then strip."""
  pruned = pruning.prune_model(dense_model, pruning.PruningConfig(sparsity, schedule="constant"))
  driver = pruning.PruningStepDriver(pruned)
  optimizer = keras.optimizers.Adam(3e-3)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def train_step(xb, yb):
    with tf.GradientTape() as tape:
      loss = loss_fn(yb, pruned(xb, training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, pruned.trainable_variables), pruned.trainable_variables))

  driver.on_train_begin()
  for step in range(steps):
    driver.on_step_begin(step)
    start = (64 * step) % (len(x) - 64)
    train_step(x[start:start + 64], y[start:start + 64])
  driver.on_epoch_end(0)
  driver.finalize()
  return pruning.strip(pruned)


def _trained_dense_model(x, y):
  model = models.build_model(_MODEL_NAME, _SHAPE, _CLASSES, mean=0.5, std=0.3, seed=0)
  model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=3, batch_size=64, verbose=0)
  return model


def _magnitude_masks(model, sparsity):
  masks = {}
  for layer in models.prunable_layers(model):
    kernel = np.abs(layer.kernel.numpy())
    masks[layer.name] = (kernel > np.quantile(kernel, sparsity)).astype(np.float32)
  return masks


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
    self.x_train, self.y_train = _synthetic(512, seed=0)
    self.x_test, self.y_test = _synthetic(96, seed=1)
    self.dense = _trained_dense_model(self.x_train, self.y_train)
    self.model = _fine_tune_pruned(self.dense, self.x_train, self.y_train, 0.8, steps=16)
    self.keras_logits = _predict(self.model, self.x_test)
    self.keras_predictions = np.argmax(self.keras_logits, axis=1)
    eval_config = evaluation.EvalConfig(eps=0.1, pgd_steps=5, pgd_restarts=1, fgsm=False, batch_size=128)
    self.keras_results, self.x_adv = evaluation.evaluate_model(self.model, self.x_test, self.y_test, eval_config,
                                                               _CLASSES, return_adversarial=True)
    self.output_dir = tempfile.mkdtemp(prefix="export_test-")
    self.sparsity = pruning.parameter_counts(self.model)["sparsity"]
    self.artifacts = export.export_all(
        self.model, self.output_dir, model_name=_MODEL_NAME, x_test=self.x_test, y_test=self.y_test,
        x_adv=self.x_adv, keras_predictions=self.keras_predictions, representative_images=self.x_train,
        source_run={"config": {"model": _MODEL_NAME}}, sparsity=self.sparsity, dense_model=self.dense,
        pqat_data=(self.x_train, self.y_train))
    self.export_dir = os.path.join(self.output_dir, "export")
    self.saved_model_path = os.path.join(self.export_dir, "saved_model", _MODEL_NAME, "1")
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

  def _tflite_path(self, variant):
    return os.path.join(self.export_dir, "tflite", f"{variant}.tflite")


class SavedModelTest(ExportTestCase):

  def testFixture_PrunedModelIsSparseAndAccurate(self):
    self.assertAlmostEqual(self.sparsity, 0.8, delta=0.01)
    self.assertGreater(self.keras_results["benign_acc"], 0.9)

  def testSignature_HasImagesInputAndLogitsProbabilitiesClassesOutputs(self):
    signature = tf.saved_model.load(self.saved_model_path).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    self.assertEqual(list(inputs), ["images"])
    self.assertEqual(inputs["images"].dtype, tf.float32)
    self.assertEqual(inputs["images"].shape.as_list(), [None, *_SHAPE])
    outputs = signature.structured_outputs
    self.assertEqual(sorted(outputs), sorted(export.OUTPUT_NAMES))
    self.assertEqual(sorted(outputs), ["classes", "logits", "probabilities"])
    self.assertEqual((outputs["logits"].dtype, outputs["logits"].shape.as_list()), (tf.float32, [None, _CLASSES]))
    self.assertEqual((outputs["probabilities"].dtype, outputs["probabilities"].shape.as_list()),
                     (tf.float32, [None, _CLASSES]))
    self.assertEqual((outputs["classes"].dtype, outputs["classes"].shape.as_list()), (tf.int64, [None]))

  def testSignature_OutputsMatchKerasModel(self):
    signature = tf.saved_model.load(self.saved_model_path).signatures["serving_default"]
    out = signature(images=tf.constant(self.x_test))
    self.assertAllClose(out["logits"], self.keras_logits, atol=1e-5)
    self.assertAllClose(out["probabilities"], tf.nn.softmax(self.keras_logits), atol=1e-6)
    self.assertAllEqual(out["classes"], self.keras_predictions)

  @parameterized.named_parameters(("NaN", np.nan, "finite"), ("Inf", np.inf, "finite"),
                                  ("AboveOne", 2.0, "> 1"), ("Negative", -0.5, "< 0"))
  def testSignature_InvalidPixel_RaisesInvalidArgument(self, value, message):
    signature = tf.saved_model.load(self.saved_model_path).signatures["serving_default"]
    images = self.x_test[:2].copy()
    images[1, 3, 4, 0] = value
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
      signature(images=tf.constant(images))

  def testSavedModelCli_ShowAll_ListsTheServingSignature(self):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
      self.skipTest(f"saved_model_cli is not installed beside {sys.executable}")
    shown = subprocess.run([cli, "show", "--dir", self.saved_model_path, "--all"], capture_output=True, text=True,
                           check=True, timeout=300).stdout
    self.assertIn("signature_def['serving_default']", shown)
    serving = shown.split("signature_def['serving_default']")[1]
    self.assertRegex(serving, r"inputs\['images'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 12, 12, 1\)")
    self.assertRegex(serving, r"outputs\['logits'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 10\)")
    self.assertRegex(serving, r"outputs\['probabilities'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 10\)")
    self.assertRegex(serving, r"outputs\['classes'\] tensor_info:\s+dtype: DT_INT64\s+shape: \(-1\)")

  def testVerifiedInAFreshProcess_ReproducesKerasWithoutTheStandardizeClass(self):
    # export_all's 'saved_model' figures come from verify_saved_model_in_subprocess (one child process per run).
    figures, entry = self.artifacts["saved_model"], self.manifest["artifacts"]["saved_model"]
    self.assertIn("fresh process", figures["runtime"])
    self.assertEqual(figures["benign_acc"], self.keras_results["benign_acc"])
    self.assertEqual(figures["pgd_acc"], self.keras_results["pgd_acc"])
    self.assertEqual(figures["agreement"], 1.0)
    self.assertEqual(figures["adversarial_agreement"], 1.0)
    self.assertLess(figures["max_abs_logit_diff"], 1e-5)
    self.assertTrue(entry["loaded_without_tfrobprune_models"])
    self.assertEqual(entry["signature"]["inputs"], {"images": ["float32", [None, *_SHAPE]]})
    self.assertEqual(entry["signature"]["outputs"]["classes"], ["int64", [None]])

  def testWrappedModel_IsRejectedNamingStrip(self):
    wrapped = pruning.prune_model(self.dense, pruning.PruningConfig(0.5, schedule="constant"))
    with self.assertRaisesRegex(ValueError, "strip"):
      export.export_saved_model(wrapped, self.create_tempdir().full_path, "m")


class AtomicSavedModelTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.build_model(_MODEL_NAME, _SHAPE, _CLASSES, seed=0)

  def testVersions_AreOneTwoThreeByDefault(self):
    base = self.create_tempdir().full_path
    paths = [export.export_saved_model(self.model, base, "m") for _ in range(3)]
    self.assertEqual(paths, [os.path.join(base, "m", str(v)) for v in (1, 2, 3)])
    self.assertEqual(sorted(os.listdir(os.path.join(base, "m"))), ["1", "2", "3"])

  def testVersionDirectory_HasTheUsersDefaultPermissions(self):
    base = self.create_tempdir().full_path
    path = export.export_saved_model(self.model, base, "m")
    os.mkdir(os.path.join(base, "plain"))
    self.assertEqual(os.stat(path).st_mode, os.stat(os.path.join(base, "plain")).st_mode)  # not mkdtemp's 0700

  def testExplicitVersion_Conflict_RaisesNamingIt_AndNextFreeFollowsTheLargest(self):
    base = self.create_tempdir().full_path
    export.export_saved_model(self.model, base, "m", version=7)
    with self.assertRaisesRegex(ValueError, r"Version 7 .*already exists"):
      export.export_saved_model(self.model, base, "m", version=7)
    self.assertEqual(export.export_saved_model(self.model, base, "m"), os.path.join(base, "m", "8"))
    self.assertEqual(sorted(os.listdir(os.path.join(base, "m"))), ["7", "8"])

  @parameterized.named_parameters(("Zero", 0), ("Negative", -1), ("String", "2"), ("Bool", True))
  def testBadVersion_Raises(self, version):
    with self.assertRaisesRegex(ValueError, "version must be an integer"):
      export.export_saved_model(self.model, self.create_tempdir().full_path, "m", version=version)

  @parameterized.named_parameters(("DiskFull", OSError(28, "No space left on device")),
                                  ("KeyboardInterrupt", KeyboardInterrupt()))
  def testInterruptedSave_LeavesNoVersionAndNoDirectory(self, error):
    base = self.create_tempdir().full_path
    model_dir = os.path.join(base, "m")
    seen = {}

    def half_save(obj, path, signatures=None, **kwargs):
      del obj, signatures, kwargs
      seen["path"], seen["siblings"] = path, os.listdir(model_dir)
      os.makedirs(os.path.join(path, "variables"))
      with open(os.path.join(path, "saved_model.pb"), "wb") as handle:
        handle.write(b"half")
      raise error

    with mock.patch.object(tf.saved_model, "save", side_effect=half_save):
      with self.assertRaises(type(error)):
        export.export_saved_model(self.model, base, "m")
    self.assertStartsWith(os.path.basename(seen["path"]), ".tmp-1-")  # hidden, not an integer: TF Serving skips it
    self.assertEqual(seen["siblings"], [os.path.basename(seen["path"])])
    self.assertEqual(os.listdir(model_dir), [])
    self.assertEqual(export.export_saved_model(self.model, base, "m"), os.path.join(model_dir, "1"))


class TFLiteTest(ExportTestCase):

  @parameterized.named_parameters(("Float32", "float32"), ("Float32Sparse", "float32_sparse"))
  def testFloatVariant_MatchesKerasLogits(self, variant):
    logits, runtime = export.run_tflite(self._tflite_path(variant), self.x_test)
    self.assertLess(np.max(np.abs(logits - self.keras_logits)), 1e-4)
    self.assertAllEqual(np.argmax(logits, axis=1), self.keras_predictions)
    self.assertEqual(runtime, "xnnpack")

  @parameterized.named_parameters(("Dynamic", "int8_dynamic"), ("Full", "int8_full"), ("Sparse", "int8_sparse"),
                                  ("FloatLogits", "int8_float_logits"))
  def testInt8Variant_AgreesWithKeras(self, variant):
    logits, _ = export.run_tflite(self._tflite_path(variant), self.x_test, num_threads=2)
    self.assertEqual(logits.dtype, np.float32)
    self.assertGreaterEqual(np.mean(np.argmax(logits, axis=1) == self.keras_predictions), 0.9)

  def testInt8FloatLogits_QuantizesEveryLayerButTheLast_AndRunsUnderXnnpack(self):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    interpreter = litert.Interpreter(model_path=self._tflite_path("int8_float_logits"))
    tensors = interpreter.get_tensor_details()
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    weight_types = [tensors[op["inputs"][1]]["dtype"] for op in ops]
    self.assertEqual(weight_types, [np.int8] * (len(ops) - 1) + [np.float32])
    self.assertEqual(tensors[ops[-1]["inputs"][0]]["dtype"], np.float32)  # dequantized before the last layer
    logits, runtime = export.run_tflite(self._tflite_path("int8_float_logits"), self.x_test)
    self.assertEqual(runtime, "xnnpack")
    full, _ = export.run_tflite(self._tflite_path("int8_full"), self.x_test)
    # A float last layer is closer to Keras than an 8-bit one.
    self.assertLess(np.mean(np.abs(logits - self.keras_logits)), np.mean(np.abs(full - self.keras_logits)))

  def testInt8Sparse_FailsUnderXnnpack_RunsOnBuiltinKernels(self):
    # LiteRT 2.3: XNNPACK cannot prepare the sparse int8 FULLY_CONNECTED kernel. If this starts to pass under
    # XNNPACK, the fallback is no longer needed for it (update the module docstring).
    runner = export.TFLiteRunner(self._tflite_path("int8_sparse"))
    self.assertEqual(runner.runtime, "builtin_no_delegates")
    self.assertIn("FULLY_CONNECTED", runner.xnnpack_error)
    self.assertIsNone(export.TFLiteRunner(self._tflite_path("int8_full")).xnnpack_error)

  def testRunTflite_PredictsAnyBatchSize(self):
    path = self._tflite_path("float32")
    whole, _ = export.run_tflite(path, self.x_test)
    self.assertAllClose(export.run_tflite(path, self.x_test[:1])[0], whole[:1], atol=1e-6)
    self.assertEqual(export.run_tflite(path, self.x_test[:0])[0].shape, (0, _CLASSES))

  def testRunTflite_Int8InputAndOutput_AreScaled(self):
    converter = tf.lite.TFLiteConverter.from_keras_model(self.model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in self.x_train[:100])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = os.path.join(self.create_tempdir().full_path, "int8_io.tflite")
    with open(path, "wb") as handle:
      handle.write(converter.convert())
    logits, _ = export.run_tflite(path, self.x_test)
    self.assertEqual(logits.dtype, np.float32)
    self.assertLess(np.max(np.abs(logits - self.keras_logits)), 0.25 * np.max(np.abs(self.keras_logits)))
    self.assertGreaterEqual(np.mean(np.argmax(logits, axis=1) == self.keras_predictions), 0.9)

  def testSparseVariants_StoreSparseTensorsAndAreSmaller(self):
    sizes = {variant: os.path.getsize(self._tflite_path(variant)) for variant in export.TFLITE_VARIANTS}
    for variant in export.TFLITE_VARIANTS:
      encoded = self.manifest["artifacts"][variant]["sparse_encoding"]
      self.assertEqual(bool(encoded), variant.endswith("_sparse"), variant)
    # 80% sparse and tiny (38k weights), so the flatbuffer's fixed part and the sparse indices weigh more than at
    # 90% on 28x28 inputs (the ten-times test below).
    self.assertLess(sizes["float32_sparse"], 0.5 * sizes["float32"])
    self.assertLess(sizes["int8_sparse"], 0.8 * sizes["int8_full"])
    self.assertLess(sizes["int8_sparse"], sizes["float32_sparse"])

  def testInt8Sparse_NinetyPercentSparseCnnSmall28_IsTenTimesSmallerThanDenseFloat(self):
    dense = models.build_model(_MODEL_NAME, (28, 28, 1), _CLASSES, seed=0)
    pruned = pruning.strip(pruning.fixed_mask_prune(dense, _magnitude_masks(dense, 0.9)))
    images = np.random.default_rng(0).random((32, 28, 28, 1), np.float32)
    directory = self.create_tempdir().full_path
    dense_info = export.export_tflite(dense, os.path.join(directory, "dense.tflite"), "float32")
    sparse_info = export.export_tflite(pruned, os.path.join(directory, "sparse.tflite"), "int8_sparse", images)
    self.assertGreaterEqual(dense_info["bytes"] / sparse_info["bytes"], 10.0)
    self.assertEqual(export.run_tflite(sparse_info["path"], images)[0].shape, (32, _CLASSES))

  def testExportTflite_ReturnsTheContractFieldsOfTheWrittenFile(self):
    path = os.path.join(self.create_tempdir().full_path, "m.tflite")
    info = export.export_tflite(self.model, path, "int8_dynamic")
    self.assertEqual(set(info), {"path", "bytes", "gzip_bytes", "sha256", "variant", "quantization",
                                 "sparse_encoding"})
    with open(path, "rb") as handle:
      content = handle.read()
    self.assertEqual(info["bytes"], len(content))
    self.assertEqual(info["sha256"], hashlib.sha256(content).hexdigest())
    self.assertEqual(info["gzip_bytes"], len(gzip.compress(content, compresslevel=9)))
    self.assertEqual(os.listdir(os.path.dirname(path)), ["m.tflite"])  # no temporary file left
    with open(os.path.join(os.path.dirname(path), "plain"), "w"):
      pass
    self.assertEqual(os.stat(path).st_mode, os.stat(os.path.join(os.path.dirname(path), "plain")).st_mode)

  @parameterized.named_parameters(("Full", "int8_full"), ("Sparse", "int8_sparse"),
                                  ("FloatLogits", "int8_float_logits"))
  def testInt8Calibrated_WithoutRepresentativeImages_Raises(self, variant):
    with self.assertRaisesRegex(ValueError, "representative_images"):
      export.export_tflite(self.model, os.path.join(self.create_tempdir().full_path, "m.tflite"), variant)

  def testUnknownVariant_RaisesListingTheChoices(self):
    with self.assertRaisesRegex(ValueError, "int8_sparse"):
      export.export_tflite(self.model, os.path.join(self.create_tempdir().full_path, "m.tflite"), "int4")


class TieAwareAccuracyTest(tf.test.TestCase):

  def testTiedTopLogits_SplitTheCredit(self):
    logits = np.array([[1., 1., 0.], [2., 0., 0.], [0., 0., 0.], [0., 3., 3.]], np.float32)
    # Row 0: label 0 tied with class 1 (1/2); row 1: right (1); row 2: three-way tie (1/3); row 3: label 0 not on top.
    self.assertAlmostEqual(export.tie_aware_accuracy(logits, [0, 0, 1, 0]), (.5 + 1. + 1. / 3 + 0.) / 4)

  def testWithoutTies_IsArgmaxAccuracy(self):
    logits = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 10, 50)
    self.assertAlmostEqual(export.tie_aware_accuracy(logits, labels), float(np.mean(logits.argmax(1) == labels)))

  def testNoRows_IsNone(self):
    self.assertIsNone(export.tie_aware_accuracy(np.zeros((0, 3)), []))


class ExportAllTest(ExportTestCase):

  def testReportsEveryArtifactWithItsFigures(self):
    expected = {"saved_model", "dense_float32", "pqat_int8", *export.TFLITE_VARIANTS}
    self.assertEqual(set(self.artifacts), expected)
    for name, figures in self.artifacts.items():
      for key in ("bytes", "gzip_bytes", "benign_acc", "pgd_acc", "agreement", "runtime",
                  "size_ratio_vs_dense_float"):
        self.assertIn(key, figures, name)
    self.assertEqual(self.artifacts["int8_sparse"]["runtime"], "builtin_no_delegates")
    self.assertEqual(self.artifacts["float32"]["runtime"], "xnnpack")
    self.assertIn("fresh process", self.artifacts["saved_model"]["runtime"])
    self.assertEqual(self.artifacts["dense_float32"]["size_ratio_vs_dense_float"], 1.0)
    for variant in export.TFLITE_VARIANTS:
      self.assertBetween(self.artifacts[variant]["pgd_ties"], 0.0, 1.0)
    self.assertEqual(self.artifacts["float32"]["benign_ties"], 0.0)
    self.assertGreater(self.artifacts["int8_sparse"]["size_ratio_vs_dense_float"], 4.0)

  @parameterized.named_parameters(("SavedModel", "saved_model"), ("Float32", "float32"),
                                  ("Float32Sparse", "float32_sparse"))
  def testLosslessArtifacts_ReproduceKerasAccuracies(self, name):
    figures = self.artifacts[name]
    self.assertEqual(figures["benign_acc"], self.keras_results["benign_acc"])
    self.assertEqual(figures["pgd_acc"], self.keras_results["pgd_acc"])
    self.assertEqual(figures["agreement"], 1.0)
    self.assertLess(figures["max_abs_logit_diff"], 1e-4)

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
    self.assertEqual(self.manifest["source_run"], {"config": {"model": _MODEL_NAME}})
    self.assertAlmostEqual(self.manifest["sparsity"], self.sparsity)
    self.assertEqual(self.manifest["keras"]["benign_acc"], self.keras_results["benign_acc"])
    self.assertEqual(self.manifest["keras"]["pgd_acc"], self.keras_results["pgd_acc"])
    self.assertEqual(self.manifest["artifacts"]["saved_model"]["path"], os.path.join("saved_model", _MODEL_NAME, "1"))
    self.assertIn("FULLY_CONNECTED", self.manifest["artifacts"]["int8_sparse"]["xnnpack_error"])
    leftovers = [name for _, _, names in os.walk(self.export_dir) for name in names if name.startswith(".")]
    self.assertEqual(leftovers, [])

  def testPqat_KeepsEveryPrunedWeightZeroAndIsSparseEncoded(self):
    entry = self.manifest["artifacts"]["pqat_int8"]
    self.assertEqual(entry["zeros_kept"], {"conv1": 1.0, "conv2": 1.0, "fc1": 1.0, "logits": 1.0})
    self.assertNotEmpty(entry["sparse_encoding"])
    self.assertLess(entry["bytes"], 0.8 * self.artifacts["int8_full"]["bytes"])
    self.assertIn("quantization-aware", entry["quantization"])

  def testPqat_FunctionalModel_RaisesNamingSequential(self):
    inputs = keras.Input(_SHAPE)
    functional = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with self.assertRaisesRegex(ValueError, "Sequential"):
      export.export_pqat(functional, self.x_train[:8], self.y_train[:8],
                         os.path.join(self.create_tempdir().full_path, "m.tflite"))

  def testMismatchedAdversarialExamples_Raise(self):
    with self.assertRaisesRegex(ValueError, "x_adv"):
      export.export_all(self.model, self.create_tempdir().full_path, model_name="m", x_test=self.x_test,
                        y_test=self.y_test, x_adv=self.x_adv[:3], keras_predictions=self.keras_predictions,
                        representative_images=self.x_train, source_run={}, sparsity=0.8)


if __name__ == "__main__":
  tf.test.main()
