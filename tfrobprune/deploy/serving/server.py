"""A development model server that speaks TF Serving's own gRPC and REST protocols.

`tfrobprune serve` serves one model of an export directory in TF Serving's layout, EXPORT_BASE/<model_name>/<int>/,
so that code written for `tensorflow_model_server` (the official `tensorflow-serving-api` gRPC stubs, or plain
HTTP/JSON) runs unchanged against it during development. It is not a production server: one process, Python
threads, no request batching, no model config file. The real server takes the same directory:

    tensorflow_model_server --model_base_path=EXPORT_BASE/<model_name> --model_name=<model_name> \\
        --port=8500 --rest_api_port=8501

What is served
--------------
- gRPC `tensorflow.serving.PredictionService`: `Predict` and `GetModelMetadata` (field 'signature_def');
  `tensorflow.serving.ModelService`: `GetModelStatus`. Classify, Regress, MultiInference and
  HandleReloadConfigRequest answer UNIMPLEMENTED.
- REST: `POST /v1/models/<name>[/versions/<v>]:predict` with {"instances": [...]} (row format, answered with
  {"predictions": [...]}) or {"inputs": ...} (columnar, answered with {"outputs": ...}), plus an optional
  "signature_name"; `GET /v1/models/<name>[/versions/<v>]` (model status) and `.../metadata` (signature defs).
  Bodies, numbers and errors ({"error": "..."}) are formatted as TF Serving formats them.

Versions
--------
Like TF Serving's default `latest` version policy, only the highest integer version directory is served; a request
pinned to another version gets NOT_FOUND. Directories whose names are not integers (the exporter's `.tmp-*`
staging directories) are ignored. A background thread looks for a new highest version every `poll_seconds`, loads
it with `tf.saved_model.load` while the old one keeps serving, and then swaps it in with one reference assignment,
so every request runs on exactly one version. A version that fails to load is logged, reported by the status API
(state END with the error), and not retried until its files change; the previous version keeps serving.

Validation and error codes
--------------------------
Every request is checked before the model runs; nothing a client sends may take the server down. Codes are TF
Serving's (the REST status is TF Serving's mapping of the same code):

| request                                                               | gRPC code           | REST |
| --------------------------------------------------------------------- | ------------------- | ---- |
| unknown model name; version not loaded (or none loaded yet)           | NOT_FOUND           | 404  |
| a version label (labels need a model config, which this server lacks) | INVALID_ARGUMENT    | 400  |
| unknown signature name                                                | FAILED_PRECONDITION | 400  |
| missing, extra or unknown input name; unknown or repeated output      | INVALID_ARGUMENT    | 400  |
| wrong dtype (int, string, bool, ... for a float input)                | INVALID_ARGUMENT    | 400  |
| wrong rank or wrong H, W, C                                           | INVALID_ARGUMENT    | 400  |
| NaN, Inf, or a float input value outside [0, 1] (`PIXEL_RANGE`)       | INVALID_ARGUMENT    | 400  |
| batch larger than `max_batch` (TF Serving's batcher uses this code)   | INVALID_ARGUMENT    | 400  |
| malformed JSON, missing or both of 'instances' / 'inputs', ragged     | -                   | 400  |
| request larger than `MAX_REQUEST_BYTES` (gRPC: grpcio's own limit)    | RESOURCE_EXHAUSTED  | 413  |
| chunked REST body (send Content-Length)                               | -                   | 411  |
| more than `_MAX_CONCURRENT_RPCS` gRPC calls at once                   | RESOURCE_EXHAUSTED  | -    |
| :classify / :regress, other methods                                   | UNIMPLEMENTED       | 501  |
| a path outside /v1/                                                   | -                   | 404  |
| a bug in this server                                                  | INTERNAL            | 500  |

TF Serving itself answers an unknown signature over REST with INVALID_ARGUMENT and over gRPC with
FAILED_PRECONDITION; both are kept. Deliberately stricter than TF Serving, so that a client that passes here does
not fail there: the [0, 1] range check (the exports' contract, which their signature also asserts), and REST
columnar requests with extra input names (TF Serving ignores them silently).
"""

import concurrent.futures
import dataclasses
import functools
import http
import http.server
import json
import os
import re
import signal
import socket
import threading
from typing import Optional
import urllib.parse

from absl import logging
from google.protobuf import descriptor_pool
from google.protobuf import json_format
from google.protobuf import message_factory
from google.protobuf import text_format
import grpc
import numpy as np

from tfrobprune.keras_compat import tf

# tensorflow_serving's protos import TensorFlow's, so they must follow keras_compat (which imports TensorFlow first).
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: I100
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

SIGNATURE_KEY = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"
DEFAULT_GRPC_PORT = 8500  # tensorflow_model_server's --port
DEFAULT_REST_PORT = 8501  # tensorflow_model_server's --rest_api_port
MAX_REQUEST_BYTES = 64 * 1024 * 1024
PIXEL_RANGE = (0.0, 1.0)

