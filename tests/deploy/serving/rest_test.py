"""Tests for tfrobprune.deploy.serving.rest: TF Serving's REST API, over HTTP, against a running server.

Every request goes to a server on 127.0.0.1 (port 0) serving the tiny model of testing_util.
"""

import http.client
import json
import shutil
import socket
import tempfile
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import hypothesis
from hypothesis import strategies as st
import numpy as np

import testing_util
from tfrobprune.deploy.serving import rest
from tfrobprune.deploy.serving import server as serving
from tfrobprune.deploy.serving import validation

_MODEL = testing_util.MODEL
_IMAGE_JSON = json.dumps([[[0.5]] * 4] * 4)
_MAX_BATCH = testing_util.MAX_BATCH
_OUTPUTS = testing_util.OUTPUTS
_rest = testing_util.rest
_raw_http = testing_util.raw_http


def setUpModule():
  testing_util.use_temp_hypothesis_storage()


class RestTest(testing_util.ServerTestCase):
  """:predict, model status and metadata over HTTP, on one server for the whole class."""

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
        f"Content-Length: {validation.MAX_REQUEST_BYTES + 1}\r\n\r\n").encode())
    self.assertEqual(status, 413)
    self.assertIn("larger than the limit", answer["error"])

  @parameterized.named_parameters(
      ("Chunked", "Transfer-Encoding: chunked\r\n", 411, "Chunked"),
      ("NegativeContentLength", "Content-Length: -5\r\n", 400, "Invalid Content-Length"),
      ("SignedContentLength", "Content-Length: +2\r\n", 400, "Invalid Content-Length"),
      ("ListContentLength", "Content-Length: 2, 2\r\n", 400, "Invalid Content-Length"),
      ("NonAsciiDigits", "Content-Length: \uff12\r\n", 400, "Invalid Content-Length"),
      ("DuplicateContentLength", "Content-Length: 2\r\nContent-Length: 2\r\n", 400, "more than once"),
      ("ConflictingContentLength", "Content-Length: 2\r\ncontent-length: 9\r\n", 400, "more than once"),
      ("DuplicateHost", "Host: a\r\n", 400, "host appears more than once"),
      ("LengthAndChunked", "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", 400, "Both Content-Length"),
      ("FoldedHeader", "Content-Type: application/json\r\n json\r\n", 400, "folded"),
      ("SpaceBeforeColon", "Content-Length : 2\r\n", 400, "Malformed header line"),
      ("LineWithoutColon", "Content-Length 2\r\n", 400, "Malformed header line"),
  )
  def testRestPredict_BadFramingHeaders_RejectedNamingTheProblem(self, header, status, message):
    got, answer = _raw_http(self.server.rest_port, (
        f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}Connection: close\r\n\r\n{{}}"
    ).encode("utf-8"))
    self.assertEqual(got, status, answer)
    self.assertIn(message, answer["error"])

  @parameterized.named_parameters(
      ("Binary", b"\x16\x03\x01\x02\x00\x01\xfc\x03\x03\r\n\r\n", "Bad request"),
      ("Http09", b"GET /v1/models/tiny\r\n\r\n", "HTTP/0.9"),
  )
  def testRestRequest_BrokenRequestLine_400WithStatusLineAndJson(self, request, message):
    status, answer = _raw_http(self.server.rest_port, request)
    self.assertEqual(status, 400)
    self.assertIn(message, answer["error"])

  def testRestPredict_HugeBatchPartSent_RefusedWithoutWaitingForTheRest(self):
    image = json.dumps([[[0.5]] * 4] * 4)
    start = ('{"instances": [%s' % ",".join([image] * 20000)).encode()  # 2.4 MB of a body announced as 60 MB
    with socket.create_connection(("127.0.0.1", self.server.rest_port), timeout=5) as sock:
      sock.sendall(f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {60 * 2**20}\r\n\r\n"
                   .encode() + start)
      answer = b""
      while chunk := sock.recv(65536):  # A server waiting for the other 58 MB times this out.
        answer += chunk
    self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer)
    self.assertIn(b"refused before parsing it", answer)

  def testRestPredict_HugeBatch_RefusedBeforeTheBodyIsParsed(self):
    image = json.dumps([[[0.5]] * 4] * 4)
    body = '{"instances": [%s]}' % ",".join([image] * 20000)  # 20000 instances, max_batch 8: 2.4 MB, 320000 values
    with mock.patch.object(rest, "_parse_predict_body", wraps=rest._parse_predict_body) as parse:
      status, answer = _rest(self.server.rest_port, "POST", f"/v1/models/{_MODEL}:predict", body)
      self.assertEqual(status, 400, answer)
      self.assertIn("refused before parsing it", answer["error"])
      parse.assert_not_called()
      self.assertRestPredicts({"instances": [json.loads(image)] * _MAX_BATCH})  # A full batch is still parsed.
      parse.assert_called_once()

  # --- Fuzzing: any body gets a success or a documented status, and the server lives on.

  @hypothesis.given(data=st.data())
  @testing_util.FUZZ
  def testRestFuzz_AnyRequest_SuccessOrDocumentedStatus(self, data):
    method, path = data.draw(_REST_TARGETS)
    body = data.draw(_REST_BODIES)
    status, answer = _rest(self.server.rest_port, method, path, body)
    self.assertIn(status, (200, 400, 404, 411, 413, 501), answer)
    if status == 200:
      self.assertTrue({"predictions", "outputs", "model_version_status", "metadata"} & set(answer), answer)
    else:
      self.assertIsInstance(answer["error"], str)

  def testZzAfterAllOtherTests_ServerStillAnswers(self):
    # Named to run last in this class (unittest runs methods in name order), after the fuzz test.
    self.assertServerStillAnswers()


