"""Tests for tfrobprune.deploy.artifact_verification: an artifact re-measured against its Keras model."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from tfrobprune.deploy import artifact_verification  # noqa: E402
from tfrobprune.deploy import tflite  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.robust import square  # noqa: E402

_SHAPE = (12, 12, 1)


class ArtifactVerificationTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.build_model("cnn_small", _SHAPE, 10, mean=0.5, std=0.3, seed=0)
    rng = np.random.default_rng(0)
    cls.data = {"x_test": rng.random((20,) + _SHAPE, np.float32), "x_adv": rng.random((20,) + _SHAPE, np.float32),
                "y_test": rng.integers(0, 10, 20)}

  def testKerasReference_HoldsLogitsAndClasses_OrTheGivenPredictions(self):
    reference = artifact_verification.keras_reference(self.model, self.data)
    logits = self.model(self.data["x_test"], training=False).numpy()
    self.assertAllClose(reference["logits"], logits, atol=1e-6)
    self.assertAllEqual(reference["predictions"], np.argmax(logits, axis=1))
    adversarial_logits = self.model(self.data["x_adv"], training=False).numpy()
    self.assertAllEqual(reference["adversarial_predictions"], np.argmax(adversarial_logits, axis=1))
    given = np.arange(20) % 10
    self.assertAllEqual(artifact_verification.keras_reference(self.model, self.data, given)["predictions"], given)

  def testVerifiedTflite_FloatFlatbuffer_AgreesWithKeras_AndRecordsItsDetails(self):
    tflite_dir = os.path.join(self.create_tempdir().full_path, "tflite")
    os.makedirs(tflite_dir)
    info = tflite.export_tflite(self.model, os.path.join(tflite_dir, "float32.tflite"), "float32")
    reference = artifact_verification.keras_reference(self.model, self.data)
    figures, details = artifact_verification.verified_tflite(info, self.data, reference)
    self.assertEqual(figures["agreement"], 1.0)
    self.assertEqual(figures["adversarial_agreement"], 1.0)
    self.assertEqual((figures["benign_ties"], figures["pgd_ties"]), (0.0, 0.0))
    self.assertLess(figures["max_abs_logit_diff"], 1e-4)
    keras_accuracy = float(np.mean(reference["predictions"] == self.data["y_test"]))
    self.assertAlmostEqual(figures["benign_acc"], keras_accuracy)
    self.assertEqual((figures["bytes"], figures["gzip_bytes"]), (info["bytes"], info["gzip_bytes"]))
    self.assertEqual(figures["runtime"], "xnnpack")
    self.assertNotIn("square_acc", figures)  # not attacked without settings
    self.assertEqual(details, {"path": os.path.join("tflite", "float32.tflite"), "sha256": info["sha256"],
                               "quantization": "none (float32)", "sparse_encoding": [], "xnnpack_error": None})

  def testVerifiedTflite_WithSquareSettings_AttacksTheFirstExamplesThroughLiteRT(self):
    tflite_dir = os.path.join(self.create_tempdir().full_path, "tflite")
    os.makedirs(tflite_dir)
    info = tflite.export_tflite(self.model, os.path.join(tflite_dir, "float32.tflite"), "float32")
    reference = artifact_verification.keras_reference(self.model, self.data)
    labels = dict(self.data, y_test=reference["predictions"])  # every example starts correct
    settings = artifact_verification.SquareSettings(0.1, examples=8, queries=50, seed=1)
    figures, _ = artifact_verification.verified_tflite(info, labels, reference, settings)
    x, y = self.data["x_test"][:8], reference["predictions"][:8]
    _, robust = square.square_attack(square.keras_logits_fn(self.model), x, y, 0.1, n_queries=50, seed=1)
    self.assertEqual(figures["square_acc"], robust.mean())
    self.assertLess(figures["square_acc"], 1.0)  # an untrained model's margins are small
    self.assertEqual((figures["square_examples"], figures["square_ties"]), (8, 0.0))
    self.assertBetween(figures["square_queries"], 1, 51)

  def testSquareSettings_BadValues_RaiseNamingThem(self):
    with self.assertRaisesRegex(ValueError, "artifact_square_examples"):
      artifact_verification.SquareSettings(0.1, examples=-1)
    with self.assertRaisesRegex(ValueError, "norm"):
      artifact_verification.SquareSettings(0.1, norm="l1")


if __name__ == "__main__":
  tf.test.main()