_MAX_ELEMENTS = MAX_REQUEST_BYTES  # per input tensor; a TensorProto can repeat one value to fill any shape
_MAX_CONCURRENT_RPCS = 64
_GRPC_WORKERS = 8
_REST_SOCKET_TIMEOUT_S = 60
_STOP_GRACE_S = 1.0
_MAX_INT64 = 2**63 - 1
_VERSION_DIR = re.compile(r"[0-9]{1,19}")  # an int64
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?:(\w+)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/([0-9]+)|/labels/([^/:]+))?(?:/(metadata))?",
                          re.IGNORECASE)

_Code = grpc.StatusCode
_State = get_model_status_pb2.ModelVersionStatus.State
# TF Serving's http_server.cc: gRPC status code -> HTTP status.
_HTTP_STATUS = {
    _Code.INVALID_ARGUMENT: 400, _Code.FAILED_PRECONDITION: 400, _Code.OUT_OF_RANGE: 400, _Code.NOT_FOUND: 404,
    _Code.RESOURCE_EXHAUSTED: 429, _Code.ALREADY_EXISTS: 409, _Code.ABORTED: 409, _Code.PERMISSION_DENIED: 403,
    _Code.UNAUTHENTICATED: 401, _Code.UNIMPLEMENTED: 501, _Code.UNAVAILABLE: 503, _Code.DEADLINE_EXCEEDED: 504,
    _Code.CANCELLED: 499,
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(ValueError):
  """A request the server refuses, with its gRPC status code and (derived or explicit) HTTP status."""

  def __init__(self, code, message, http_status=None):
    super().__init__(message)
    self.code = code
    self.message = message
    self.http_status = http_status or _HTTP_STATUS.get(code, 500)


class ModelLoadError(ValueError):
  """A version directory that `tf.saved_model.load` cannot serve."""


def _invalid(message):
  return ServingError(_Code.INVALID_ARGUMENT, message)


def _snippet(value, limit=80):
  """A short printable form of a client's value, for error messages."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


# ----------------------------------------------------------------------------------------------------------------
# Loading: one version directory -> a `_Servable`.


@dataclasses.dataclass(frozen=True)
class _Signature:
  """One signature of a loaded SavedModel: its function and the specs of its named inputs and outputs."""
  function: object
  inputs: dict
  outputs: dict

  @classmethod
  def from_function(cls, function):
    _, inputs = function.structured_input_signature
    return cls(function, dict(inputs), dict(function.structured_outputs))


@dataclasses.dataclass(frozen=True)
class _Servable:
  """One loaded version. `loaded` keeps the SavedModel's variables alive for the signature functions."""
  version: int
  path: str
  loaded: object
  signatures: dict
  signature_defs: get_model_metadata_pb2.SignatureDefMap

  def signature(self, name, missing_code):
    key = name or SIGNATURE_KEY
    if key not in self.signatures:
      raise ServingError(missing_code, _missing_signature_message(key, missing_code))
    return key, self.signatures[key]


def _missing_signature_message(key, code):
  # TF Serving's two wordings: predict_util.cc (gRPC) and http_rest_api_handler.cc (REST).
  if code == _Code.FAILED_PRECONDITION:
    return f'Serving signature key "{key}" not found.'
  return f'Serving signature name: "{key}" not found in signature def'


def _read_signature_defs(export_dir):
  """The SignatureDefs of the 'serve' MetaGraph in `export_dir`, as GetModelMetadata returns them.

  The SavedModel proto class comes from protobuf's default pool, where TensorFlow registered it when it loaded the
  model, so no TensorFlow module is imported here.
  """
  descriptor = descriptor_pool.Default().FindMessageTypeByName("tensorflow.SavedModel")
  saved_model = message_factory.GetMessageClass(descriptor)()
  binary = os.path.join(export_dir, "saved_model.pb")
  if os.path.exists(binary):
    with open(binary, "rb") as f:
      saved_model.ParseFromString(f.read())
  else:
    with open(os.path.join(export_dir, "saved_model.pbtxt")) as f:
      text_format.Parse(f.read(), saved_model)
  graphs = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags] or saved_model.meta_graphs
  signature_defs = get_model_metadata_pb2.SignatureDefMap()
  for key, signature_def in graphs[0].signature_def.items():
    signature_defs.signature_def[key].CopyFrom(signature_def)
  return signature_defs


def _load_servable(path, version):
  """Loads the SavedModel at `path` as version `version`.

  Raises:
    ModelLoadError: the directory is not a SavedModel, or it has no `serving_default` signature.
  """
  try:
    loaded = tf.saved_model.load(path)
    signatures = {key: _Signature.from_function(fn) for key, fn in loaded.signatures.items()}
    signature_defs = _read_signature_defs(path)
  except Exception as error:  # Whatever TensorFlow raises for a broken or half-written directory.
    raise ModelLoadError(f"Cannot load the SavedModel in {path}: {type(error).__name__}: {error}") from error
  if SIGNATURE_KEY not in signatures:
    raise ModelLoadError(f"The SavedModel in {path} has no '{SIGNATURE_KEY}' signature; it has "
                         f"{sorted(signatures)}.")
  return _Servable(version, path, loaded, signatures, signature_defs)


