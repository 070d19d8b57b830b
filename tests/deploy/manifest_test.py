"""Tests for tfrobprune.deploy.manifest: manifest.json holds the export's facts and each artifact's record."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from tfrobprune.deploy import artifact_verification  # noqa: E402
from tfrobprune.deploy import manifest  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402


class WriteManifestTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.export_dir = self.create_tempdir().full_path
    images = np.zeros((4, 2, 2, 1), np.float32)
    self.data = {"x_test": images, "x_adv": images, "y_test": np.array([0, 1, 1, 0])}
    self.reference = {"predictions": np.array([0, 1, 0, 0]), "adversarial_predictions": np.array([1, 1, 1, 1])}

  def _write_and_load(self, artifacts, details, square_settings=None):
    manifest.write_manifest(self.export_dir, "cnn_small", artifacts, details, self.data, self.reference,
                            {"config": {"model": "cnn_small"}}, 0.8, square_settings)
    with open(os.path.join(self.export_dir, "manifest.json")) as handle:
      return json.load(handle)

  def testRecordsTheExportAndMergesEachArtifactsDetailsWithItsFigures(self):
    loaded = self._write_and_load(
        {"float32": {"bytes": np.int64(10), "benign_acc": np.float32(0.5)}},
        {"float32": {"path": "tflite/float32.tflite", "logits_shape": np.array([4, 10])}})
    self.assertEqual(loaded["model_name"], "cnn_small")
    self.assertEqual(loaded["sparsity"], 0.8)
    self.assertEqual(loaded["source_run"], {"config": {"model": "cnn_small"}})
    self.assertEqual(loaded["tensorflow"], tf.__version__)
    self.assertIn("litert", loaded)
    self.assertIn("created_utc", loaded)
    self.assertEqual(loaded["examples"], {"benign": 4, "adversarial": 4})
    self.assertEqual(loaded["keras"], {"benign_acc": 0.75, "pgd_acc": 0.5})
    self.assertIsNone(loaded["square_attack"])
    self.assertEqual(loaded["artifacts"], {"float32": {"path": "tflite/float32.tflite", "logits_shape": [4, 10],
                                                       "bytes": 10, "benign_acc": 0.5}})

  def testRecordsTheSquareAttacksSettings(self):
    settings = artifact_verification.SquareSettings(0.1, "linf", examples=1000, queries=5000, seed=3)
    loaded = self._write_and_load({"int8_full": {"square_acc": 0.5}}, {"int8_full": {}}, settings)
    self.assertEqual(loaded["square_attack"], {"eps": 0.1, "norm": "linf", "examples": 1000, "queries": 5000,
                                               "seed": 3})
    self.assertEqual(loaded["artifacts"]["int8_full"], {"square_acc": 0.5})

  def testValueThatIsNotJson_RaisesNamingItsType(self):
    with self.assertRaisesRegex(TypeError, "object is not JSON serializable"):
      self._write_and_load({"float32": {"bytes": 1}}, {"float32": {"path": object()}})


if __name__ == "__main__":
  tf.test.main()
