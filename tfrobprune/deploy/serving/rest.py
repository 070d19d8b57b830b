"""TF Serving's REST API on http.server: :predict in the row and columnar JSON formats, model status and metadata.

Bodies, numbers and errors ({"error": "..."}) are formatted as TF Serving formats them; see docs/serving.md.
Connections are served by a fixed pool of workers (`http_pool`); each request must be read, parsed and answered
within one deadline (`deadlines`), its headers are parsed strictly (a framing header that is malformed, repeated
or contradicted is refused), and a JSON body holding more values than its batch limit is refused before parsing.
"""

import http
import http.server
import io
import json
import re
import socket
import urllib.parse

from absl import logging
from google.protobuf import json_format
import grpc
import numpy as np

from tfrobprune.deploy.serving import deadlines
from tfrobprune.deploy.serving import errors
from tfrobprune.deploy.serving import http_pool
from tfrobprune.deploy.serving import json_prescan
from tfrobprune.deploy.serving import signatures
from tfrobprune.deploy.serving import validation
from tfrobprune.deploy.serving import versions

# tensorflow_serving's protos import TensorFlow's, so they must follow keras_compat (imported by the modules above).
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: I100

_BODY_PIECE = 1 << 20  # bytes read at a time, each counted (json_prescan) before the next is read
_MIN_WRITE_S = 1.0  # time to write an answer, even one to a request that used up its deadline
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
# Headers that frame or route a request: each may appear once (a repeat is how requests are smuggled).
_SINGLE_HEADERS = ("content-length", "transfer-encoding", "host", "content-type", "connection", "expect")
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?:(\w+)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/([0-9]+)|/labels/([^/:]+))?(?:/(metadata))?",
                          re.IGNORECASE)
_Code = grpc.StatusCode


def _is_b64(value):
  return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named_object(value):
  return isinstance(value, dict) and not _is_b64(value)


def _row_values(instances, input_names):
  """{input name: batched JSON value} from the "instances" list (plain values, or one object per instance)."""
  if not isinstance(instances, list):
    raise errors.invalid("Excepting 'instances' to be an list/array")
  if not instances:
    raise errors.invalid("No values in 'instances' array")
  if not _is_named_object(instances[0]):
    if len(input_names) > 1:
      raise errors.invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                           "required as per tensorinfo_map")
    for index, instance in enumerate(instances):
      if _is_named_object(instance):
        raise errors.invalid(f"Expecting value/list but got object at item {index} of input list")
    return {input_names[0]: instances}
  for index, instance in enumerate(instances):
    if not _is_named_object(instance):
      raise errors.invalid(f"Expecting object but got list at item {index} of input list")
    if set(instance) != set(input_names):
      raise errors.invalid(f"Failed to process element: {index} of 'instances' list. JSON object: keys "
                           f"{sorted(instance)} must be equal to: {','.join(sorted(input_names))}")
  return {name: [instance[name] for instance in instances] for name in input_names}


def _columnar_values(inputs, input_names):
  """{input name: batched JSON value} from "inputs" (a plain value for one input, or an object of them)."""
  if not _is_named_object(inputs):
    if len(input_names) > 1:
      raise errors.invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                           "required as per tensorinfo_map")
    return {input_names[0]: inputs}
  for name in input_names:
    if name not in inputs:
      raise errors.invalid(f"Missing named input: {name} in 'inputs' object.")
  extra = sorted(set(inputs) - set(input_names))
  if extra:
    raise errors.invalid(f"Unknown named inputs {extra} in 'inputs' object; the signature has {sorted(input_names)}.")
  return dict(inputs)


def _parse_predict_body(body):
  """The request object of a :predict body; INVALID_ARGUMENT for anything but a JSON object."""
  if not body:
    raise errors.invalid("JSON Parse error: The document is empty")
  try:
    request = json.loads(body)
  except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError too.
    raise errors.invalid(f"JSON Parse error: {type(error).__name__}: {errors.snippet(str(error), 200)}") from None
  if not isinstance(request, dict):
    raise errors.invalid(f"JSON Value: {errors.snippet(request)} Is not object")
  signature_name = request.get("signature_name", "")
  if not isinstance(signature_name, str):
    raise errors.invalid("'signature_name' key must be a string value.")
  return request, signature_name