class RestLimitsTest(absltest.TestCase):
  """A server with one REST worker, a queue of one and a 1 s request deadline, for clients that hold on to it."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    base = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, base, ignore_errors=True)
    testing_util.export(base, _MODEL, 1, seed=1)
    cls.server = serving.ModelServer(base, _MODEL, max_batch=_MAX_BATCH, rest_workers=1, rest_queue=1,
                                     request_timeout=1.0).start()
    cls.addClassCleanup(cls.server.stop)
    cls.httpd = cls.server._httpd  # pylint: disable=protected-access (its worker and queue counts)

  def setUp(self):
    super().setUp()
    self.assertTrue(testing_util.wait_for(
        lambda: self.httpd.busy == 0 and self.httpd.queued == 0 and self.httpd.pending_heads == 0))

  def _connect(self):
    sock = socket.create_connection(("127.0.0.1", self.server.rest_port), timeout=10)
    self.addCleanup(sock.close)
    return sock

  def _hold_worker(self):
    """A connection that sent its head and holds a worker waiting for the body it announced."""
    sock = self._connect()
    sock.sendall(f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode())
    return sock

  def _answer(self, sock):
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
      data += chunk
    return data

  def _predict_ok(self):
    status, answer = _rest(self.server.rest_port, "POST", f"/v1/models/{_MODEL}:predict",
                           {"instances": [[[[0.5]] * 4] * 4]})
    self.assertEqual(status, 200, answer)

  def testPoolAndQueueFull_NextConnectionAnswered503WithJsonError(self):
    busy = self._hold_worker()
    self.assertTrue(testing_util.wait_for(lambda: self.httpd.busy == 1))
    waiting = self._hold_worker()
    self.assertTrue(testing_util.wait_for(lambda: self.httpd.queued == 1))
    status, answer = _rest(self.server.rest_port, "GET", f"/v1/models/{_MODEL}")
    self.assertEqual(status, 503)
    self.assertIn("overloaded", answer["error"])
    busy.close()
    waiting.close()
    self.assertTrue(testing_util.wait_for(lambda: self.httpd.busy == 0 and self.httpd.queued == 0))
    self._predict_ok()

  def testConnectionQueuedPastItsDeadline_Answered503(self):
    waiting = self._connect()  # Accepted first, so its deadline passes before the worker is free.
    self.assertTrue(testing_util.wait_for(lambda: self.httpd.pending_heads == 1))
    busy = self._hold_worker()  # Holds the one worker until its 1 s deadline.
    self.assertTrue(testing_util.wait_for(lambda: self.httpd.busy == 1))
    waiting.sendall(f"GET /v1/models/{_MODEL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    answer = self._answer(waiting)
    self.assertTrue(answer.startswith(b"HTTP/1.1 503"), answer)
    self.assertIn(b"waited 1 s (the request deadline) for a REST worker", answer)
    busy.close()
    self._predict_ok()

  def testSlowClient_OneByteAtATime_CutAtTheDeadlineWith408(self):
    sock = self._connect()
    request = f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: x\r\n".encode()
    start = time.monotonic()
    answer = b""
    for byte in request:  # One byte every 0.2 s: each read is quick, the whole request is not.
      try:
        sock.sendall(bytes([byte]))
      except OSError:
        break
      time.sleep(0.2)
      if time.monotonic() - start > 1.5:
        break
    answer = self._answer(sock)
    self.assertLess(time.monotonic() - start, 3.0)
    self.assertTrue(answer.startswith(b"HTTP/1.1 408"), answer)
    self.assertIn(b"Deadline of 1 s exceeded", answer)
    self._predict_ok()

  def testClientsSlowToSendTheirHead_HoldNoWorker(self):
    slow = [self._connect() for _ in range(3)]
    for sock in slow:
      sock.sendall(b"POST /v1/mod")
    self.assertTrue(testing_util.wait_for(lambda: self.httpd.pending_heads == 3))
    start = time.monotonic()
    self._predict_ok()
    self.assertLess(time.monotonic() - start, 0.5)  # Not after the slow clients' 1 s deadline.
    self.assertEqual(self.httpd.pending_heads, 3)  # Still waiting for their heads, on no worker.
    for sock in slow:
      self.assertTrue(self._answer(sock).startswith(b"HTTP/1.1 408"))

  def testSlowBody_CutAtTheDeadline(self):
    sock = self._connect()
    sock.sendall(f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
    start = time.monotonic()
    answer = self._answer(sock)
    self.assertLess(time.monotonic() - start, 3.0)
    self.assertTrue(answer.startswith(b"HTTP/1.1 408"), answer)
    self.assertIn(b"reading the request body", answer)

  def testClientDisconnectsMidBody_WorkerFreedAtOnce(self):
    sock = self._connect()
    sock.sendall(f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
    self.assertTrue(testing_util.wait_for(lambda: self.httpd.busy == 1))
    sock.close()
    self.assertTrue(testing_util.wait_for(lambda: self.httpd.busy == 0, timeout=0.5))
    self._predict_ok()


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


@st.composite
def _image_like_body(draw):
  """A :predict body, valid or with mutations of its shape, values, JSON types, input name or signature."""
  mutations = draw(testing_util.MUTATIONS)
  values = testing_util.image_values(draw, mutations)
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


if __name__ == "__main__":
  absltest.main()
