"""Tests for tfrobprune.deploy.saved_model: the checked serving signature and TF Serving's atomic version layout."""

import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import saved_model  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402


class SavedModelTest(tf.test.TestCase, parameterized.TestCase):
  """A trained, pruned (80%) cnn_small exported once with `export_saved_model`; each test loads it back."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    _, _, cls.x_test, _, cls.dense, cls.model = deploy_test_utils.pruned_fixture()
    cls.keras_logits = cls.model(cls.x_test, training=False).numpy()
    cls.keras_predictions = np.argmax(cls.keras_logits, axis=1)
    cls.base_dir = tempfile.mkdtemp(prefix="saved_model_test-")
    cls.saved_model_path = saved_model.export_saved_model(cls.model, cls.base_dir, deploy_test_utils.MODEL_NAME)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.base_dir, ignore_errors=True)
    super().tearDownClass()

  def testSignature_HasImagesInputAndLogitsProbabilitiesClassesOutputs(self):
    signature = tf.saved_model.load(self.saved_model_path).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    self.assertEqual(list(inputs), ["images"])
    self.assertEqual(inputs["images"].dtype, tf.float32)
    self.assertEqual(inputs["images"].shape.as_list(), [None, *deploy_test_utils.SHAPE])
    outputs = signature.structured_outputs
    self.assertEqual(sorted(outputs), sorted(saved_model.OUTPUT_NAMES))
    self.assertEqual(sorted(outputs), ["classes", "logits", "probabilities"])
    self.assertEqual((outputs["logits"].dtype, outputs["logits"].shape.as_list()),
                     (tf.float32, [None, deploy_test_utils.CLASSES]))
    self.assertEqual((outputs["probabilities"].dtype, outputs["probabilities"].shape.as_list()),
                     (tf.float32, [None, deploy_test_utils.CLASSES]))
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

  def testWrappedModel_IsRejectedNamingStrip(self):
    wrapped = magnitude.prune_model(self.dense, pruning_config.PruningConfig(0.5, schedule="constant"))
    with self.assertRaisesRegex(ValueError, "strip"):
      saved_model.export_saved_model(wrapped, self.create_tempdir().full_path, "m")


class AtomicSavedModelTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.build_model(deploy_test_utils.MODEL_NAME, deploy_test_utils.SHAPE, deploy_test_utils.CLASSES,
                                   seed=0)

  def testVersions_AreOneTwoThreeByDefault(self):
    base = self.create_tempdir().full_path
    paths = [saved_model.export_saved_model(self.model, base, "m") for _ in range(3)]
    self.assertEqual(paths, [os.path.join(base, "m", str(v)) for v in (1, 2, 3)])
    self.assertEqual(sorted(os.listdir(os.path.join(base, "m"))), ["1", "2", "3"])

  def testVersionDirectory_HasTheUsersDefaultPermissions(self):
    base = self.create_tempdir().full_path
    path = saved_model.export_saved_model(self.model, base, "m")
    os.mkdir(os.path.join(base, "plain"))
    self.assertEqual(os.stat(path).st_mode, os.stat(os.path.join(base, "plain")).st_mode)  # not mkdtemp's 0700

  def testExplicitVersion_Conflict_RaisesNamingIt_AndNextFreeFollowsTheLargest(self):
    base = self.create_tempdir().full_path
    saved_model.export_saved_model(self.model, base, "m", version=7)
    with self.assertRaisesRegex(ValueError, r"Version 7 .*already exists"):
      saved_model.export_saved_model(self.model, base, "m", version=7)
    self.assertEqual(saved_model.export_saved_model(self.model, base, "m"), os.path.join(base, "m", "8"))
    self.assertEqual(sorted(os.listdir(os.path.join(base, "m"))), ["7", "8"])

  @parameterized.named_parameters(("Zero", 0), ("Negative", -1), ("String", "2"), ("Bool", True))
  def testBadVersion_Raises(self, version):
    with self.assertRaisesRegex(ValueError, "version must be an integer"):
      saved_model.export_saved_model(self.model, self.create_tempdir().full_path, "m", version=version)

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
        saved_model.export_saved_model(self.model, base, "m")
    self.assertStartsWith(os.path.basename(seen["path"]), ".tmp-1-")  # hidden, not an integer: TF Serving skips it
    self.assertEqual(seen["siblings"], [os.path.basename(seen["path"])])
    self.assertEqual(os.listdir(model_dir), [])
    self.assertEqual(saved_model.export_saved_model(self.model, base, "m"), os.path.join(model_dir, "1"))


if __name__ == "__main__":
  tf.test.main()
