"""Shared fixtures of the serving tests: a tiny exported model, request builders, clients, and a running server.

Every SavedModel here is a tiny Dense model exported in the test with the package's serving signature
('images' float32 [None, 4, 4, 1] -> 'logits', 'probabilities', 'classes'). All traffic goes to 127.0.0.1.
"""

import http.client
import json
import os
import shutil
import socket
import tempfile
import time

from absl.testing import parameterized
import grpc
import hypothesis
from hypothesis import strategies as st
import numpy as np

from tfrobprune.deploy.serving import server as serving
from tfrobprune.keras_compat import keras, tf

from tensorflow_serving.apis import predict_pb2  # noqa: I100 (after keras_compat: imports TF)
from tensorflow_serving.apis import prediction_service_pb2_grpc

MODEL = "tiny"
MAX_BATCH = 8
POLL_S = 0.2
WAIT_S = 15
OUTPUTS = ("classes", "logits", "probabilities")
FUZZ = hypothesis.settings(max_examples=50, deadline=None, derandomize=True, database=None,
                           suppress_health_check=list(hypothesis.HealthCheck))
# Zero to two random mutations of a valid request, for the fuzz tests' request strategies.
MUTATIONS = st.sets(st.sampled_from(["spec", "signature", "name", "dtype", "shape", "range", "content"]),
                    max_size=2)
_Code = grpc.StatusCode


def use_temp_hypothesis_storage():
  """For setUpModule: Hypothesis caches in ./.hypothesis unless told otherwise (read lazily); not in the work tree."""
  os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "tfrobprune-hypothesis"))


class _TinyModule(tf.Module):
  """The package's serving signature around a 16 -> 3 Dense model."""

  def __init__(self, seed):
    super().__init__()
    init = keras.initializers.RandomNormal(seed=seed)
    self.model = keras.Sequential([keras.layers.Flatten(input_shape=(4, 4, 1)),
                                   keras.layers.Dense(3, kernel_initializer=init, bias_initializer=init)])

  @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 1], tf.float32, name="images")])
  def serve(self, images):
    return self.outputs(images)

  def outputs(self, images):
    logits = self.model(images)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1)}


class _ScoresModule(_TinyModule):
  """A signature other than the exports' (one output, 'scores'): it declares no [0, 1] range for its input."""

  @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 1], tf.float32, name="images")])
  def serve(self, images):
    return {"scores": self.model(images)}


class _SlowModule(_TinyModule):
  """The exports' signature, but each call first sleeps `sleep_s` seconds (in the graph, so it survives saving)."""

  def __init__(self, seed, sleep_s):
    super().__init__(seed)
    self.sleep_us = int(sleep_s * 1e6 / 2)  # it sleeps before the one element and before the end of input

  @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 1], tf.float32, name="images")])
  def serve(self, images):
    # tf.data's test-only sleep transformation is the one TensorFlow op that waits without using a core.
    from tensorflow.python.data.experimental.ops import testing  # pylint: disable=g-import-not-at-top
    slept = tf.data.Dataset.range(1).apply(testing.sleep(self.sleep_us)).reduce(tf.constant(0, tf.int64),
                                                                                 lambda total, x: total + x)
    with tf.control_dependencies([slept]):
      images = tf.identity(images)
    return self.outputs(images)


def export(base, name, version, seed, *, kind="tiny", sleep_s=0.0):
  """Exports a tiny model as base/name/version, atomically (a '.tmp-' directory renamed); returns its path.

  `kind` is 'tiny' (the exports' signature), 'scores' (another signature) or 'slow' ('tiny' sleeping `sleep_s`).
  """
  model_dir = os.path.join(base, name)
  os.makedirs(model_dir, exist_ok=True)
  module = {"tiny": lambda: _TinyModule(seed), "scores": lambda: _ScoresModule(seed),
            "slow": lambda: _SlowModule(seed, sleep_s)}[kind]()
  staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
  tf.saved_model.save(module, staging, signatures={"serving_default": module.serve})
  final = os.path.join(model_dir, str(version))
  os.rename(staging, final)
  return final


