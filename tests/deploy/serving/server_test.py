"""Tests for tfrobprune.deploy.serving.server: construction, start-up, and `serve_forever` in a child process.

The protocols have their own tests (grpc_service_test, rest_test), as does the version policy (versions_test).
"""

import concurrent.futures
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import grpc
import numpy as np

import testing_util
from tfrobprune.deploy.serving import server as serving
from tfrobprune.deploy.serving import versions

from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: I100 (after keras_compat: imports TF)

_MODEL = testing_util.MODEL
_Code = grpc.StatusCode
_NON_LOOPBACK_WARNING = "not a loopback address"


def _start(test, kind="tiny", **kwargs):
  """A started server on a model of `kind` (see testing_util.export), stopped at the end of `test`."""
  base = test.create_tempdir().full_path
  testing_util.export(base, _MODEL, 1, seed=1, kind=kind, sleep_s=kwargs.pop("sleep_s", 0.0))
  server = serving.ModelServer(base, _MODEL, max_batch=testing_util.MAX_BATCH, **kwargs).start()
  test.addCleanup(server.stop)
  return server


def _stub(test, server):
  channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
  test.addCleanup(channel.close)
  return prediction_service_pb2_grpc.PredictionServiceStub(channel)


class ModelServerTest(testing_util.ServerTestCase):
  """One server on model 'tiny' version 1, plus servers that must fail to start."""

  def testStart_ServesHighestVersionOnLoopbackPorts(self):
    self.assertEqual(self.server.version, 1)
    self.assertEqual(self.server.host, "127.0.0.1")
    self.assertGreater(self.server.grpc_port, 0)
    self.assertGreater(self.server.rest_port, 0)
    self.assertNotEqual(self.server.grpc_port, self.server.rest_port)

  @parameterized.named_parameters(
      ("MissingModelDir", {"model_name": "absent"}, "No model directory"),
      ("ModelNameWithSlash", {"model_name": "a/b"}, "plain directory name"),
      ("NegativePort", {"grpc_port": -1}, "grpc_port"),
      ("PortTooLarge", {"rest_port": 70000}, "rest_port"),
      ("ZeroMaxBatch", {"max_batch": 0}, "max_batch"),
      ("ZeroPoll", {"poll_seconds": 0}, "poll_seconds"),
      ("ZeroRestWorkers", {"rest_workers": 0}, "rest_workers"),
      ("ZeroRestQueue", {"rest_queue": 0}, "rest_queue"),
      ("NegativeRequestTimeout", {"request_timeout": -1}, "request_timeout"),
  )
  def testConstructor_BadArgument_RaisesValueError(self, overrides, message):
    kwargs = {"model_name": _MODEL, **overrides}
    with self.assertRaisesRegex(ValueError, message):
      serving.ModelServer(self.base, kwargs.pop("model_name"), **kwargs)

  def testStart_BrokenHighestVersion_RaisesModelLoadError(self):
    model_dir = os.path.join(self.create_tempdir().full_path, "broken")
    os.makedirs(os.path.join(model_dir, "3"))
    with open(os.path.join(model_dir, "3", "saved_model.pb"), "wb") as f:
      f.write(b"not a SavedModel")
    server = serving.ModelServer(os.path.dirname(model_dir), "broken")
    with self.assertRaisesRegex(versions.ModelLoadError, "Cannot load the SavedModel in .*3"):
      server.start()
    server.stop()


class BindingTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("Ipv4Loopback", "127.0.0.1", True), ("OtherIpv4Loopback", "127.0.0.2", True), ("Ipv6Loopback", "::1", True),
      ("Localhost", "localhost", True), ("AllIpv4", "0.0.0.0", False), ("AllIpv6", "::", False),
      ("PrivateAddress", "10.1.2.3", False), ("HostName", "example.com", False),
  )
  def testIsLoopback(self, host, expected):
    self.assertEqual(serving.is_loopback(host), expected)

  def testStart_NonLoopbackHost_LogsAWarning(self):
    # The check is mocked so that the test itself never binds beyond loopback.
    with mock.patch.object(serving, "is_loopback", return_value=False), self.assertLogs(level="WARNING") as logs:
      _start(self)
    self.assertTrue(any(_NON_LOOPBACK_WARNING in line for line in logs.output), logs.output)

  def testStart_LoopbackHost_NoWarning(self):
    with self.assertNoLogs(level="WARNING"):
      _start(self)


