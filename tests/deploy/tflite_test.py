"""Tests for tfrobprune.deploy.tflite: each conversion variant, run in LiteRT and compared with the Keras model."""

import gzip
import hashlib
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import tflite  # noqa: E402
from tfrobprune.deploy import tflite_runner  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402


def _weight_sources(flatbuffer):
  """For each CONV_2D / FULLY_CONNECTED op, in graph order: (weight shape, whether it comes from a DENSIFY op, and
  the stored values of the tensor that holds it: (count, sparse-encoded))."""
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=g-import-not-at-top

  model = schema.Model.GetRootAsModel(flatbuffer, 0)
  subgraph = model.Subgraphs(0)
  ops = [subgraph.Operators(i) for i in range(subgraph.OperatorsLength())]

  def code(op):
    opcode = model.OperatorCodes(op.OpcodeIndex())
    return max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())

  densified = {op.Outputs(0): op.Inputs(0) for op in ops if code(op) == schema.BuiltinOperator.DENSIFY}
  sources = []
  for op in ops:
    if code(op) in (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.FULLY_CONNECTED):
      weight = op.Inputs(1)
      stored = subgraph.Tensors(densified.get(weight, weight))
      itemsize = 1 if stored.Type() == schema.TensorType.INT8 else 4
      sources.append((tuple(subgraph.Tensors(weight).ShapeAsNumpy()), weight in densified,
                      model.Buffers(stored.Buffer()).DataLength() // itemsize, stored.Sparsity() is not None))
  return sources


def _tflite_kernel(layer):
  """The layer's kernel in TFLite's layout: [out, h, w, in] for convolutions, [out, in] for dense layers."""
  kernel = layer.kernel.numpy()
  return np.transpose(kernel, (3, 0, 1, 2)) if kernel.ndim == 4 else kernel.T


class TFLiteTest(tf.test.TestCase, parameterized.TestCase):
  """A trained, pruned (80%) cnn_small converted once to every variant of `tflite.TFLITE_VARIANTS`."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x_train, cls.y_train, cls.x_test, _, _, cls.model = deploy_test_utils.pruned_fixture()
    cls.keras_logits = cls.model(cls.x_test, training=False).numpy()
    cls.keras_predictions = np.argmax(cls.keras_logits, axis=1)
    cls.tflite_dir = tempfile.mkdtemp(prefix="tflite_test-")
    cls.infos = {variant: tflite.export_tflite(cls.model, cls._tflite_path(variant), variant, cls.x_train)
                 for variant in tflite.TFLITE_VARIANTS}

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tflite_dir, ignore_errors=True)
    super().tearDownClass()

  @classmethod
  def _tflite_path(cls, variant):
    return os.path.join(cls.tflite_dir, f"{variant}.tflite")

  @parameterized.named_parameters(("Float32", "float32"), ("Float32Sparse", "float32_sparse"))
  def testFloatVariant_MatchesKerasLogits(self, variant):
    logits, runtime = tflite_runner.run_tflite(self._tflite_path(variant), self.x_test)
    self.assertLess(np.max(np.abs(logits - self.keras_logits)), 1e-4)
    self.assertAllEqual(np.argmax(logits, axis=1), self.keras_predictions)
    self.assertEqual(runtime, "xnnpack")

  @parameterized.named_parameters(("Dynamic", "int8_dynamic"), ("Full", "int8_full"), ("Sparse", "int8_sparse"),
                                  ("FloatLogits", "int8_float_logits"))
  def testInt8Variant_AgreesWithKeras(self, variant):
    logits, _ = tflite_runner.run_tflite(self._tflite_path(variant), self.x_test, num_threads=2)
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
    logits, runtime = tflite_runner.run_tflite(self._tflite_path("int8_float_logits"), self.x_test)
    self.assertEqual(runtime, "xnnpack")
    full, _ = tflite_runner.run_tflite(self._tflite_path("int8_full"), self.x_test)
    # A float last layer is closer to Keras than an 8-bit one.
    self.assertLess(np.mean(np.abs(logits - self.keras_logits)), np.mean(np.abs(full - self.keras_logits)))

  def testSparseVariants_StoreSparseTensorsAndAreSmaller(self):
    sizes = {variant: os.path.getsize(self._tflite_path(variant)) for variant in tflite.TFLITE_VARIANTS}
    for variant in tflite.TFLITE_VARIANTS:
      encoded = self.infos[variant]["sparse_encoding"]
      self.assertEqual(bool(encoded), variant.endswith("_sparse"), variant)
    # 80% sparse and tiny (38k weights), so the flatbuffer's fixed part and the sparse indices weigh more than at
    # 90% on 28x28 inputs (the ten-times test below).
    self.assertLess(sizes["float32_sparse"], 0.5 * sizes["float32"])
    self.assertLess(sizes["int8_sparse"], 0.8 * sizes["int8_full"])
    self.assertLess(sizes["int8_sparse"], sizes["float32_sparse"])

  @parameterized.named_parameters(("Float32", "float32_sparse"), ("Int8", "int8_sparse"))
  def testSparseVariant_StoresEveryPrunedKernelSparseWithOnlyItsNonzeros(self, variant):
    with open(self._tflite_path(variant), "rb") as handle:
      sources = _weight_sources(handle.read())
    kernels = [_tflite_kernel(layer) for layer in models.prunable_layers(self.model)]
    self.assertLen(sources, len(kernels))
    for (shape, from_densify, stored_values, sparse), kernel in zip(sources, kernels):
      with self.subTest(shape=shape):
        self.assertEqual(shape, kernel.shape)
        self.assertTrue(from_densify and sparse)
        self.assertEqual(stored_values, np.count_nonzero(kernel))  # the pruned zeros are not stored

  def testDenseVariant_StoresEveryKernelDensely(self):
    with open(self._tflite_path("float32"), "rb") as handle:
      sources = _weight_sources(handle.read())
    kernels = [_tflite_kernel(layer) for layer in models.prunable_layers(self.model)]
    self.assertEqual(sources, [(kernel.shape, False, kernel.size, False) for kernel in kernels])

  def testInt8Sparse_NinetyPercentSparseCnnSmall28_IsTenTimesSmallerThanDenseFloat(self):
    dense = models.build_model(deploy_test_utils.MODEL_NAME, (28, 28, 1), deploy_test_utils.CLASSES, seed=0)
    pruned = wrapping.strip(wrapping.fixed_mask_prune(dense, deploy_test_utils.magnitude_masks(dense, 0.9)))
    images = np.random.default_rng(0).random((32, 28, 28, 1), np.float32)
    directory = self.create_tempdir().full_path
    dense_info = tflite.export_tflite(dense, os.path.join(directory, "dense.tflite"), "float32")
    sparse_info = tflite.export_tflite(pruned, os.path.join(directory, "sparse.tflite"), "int8_sparse", images)
    self.assertGreaterEqual(dense_info["bytes"] / sparse_info["bytes"], 10.0)
    self.assertEqual(tflite_runner.run_tflite(sparse_info["path"], images)[0].shape, (32, deploy_test_utils.CLASSES))

  def testExportTflite_ReturnsTheContractFieldsOfTheWrittenFile(self):
    path = os.path.join(self.create_tempdir().full_path, "m.tflite")
    info = tflite.export_tflite(self.model, path, "int8_dynamic")
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
      tflite.export_tflite(self.model, os.path.join(self.create_tempdir().full_path, "m.tflite"), variant)

  def testUnknownVariant_RaisesListingTheChoices(self):
    with self.assertRaisesRegex(ValueError, "int8_sparse"):
      tflite.export_tflite(self.model, os.path.join(self.create_tempdir().full_path, "m.tflite"), "int4")


if __name__ == "__main__":
  tf.test.main()
