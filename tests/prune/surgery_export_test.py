"""A shrunken (channel-pruned) model through the whole export: the SavedModel and every TFLite variant load in their
runtimes and agree with the Keras model, and the files are physically smaller than the dense model's."""

from absl.testing import absltest
import numpy as np

from tfrobprune.deploy import export
from tfrobprune.deploy import tflite
from tfrobprune.deploy import tflite_runner
from tfrobprune.keras_compat import keras
from tfrobprune import models
from tests.prune import channel_test_utils

_SHAPE = (12, 12, 1)
_CLASSES = 10


def _synthetic(count, seed):
  """Ten fixed random templates plus noise: learnable, pixels in [0, 1]."""
  templates = np.random.default_rng(123).random((_CLASSES,) + _SHAPE, np.float32)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, _CLASSES, count)
  images = 0.7 * templates[labels] + 0.3 * rng.random((count,) + _SHAPE, np.float32)
  return images.astype(np.float32), labels.astype(np.int64)


def _fit(model, x, y, epochs):
  model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
  return model


class ShrunkenModelExportTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    x_train, y_train = _synthetic(512, seed=0)
    cls.x_test, cls.y_test = _synthetic(64, seed=1)
    cls.dense = _fit(models.build_model("cnn_small", _SHAPE, _CLASSES, mean=0.5, std=0.3, seed=0), x_train, y_train, 3)
    _, shrunken, _, _ = channel_test_utils.masked_and_shrunken(cls.dense, 0.5)
    cls.model = _fit(shrunken, x_train, y_train, 1)  # a plain Keras model: it trains like any other
    x_adv = np.clip(cls.x_test + 0.1 * np.sign(np.random.default_rng(2).normal(size=cls.x_test.shape)), 0, 1)
    cls.keras_logits = cls.model.predict(cls.x_test, verbose=0)
    cls.output_dir = absltest.get_default_test_tmpdir() + "/shrunken_export"
    cls.artifacts = export.export_all(
        cls.model, cls.output_dir, model_name="cnn_small", x_test=cls.x_test, y_test=cls.y_test,
        x_adv=x_adv.astype(np.float32), keras_predictions=np.argmax(cls.keras_logits, axis=1),
        representative_images=x_train[:100], source_run={"test": "shrunken"}, sparsity=0.0, dense_model=cls.dense)

  def testShrunkenModel_IsAccurateAndNarrower(self):
    self.assertGreater(np.mean(np.argmax(self.keras_logits, axis=1) == self.y_test), 0.8)
    self.assertEqual(self.model.get_layer("conv2").filters, 16)
    self.assertEqual(self.model.output_shape, (None, _CLASSES))

  def testSavedModelAndFloatFlatbuffers_ReproduceTheKerasLogits(self):
    for name in ("saved_model", "float32", "float32_sparse"):
      self.assertEqual(self.artifacts[name]["agreement"], 1.0, name)
      self.assertLess(self.artifacts[name]["max_abs_logit_diff"], 1e-4, name)
    logits, runtime = tflite_runner.run_tflite(f"{self.output_dir}/export/tflite/float32.tflite", self.x_test)
    self.assertEqual(runtime, "xnnpack")
    np.testing.assert_allclose(logits, self.keras_logits, atol=1e-4)

  def testInt8Flatbuffers_AgreeWithKeras(self):
    for variant in tflite.TFLITE_VARIANTS:
      self.assertGreaterEqual(self.artifacts[variant]["agreement"], 0.9, variant)

  def testFlatbuffers_AreSmallerThanTheDenseModels(self):
    self.assertLess(self.artifacts["float32"]["bytes"], 0.4 * self.artifacts[export.DENSE_BASELINE]["bytes"])


if __name__ == "__main__":
  absltest.main()
