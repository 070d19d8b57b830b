"""Tests for tfrobprune.deploy.tflite_runner: LiteRT with the XNNPACK fallback, any batch size, int8 input/output."""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from tfrobprune.deploy import tflite  # noqa: E402
from tfrobprune.deploy import tflite_runner  # noqa: E402
from tfrobprune.keras_compat import keras, tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.prune import drivers  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402

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
  pruned = magnitude.prune_model(dense_model, pruning_config.PruningConfig(sparsity, schedule="constant"))
  driver = drivers.PruningStepDriver(pruned)
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
  return wrapping.strip(pruned)


def _trained_dense_model(x, y):
  model = models.build_model(_MODEL_NAME, _SHAPE, _CLASSES, mean=0.5, std=0.3, seed=0)
  model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=3, batch_size=64, verbose=0)
  return model


class TFLiteRunnerTest(tf.test.TestCase):
  """A trained, pruned (80%) cnn_small converted once to the variants the tests run."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x_train, cls.y_train = _synthetic(512, seed=0)
    cls.x_test, _ = _synthetic(96, seed=1)
    cls.model = _fine_tune_pruned(_trained_dense_model(cls.x_train, cls.y_train), cls.x_train, cls.y_train, 0.8,
                                  steps=16)
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
    self.assertEqual(tflite_runner.run_tflite(path, self.x_test[:0])[0].shape, (0, _CLASSES))

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