def list_versions(model_dir):
  """{version: path} for the integer-named subdirectories of `model_dir`; other names (`.tmp-3`) are skipped."""
  versions = {}
  with os.scandir(model_dir) as entries:
    for entry in sorted(entries, key=lambda e: e.name):
      if _VERSION_DIR.fullmatch(entry.name) and entry.is_dir() and int(entry.name) <= _MAX_INT64:
        versions[int(entry.name)] = entry.path
  return versions


def _fingerprint(path):
  """Names, sizes and mtimes of every file under `path`: a failed version is retried only when this changes."""
  files = []
  for root, _, names in os.walk(path):
    for name in names:
      try:
        stat = os.stat(os.path.join(root, name))
      except OSError:
        continue
      files.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
  return tuple(sorted(files))


# ----------------------------------------------------------------------------------------------------------------
# The model: which version is served, and the status of every version seen.


@dataclasses.dataclass(frozen=True)
class _VersionState:
  state: int
  error_code: int = 0
  error_message: str = ""


class _VersionedModel:
  """The served model: the loaded highest version, swapped atomically by `refresh`, and each version's state."""

  def __init__(self, model_dir, name):
    self.model_dir = model_dir
    self.name = name
    self._servable = None
    self._states = {}
    self._failed = {}  # version -> fingerprint of the files that failed to load
    self._lock = threading.Lock()

  @property
  def servable(self):
    return self._servable

  def refresh(self):
    """Serves the highest version directory, loading it first if it is new.

    Returns:
      The ModelLoadError of a version that failed to load on this call, else None.
    """
    versions = list_versions(self.model_dir) if os.path.isdir(self.model_dir) else {}
    current = self._servable
    if not versions:
      if current is not None:
        logging.warning("No versions of %s remain under %s; unloading version %d.", self.name, self.model_dir,
                        current.version)
        self._install(None)
      return None
    latest = max(versions)
    if current is not None and current.version == latest:
      return None
    return self._load(latest, versions[latest])

  def _load(self, version, path):
    fingerprint = _fingerprint(path)
    if self._failed.get(version) == fingerprint:
      return None
    self._set_state(version, _VersionState(_State.LOADING))
    try:
      servable = _load_servable(path, version)
    except ModelLoadError as error:
      logging.error("Loading version %d of %s failed; still serving %s. %s", version, self.name,
                    self._servable.version if self._servable else "nothing", error)
      self._failed[version] = fingerprint
      self._set_state(version, _VersionState(_State.END, _Code.UNKNOWN.value[0], str(error)))
      return error
    self._failed.pop(version, None)
    self._install(servable)
    logging.info("Serving version %d of %s from %s.", version, self.name, path)
    return None

  def _install(self, servable):
    with self._lock:
      previous, self._servable = self._servable, servable
      if previous is not None:
        self._states[previous.version] = _VersionState(_State.END)
      if servable is not None:
        self._states[servable.version] = _VersionState(_State.AVAILABLE)

  def _set_state(self, version, state):
    with self._lock:
      self._states[version] = state

  def states(self):
    with self._lock:
      return dict(self._states)

  def resolve(self, name, version=None, label=""):
    """The servable a request's model spec names.

    Raises:
      ServingError: NOT_FOUND for another model or a version that is not loaded; INVALID_ARGUMENT for a label.
    """
    if version is None and label:
      raise _invalid(f"Unrecognized servable version label: {label}")
    servable = self._servable
    if name != self.name or servable is None or (version is not None and version != servable.version):
      request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
      raise ServingError(_Code.NOT_FOUND, f"Servable not found for request: {request}")
    return servable


def _model_spec_version(model_spec):
  """(version or None, label) of a ModelSpec proto."""
  version = model_spec.version.value if model_spec.HasField("version") else None
  return version, model_spec.version_label


def _model_status(model, name, version=None):
  """The GetModelStatusResponse for model `name` (one version, or all versions seen, newest first).

  Raises:
    ServingError: NOT_FOUND, with TF Serving's messages.
  """
  states = model.states() if name == model.name else {}
  if version is not None:
    if version not in states:
      raise ServingError(_Code.NOT_FOUND, f"Could not find version {version} of model {name}")
    states = {version: states[version]}
  if not states:
    raise ServingError(_Code.NOT_FOUND, f"Could not find any versions of model {name}")
  response = get_model_status_pb2.GetModelStatusResponse()
  for number in sorted(states, reverse=True):
    status = response.model_version_status.add(version=number, state=states[number].state)
    status.status.SetInParent()
    status.status.error_code = states[number].error_code
    status.status.error_message = states[number].error_message
  return response


