"""Tests for tfrobprune.deploy.serving.server: construction, start-up, and `serve_forever` in a child process.

The protocols have their own tests (grpc_service_test, rest_test), as does the version policy (versions_test).
"""

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl.testing import absltest
from absl.testing import parameterized

import testing_util
from tfrobprune.deploy.serving import server as serving
from tfrobprune.deploy.serving import versions

_MODEL = testing_util.MODEL


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
