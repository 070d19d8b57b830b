"""Tests for tfrobprune.deploy.serving.versions: the version directories, and versions appearing while serving.

The version tests run a server each (new versions are found by its polling thread) and check what clients see.
"""

import os
import shutil
import threading
import time

from absl.testing import absltest
import grpc

import testing_util
from tfrobprune.deploy.serving import server as serving
from tfrobprune.deploy.serving import versions
from tfrobprune.keras_compat import tf

from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: I100 (after keras_compat: imports TF)

_POLL_S = testing_util.POLL_S
_Code = grpc.StatusCode
_export = testing_util.export
_direct = testing_util.direct
_images = testing_util.random_images
_predict_request = testing_util.predict_request
_grpc_outputs = testing_util.grpc_outputs
_grpc_code = testing_util.grpc_code
_rest = testing_util.rest
_wait_for = testing_util.wait_for


class ListVersionsTest(absltest.TestCase):

  def testListVersions_OnlyIntegerDirectories_ByVersion(self):
    model_dir = self.create_tempdir().full_path
    for name in ("1", "10", ".tmp-3", "latest", str(2**63)):
      os.makedirs(os.path.join(model_dir, name))
    with open(os.path.join(model_dir, "2"), "w") as f:
      f.write("a file, not a version directory")
    self.assertEqual(versions.list_versions(model_dir),
                     {1: os.path.join(model_dir, "1"), 10: os.path.join(model_dir, "10")})


class VersionTest(tf.test.TestCase):
  """Version directories appearing while the server runs; each test has its own model and server."""

  def setUp(self):
    super().setUp()
    self.base = self.create_tempdir().full_path

  def _start(self, name):
    server = serving.ModelServer(self.base, name, poll_seconds=_POLL_S).start()
    self.addCleanup(server.stop)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    self.addCleanup(channel.close)
    return server, prediction_service_pb2_grpc.PredictionServiceStub(channel)

  def testNewVersion_WrittenAtomically_IsServedAndPinnable_TmpDirIgnored(self):
    _export(self.base, "rolling", 1, seed=1)
    tmp3 = os.path.join(self.base, "rolling", ".tmp-3")
    shutil.copytree(_export(self.base, "staging", 3, seed=3), tmp3)  # A complete SavedModel, but not a version.
    os.makedirs(os.path.join(self.base, "rolling", "latest"))
    server, stub = self._start("rolling")
    self.assertEqual(server.version, 1)
    images = _images(3, seed=5)
    codes, swapped = [], threading.Event()

    def predict_until_swapped():  # Requests during the swap: each must be served by one version or the other.
      while not swapped.is_set():
        codes.append(_grpc_code(stub, _predict_request(images, name="rolling")))
        time.sleep(0.02)

    during_swap = threading.Thread(target=predict_until_swapped)
    during_swap.start()
    path2 = _export(self.base, "rolling", 2, seed=2)
    self.assertTrue(_wait_for(lambda: server.version == 2), f"still serving version {server.version}")
    swapped.set()
    during_swap.join()
    self.assertNotEmpty(codes)
    self.assertEqual(set(codes), {_Code.OK})
    expected = _direct(path2, images)
    for version in (None, 2):
      outputs = _grpc_outputs(stub.Predict(_predict_request(images, name="rolling", version=version), timeout=30))
      self.assertAllClose(outputs["logits"], expected["logits"], rtol=1e-6, atol=1e-7)
      self.assertAllEqual(outputs["classes"], expected["classes"])
    status, answer = _rest(server.rest_port, "POST", "/v1/models/rolling/versions/2:predict",
                           {"inputs": images.tolist()})
    self.assertEqual(status, 200, answer)
    self.assertAllClose(answer["outputs"]["logits"], expected["logits"], rtol=1e-6, atol=1e-7)
    # TF Serving's default policy serves the latest version only.
    self.assertEqual(_grpc_code(stub, _predict_request(images, name="rolling", version=1)), _Code.NOT_FOUND)
    status, answer = _rest(server.rest_port, "GET", "/v1/models/rolling")
    self.assertEqual([(s["version"], s["state"]) for s in answer["model_version_status"]],
                     [("2", "AVAILABLE"), ("1", "END")])
    time.sleep(5 * _POLL_S)
    self.assertEqual(server.version, 2)  # '.tmp-3' holds a newer SavedModel, yet is never served.

  def testBrokenNewVersion_KeepsServingThePreviousOne(self):
    _export(self.base, "steady", 1, seed=1)
    server, stub = self._start("steady")
    staging = os.path.join(self.base, "steady", ".tmp-2")
    os.makedirs(staging)
    with open(os.path.join(staging, "saved_model.pb"), "wb") as f:
      f.write(b"\x00garbage")
    os.rename(staging, os.path.join(self.base, "steady", "2"))

    def version_2_failed():
      _, answer = _rest(server.rest_port, "GET", "/v1/models/steady/versions/2")
      return answer.get("model_version_status", [{}])[0].get("state") == "END"

    self.assertTrue(_wait_for(version_2_failed))
    _, answer = _rest(server.rest_port, "GET", "/v1/models/steady/versions/2")
    self.assertIn("Cannot load the SavedModel", answer["model_version_status"][0]["status"]["error_message"])
    self.assertEqual(server.version, 1)
    self.assertEqual(_grpc_code(stub, _predict_request(_images(2), name="steady")), _Code.OK)


if __name__ == "__main__":
  absltest.main()