def _model_metadata(model, name, version=None, label="", fields=(SIGNATURE_DEF_FIELD,)):
  """The GetModelMetadataResponse (field 'signature_def' only, as in TF Serving) of the servable named.

  Raises:
    ServingError: INVALID_ARGUMENT for no or unsupported fields, else as `_VersionedModel.resolve`.
  """
  if not fields:
    raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
  for field in fields:
    if field != SIGNATURE_DEF_FIELD:
      raise _invalid(f"Metadata field {field} is not supported")
  servable = model.resolve(name, version, label)
  response = get_model_metadata_pb2.GetModelMetadataResponse()
  response.model_spec.name = model.name
  response.model_spec.version.value = servable.version
  response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_defs)
  return response


# ----------------------------------------------------------------------------------------------------------------
# Checks of one input tensor against its TensorSpec, before and after its values are materialised.


def _shape_text(shape):
  return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


def _check_shape(name, shape, spec, max_batch):
  """Checks a request's `shape` (a list of ints) against `spec`, and its batch (dimension 0) against `max_batch`.

  Raises:
    ServingError: INVALID_ARGUMENT naming the input, the shape sent and the shape expected.
  """
  expected = spec.shape.as_list() if spec.shape.rank is not None else None
  if expected is not None and (len(shape) != len(expected) or any(
      want is not None and got != want for got, want in zip(shape, expected))):
    raise _invalid(f"Input '{name}' has shape {_shape_text(shape)} but the signature expects "
                   f"{_shape_text(expected)}.")
  if any(d < 0 for d in shape):
    raise _invalid(f"Input '{name}' has a negative dimension: {_shape_text(shape)}.")
  if np.prod(shape, dtype=np.float64) > _MAX_ELEMENTS:
    raise _invalid(f"Input '{name}' of shape {_shape_text(shape)} has more than {_MAX_ELEMENTS} elements.")
  if shape and shape[0] > max_batch:
    # The wording of TF Serving's batch scheduler, which also answers INVALID_ARGUMENT.
    raise _invalid(f"Task size {shape[0]} is larger than maximum input batch size {max_batch} (input '{name}').")


def _check_values(name, array, spec):
  """Checks that a floating input is finite and within `PIXEL_RANGE`.

  Raises:
    ServingError: INVALID_ARGUMENT naming the input and what was found.
  """
  if not spec.dtype.is_floating or array.size == 0:
    return
  low, high = PIXEL_RANGE
  if not np.all(np.isfinite(array)):
    raise _invalid(f"Input '{name}' must be finite pixels in [{low:g}, {high:g}]: found NaN or Inf.")
  if array.min() < low or array.max() > high:
    raise _invalid(f"Input '{name}' must be pixels in [{low:g}, {high:g}]: found values in "
                   f"[{array.min():g}, {array.max():g}].")


def _check_input_names(sent, signature):
  """TF Serving's check that the request names exactly the signature's inputs."""
  sent, expected = set(sent), set(signature.inputs)
  if sent != expected:
    raise _invalid(f"input size does not match signature: {len(sent)}!={len(expected)} "
                   f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                   f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                   f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")


def _output_names(signature, output_filter):
  """The outputs to return: `output_filter` in order (each known, none twice), or all of them."""
  seen = []
  for alias in output_filter:
    if alias not in signature.outputs:
      raise _invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                     f"{{{','.join(sorted(signature.outputs))}}}.")
    if alias in seen:
      raise _invalid(f"duplicate output tensor alias: {alias}")
    seen.append(alias)
  return seen or sorted(signature.outputs)


def _check_batch_sizes(arrays):
  sizes = {name: array.shape[0] for name, array in arrays.items() if array.ndim}
  if len(set(sizes.values())) > 1:
    raise _invalid(f"Inputs must have equal 0th-dimension (batch) sizes, got {sizes}.")


def _tf_error_code(error):
  return _CODE_BY_NUMBER.get(getattr(error, "error_code", None), _Code.INTERNAL)


def _run_signature(signature, arrays, output_names):
  """Calls a signature on checked numpy inputs; returns {output name: numpy array}.

  Raises:
    ServingError: with the code of a TensorFlow error the model itself raises (e.g. an in-graph assertion).
  """
  _check_batch_sizes(arrays)
  try:
    outputs = signature.function(**{name: tf.convert_to_tensor(array) for name, array in arrays.items()})
  except tf.errors.OpError as error:
    raise ServingError(_tf_error_code(error), error.message) from error
  return {name: outputs[name].numpy() for name in output_names}


# ----------------------------------------------------------------------------------------------------------------
# gRPC: TensorProto in and out.


def _array_from_tensor_proto(name, proto, spec, max_batch):
  """The checked numpy value of input `name`: dtype and shape first, so no hostile shape is ever allocated.

  Raises:
    ServingError: INVALID_ARGUMENT.
  """
  try:
    dtype = tf.dtypes.as_dtype(proto.dtype)
  except TypeError:
    raise _invalid(f"Input '{name}' has an unknown dtype enum value {proto.dtype}.") from None
  if dtype != spec.dtype:
    raise _invalid(f"Expects arg '{name}' to be {spec.dtype.name} but {dtype.name} is provided")
  if proto.tensor_shape.unknown_rank:
    raise _invalid(f"Input '{name}' has an unknown rank; the signature expects {_shape_text(spec.shape)}.")
  _check_shape(name, [d.size for d in proto.tensor_shape.dim], spec, max_batch)
  try:
    array = tf.make_ndarray(proto)
  except Exception as error:  # numpy's ValueError/TypeError for content that does not fill the shape.
    raise _invalid(f"Input '{name}' is not a valid TensorProto: {type(error).__name__}: {error}") from None
  _check_values(name, array, spec)
  return array


