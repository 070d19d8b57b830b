"""TF Serving's REST API on http.server: :predict in the row and columnar JSON formats, model status and metadata.

Bodies, numbers and errors ({"error": "..."}) are formatted as TF Serving formats them; see docs/serving.md.
"""

import http
import http.server
import json
import re
import socket
import urllib.parse

from absl import logging
from google.protobuf import json_format
import grpc
import numpy as np

from tfrobprune.deploy.serving import errors
from tfrobprune.deploy.serving import signatures
from tfrobprune.deploy.serving import validation
from tfrobprune.deploy.serving import versions

# tensorflow_serving's protos import TensorFlow's, so they must follow keras_compat (imported by the modules above).
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: I100

_REST_SOCKET_TIMEOUT_S = 60
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


def _predict_json(model, name, version, label, body, max_batch):
  """Serves the body of `POST /v1/models/<name>[/versions/<version>]:predict`; returns the response object.

  Raises:
    ServingError: see the table in docs/serving.md.
  """
  request, signature_name = _parse_predict_body(body)
  servable = model.resolve(name, version, label)
  _, signature = servable.signature(signature_name, _Code.INVALID_ARGUMENT)
  input_names = sorted(signature.inputs)
  row_format, values = _json_request_values(request, input_names)
  arrays = {key: validation.array_from_json(key, value, signature.inputs[key], max_batch)
            for key, value in values.items()}
  outputs = signatures.run_signature(signature, arrays, sorted(signature.outputs))
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


class _HttpServer(http.server.ThreadingHTTPServer):
  """One thread per connection, serving `model` with batches of at most `max_batch`."""
  daemon_threads = True
  model = None
  max_batch = None


class _RestHandler(http.server.BaseHTTPRequestHandler):
  """TF Serving's REST API on http.server: every request is answered with JSON, errors as {"error": "..."}."""
  protocol_version = "HTTP/1.1"
  timeout = _REST_SOCKET_TIMEOUT_S
  server_version = "tfrobprune-serve"

  def do_GET(self):  # noqa: N802 (http.server's method names)
    self._handle()

  def do_POST(self):  # noqa: N802
    self._handle()

  do_PUT = do_DELETE = do_PATCH = do_POST

  def _handle(self):
    try:
      status, payload = 200, self._dispatch(self._read_body())
    except errors.ServingError as error:
      status, payload = error.http_status, {"error": error.message}
      if error.http_status in (411, 413):  # The body was not read: the connection cannot be reused.
        self.close_connection = True
    except Exception as error:  # A bug here must cost one request, not the server.
      logging.exception("Internal error serving %s %s", self.command, self.path)
      status, payload = 500, {"error": f"{type(error).__name__}: {error}"}
    self._send_json(status, payload)

  def _read_body(self):
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      raise errors.ServingError(_Code.INVALID_ARGUMENT,
                                "Chunked request bodies are not supported; send Content-Length.", http_status=411)
    length = self.headers.get("Content-Length")
    if length is None:
      return b""
    if not length.strip().isdigit():
      raise errors.invalid(f"Invalid Content-Length: {errors.snippet(length)}")
    if int(length) > validation.MAX_REQUEST_BYTES:
      raise errors.ServingError(_Code.RESOURCE_EXHAUSTED, f"Request body of {int(length)} bytes is larger than the "
                                f"limit of {validation.MAX_REQUEST_BYTES} bytes.", http_status=413)
    return self.rfile.read(int(length))

  def _dispatch(self, body):
    path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
    if not path.lower().startswith("/v1/"):
      raise errors.ServingError(_Code.NOT_FOUND,
                                f"Not found: {errors.snippet(path)}; the API is under /v1/models/<name>.")
    predict = _PREDICT_PATH.fullmatch(path) if self.command == "POST" else None
    if predict:
      name, version, label, method = predict.groups()
      if method.lower() != "predict":
        raise errors.ServingError(_Code.UNIMPLEMENTED, f"Method :{method} is not served; this server serves :predict.")
      return _predict_json(self.server.model, name, _parse_version(version), label, body, self.server.max_batch)
    status = _STATUS_PATH.fullmatch(path) if self.command == "GET" else None
    if status:
      return self._get_model(*status.groups())
    raise errors.invalid(f"Malformed request: {self.command} {errors.snippet(path)}")

  def _get_model(self, name, version, label, metadata):
    if not name:
      raise errors.invalid("Missing model name in request.")
    if metadata:
      return _metadata_json(versions.model_metadata(self.server.model, name, _parse_version(version), label))
    return _proto_json(versions.model_status(self.server.model, name, _parse_version(version)))

  def _send_json(self, status, payload):
    body = (json.dumps(payload) + "\n").encode("utf-8")
    try:
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
    """http.server's own errors (bad request line, unsupported method) as JSON too."""
    self.close_connection = True
    self._send_json(code, {"error": message or http.HTTPStatus(code).phrase})

  def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
    logging.vlog(1, "REST %s: " + format, self.address_string(), *args)


def make_http_server(host, port, model, max_batch):
  """An HTTP server bound to host:port (IPv4 or IPv6) answering the REST API for `model`; call serve_forever."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  server_class = type("_HttpServerForFamily", (_HttpServer,), {"address_family": family})
  httpd = server_class((host, port), _RestHandler)
  httpd.model, httpd.max_batch = model, max_batch
  return httpd
