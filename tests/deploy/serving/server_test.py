"""Tests for tfrobprune.deploy.serving.server: the official TF Serving clients against a server on 127.0.0.1, port 0.

Every SavedModel here is a tiny Dense model exported in the test with the package's serving signature
('images' float32 [None, 4, 4, 1] -> 'logits', 'probabilities', 'classes'). All traffic goes to 127.0.0.1.
"""

import http.client
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from absl.testing import absltest
from absl.testing import parameterized
import grpc
import hypothesis
from hypothesis import strategies as st
import numpy as np

from tfrobprune.deploy.serving import server as serving
from tfrobprune.keras_compat import keras, tf

from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: I100 (after keras_compat: imports TF)
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

_MODEL = "tiny"
_IMAGE_JSON = json.dumps([[[0.5]] * 4] * 4)
_MAX_BATCH = 8
_POLL_S = 0.2
_WAIT_S = 15
_OUTPUTS = ("classes", "logits", "probabilities")
_Code = grpc.StatusCode
_FUZZ = hypothesis.settings(max_examples=50, deadline=None, derandomize=True, database=None,
                            suppress_health_check=list(hypothesis.HealthCheck))


def setUpModule():
  # Hypothesis caches in ./.hypothesis unless told otherwise (read lazily); the work tree is no place for it.
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
    logits = self.model(images)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1)}


def _export(base, name, version, seed):
  """Exports a tiny model as base/name/version, atomically (a '.tmp-' directory renamed); returns its path."""
  model_dir = os.path.join(base, name)
  os.makedirs(model_dir, exist_ok=True)
  module = _TinyModule(seed)
  staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
  tf.saved_model.save(module, staging, signatures={"serving_default": module.serve})
  final = os.path.join(model_dir, str(version))
  os.rename(staging, final)
  return final


def _direct(path, images):
  """What the SavedModel itself answers: {output name: numpy array}."""
  outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
  return {name: value.numpy() for name, value in outputs.items()}


def _images(count, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (count, 4, 4, 1)).astype(np.float32)


def _predict_request(images=None, *, name=_MODEL, version=None, label="", signature="", inputs=None,
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


def _grpc_outputs(response):
  return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _grpc_code(stub, request):
  try:
    stub.Predict(request, timeout=30)
  except grpc.RpcError as error:
    return error.code()
  return _Code.OK


def _rest(port, method, path, body=None, headers=None):
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


def _raw_http(port, request_bytes):
  """(HTTP status, parsed JSON body) for hand-written request bytes (for headers http.client will not send)."""
  with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
    sock.sendall(request_bytes)
    data = b""
    while chunk := sock.recv(65536):
      data += chunk
  head, _, body = data.partition(b"\r\n\r\n")
  return int(head.split()[1]), json.loads(body)


def _wait_for(condition, timeout=_WAIT_S):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.05)
  return condition()