def _predict_proto(model, request, max_batch):
  """Serves a `PredictRequest`; returns the `PredictResponse`.

  Raises:
    ServingError: see the module docstring's table.
  """
  servable = model.resolve(request.model_spec.name, *_model_spec_version(request.model_spec))
  key, signature = servable.signature(request.model_spec.signature_name, _Code.FAILED_PRECONDITION)
  _check_input_names(request.inputs.keys(), signature)
  output_names = _output_names(signature, request.output_filter)
  arrays = {name: _array_from_tensor_proto(name, proto, signature.inputs[name], max_batch)
            for name, proto in request.inputs.items()}
  outputs = _run_signature(signature, arrays, output_names)
  response = predict_pb2.PredictResponse()
  response.model_spec.name = model.name
  response.model_spec.version.value = servable.version
  response.model_spec.signature_name = key
  for name, array in outputs.items():
    response.outputs[name].CopyFrom(tf.make_tensor_proto(array))
  return response


def _grpc_method(method):
  """Turns a ServingError into the call's status, and any other exception into INTERNAL, never a crash."""

  @functools.wraps(method)
  def wrapper(self, request, context):
    try:
      return method(self, request, context)
    except ServingError as error:
      failure = error
    except Exception as error:  # A bug here must cost one request, not the server.
      logging.exception("Internal error in %s", method.__name__)
      failure = ServingError(_Code.INTERNAL, f"{type(error).__name__}: {error}")
    context.abort(failure.code, failure.message)

  return wrapper


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """tensorflow.serving.PredictionService: Predict and GetModelMetadata."""

  def __init__(self, model, max_batch):
    self._model = model
    self._max_batch = max_batch

  @_grpc_method
  def Predict(self, request, context):  # noqa: N802 (the gRPC method name)
    return _predict_proto(self._model, request, self._max_batch)

  @_grpc_method
  def GetModelMetadata(self, request, context):  # noqa: N802
    if not request.HasField("model_spec"):
      raise _invalid("Missing ModelSpec")
    version, label = _model_spec_version(request.model_spec)
    return _model_metadata(self._model, request.model_spec.name, version, label, list(request.metadata_field))


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """tensorflow.serving.ModelService: GetModelStatus (config reloads stay UNIMPLEMENTED)."""

  def __init__(self, model):
    self._model = model

  @_grpc_method
  def GetModelStatus(self, request, context):  # noqa: N802
    if not request.HasField("model_spec"):
      raise _invalid("Missing ModelSpec")
    version, _ = _model_spec_version(request.model_spec)
    return _model_status(self._model, request.model_spec.name, version)


# ----------------------------------------------------------------------------------------------------------------
# REST: JSON in and out, in TF Serving's row ("instances") and columnar ("inputs") formats.


def _is_b64(value):
  return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named_object(value):
  return isinstance(value, dict) and not _is_b64(value)


def _json_shape_and_leaves(name, value):
  """The dense shape of nested JSON lists and their leaves in row-major order, level by level (no recursion)."""
  shape, level = [], [value]
  while level and all(type(item) is list for item in level):
    size = len(level[0])
    if any(len(item) != size for item in level):
      raise _invalid(f"Input '{name}' is ragged: lists of different lengths at level {len(shape)}.")
    shape.append(size)
    level = [leaf for item in level for leaf in item]
  if any(type(item) is list for item in level):
    raise _invalid(f"Input '{name}' mixes lists and values at level {len(shape)}.")
  return shape, level


def _json_leaf_types(dtype):
  if dtype.is_floating:
    return (int, float)
  if dtype.is_integer:
    return (int,)
  if dtype.is_bool:
    return (bool,)
  raise ServingError(_Code.UNIMPLEMENTED, f"JSON inputs of type {dtype.name} are not supported by this server.")


def _array_from_json(name, value, spec, max_batch):
  """The checked numpy value of input `name` from JSON (the batch dimension included).

  Raises:
    ServingError: INVALID_ARGUMENT for ragged lists, wrong JSON types, shapes or values.
  """
  shape, leaves = _json_shape_and_leaves(name, value)
  _check_shape(name, shape, spec, max_batch)
  allowed = _json_leaf_types(spec.dtype)
  for leaf in leaves:
    if type(leaf) not in allowed:  # type(), not isinstance(): JSON true is not the number 1.
      raise _invalid(f"JSON Value: {_snippet(leaf)} of input '{name}' is not of expected type: {spec.dtype.name}")
  try:
    with np.errstate(all="ignore"):  # float32 overflow becomes Inf, which check_values reports.
      array = np.asarray(leaves, dtype=spec.dtype.as_numpy_dtype).reshape(shape)
  except (OverflowError, ValueError) as error:
    raise _invalid(f"Input '{name}' has a value out of range for {spec.dtype.name}: {error}") from None
  _check_values(name, array, spec)
  return array


