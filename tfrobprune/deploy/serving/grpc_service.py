"""TF Serving's gRPC services: PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus).

The other methods answer UNIMPLEMENTED; codes and messages are TF Serving's, listed in docs/serving.md.
"""

import functools

from absl import logging
import grpc

from tfrobprune.deploy.serving import deadlines
from tfrobprune.deploy.serving import errors
from tfrobprune.deploy.serving import validation
from tfrobprune.deploy.serving import versions
from tfrobprune.keras_compat import tf

# tensorflow_serving's protos import TensorFlow's, so they must follow keras_compat (which imports TensorFlow first).
from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: I100
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

_Code = grpc.StatusCode


def add_to_server(server, model, max_batch, executor, request_timeout):
  """Adds both services, serving `model` (a `versions.VersionedModel`) with batches of at most `max_batch`.

  Predict runs the model on `executor` (an `execution.ModelExecutor`) within `request_timeout` seconds, or the
  client's own deadline if that is sooner.
  """
  servicer = _PredictionServicer(model, max_batch, executor, request_timeout)
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(model), server)


def _model_spec_version(model_spec):
  """(version or None, label) of a ModelSpec proto."""
  version = model_spec.version.value if model_spec.HasField("version") else None
  return version, model_spec.version_label


def _predict_proto(model, request, max_batch, executor, deadline):
  """Serves a `PredictRequest` within `deadline`; returns the `PredictResponse`.

  Raises:
    ServingError: see the table in docs/serving.md.
  """
  servable = model.resolve(request.model_spec.name, *_model_spec_version(request.model_spec))
  key, signature = servable.signature(request.model_spec.signature_name, _Code.FAILED_PRECONDITION)
  validation.check_input_names(request.inputs.keys(), signature)
  output_names = validation.output_names(signature, request.output_filter)
  arrays = {name: validation.array_from_tensor_proto(name, proto, signature.inputs[name], max_batch,
                                                     pixels=name in signature.pixel_inputs)
            for name, proto in request.inputs.items()}
  outputs = executor.run(signature, arrays, output_names, deadline)
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
    except errors.ServingError as error:
      failure = error
    except Exception as error:  # A bug here must cost one request, not the server.
      logging.exception("Internal error in %s", method.__name__)
      failure = errors.ServingError(_Code.INTERNAL, f"{type(error).__name__}: {error}")
    context.abort(failure.code, failure.message)

  return wrapper


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """tensorflow.serving.PredictionService: Predict and GetModelMetadata."""

  def __init__(self, model, max_batch, executor, request_timeout):
    self._model = model
    self._max_batch = max_batch
    self._executor = executor
    self._request_timeout = request_timeout

  @_grpc_method
  def Predict(self, request, context):  # noqa: N802 (the gRPC method name)
    client_timeout = context.time_remaining()
    timeout = self._request_timeout if client_timeout is None else min(client_timeout, self._request_timeout)
    if timeout <= 0:
      raise errors.ServingError(_Code.DEADLINE_EXCEEDED, "The call's deadline passed before it was served.")
    return _predict_proto(self._model, request, self._max_batch, self._executor, deadlines.Deadline(timeout))

  @_grpc_method
  def GetModelMetadata(self, request, context):  # noqa: N802
    if not request.HasField("model_spec"):
      raise errors.invalid("Missing ModelSpec")
    version, label = _model_spec_version(request.model_spec)
    return versions.model_metadata(self._model, request.model_spec.name, version, label, list(request.metadata_field))


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """tensorflow.serving.ModelService: GetModelStatus (config reloads stay UNIMPLEMENTED)."""

  def __init__(self, model):
    self._model = model

  @_grpc_method
  def GetModelStatus(self, request, context):  # noqa: N802
    if not request.HasField("model_spec"):
      raise errors.invalid("Missing ModelSpec")
    version, _ = _model_spec_version(request.model_spec)
    return versions.model_status(self._model, request.model_spec.name, version)
