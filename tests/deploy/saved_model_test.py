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
from tfrobprune.deploy import artifact_files  # noqa: E402
from tfrobprune.deploy import saved_model  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
# What a resumed run does: a fresh process rebuilds the model, loads the same weights and exports it.
_REBUILD_AND_EXPORT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import deploy_test_utils as u
from tfrobprune import models
from tfrobprune.deploy import saved_model
model = models.build_model(u.MODEL_NAME, u.SHAPE, u.CLASSES, mean=0.5, std=0.3)
with np.load(sys.argv[2]) as weights:
  model.set_weights([weights[f"w{index}"] for index in range(len(weights.files))])
print(saved_model.export_saved_model(model, sys.argv[3], u.MODEL_NAME))
"""


def _file_digests(path):
  return {name: artifact_files.sha256(os.path.join(path, name)) for name in artifact_files.relative_files(path)}


def _serve_with_session_loader(path, images):
  """The logits of the TF1 `Session` loader (the C++ loader's path, as TF Serving loads a SavedModel)."""
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    signature = meta_graph.signature_def["serving_default"]
    return session.run(signature.outputs["logits"].name, {signature.inputs["images"].name: images})


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

  def testExportAgain_AfterMoreTracing_WritesByteIdenticalFiles(self):
    tf.function(lambda x: self.model(x) + 1.0)(self.x_test[:2])  # moves TensorFlow's function-name counter on
    again = saved_model.export_saved_model(self.model, self.create_tempdir().full_path, deploy_test_utils.MODEL_NAME)
    self.assertEqual(_file_digests(again), _file_digests(self.saved_model_path))

  def testFreshProcess_RebuildingTheModelFromItsWeights_ExportsByteIdenticalFiles(self):
    work = self.create_tempdir().full_path
    weights_path = os.path.join(work, "weights.npz")
    np.savez(weights_path, **{f"w{index}": weight for index, weight in enumerate(self.model.get_weights())})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (os.path.dirname(os.path.dirname(_TESTS_DIR)), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", _REBUILD_AND_EXPORT, _TESTS_DIR, weights_path, work], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(done.returncode, 0, done.stderr[-3000:])
    path = done.stdout.strip().splitlines()[-1]
    self.assertEqual(_file_digests(path), _file_digests(self.saved_model_path))

  def testSessionLoader_ServesTheExport_AsTFServingWould(self):
    logits = _serve_with_session_loader(self.saved_model_path, self.x_test)
    self.assertAllClose(logits, self.keras_logits, atol=1e-5)

  def testExportsOfTwoModels_ShareFunctionNames_AndLoadSideBySide(self):
    dense_path = saved_model.export_saved_model(self.dense, self.create_tempdir().full_path, "dense")
    dense_logits = self.dense(self.x_test, training=False).numpy()
    self.assertNotAllClose(dense_logits, self.keras_logits)
    pruned = tf.saved_model.load(self.saved_model_path).signatures["serving_default"]
    dense = tf.saved_model.load(dense_path).signatures["serving_default"]
    self.assertAllClose(pruned(images=tf.constant(self.x_test))["logits"], self.keras_logits, atol=1e-5)
    self.assertAllClose(dense(images=tf.constant(self.x_test))["logits"], dense_logits, atol=1e-5)

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