def _row_values(instances, input_names):
  """{input name: batched JSON value} from the "instances" list (plain values, or one object per instance)."""
  if not isinstance(instances, list):
    raise _invalid("Excepting 'instances' to be an list/array")
  if not instances:
    raise _invalid("No values in 'instances' array")
  if not _is_named_object(instances[0]):
    if len(input_names) > 1:
      raise _invalid("instances is a plain list, but expecting list of objects as multiple input tensors required "
                     "as per tensorinfo_map")
    for index, instance in enumerate(instances):
      if _is_named_object(instance):
        raise _invalid(f"Expecting value/list but got object at item {index} of input list")
    return {input_names[0]: instances}
  for index, instance in enumerate(instances):
    if not _is_named_object(instance):
      raise _invalid(f"Expecting object but got list at item {index} of input list")
    if set(instance) != set(input_names):
      raise _invalid(f"Failed to process element: {index} of 'instances' list. JSON object: keys "
                     f"{sorted(instance)} must be equal to: {','.join(sorted(input_names))}")
  return {name: [instance[name] for instance in instances] for name in input_names}


def _columnar_values(inputs, input_names):
  """{input name: batched JSON value} from "inputs" (a plain value for one input, or an object of them)."""
  if not _is_named_object(inputs):
    if len(input_names) > 1:
      raise _invalid("inputs is a plain value/list, but expecting an object as multiple input tensors required as "
                     "per tensorinfo_map")
    return {input_names[0]: inputs}
  for name in input_names:
    if name not in inputs:
      raise _invalid(f"Missing named input: {name} in 'inputs' object.")
  extra = sorted(set(inputs) - set(input_names))
  if extra:
    raise _invalid(f"Unknown named inputs {extra} in 'inputs' object; the signature has {sorted(input_names)}.")
  return dict(inputs)


def _parse_predict_body(body):
  """The request object of a :predict body; INVALID_ARGUMENT for anything but a JSON object."""
  if not body:
    raise _invalid("JSON Parse error: The document is empty")
  try:
    request = json.loads(body)
  except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError too.
    raise _invalid(f"JSON Parse error: {type(error).__name__}: {_snippet(str(error), 200)}") from None
  if not isinstance(request, dict):
    raise _invalid(f"JSON Value: {_snippet(request)} Is not object")
  signature_name = request.get("signature_name", "")
  if not isinstance(signature_name, str):
    raise _invalid("'signature_name' key must be a string value.")
  return request, signature_name


def _json_request_values(request, input_names):
  """(format, {input name: JSON value}); format is 'row' or 'columnar'."""
  if "instances" in request and "inputs" in request:
    raise _invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
  if "instances" in request:
    return "row", _row_values(request["instances"], input_names)
  if "inputs" in request:
    return "columnar", _columnar_values(request["inputs"], input_names)
  raise _invalid("Missing 'inputs' or 'instances' key")


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
    raise _invalid(f"Outputs need one common batch dimension for the row format, got {batch_sizes}; send "
                   "'inputs' instead.")
  if len(values) == 1:
    return {"predictions": next(iter(values.values()))}
  batch = next(iter(batch_sizes.values()))
  return {"predictions": [{name: value[i] for name, value in values.items()} for i in range(batch)]}


def _predict_json(model, name, version, label, body, max_batch):
  """Serves the body of `POST /v1/models/<name>[/versions/<version>]:predict`; returns the response object.

  Raises:
    ServingError: see the module docstring's table.
  """
  request, signature_name = _parse_predict_body(body)
  servable = model.resolve(name, version, label)
  _, signature = servable.signature(signature_name, _Code.INVALID_ARGUMENT)
  input_names = sorted(signature.inputs)
  row_format, values = _json_request_values(request, input_names)
  arrays = {key: _array_from_json(key, value, signature.inputs[key], max_batch) for key, value in values.items()}
  outputs = _run_signature(signature, arrays, sorted(signature.outputs))
  return _json_outputs(outputs, row_format == "row")


def _proto_json(message):
  return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True,
                                              always_print_fields_with_no_presence=True))


def _metadata_json(response):
  """TF Serving's REST form of a GetModelMetadataResponse: the SignatureDefMap unpacked from its Any."""
  signature_defs = get_model_metadata_pb2.SignatureDefMap()
  response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_defs)
  return {"model_spec": _proto_json(response.model_spec), "metadata": {"signature_def": _proto_json(signature_defs)}}