class PixelRangeTest(parameterized.TestCase):
  """The [0, 1] check applies to the exports' signature, which declares it, and to no other."""

  _OUT_OF_RANGE = np.full((1, 4, 4, 1), 1.5, np.float32)

  def testExportsSignature_OutOfRange_InvalidArgumentOverBothProtocols(self):
    server = _start(self)
    self.assertEqual(server._model.servable.signatures["serving_default"].pixel_inputs, {"images"})
    self.assertEqual(testing_util.grpc_code(_stub(self, server), testing_util.predict_request(self._OUT_OF_RANGE)),
                     _Code.INVALID_ARGUMENT)
    status, answer = testing_util.rest(server.rest_port, "POST", f"/v1/models/{_MODEL}:predict",
                                       {"inputs": self._OUT_OF_RANGE.tolist()})
    self.assertEqual(status, 400)
    self.assertIn("must be pixels in [0, 1]", answer["error"])

  def testOtherSignature_OutOfRangeAndNaN_ServedOverBothProtocols(self):
    server = _start(self, kind="scores")
    self.assertEqual(server._model.servable.signatures["serving_default"].pixel_inputs, frozenset())
    values = self._OUT_OF_RANGE.copy()
    values[0, 0, 0, 0] = -7.0
    response = _stub(self, server).Predict(testing_util.predict_request(values), timeout=30)
    self.assertEqual(testing_util.grpc_outputs(response)["scores"].shape, (1, 3))
    status, answer = testing_util.rest(server.rest_port, "POST", f"/v1/models/{_MODEL}:predict",
                                       {"instances": values.tolist()})
    self.assertEqual(status, 200, answer)
    self.assertLen(answer["predictions"][0], 3)


class SlowModelTest(absltest.TestCase):
  """A model that sleeps on every call: the request deadline and the gRPC cap on concurrent calls."""

  def testModelSlowerThanTheDeadline_DeadlineExceededOverBothProtocols(self):
    server = _start(self, kind="slow", sleep_s=3.0, request_timeout=0.5)
    images = testing_util.random_images(1)
    start = time.monotonic()
    self.assertEqual(testing_util.grpc_code(_stub(self, server), testing_util.predict_request(images)),
                     _Code.DEADLINE_EXCEEDED)
    status, answer = testing_util.rest(server.rest_port, "POST", f"/v1/models/{_MODEL}:predict",
                                       {"inputs": images.tolist()})
    self.assertEqual(status, 504, answer)
    self.assertIn("running the model", answer["error"])
    self.assertLess(time.monotonic() - start, 2.5)  # Two 0.5 s deadlines, not two 3 s calls.

  def testMoreConcurrentRpcsThanTheCap_ResourceExhausted(self):
    with mock.patch.object(serving, "_MAX_CONCURRENT_RPCS", 2):
      server = _start(self, kind="slow", sleep_s=1.0)
    stub = _stub(self, server)
    request = testing_util.predict_request(testing_util.random_images(1))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      codes = list(pool.map(lambda _: testing_util.grpc_code(stub, request), range(4)))
    self.assertEqual(codes.count(_Code.OK), 2, codes)
    self.assertEqual(codes.count(_Code.RESOURCE_EXHAUSTED), 2, codes)


class ServeForeverTest(parameterized.TestCase):

  @parameterized.named_parameters(("Sigterm", signal.SIGTERM), ("Sigint", signal.SIGINT))
  def testSignal_StopsCleanlyAndExitsZero(self, signum):
    base = self.create_tempdir().full_path
    testing_util.export(base, _MODEL, 1, seed=1)
    script = ("import sys; from tfrobprune.deploy.serving import server as serving; "
              "serving.serve_forever(sys.argv[1], 'tiny', '127.0.0.1', 0, 0, 8)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    stderr = tempfile.TemporaryFile()
    self.addCleanup(stderr.close)
    process = subprocess.Popen([sys.executable, "-c", script, base], stdout=subprocess.PIPE, stderr=stderr,
                               text=True, env=env)
    self.addCleanup(lambda: process.poll() is None and process.kill())
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    port = None
    deadline = time.monotonic() + 120
    while port is None and time.monotonic() < deadline and process.poll() is None:
      try:
        line = lines.get(timeout=1)
      except queue.Empty:
        continue
      if "REST: http://127.0.0.1:" in line:
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
    stderr.seek(0)
    self.assertIsNotNone(port, stderr.read()[-3000:])
    status, _ = testing_util.rest(port, "GET", f"/v1/models/{_MODEL}")
    self.assertEqual(status, 200)
    process.send_signal(signum)
    self.assertEqual(process.wait(timeout=60), 0)


if __name__ == "__main__":
  absltest.main()
