"""Tests for tfrobprune.deploy.saved_model_verification: a SavedModel measured in a fresh Python process."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from tfrobprune.deploy import saved_model  # noqa: E402
from tfrobprune.deploy import saved_model_verification  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune import models  # noqa: E402

_SHAPE = (12, 12, 1)


class VerifySavedModelInSubprocessTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.build_model("cnn_small", _SHAPE, 10, mean=0.5, std=0.3, seed=0)
    cls.images = np.random.default_rng(0).random((6,) + _SHAPE, np.float32)
    cls.adversarial = cls.images[::-1].copy()
    cls.keras_logits = cls.model(cls.images, training=False).numpy()

  def testFreshProcess_ReproducesKeras_WithoutImportingTfrobpruneModels(self):
    path = saved_model.export_saved_model(self.model, self.create_tempdir().full_path, "m")
    labels = np.argmax(self.keras_logits, axis=1)
    verified = saved_model_verification.verify_saved_model_in_subprocess(path, self.images, labels, self.adversarial)
    self.assertAllClose(verified["logits"], self.keras_logits, atol=1e-5)
    self.assertAllEqual(verified["predictions"], labels)
    self.assertAllEqual(verified["adversarial_predictions"], labels[::-1])
    self.assertEqual(verified["benign_acc"], 1.0)
    self.assertEqual(verified["transfer_pgd_acc"], float(np.mean(labels[::-1] == labels)))
    self.assertTrue(verified["loaded_without_tfrobprune_models"])
    self.assertIn("fresh process", verified["runtime"])
    self.assertEqual(verified["signature"]["inputs"], {"images": ["float32", [None, *_SHAPE]]})

  def testMismatchedAdversarialImages_RaiseBeforeStartingAProcess(self):
    with self.assertRaisesRegex(ValueError, r"adversarial must have one image per label \(6\), got 3"):
      saved_model_verification.verify_saved_model_in_subprocess("unused", self.images, np.zeros(6, np.int64),
                                                                self.adversarial[:3])

  def testPackageRoot_IsTheDirectoryHoldingTfrobprune(self):
    # Prepended to the child's PYTHONPATH, so the child imports this checkout's tfrobprune.
    root = saved_model_verification._package_root()
    self.assertEqual(os.path.join(root, "tfrobprune"), os.path.dirname(os.path.dirname(saved_model.__file__)))


if __name__ == "__main__":
  tf.test.main()