def _parse_version(text):
  if text is None:
    return None
  if len(text) > 19 or int(text) > _MAX_INT64:
    raise _invalid(f"Failed to convert version: {text} to numeric.")
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
    except ServingError as error:
      status, payload = error.http_status, {"error": error.message}
      if error.http_status in (411, 413):  # The body was not read: the connection cannot be reused.
        self.close_connection = True
    except Exception as error:  # A bug here must cost one request, not the server.
      logging.exception("Internal error serving %s %s", self.command, self.path)
      status, payload = 500, {"error": f"{type(error).__name__}: {error}"}
    self._send_json(status, payload)

  def _read_body(self):
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      raise ServingError(_Code.INVALID_ARGUMENT, "Chunked request bodies are not supported; send Content-Length.",
                         http_status=411)
    length = self.headers.get("Content-Length")
    if length is None:
      return b""
    if not length.strip().isdigit():
      raise _invalid(f"Invalid Content-Length: {_snippet(length)}")
    if int(length) > MAX_REQUEST_BYTES:
      raise ServingError(_Code.RESOURCE_EXHAUSTED, f"Request body of {int(length)} bytes is larger than the "
                         f"limit of {MAX_REQUEST_BYTES} bytes.", http_status=413)
    return self.rfile.read(int(length))

  def _dispatch(self, body):
    path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
    if not path.lower().startswith("/v1/"):
      raise ServingError(_Code.NOT_FOUND, f"Not found: {_snippet(path)}; the API is under /v1/models/<name>.")
    predict = _PREDICT_PATH.fullmatch(path) if self.command == "POST" else None
    if predict:
      name, version, label, method = predict.groups()
      if method.lower() != "predict":
        raise ServingError(_Code.UNIMPLEMENTED, f"Method :{method} is not served; this server serves :predict.")
      return _predict_json(self.server.model, name, _parse_version(version), label, body, self.server.max_batch)
    status = _STATUS_PATH.fullmatch(path) if self.command == "GET" else None
    if status:
      return self._get_model(*status.groups())
    raise _invalid(f"Malformed request: {self.command} {_snippet(path)}")

  def _get_model(self, name, version, label, metadata):
    if not name:
      raise _invalid("Missing model name in request.")
    if metadata:
      return _metadata_json(_model_metadata(self.server.model, name, _parse_version(version), label))
    return _proto_json(_model_status(self.server.model, name, _parse_version(version)))

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


def _make_http_server(host, port, model, max_batch):
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  server_class = type("_HttpServerForFamily", (_HttpServer,), {"address_family": family})
  httpd = server_class((host, port), _RestHandler)
  httpd.model, httpd.max_batch = model, max_batch
  return httpd


# ----------------------------------------------------------------------------------------------------------------
# The server.


def _bracketed(host):
  """`host` as it goes before ':port' (IPv6 addresses in brackets)."""
  return f"[{host}]" if ":" in host else host


def _check_port(name, port):
  if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
    raise ValueError(f"{name} must be an integer port in [0, 65535] (0 picks a free port), got {port!r}.")


