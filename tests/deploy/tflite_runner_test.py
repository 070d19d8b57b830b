"""Tests for tfrobprune.deploy.tflite_runner: LiteRT with the XNNPACK fallback, any batch size, int8 input/output."""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import tflite  # noqa: E402
from tfrobprune.deploy import tflite_runner  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402


class TFLiteRunnerTest(tf.test.TestCase):
  """A trained, pruned (80%) cnn_small converted once to the variants the tests run."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x_train, cls.y_train, cls.x_test, _, _, cls.model = deploy_test_utils.pruned_fixture()
    cls.keras_logits = cls.model(cls.x_test, training=False).numpy()
    cls.keras_predictions = np.argmax(cls.keras_logits, axis=1)
    cls.tflite_dir = tempfile.mkdtemp(prefix="tflite_runner_test-")
    for variant in ("float32", "int8_full", "int8_sparse"):
      tflite.export_tflite(cls.model, cls._tflite_path(variant), variant, cls.x_train)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tflite_dir, ignore_errors=True)
    super().tearDownClass()

  @classmethod
  def _tflite_path(cls, variant):
    return os.path.join(cls.tflite_dir, f"{variant}.tflite")

  def testInt8Sparse_FailsUnderXnnpack_RunsOnBuiltinKernels(self):
    # LiteRT 2.3: XNNPACK cannot prepare the sparse int8 FULLY_CONNECTED kernel. If this starts to pass under
    # XNNPACK, the fallback is no longer needed for it (update the module docstring).
    runner = tflite_runner.TFLiteRunner(self._tflite_path("int8_sparse"))
    self.assertEqual(runner.runtime, "builtin_no_delegates")
    self.assertIn("FULLY_CONNECTED", runner.xnnpack_error)
    self.assertIsNone(tflite_runner.TFLiteRunner(self._tflite_path("int8_full")).xnnpack_error)

  def testRunTflite_PredictsAnyBatchSize(self):
    path = self._tflite_path("float32")
    whole, _ = tflite_runner.run_tflite(path, self.x_test)
    self.assertAllClose(tflite_runner.run_tflite(path, self.x_test[:1])[0], whole[:1], atol=1e-6)
    self.assertEqual(tflite_runner.run_tflite(path, self.x_test[:0])[0].shape, (0, deploy_test_utils.CLASSES))

  def testPredict_BatchesPadsTheLastAndMatchesOneAtATime(self):
    path = self._tflite_path("float32")
    batched = tflite_runner.TFLiteRunner(path, batch=32).predict(self.x_test)  # 96 = 3 full batches
    self.assertAllClose(tflite_runner.TFLiteRunner(path, batch=40).predict(self.x_test), batched, atol=1e-6)
    self.assertAllClose(tflite_runner.TFLiteRunner(path, batch=1).predict(self.x_test[:5]), batched[:5], atol=1e-6)

  def testFromInterpreter_ResizesAGivenInterpreter(self):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    path = self._tflite_path("int8_full")
    runner = tflite_runner.TFLiteRunner.from_interpreter(litert.Interpreter(model_path=path), batch=16)
    self.assertEqual(runner.runtime, tflite_runner.RUNTIME_GIVEN)
    self.assertEqual(runner.interpreter.get_input_details()[0]["shape"][0], 16)
    self.assertAllClose(runner.predict(self.x_test), tflite_runner.run_tflite(path, self.x_test)[0], atol=1e-6)

  def testInt8Variants_TakeFloatImages(self):
    # The int8 variants quantize inside the graph: the input tensor stays float32, so callers pass [0, 1] images.
    for variant in ("int8_full", "int8_sparse"):
      runner = tflite_runner.TFLiteRunner(self._tflite_path(variant))
      self.assertEqual(runner.interpreter.get_input_details()[0]["dtype"], np.float32, variant)

  def testRunTflite_Int8InputAndOutput_AreScaled(self):
    converter = tf.lite.TFLiteConverter.from_keras_model(self.model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in self.x_train[:100])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = os.path.join(self.create_tempdir().full_path, "int8_io.tflite")
    with open(path, "wb") as handle:
      handle.write(converter.convert())
    logits, _ = tflite_runner.run_tflite(path, self.x_test)
    self.assertEqual(logits.dtype, np.float32)
    self.assertLess(np.max(np.abs(logits - self.keras_logits)), 0.25 * np.max(np.abs(self.keras_logits)))
    self.assertGreaterEqual(np.mean(np.argmax(logits, axis=1) == self.keras_predictions), 0.9)


if __name__ == "__main__":
  tf.test.main()