def _json_request_values(request, input_names):
  """(format, {input name: JSON value}); format is 'row' or 'columnar'."""
  if "instances" in request and "inputs" in request:
    raise errors.invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
  if "instances" in request:
    return "row", _row_values(request["instances"], input_names)
  if "inputs" in request:
    return "columnar", _columnar_values(request["inputs"], input_names)
  raise errors.invalid("Missing 'inputs' or 'instances' key")


def _json_value(array):
  """A numpy output as JSON-ready Python values; floats in their shortest round-tripping form, as TF Serving."""
  if array.dtype.kind == "f":
    flat = [float(str(x)) for x in array.ravel()]  # str(np.float32) is the shortest repr that round-trips.
    return np.array(flat, dtype=object).reshape(array.shape).tolist()
  if array.dtype.kind in "OSU":
    flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape).tolist()
  return array.tolist()


def _json_outputs(outputs, row_format):
  """{"predictions": [...]} (one entry per instance) or {"outputs": ...}; a lone output is not wrapped by name."""
  values = {name: _json_value(array) for name, array in outputs.items()}
  if not row_format:
    return {"outputs": values if len(values) > 1 else next(iter(values.values()))}
  batch_sizes = {name: (array.shape[0] if array.ndim else None) for name, array in outputs.items()}
  if None in batch_sizes.values() or len(set(batch_sizes.values())) > 1:
    raise errors.invalid(f"Outputs need one common batch dimension for the row format, got {batch_sizes}; send "
                         "'inputs' instead.")
  if len(values) == 1:
    return {"predictions": next(iter(values.values()))}
  batch = next(iter(batch_sizes.values()))
  return {"predictions": [{name: value[i] for name, value in values.items()} for i in range(batch)]}


def _predict_json(servable, body, max_batch, executor, deadline):
  """Serves the body of `POST /v1/models/<name>[/versions/<version>]:predict` on `servable` within `deadline`;
  returns the response object.

  Raises:
    ServingError: see the table in docs/serving.md.
  """
  request, signature_name = _parse_predict_body(body)
  deadline.check("parsing the request")
  _, signature = servable.signature(signature_name, _Code.INVALID_ARGUMENT)
  input_names = sorted(signature.inputs)
  row_format, values = _json_request_values(request, input_names)
  arrays = {key: validation.array_from_json(key, value, signature.inputs[key], max_batch,
                                            pixels=key in signature.pixel_inputs)
            for key, value in values.items()}
  outputs = executor.run(signature, arrays, sorted(signature.outputs), deadline)
  return _json_outputs(outputs, row_format == "row")


def _proto_json(message):
  return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True,
                                              always_print_fields_with_no_presence=True))


def _metadata_json(response):
  """TF Serving's REST form of a GetModelMetadataResponse: the SignatureDefMap unpacked from its Any."""
  signature_defs = get_model_metadata_pb2.SignatureDefMap()
  response.metadata[signatures.SIGNATURE_DEF_FIELD].Unpack(signature_defs)
  return {"model_spec": _proto_json(response.model_spec), "metadata": {"signature_def": _proto_json(signature_defs)}}


def _parse_version(text):
  if text is None:
    return None
  if len(text) > 19 or int(text) > versions.MAX_INT64:
    raise errors.invalid(f"Failed to convert version: {text} to numeric.")
  return int(text)


def _header_problem(headers):
  """Why a request's headers are refused (malformed, repeated or contradicting framing headers), or None."""
  if headers.defects or headers.get_payload():
    return "Malformed header line (expected 'Name: value')."
  for name, value in headers.items():
    if "\r" in value or "\n" in value:
      return f"Header {errors.snippet(name)} is folded over several lines, which HTTP/1.1 no longer allows."
  for name in _SINGLE_HEADERS:
    if len(headers.get_all(name, ())) > 1:
      return f"Header {name} appears more than once."
  if "content-length" in headers and "transfer-encoding" in headers:
    return "Both Content-Length and Transfer-Encoding are set; send Content-Length only."
  length = headers.get("content-length")
  if length is not None and not _CONTENT_LENGTH.fullmatch(length.strip(" \t")):
    return f"Invalid Content-Length: {errors.snippet(length)}"
  return None


def _raw_json_response(status, message, extra_headers=""):
  """The bytes of an answer {"error": message} sent before any handler runs (refused or timed-out connections)."""
  body = json.dumps({"error": message}) + "\n"
  return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
          f"Content-Length: {len(body)}\r\n{extra_headers}Connection: close\r\n\r\n{body}").encode("utf-8")