class ModelServer:
  """Serves EXPORT_BASE/<model_name>/ over TF Serving's gRPC and REST APIs (see the module docstring).

  Usage:
    with ModelServer(export_base, "cnn_small") as server:
      channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
      ...
  """

  def __init__(self, base_path, model_name, *, host="127.0.0.1", grpc_port=0, rest_port=0, max_batch=256,
               poll_seconds=1.0):
    """Checks the arguments; nothing is loaded or bound before `start`.

    Args:
      base_path: the export base directory, holding <model_name>/<integer version>/ SavedModels.
      model_name: the model's directory name, and the name clients ask for.
      host: the address to bind; loopback by default. '0.0.0.0' (or '::') exposes the server to the network.
      grpc_port: the gRPC port; 0 picks a free one (see `grpc_port` after `start`).
      rest_port: the REST port; 0 picks a free one (see `rest_port` after `start`).
      max_batch: the largest batch (dimension 0) a request may send; larger ones get INVALID_ARGUMENT.
      poll_seconds: how often to look for a new version directory.

    Raises:
      ValueError: for an argument out of range or a model directory that does not exist.
    """
    base_path = os.fspath(base_path)
    if not isinstance(model_name, str) or not model_name or model_name in (".", "..") or "/" in model_name:
      raise ValueError(f"model_name must be a plain directory name, got {model_name!r}.")
    self.model_dir = os.path.join(base_path, model_name)
    if not os.path.isdir(self.model_dir):
      raise ValueError(f"No model directory {self.model_dir}: base_path {base_path!r} must hold {model_name}/ with "
                       "integer version directories.")
    if not isinstance(host, str) or not host:
      raise ValueError(f"host must be an address to bind such as '127.0.0.1', got {host!r}.")
    _check_port("grpc_port", grpc_port)
    _check_port("rest_port", rest_port)
    if not isinstance(max_batch, int) or max_batch < 1:
      raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}.")
    if not poll_seconds > 0:
      raise ValueError(f"poll_seconds must be > 0, got {poll_seconds!r}.")
    self._model = _VersionedModel(self.model_dir, model_name)
    self.host = host
    self.max_batch = max_batch
    self._requested_ports = (grpc_port, rest_port)
    self._poll_seconds = poll_seconds
    self.grpc_port = None
    self.rest_port = None
    self._grpc_server = None
    self._httpd = None
    self._threads = []
    self._stopping = threading.Event()
    self._started = False

  @property
  def model_name(self):
    return self._model.name

  @property
  def version(self) -> Optional[int]:
    """The version being served, or None while no version is loaded."""
    servable = self._model.servable
    return servable.version if servable is not None else None

  def start(self):
    """Loads the highest version, binds both ports and starts polling for new versions.

    Raises:
      ModelLoadError: the highest version directory cannot be served (with no version at all, the server starts
        and answers NOT_FOUND until one appears).
      RuntimeError: `start` was called before, or a port cannot be bound.
    """
    if self._started:
      raise RuntimeError("ModelServer.start() may be called once; create a new ModelServer to serve again.")
    self._started = True
    error = self._model.refresh()
    if error is not None:
      raise error
    if self.version is None:
      logging.warning("No integer version directory under %s yet; answering NOT_FOUND until one appears.",
                      self.model_dir)
    try:
      self._start_grpc()
      self._start_rest()
    except BaseException:
      self.stop()
      raise
    self._spawn(self._poll, "poll")
    logging.info("Serving %s: gRPC at %s:%d, REST at %s:%d.", self.model_name, self.host, self.grpc_port,
                 self.host, self.rest_port)
    return self

  def _start_grpc(self):
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=_GRPC_WORKERS, thread_name_prefix="serve-grpc"),
        maximum_concurrent_rpcs=_MAX_CONCURRENT_RPCS,
        options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES), ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionServicer(self._model, self.max_batch), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(self._model), server)
    address = _bracketed(self.host)
    try:
      port = server.add_insecure_port(f"{address}:{self._requested_ports[0]}")
    except RuntimeError as error:
      raise RuntimeError(f"Cannot bind the gRPC port {address}:{self._requested_ports[0]}: {error}") from error
    if not port:
      raise RuntimeError(f"Cannot bind the gRPC port {address}:{self._requested_ports[0]}.")
    server.start()
    self._grpc_server, self.grpc_port = server, port

  def _start_rest(self):
    try:
      self._httpd = _make_http_server(self.host, self._requested_ports[1], self._model, self.max_batch)
    except OSError as error:
      raise RuntimeError(f"Cannot bind the REST port {self.host}:{self._requested_ports[1]}: {error}") from error
    self.rest_port = self._httpd.server_address[1]
    self._spawn(self._httpd.serve_forever, "rest")

  def _spawn(self, target, name):
    thread = threading.Thread(target=target, name=f"serve-{name}", daemon=True)
    thread.start()
    self._threads.append(thread)

  def _poll(self):
    while not self._stopping.wait(self._poll_seconds):
      try:
        self._model.refresh()
      except Exception:  # e.g. the model directory vanished for a moment; keep serving and keep polling.
        logging.exception("Polling %s for new versions failed.", self.model_dir)

  def stop(self):
    """Stops polling and both servers; in-flight gRPC calls get `_STOP_GRACE_S` to finish. Idempotent."""
    self._stopping.set()
    if self._httpd is not None:
      if any(t.name == "serve-rest" for t in self._threads):
        self._httpd.shutdown()
      self._httpd.server_close()
      self._httpd = None
    if self._grpc_server is not None:
      self._grpc_server.stop(_STOP_GRACE_S).wait()
      self._grpc_server = None
    for thread in self._threads:
      thread.join(timeout=10)
    self._threads = []

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc_info):
    self.stop()


def serve_forever(base_path, model_name, host="127.0.0.1", grpc_port=DEFAULT_GRPC_PORT,
                  rest_port=DEFAULT_REST_PORT, max_batch=256, *, poll_seconds=1.0):
  """Runs a ModelServer until SIGINT or SIGTERM, then stops it cleanly; for `tfrobprune serve`.

  Prints the two addresses to stdout once serving. Must be called from the main thread (signal handlers).

  Args:
    base_path, model_name, host, grpc_port, rest_port, max_batch, poll_seconds: as `ModelServer`; the default
      ports are tensorflow_model_server's.

  Raises:
    ValueError, ModelLoadError, RuntimeError: as `ModelServer` and `ModelServer.start`.
  """
  stop = threading.Event()

  def request_stop(signum, frame):
    del frame
    logging.info("Received %s; stopping.", signal.Signals(signum).name)
    stop.set()

  previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    with ModelServer(base_path, model_name, host=host, grpc_port=grpc_port, rest_port=rest_port,
                     max_batch=max_batch, poll_seconds=poll_seconds) as server:
      print(f"Serving model {model_name!r} version {server.version} from {server.model_dir}\n"
            f"  gRPC: {_bracketed(host)}:{server.grpc_port}\n"
            f"  REST: http://{_bracketed(host)}:{server.rest_port}/v1/models/{model_name}", flush=True)
      while not stop.wait(0.5):
        pass
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
