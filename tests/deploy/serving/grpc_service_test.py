"""Tests for tfrobprune.deploy.serving.grpc_service: the official TF Serving gRPC client against a running server.

Every request goes to a server on 127.0.0.1 (port 0) serving the tiny model of testing_util.
"""

from absl.testing import absltest
from absl.testing import parameterized
import grpc
import hypothesis
from hypothesis import strategies as st
import numpy as np

import testing_util
from tfrobprune.keras_compat import tf

from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: I100 (after keras_compat: imports TF)
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2

_MODEL = testing_util.MODEL
_MAX_BATCH = testing_util.MAX_BATCH
_OUTPUTS = testing_util.OUTPUTS
_Code = grpc.StatusCode
_predict_request = testing_util.predict_request
_grpc_outputs = testing_util.grpc_outputs
_grpc_code = testing_util.grpc_code
_images = testing_util.random_images


def setUpModule():
  testing_util.use_temp_hypothesis_storage()


class GrpcServiceTest(testing_util.ServerTestCase):
  """PredictionService and ModelService through the official stubs, on one server for the whole class."""

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

  # --- Fuzzing: any TensorProto gets a success or a documented code, and the server lives on.

  @hypothesis.given(data=st.data())
  @testing_util.FUZZ
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
    # Named to run last in this class (unittest runs methods in name order), after the fuzz test.
    self.assertServerStillAnswers()


# --- Hypothesis strategies: valid requests with zero to two random mutations each.

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
  mutations = draw(testing_util.MUTATIONS)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = draw(st.sampled_from(["nope", ""])) if "spec" in mutations else _MODEL
  version = draw(st.sampled_from([None, 1, 2] if "spec" in mutations else [None, 1]))
  if version is not None:
    request.model_spec.version.value = version
  signatures = ["x"] if "signature" in mutations else ["", "serving_default"]
  request.model_spec.signature_name = draw(st.sampled_from(signatures))
  request.output_filter.extend(draw(st.lists(st.sampled_from([*_OUTPUTS, "bogus"]), max_size=3, unique=True)))
  proto = request.inputs["pixels" if "name" in mutations else "images"]
  values = testing_util.image_values(draw, mutations)
  proto.dtype = draw(st.sampled_from(_BAD_DTYPES)) if "dtype" in mutations else 1  # DT_FLOAT
  for size in values.shape:
    proto.tensor_shape.dim.add(size=size)
  if "shape" in mutations and draw(st.booleans()):
    proto.tensor_shape.dim.add(size=draw(st.sampled_from([-1, 2**40])))
    proto.tensor_shape.unknown_rank = draw(st.booleans())
  _fill_proto_content(draw, proto, values, mutations)
  return request


if __name__ == "__main__":
  absltest.main()