def _overload_response(workers, queue_size):
  """The 503 answer to a connection refused because the pool and its queue are full."""
  return _raw_json_response(503, f"The server is overloaded: all {workers} REST workers are busy and {queue_size} "
                                 "connections wait for one; retry later.", "Retry-After: 1\r\n")


class _HttpServer(http_pool.PooledHTTPServer):
  """A pool of workers serving `model` with batches of at most `max_batch`, each request within
  `request_timeout` seconds, the model run on `executor`."""
  model = None
  max_batch = None
  executor = None
  request_timeout = None


class _RestHandler(http.server.BaseHTTPRequestHandler):
  """TF Serving's REST API on http.server: every request is answered with JSON, errors as {"error": "..."}."""
  protocol_version = "HTTP/1.1"
  timeout = None  # Reads wait until the request's deadline instead (`deadlines.DeadlineSocketReader`).
  server_version = "tfrobprune-serve"
  deadline = None

  def setup(self):
    super().setup()
    self.rfile.close()  # http.server's reader, replaced by one that stops at the request's deadline
    self._accepted_at, received = self.server.admission(self.request)
    self._reader = deadlines.DeadlineSocketReader(self.connection, lambda: self.deadline, received)
    self.rfile = io.BufferedReader(self._reader)

  def handle_one_request(self):
    """One request within its deadline; a client that started one but did not finish it in time gets 408.

    The first request of a connection has its deadline counted from when the connection was accepted: one that
    waited in the queue for all of it is answered 503 at once (overload), as if the queue had been full.
    """
    first = self.deadline is None
    start = self._accepted_at if first else None
    self.deadline = deadlines.Deadline(self.server.request_timeout, start)
    self._answered = False
    self.command, self.requestline, self.request_version = "", "", "HTTP/1.1"
    if first and self.deadline.expired():
      self.close_connection = True
      self._send_json(503, {"error": f"The server is overloaded: this connection waited {self.deadline.seconds:g} s "
                                     "(the request deadline) for a REST worker; retry later."})
      return
    read_before = self._reader.bytes_read
    super().handle_one_request()  # http.server closes the connection on a read that timed out.
    if not self._answered and self.deadline.expired() and self._reader.bytes_read > read_before:
      self.close_connection = True
      self._send_json(408, {"error": f"Deadline of {self.deadline.seconds:g} s exceeded while reading the request."})

  def parse_request(self):
    """http.server's parsing, then the strict header checks of `_header_problem` (400 and close on failure)."""
    if not super().parse_request():
      return False
    problem = "HTTP/0.9 requests are not served." if self.request_version == "HTTP/0.9" else None
    problem = problem or _header_problem(self.headers)
    if problem:
      self.send_error(400, problem)
      return False
    return True

  def do_GET(self):  # noqa: N802 (http.server's method names)
    self._handle()

  def do_POST(self):  # noqa: N802
    self._handle()

  do_PUT = do_DELETE = do_PATCH = do_POST

  def _handle(self):
    self._body_read = False
    try:
      status, payload = 200, self._dispatch()
    except errors.ServingError as error:
      status, payload = error.http_status, {"error": error.message}
    except Exception as error:  # A bug here must cost one request, not the server.
      logging.exception("Internal error serving %s %s", self.command, self.path)
      status, payload = 500, {"error": f"{type(error).__name__}: {error}"}
    if not self._body_read:  # The rest of the body would be taken for the next request: close instead.
      self.close_connection = True
    self._send_json(status, payload)

  def _read_body(self, check_count=None):
    """The request body, read a piece at a time; `check_count(values so far)` may refuse it part-read."""
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      raise errors.ServingError(_Code.INVALID_ARGUMENT,
                                "Chunked request bodies are not supported; send Content-Length.", http_status=411)
    length = self.headers.get("Content-Length")
    if length is None:
      return b""
    length = int(length)  # _header_problem checked it.
    if length > validation.MAX_REQUEST_BYTES:
      raise errors.ServingError(_Code.RESOURCE_EXHAUSTED, f"Request body of {length} bytes is larger than the "
                                f"limit of {validation.MAX_REQUEST_BYTES} bytes.", http_status=413)
    pieces, received, counter = [], 0, json_prescan.ValueCounter()
    while received < length:
      piece = self._read_piece(min(length - received, _BODY_PIECE))
      if not piece:  # The client closed its side early; it will not read an answer either.
        raise errors.invalid(f"The body ended after {received} of its {length} bytes (Content-Length).")
      pieces.append(piece)
      received += len(piece)
      if check_count is not None:
        counter.feed(piece)
        check_count(counter.count)
    self._body_read = True
    return b"".join(pieces)

  def _read_piece(self, size):
    try:
      return self.rfile.read(size)
    except OSError:  # TimeoutError at the deadline, or a connection reset.
      raise errors.ServingError(_Code.DEADLINE_EXCEEDED, f"Deadline of {self.deadline.seconds:g} s exceeded while "
                                "reading the request body.", http_status=408) from None

  def _dispatch(self):
    path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
    if not path.lower().startswith("/v1/"):
      raise errors.ServingError(_Code.NOT_FOUND,
                                f"Not found: {errors.snippet(path)}; the API is under /v1/models/<name>.")
    predict = _PREDICT_PATH.fullmatch(path) if self.command == "POST" else None
    if predict:
      name, version, label, method = predict.groups()
      if method.lower() != "predict":
        raise errors.ServingError(_Code.UNIMPLEMENTED, f"Method :{method} is not served; this server serves :predict.")
      return self._predict(name, _parse_version(version), label)
    self._read_body()
    status = _STATUS_PATH.fullmatch(path) if self.command == "GET" else None
    if status:
      return self._get_model(*status.groups())
    raise errors.invalid(f"Malformed request: {self.command} {errors.snippet(path)}")

  def _predict(self, name, version, label):
    """:predict; a body with more JSON values than `max_batch` instances hold is refused while it is read."""
    servable = self.server.model.resolve(name, version, label)
    per_instance = validation.values_per_instance(servable.signatures.values())
    max_batch = self.server.max_batch
    body = self._read_body(lambda count: validation.check_json_value_count(count, per_instance, max_batch))
    return _predict_json(servable, body, max_batch, self.server.executor, self.deadline)

  def _get_model(self, name, version, label, metadata):
    if not name:
      raise errors.invalid("Missing model name in request.")
    if metadata:
      return _metadata_json(versions.model_metadata(self.server.model, name, _parse_version(version), label))
    return _proto_json(versions.model_status(self.server.model, name, _parse_version(version)))

  def _send_json(self, status, payload):
    body = (json.dumps(payload) + "\n").encode("utf-8")
    self._answered = True
    try:
      self.connection.settimeout(max(self.deadline.remaining(), _MIN_WRITE_S))
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      if self.close_connection:
        self.send_header("Connection", "close")
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)
    except OSError:  # The client went away; nothing to answer.
      self.close_connection = True

  def send_error(self, code, message=None, explain=None):
    """http.server's own errors (bad request line, unsupported method) as JSON too, with a status line even when
    the request line was too broken to say which HTTP version it speaks."""
    self.close_connection = True
    if self.request_version == "HTTP/0.9":  # http.server would write the body alone, as HTTP/0.9 does.
      self.request_version = "HTTP/1.1"
    self._send_json(code, {"error": message or http.HTTPStatus(code).phrase})

  def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
    logging.vlog(1, "REST %s: " + format, self.address_string(), *args)


def make_http_server(host, port, model, max_batch, *, executor, workers, queue_size, request_timeout):
  """An HTTP server bound to host:port (IPv4 or IPv6) answering the REST API for `model`; call serve_forever.

  Args:
    host, port: the address to bind.
    model: the `versions.VersionedModel` to serve.
    max_batch: the largest batch a request may carry.
    executor: the `execution.ModelExecutor` that runs the model.
    workers: the number of connections served at once.
    queue_size: the number of accepted connections that may wait for a worker; more are answered 503.
    request_timeout: seconds to read, parse and answer one request.
  """
  if not request_timeout > 0:
    raise ValueError(f"request_timeout must be > 0 seconds, got {request_timeout!r}.")
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  server_class = type("_HttpServerForFamily", (_HttpServer,), {"address_family": family})
  timeout_response = _raw_json_response(408, f"Deadline of {request_timeout:g} s exceeded while reading the request.")
  httpd = server_class((host, port), _RestHandler, workers=workers, queue_size=queue_size,
                       overload_response=_overload_response(workers, queue_size), head_timeout=request_timeout,
                       timeout_response=timeout_response)
  httpd.model, httpd.max_batch, httpd.executor, httpd.request_timeout = model, max_batch, executor, request_timeout
  return httpd