class ServingTest(tf.test.TestCase, parameterized.TestCase):
  """One server on model 'tiny' version 1 (never changed) for all tests but the version and process ones."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.base = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.base, ignore_errors=True)
    cls.path = _export(cls.base, _MODEL, 1, seed=1)
    cls.server = serving.ModelServer(cls.base, _MODEL, max_batch=_MAX_BATCH, poll_seconds=_POLL_S).start()
    cls.addClassCleanup(cls.server.stop)
    cls.channel = grpc.insecure_channel(f"127.0.0.1:{cls.server.grpc_port}")
    cls.addClassCleanup(cls.channel.close)
    cls.stub = prediction_service_pb2_grpc.PredictionServiceStub(cls.channel)
    cls.images = _images(5)
    cls.expected = _direct(cls.path, cls.images)

  def assertMatchesDirect(self, outputs, expected=None, names=_OUTPUTS):
    expected = self.expected if expected is None else expected
    self.assertCountEqual(outputs, names)
    for name in names:
      self.assertAllClose(np.asarray(outputs[name], dtype=expected[name].dtype), expected[name], rtol=1e-6,
                          atol=1e-7, msg=name)

  def assertRestPredicts(self, body, path=f"/v1/models/{_MODEL}:predict"):
    status, answer = _rest(self.server.rest_port, "POST", path, body)
    self.assertEqual(status, 200, answer)
    return answer

  # --- Construction and start-up.

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
    with self.assertRaisesRegex(serving.ModelLoadError, "Cannot load the SavedModel in .*3"):
      server.start()
    server.stop()

  # --- gRPC, with the official client.

  def testGrpcPredict_OfficialClient_MatchesSavedModel(self):
    response = self.stub.Predict(_predict_request(self.images), timeout=30)
    self.assertMatchesDirect(_grpc_outputs(response))
    self.assertEqual(response.model_spec.name, _MODEL)
    self.assertEqual(response.model_spec.version.value, 1)
    self.assertEqual(response.model_spec.signature_name, "serving_default")

  def testGrpcPredict_PinnedVersionAndSignatureName_MatchesSavedModel(self):
    request = _predict_request(self.images, version=1, signature="serving_default")
    self.assertMatchesDirect(_grpc_outputs(self.stub.Predict(request, timeout=30)))

  def testGrpcPredict_OutputFilter_ReturnsOnlyThoseOutputs(self):
    request = _predict_request(self.images, output_filter=["classes", "logits"])
    self.assertMatchesDirect(_grpc_outputs(self.stub.Predict(request, timeout=30)), names=("classes", "logits"))

  def testGrpcPredict_EmptyBatch_ReturnsEmptyOutputs(self):
    outputs = _grpc_outputs(self.stub.Predict(_predict_request(_images(0)), timeout=30))
    self.assertEqual(outputs["logits"].shape, (0, 3))

  def testGrpcGetModelMetadata_ReturnsTheSavedModelsSignatureDef(self):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = _MODEL
    response = self.stub.GetModelMetadata(request, timeout=30)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    self.assertTrue(response.metadata["signature_def"].Unpack(signature_defs))
    signature = signature_defs.signature_def["serving_default"]
    self.assertEqual(list(signature.inputs), ["images"])
    self.assertEqual([d.size for d in signature.inputs["images"].tensor_shape.dim], [-1, 4, 4, 1])
    self.assertCountEqual(signature.outputs, _OUTPUTS)
    self.assertEqual(response.model_spec.version.value, 1)

  def testGrpcGetModelMetadata_UnsupportedField_InvalidArgument(self):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    request.model_spec.name = _MODEL
    with self.assertRaises(grpc.RpcError) as caught:
      self.stub.GetModelMetadata(request, timeout=30)
    self.assertEqual(caught.exception.code(), _Code.INVALID_ARGUMENT)

  def testGrpcGetModelStatus_ReportsVersionAvailable(self):
    stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = _MODEL
    (status,) = stub.GetModelStatus(request, timeout=30).model_version_status
    self.assertEqual((status.version, status.state), (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE))
    request.model_spec.name = "nope"
    with self.assertRaises(grpc.RpcError) as caught:
      stub.GetModelStatus(request, timeout=30)
    self.assertEqual(caught.exception.code(), _Code.NOT_FOUND)

  @parameterized.named_parameters(
      ("UnknownModel", lambda x: _predict_request(x, name="nope"), _Code.NOT_FOUND),
      ("UnknownVersion", lambda x: _predict_request(x, version=7), _Code.NOT_FOUND),
      ("VersionLabel", lambda x: _predict_request(x, label="stable"), _Code.INVALID_ARGUMENT),
      ("UnknownSignature", lambda x: _predict_request(x, signature="classify"), _Code.FAILED_PRECONDITION),
      ("UnknownInputName", lambda x: _predict_request(inputs={"pixels": x}), _Code.INVALID_ARGUMENT),
      ("ExtraInput", lambda x: _predict_request(inputs={"images": x, "labels": x}), _Code.INVALID_ARGUMENT),
      ("NoInput", lambda x: _predict_request(inputs={}), _Code.INVALID_ARGUMENT),
      ("IntTensor", lambda x: _predict_request((x * 255).astype(np.int32)), _Code.INVALID_ARGUMENT),
      ("Int64Tensor", lambda x: _predict_request(x.astype(np.int64)), _Code.INVALID_ARGUMENT),
      ("DoubleTensor", lambda x: _predict_request(x.astype(np.float64)), _Code.INVALID_ARGUMENT),
      ("StringTensor", lambda x: _predict_request(np.full(x.shape, b"0.5", dtype=object)), _Code.INVALID_ARGUMENT),
      ("Rank3", lambda x: _predict_request(x[..., 0]), _Code.INVALID_ARGUMENT),
      ("Rank5", lambda x: _predict_request(x[None]), _Code.INVALID_ARGUMENT),
      ("WrongHeight", lambda x: _predict_request(np.zeros((2, 5, 4, 1), np.float32)), _Code.INVALID_ARGUMENT),
      ("WrongChannels", lambda x: _predict_request(np.zeros((2, 4, 4, 3), np.float32)), _Code.INVALID_ARGUMENT),
      ("AboveOne", lambda x: _predict_request(x + 1), _Code.INVALID_ARGUMENT),
      ("Negative", lambda x: _predict_request(x - 1), _Code.INVALID_ARGUMENT),
      ("NaN", lambda x: _predict_request(np.where(x > 0.5, np.nan, x)), _Code.INVALID_ARGUMENT),
      ("Inf", lambda x: _predict_request(np.where(x > 0.5, np.inf, x)), _Code.INVALID_ARGUMENT),
      ("BatchOverMax", lambda x: _predict_request(_images(_MAX_BATCH + 1)), _Code.INVALID_ARGUMENT),
      ("UnknownOutputFilter", lambda x: _predict_request(x, output_filter=["scores"]), _Code.INVALID_ARGUMENT),
      ("RepeatedOutputFilter", lambda x: _predict_request(x, output_filter=["logits"] * 2), _Code.INVALID_ARGUMENT),
  )
  def testGrpcPredict_BadRequest_ReturnsTfServingsCode(self, make_request, code):
    self.assertEqual(_grpc_code(self.stub, make_request(self.images)), code)

  def testGrpcPredict_HugeShapeFilledByOneValue_InvalidArgumentWithoutAllocating(self):
    proto = tf.make_tensor_proto(np.float32(0.5))
    proto.tensor_shape.Clear()
    for size in (2**40, 4, 4, 1):
      proto.tensor_shape.dim.add(size=size)
    self.assertEqual(_grpc_code(self.stub, _predict_request(inputs={"images": proto})), _Code.INVALID_ARGUMENT)

  def testGrpcPredict_ContentNotFillingShape_InvalidArgument(self):
    proto = tf.make_tensor_proto(self.images)
    proto.tensor_content = proto.tensor_content[:-3]
    self.assertEqual(_grpc_code(self.stub, _predict_request(inputs={"images": proto})), _Code.INVALID_ARGUMENT)

  # --- REST.

  def testRestPredict_Instances_MatchesSavedModel(self):
    answer = self.assertRestPredicts({"instances": self.images.tolist()})
    predictions = answer["predictions"]
    self.assertLen(predictions, len(self.images))
    self.assertMatchesDirect({name: [p[name] for p in predictions] for name in _OUTPUTS})
    self.assertIsInstance(predictions[0]["classes"], int)

  def testRestPredict_NamedInstancesAndPinnedVersion_MatchesSavedModel(self):
    body = {"signature_name": "serving_default", "instances": [{"images": x} for x in self.images.tolist()]}
    answer = self.assertRestPredicts(body, f"/v1/models/{_MODEL}/versions/1:predict")
    self.assertMatchesDirect({name: [p[name] for p in answer["predictions"]] for name in _OUTPUTS})

  @parameterized.named_parameters(("Plain", False), ("Named", True))
  def testRestPredict_Inputs_MatchesSavedModel(self, named):
    images = self.images.tolist()
    answer = self.assertRestPredicts({"inputs": {"images": images} if named else images})
    self.assertMatchesDirect(answer["outputs"])

  def testRestPredict_Floats_WrittenInShortestRoundTripForm(self):
    connection = http.client.HTTPConnection("127.0.0.1", self.server.rest_port, timeout=30)
    self.addCleanup(connection.close)
    connection.request("POST", f"/v1/models/{_MODEL}:predict", body=json.dumps({"inputs": self.images.tolist()}))
    text = connection.getresponse().read().decode()
    logits = self.expected["logits"]
    self.assertIn(f"[{', '.join(str(x) for x in logits[0])}]", text)  # str(np.float32): shortest round trip.
    self.assertAllEqual(np.float32(json.loads(text)["outputs"]["logits"]), logits)

  def testRestModelStatus_ReportsVersionAvailable(self):
    status, answer = _rest(self.server.rest_port, "GET", f"/v1/models/{_MODEL}")
    self.assertEqual(status, 200)
    self.assertEqual(answer, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})

  def testRestModelMetadata_ListsTheServingSignature(self):
    status, answer = _rest(self.server.rest_port, "GET", f"/v1/models/{_MODEL}/versions/1/metadata")
    self.assertEqual(status, 200)
    self.assertEqual(answer["model_spec"]["version"], "1")
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    self.assertEqual(signature["inputs"]["images"]["dtype"], "DT_FLOAT")
    self.assertCountEqual(signature["outputs"], _OUTPUTS)

  @parameterized.named_parameters(
      ("MalformedJson", "POST", ":predict", b'{"instances": [', 400),
      ("EmptyBody", "POST", ":predict", b"", 400),
      ("NotAnObject", "POST", ":predict", [[0.5]], 400),
      ("MissingInstances", "POST", ":predict", {"images": [[[[0.5]]]]}, 400),
      ("InstancesAndInputs", "POST", ":predict", {"instances": [], "inputs": []}, 400),
      ("InstancesNotAList", "POST", ":predict", {"instances": 0.5}, 400),
      ("NoInstances", "POST", ":predict", {"instances": []}, 400),
      ("SignatureNameNotAString", "POST", ":predict", {"signature_name": 3, "instances": "ok"}, 400),
      ("UnknownSignature", "POST", ":predict", {"signature_name": "nope", "instances": "ok"}, 400),
      ("UnknownModel", "POST", "/v1/models/nope:predict", {"instances": "ok"}, 404),
      ("UnknownVersion", "POST", "/versions/2:predict", {"instances": "ok"}, 404),
      ("VersionLabel", "POST", "/labels/stable:predict", {"instances": "ok"}, 400),
      ("HugeVersion", "POST", "/versions/99999999999999999999:predict", {"instances": "ok"}, 400),
      ("Strings", "POST", ":predict", {"instances": [[[["0.5"]] * 4] * 4]}, 400),
      ("Bools", "POST", ":predict", {"instances": [[[[True]] * 4] * 4]}, 400),
      ("Nulls", "POST", ":predict", {"instances": [[[[None]] * 4] * 4]}, 400),
      ("Base64", "POST", ":predict", {"instances": [{"b64": "AAAA"}]}, 400),
      ("Rank3", "POST", ":predict", {"instances": [[0.5] * 4] * 4}, 400),
      ("WrongHeight", "POST", ":predict", {"instances": [[[[0.5]] * 4] * 5]}, 400),
      ("WrongChannels", "POST", ":predict", {"inputs": [[[[0.5, 0.5]] * 4] * 4]}, 400),
      ("Ragged", "POST", ":predict", {"instances": [[[[0.5]] * 4] * 4, [[[0.5]] * 3] * 4]}, 400),
      ("AboveOne", "POST", ":predict", {"instances": [[[[1.5]] * 4] * 4]}, 400),
      ("NaN", "POST", ":predict", {"instances": [[[[float("nan")]] * 4] * 4]}, 400),
      ("Infinity", "POST", ":predict", {"inputs": [[[[-float("inf")]] * 4] * 4]}, 400),
      ("HugeNumber", "POST", ":predict", '{"instances": [%s]}' % _IMAGE_JSON.replace("0.5", "1e999999", 1), 400),
      ("HugeInteger", "POST", ":predict", '{"instances": [%s]}' % _IMAGE_JSON.replace("0.5", "9" * 400, 1), 400),
      ("BatchOverMax", "POST", ":predict", {"instances": [[[[0.5]] * 4] * 4] * (_MAX_BATCH + 1)}, 400),
      ("UnknownInputName", "POST", ":predict", {"instances": [{"pixels": [[[0.5]] * 4] * 4}]}, 400),
      ("ExtraInputName", "POST", ":predict", {"inputs": {"images": [[[[0.5]] * 4] * 4], "x": 1}}, 400),
      ("MissingInputName", "POST", ":predict", {"inputs": {"pixels": [[[[0.5]] * 4] * 4]}}, 400),
      ("Classify", "POST", ":classify", {"examples": []}, 501),
      ("PathOutsideV1", "POST", "/predict", {"instances": "ok"}, 404),
      ("GetUnknownModel", "GET", "/v1/models/nope", None, 404),
      ("GetUnknownVersion", "GET", "/versions/3", None, 404),
      ("GetWithoutModel", "GET", "/v1/models", None, 400),
      ("PutPredict", "PUT", ":predict", {"instances": "ok"}, 400),
  )
  def testRestRequest_Bad_ReturnsTfServingsStatusAndError(self, method, path, body, status):
    ok = [[[[0.5]] * 4] * 4]
    if isinstance(body, dict):
      body = {key: ok if value == "ok" else value for key, value in body.items()}
    if not path.startswith("/"):
      path = f"/v1/models/{_MODEL}{path}"
    elif path.startswith("/versions") or path.startswith("/labels"):
      path = f"/v1/models/{_MODEL}{path}"
    got, answer = _rest(self.server.rest_port, method, path, body)
    self.assertEqual(got, status, answer)
    self.assertIsInstance(answer["error"], str)

  def testRestPredict_BodyOverLimit_Returns413WithoutReadingIt(self):
    status, answer = _raw_http(self.server.rest_port, (
        f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {serving.MAX_REQUEST_BYTES + 1}\r\n\r\n").encode())
    self.assertEqual(status, 413)
    self.assertIn("larger than the limit", answer["error"])

  @parameterized.named_parameters(
      ("Chunked", "Transfer-Encoding: chunked\r\n", 411),
      ("BadContentLength", "Content-Length: -5\r\n", 400),
  )
  def testRestPredict_BodyFraming_Rejected(self, header, status):
    got, answer = _raw_http(self.server.rest_port, (
        f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}Connection: close\r\n\r\n"
    ).encode())
    self.assertEqual(got, status)
    self.assertIn("error", answer)

  # --- Fuzzing: any body or TensorProto gets a success or a documented code, and the server lives on.

  @hypothesis.given(data=st.data())
  @_FUZZ
  def testRestFuzz_AnyRequest_SuccessOrDocumentedStatus(self, data):
    method, path = data.draw(_REST_TARGETS)
    body = data.draw(_REST_BODIES)
    status, answer = _rest(self.server.rest_port, method, path, body)
    self.assertIn(status, (200, 400, 404, 411, 413, 501), answer)
    if status == 200:
      self.assertTrue({"predictions", "outputs", "model_version_status", "metadata"} & set(answer), answer)
    else:
      self.assertIsInstance(answer["error"], str)

  @hypothesis.given(data=st.data())
  @_FUZZ
  def testGrpcFuzz_AnyTensorProto_SuccessOrDocumentedCode(self, data):
    request = data.draw(_grpc_requests())
    try:
      response = self.stub.Predict(request, timeout=30)
    except grpc.RpcError as error:
      self.assertIn(error.code(), (_Code.INVALID_ARGUMENT, _Code.NOT_FOUND, _Code.FAILED_PRECONDITION),
                    error.details())
    else:
      self.assertLessEqual(set(response.outputs), set(_OUTPUTS))

  def testZzAfterAllOtherTests_ServerStillAnswers(self):
    # Named to run last in this class (unittest runs methods in name order), after the fuzz tests.
    self.assertMatchesDirect(_grpc_outputs(self.stub.Predict(_predict_request(self.images), timeout=30)))
    self.assertMatchesDirect(self.assertRestPredicts({"inputs": self.images.tolist()})["outputs"])
    self.assertEqual(self.server.version, 1)


# --- Hypothesis strategies: valid requests with zero to two random mutations each, plus arbitrary JSON and bytes.

_PREDICT = f"/v1/models/{_MODEL}:predict"
_OTHER_REST_TARGETS = [
    ("POST", f"/v1/models/{_MODEL}/versions/1:predict"), ("POST", f"/v1/models/{_MODEL}/versions/2:predict"),
    ("POST", "/v1/models/nope:predict"), ("POST", f"/v1/models/{_MODEL}/labels/a:predict"),
    ("POST", f"/v1/models/{_MODEL}:regress"), ("POST", "/v1/models/%ZZ:predict"), ("GET", f"/v1/models/{_MODEL}"),
    ("GET", f"/v1/models/{_MODEL}/metadata"), ("GET", "/v1/models/nope/versions/1"), ("POST", "/v2/models"),
    ("DELETE", _PREDICT), ("POST", f"/v1/models/{_MODEL}/versions/{'9' * 30}:predict"),
]
_REST_TARGETS = st.one_of(st.just(("POST", _PREDICT)), st.just(("POST", _PREDICT)),
                          st.just(("POST", _PREDICT)), st.sampled_from(_OTHER_REST_TARGETS))
_JSON_LEAVES = (st.none() | st.booleans() | st.integers(-2, 2) | st.integers() | st.text(max_size=3)
                | st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1))
_JSON = st.recursive(_JSON_LEAVES, lambda children: (
    st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["instances", "inputs", "images", "signature_name", "b64"]) | st.text(max_size=3),
                      children, max_size=3)), max_leaves=40)
_MUTATIONS = st.sets(st.sampled_from(["spec", "signature", "name", "dtype", "shape", "range", "content"]),
                     max_size=2)


def _image_values(draw, mutations):
  """A batch of images as a numpy array: valid, or with a random shape and/or out-of-range values."""
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  shape = [draw(st.integers(1, _MAX_BATCH + 1)), 4, 4, 1]
  if "shape" in mutations:
    shape = draw(st.lists(st.integers(0, 5), max_size=5))
  values = rng.uniform(0, 1, shape)
  if "range" in mutations:
    values = np.where(rng.uniform(size=shape) < 0.1, draw(st.sampled_from([-0.5, 1.5, np.nan, np.inf])), values)
  return values


@st.composite
def _image_like_body(draw):
  """A :predict body, valid or with mutations of its shape, values, JSON types, input name or signature."""
  mutations = draw(_MUTATIONS)
  values = _image_values(draw, mutations)
  if "dtype" in mutations:
    kind = draw(st.sampled_from(["int", "bool", "str", "null"]))
    values = {"int": (values > 0.5).astype(int), "bool": values > 0.5, "str": values.astype(str),
              "null": np.full(values.shape, None)}[kind]
  values = values.tolist()
  name = "pixels" if "name" in mutations else "images"
  if draw(st.booleans()):
    body = {"inputs": {name: values} if draw(st.booleans()) or name != "images" else values}
  elif isinstance(values, list) and (draw(st.booleans()) or name != "images"):
    body = {"instances": [{name: value} for value in values]}
  else:
    body = {"instances": values}
  if "signature" in mutations:
    body["signature_name"] = draw(st.sampled_from(["nope", 7, None, ["serving_default"]]))
  elif draw(st.booleans()):
    body["signature_name"] = draw(st.sampled_from(["", "serving_default"]))
  return json.dumps(body)


_REST_BODIES = st.one_of(_image_like_body(), _image_like_body(), _JSON.map(json.dumps), st.binary(max_size=40))
# TensorFlow DataType enum values: double, int32, string, int64, bool, half, invalid 0, float_ref, unknown.
_BAD_DTYPES = [2, 3, 7, 9, 10, 19, 0, 101, 999]


def _fill_proto_content(draw, proto, values, mutations):
  """Sets the TensorProto's values: the images' own, or (mutated) arbitrary floats, bytes, strings or ints."""
  kinds = ["floats", "bytes", "strings", "ints", "none"] if "content" in mutations else ["float_val", "tensor_content"]
  content = draw(st.sampled_from(kinds))
  if content == "float_val":
    proto.float_val.extend(values.astype(np.float32).ravel().tolist())
  elif content == "tensor_content":
    proto.tensor_content = values.astype(np.float32).tobytes()
  elif content == "floats":
    proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=20)))
  elif content == "bytes":
    proto.tensor_content = draw(st.binary(max_size=300))
  elif content == "strings":
    proto.string_val.extend(draw(st.lists(st.binary(max_size=4), max_size=5)))
  elif content == "ints":
    proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=5)))


@st.composite
def _grpc_requests(draw):
  """PredictRequests, valid or with mutations of the model spec, signature, input name, dtype, shape, values."""
  mutations = draw(_MUTATIONS)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = draw(st.sampled_from(["nope", ""])) if "spec" in mutations else _MODEL
  version = draw(st.sampled_from([None, 1, 2] if "spec" in mutations else [None, 1]))
  if version is not None:
    request.model_spec.version.value = version
  signatures = ["x"] if "signature" in mutations else ["", "serving_default"]
  request.model_spec.signature_name = draw(st.sampled_from(signatures))
  request.output_filter.extend(draw(st.lists(st.sampled_from([*_OUTPUTS, "bogus"]), max_size=3, unique=True)))
  proto = request.inputs["pixels" if "name" in mutations else "images"]
  values = _image_values(draw, mutations)
  proto.dtype = draw(st.sampled_from(_BAD_DTYPES)) if "dtype" in mutations else 1  # DT_FLOAT
  for size in values.shape:
    proto.tensor_shape.dim.add(size=size)
  if "shape" in mutations and draw(st.booleans()):
    proto.tensor_shape.dim.add(size=draw(st.sampled_from([-1, 2**40])))
    proto.tensor_shape.unknown_rank = draw(st.booleans())
  _fill_proto_content(draw, proto, values, mutations)
  return request


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


class ServeForeverTest(parameterized.TestCase):

  @parameterized.named_parameters(("Sigterm", signal.SIGTERM), ("Sigint", signal.SIGINT))
  def testSignal_StopsCleanlyAndExitsZero(self, signum):
    base = self.create_tempdir().full_path
    _export(base, _MODEL, 1, seed=1)
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
    status, _ = _rest(port, "GET", f"/v1/models/{_MODEL}")
    self.assertEqual(status, 200)
    process.send_signal(signum)
    self.assertEqual(process.wait(timeout=60), 0)


if __name__ == "__main__":
  absltest.main()