def direct(path, images):
  """What the SavedModel itself answers: {output name: numpy array}."""
  outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
  return {name: value.numpy() for name, value in outputs.items()}


def random_images(count, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (count, 4, 4, 1)).astype(np.float32)


def predict_request(images=None, *, name=MODEL, version=None, label="", signature="", inputs=None,
                    output_filter=()):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = name
  if version is not None:
    request.model_spec.version.value = version
  if label:
    request.model_spec.version_label = label
  request.model_spec.signature_name = signature
  for key, value in (inputs if inputs is not None else {"images": images}).items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value) if isinstance(value, np.ndarray) else value)
  request.output_filter.extend(output_filter)
  return request


def grpc_outputs(response):
  return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def grpc_code(stub, request):
  try:
    stub.Predict(request, timeout=30)
  except grpc.RpcError as error:
    return error.code()
  return _Code.OK


def rest(port, method, path, body=None, headers=None):
  """(HTTP status, parsed JSON body) of one request to 127.0.0.1:port."""
  if body is not None and not isinstance(body, (bytes, str)):
    body = json.dumps(body)
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  try:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, json.loads(response.read())
  finally:
    connection.close()


def raw_http(port, request_bytes):
  """(HTTP status, parsed JSON body) for hand-written request bytes (for headers http.client will not send)."""
  with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
    sock.sendall(request_bytes)
    data = b""
    while chunk := sock.recv(65536):
      data += chunk
  head, _, body = data.partition(b"\r\n\r\n")
  return int(head.split()[1]), json.loads(body)


def wait_for(condition, timeout=WAIT_S):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.05)
  return condition()


def image_values(draw, mutations):
  """A batch of images as a numpy array: valid, or with a random shape and/or out-of-range values."""
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  shape = [draw(st.integers(1, MAX_BATCH + 1)), 4, 4, 1]
  if "shape" in mutations:
    shape = draw(st.lists(st.integers(0, 5), max_size=5))
  values = rng.uniform(0, 1, shape)
  if "range" in mutations:
    values = np.where(rng.uniform(size=shape) < 0.1, draw(st.sampled_from([-0.5, 1.5, np.nan, np.inf])), values)
  return values


class ServerTestCase(tf.test.TestCase, parameterized.TestCase):
  """One server on model 'tiny' version 1 (never changed) for all tests of the class."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.base = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.base, ignore_errors=True)
    cls.path = export(cls.base, MODEL, 1, seed=1)
    cls.server = serving.ModelServer(cls.base, MODEL, max_batch=MAX_BATCH, poll_seconds=POLL_S).start()
    cls.addClassCleanup(cls.server.stop)
    cls.channel = grpc.insecure_channel(f"127.0.0.1:{cls.server.grpc_port}")
    cls.addClassCleanup(cls.channel.close)
    cls.stub = prediction_service_pb2_grpc.PredictionServiceStub(cls.channel)
    cls.images = random_images(5)
    cls.expected = direct(cls.path, cls.images)

  def assertMatchesDirect(self, outputs, expected=None, names=OUTPUTS):
    expected = self.expected if expected is None else expected
    self.assertCountEqual(outputs, names)
    for name in names:
      self.assertAllClose(np.asarray(outputs[name], dtype=expected[name].dtype), expected[name], rtol=1e-6,
                          atol=1e-7, msg=name)

  def assertRestPredicts(self, body, path=f"/v1/models/{MODEL}:predict"):
    status, answer = rest(self.server.rest_port, "POST", path, body)
    self.assertEqual(status, 200, answer)
    return answer

  def assertServerStillAnswers(self):
    """Both protocols still serve version 1 correctly (after the fuzz tests)."""
    self.assertMatchesDirect(grpc_outputs(self.stub.Predict(predict_request(self.images), timeout=30)))
    self.assertMatchesDirect(self.assertRestPredicts({"inputs": self.images.tolist()})["outputs"])
    self.assertEqual(self.server.version, 1)
