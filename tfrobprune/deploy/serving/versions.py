"""The served model's versions: version directories, loading one, swapping in the highest, status and metadata.

Like TF Serving's default `latest` policy, only the highest integer version directory is served; see
docs/serving.md.
"""

import dataclasses
import os
import re
import threading

from absl import logging
import grpc

from tfrobprune.deploy.serving import errors
from tfrobprune.deploy.serving import signatures as signatures_lib
from tfrobprune.keras_compat import tf

# tensorflow_serving's protos import TensorFlow's, so they must follow keras_compat (which imports TensorFlow first).
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: I100
from tensorflow_serving.apis import get_model_status_pb2

MAX_INT64 = 2**63 - 1  # the largest version number

_VERSION_DIR = re.compile(r"[0-9]{1,19}")  # an int64
_Code = grpc.StatusCode
_State = get_model_status_pb2.ModelVersionStatus.State


class ModelLoadError(ValueError):
  """A version directory that `tf.saved_model.load` cannot serve."""


@dataclasses.dataclass(frozen=True)
class _Servable:
  """One loaded version. `loaded` keeps the SavedModel's variables alive for the signature functions."""
  version: int
  path: str
  loaded: object
  signatures: dict
  signature_defs: get_model_metadata_pb2.SignatureDefMap

  def signature(self, name, missing_code):
    key = name or signatures_lib.SIGNATURE_KEY
    if key not in self.signatures:
      raise errors.ServingError(missing_code, _missing_signature_message(key, missing_code))
    return key, self.signatures[key]


def _missing_signature_message(key, code):
  # TF Serving's two wordings: predict_util.cc (gRPC) and http_rest_api_handler.cc (REST).
  if code == _Code.FAILED_PRECONDITION:
    return f'Serving signature key "{key}" not found.'
  return f'Serving signature name: "{key}" not found in signature def'


def _load_servable(path, version):
  """Loads the SavedModel at `path` as version `version`.

  Raises:
    ModelLoadError: the directory is not a SavedModel, or it has no `serving_default` signature.
  """
  try:
    loaded = tf.saved_model.load(path)
    signatures = {key: signatures_lib.Signature.from_function(key, fn) for key, fn in loaded.signatures.items()}
    signature_defs = signatures_lib.read_signature_defs(path)
  except Exception as error:  # Whatever TensorFlow raises for a broken or half-written directory.
    raise ModelLoadError(f"Cannot load the SavedModel in {path}: {type(error).__name__}: {error}") from error
  if signatures_lib.SIGNATURE_KEY not in signatures:
    raise ModelLoadError(f"The SavedModel in {path} has no '{signatures_lib.SIGNATURE_KEY}' signature; it has "
                         f"{sorted(signatures)}.")
  return _Servable(version, path, loaded, signatures, signature_defs)


def list_versions(model_dir):
  """{version: path} for the integer-named subdirectories of `model_dir`; other names (`.tmp-3`) are skipped."""
  versions = {}
  with os.scandir(model_dir) as entries:
    for entry in sorted(entries, key=lambda e: e.name):
      if _VERSION_DIR.fullmatch(entry.name) and entry.is_dir() and int(entry.name) <= MAX_INT64:
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


@dataclasses.dataclass(frozen=True)
class _VersionState:
  state: int
  error_code: int = 0
  error_message: str = ""


class VersionedModel:
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
      raise errors.invalid(f"Unrecognized servable version label: {label}")
    servable = self._servable
    if name != self.name or servable is None or (version is not None and version != servable.version):
      request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
      raise errors.ServingError(_Code.NOT_FOUND, f"Servable not found for request: {request}")
    return servable



def model_status(model, name, version=None):
  """The GetModelStatusResponse for model `name` (one version, or all versions seen, newest first).

  Raises:
    ServingError: NOT_FOUND, with TF Serving's messages.
  """
  states = model.states() if name == model.name else {}
  if version is not None:
    if version not in states:
      raise errors.ServingError(_Code.NOT_FOUND, f"Could not find version {version} of model {name}")
    states = {version: states[version]}
  if not states:
    raise errors.ServingError(_Code.NOT_FOUND, f"Could not find any versions of model {name}")
  response = get_model_status_pb2.GetModelStatusResponse()
  for number in sorted(states, reverse=True):
    status = response.model_version_status.add(version=number, state=states[number].state)
    status.status.SetInParent()
    status.status.error_code = states[number].error_code
    status.status.error_message = states[number].error_message
  return response


def model_metadata(model, name, version=None, label="", fields=(signatures_lib.SIGNATURE_DEF_FIELD,)):
  """The GetModelMetadataResponse (field 'signature_def' only, as in TF Serving) of the servable named.

  Raises:
    ServingError: INVALID_ARGUMENT for no or unsupported fields, else as `VersionedModel.resolve`.
  """
  if not fields:
    raise errors.invalid("GetModelMetadataRequest must specify at least one metadata_field")
  for field in fields:
    if field != signatures_lib.SIGNATURE_DEF_FIELD:
      raise errors.invalid(f"Metadata field {field} is not supported")
  servable = model.resolve(name, version, label)
  response = get_model_metadata_pb2.GetModelMetadataResponse()
  response.model_spec.name = model.name
  response.model_spec.version.value = servable.version
  response.metadata[signatures_lib.SIGNATURE_DEF_FIELD].Pack(servable.signature_defs)
  return response
