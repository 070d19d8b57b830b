"""Tests for tfrobprune.deploy.serving.validation: request values checked against a TensorSpec, without a server.

The spec is the exports' serving input, 'images' float32 [None, 4, 4, 1]; the wire-level codes of the same checks
are tested through a running server in grpc_service_test and rest_test.
"""

from absl.testing import absltest
from absl.testing import parameterized
import grpc
import numpy as np

from tfrobprune.deploy.serving import errors
from tfrobprune.deploy.serving import signatures
from tfrobprune.deploy.serving import validation
from tfrobprune.keras_compat import tf

_SPEC = tf.TensorSpec([None, 4, 4, 1], tf.float32, name="images")
_IMAGE = [[[0.5]] * 4] * 4
_MAX_BATCH = 8
_SIGNATURE = signatures.Signature(function=None, inputs={"images": _SPEC},
                                  outputs={"logits": None, "probabilities": None, "classes": None})


class ArrayFromJsonTest(parameterized.TestCase):

  def testValidImages_Float32ArrayOfTheirShape(self):
    array = validation.array_from_json("images", [_IMAGE, _IMAGE], _SPEC, _MAX_BATCH, pixels=True)
    self.assertEqual(array.dtype, np.float32)
    self.assertEqual(array.shape, (2, 4, 4, 1))
    np.testing.assert_array_equal(array, 0.5)

  def testJsonIntegers_AcceptedForAFloatInput(self):
    array = validation.array_from_json("images", [[[[1]] * 4] * 4], _SPEC, _MAX_BATCH, pixels=True)
    np.testing.assert_array_equal(array, np.ones((1, 4, 4, 1), np.float32))

  @parameterized.named_parameters(
      ("Ragged", [_IMAGE, [[[0.5]] * 3] * 4], "ragged"),
      ("ListsAndValues", [_IMAGE, 0.5], "mixes lists and values"),
      ("Rank2", [[0.5] * 4] * 4, r"has shape \[4,4\] but the signature expects \[-1,4,4,1\]"),
      ("TwoChannels", [[[[0.5, 0.5]] * 4] * 4], r"has shape \[1,4,4,2\] but the signature expects \[-1,4,4,1\]"),
      ("Bools", [[[[True]] * 4] * 4], "is not of expected type: float32"),
      ("Strings", [[[["0.5"]] * 4] * 4], "is not of expected type: float32"),
      ("AboveOne", [[[[1.5]] * 4] * 4], r"must be pixels in \[0, 1\]: found values in \[1.5, 1.5\]"),
      ("NaN", [[[[float("nan")]] * 4] * 4], "must be finite pixels"),
      ("Float32Overflow", [[[[1e40]] * 4] * 4], "must be finite pixels"),
      ("BatchOverMax", [_IMAGE] * (_MAX_BATCH + 1), "Task size 9 is larger than maximum input batch size 8"),
  )
  def testBadValue_InvalidArgumentSayingWhy(self, value, message):
    with self.assertRaisesRegex(errors.ServingError, message) as caught:
      validation.array_from_json("images", value, _SPEC, _MAX_BATCH, pixels=True)
    self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
    self.assertEqual(caught.exception.http_status, 400)


  def testNotDeclaredPixels_OutOfRangeAndNaNPassedAsSent(self):
    value = [[[[1.5]] * 4] * 3 + [[[float("nan")]] * 4]]
    array = validation.array_from_json("images", value, _SPEC, _MAX_BATCH, pixels=False)
    self.assertEqual(array[0, 0, 0, 0], 1.5)
    self.assertTrue(np.isnan(array[0, 3, 0, 0]))


class ArrayFromTensorProtoTest(absltest.TestCase):

  def testValidImages_SameArray(self):
    images = np.full((2, 4, 4, 1), 0.25, np.float32)
    proto = tf.make_tensor_proto(images)
    array = validation.array_from_tensor_proto("images", proto, _SPEC, _MAX_BATCH, pixels=True)
    np.testing.assert_array_equal(array, images)

  def testDouble_InvalidArgumentNamingBothDtypes(self):
    proto = tf.make_tensor_proto(np.full((1, 4, 4, 1), 0.25, np.float64))
    with self.assertRaisesRegex(errors.ServingError, "Expects arg 'images' to be float32 but float64 is provided"):
      validation.array_from_tensor_proto("images", proto, _SPEC, _MAX_BATCH, pixels=True)

  def testHugeShapeFilledByOneValue_RejectedBeforeAllocating(self):
    proto = tf.make_tensor_proto(np.float32(0.5))
    proto.tensor_shape.Clear()
    for size in (2**40, 4, 4, 1):
      proto.tensor_shape.dim.add(size=size)
    with self.assertRaisesRegex(errors.ServingError, r"has more than \d+ elements"):
      validation.array_from_tensor_proto("images", proto, _SPEC, 2**41, pixels=True)

  def testUnknownRank_InvalidArgument(self):
    proto = tf.make_tensor_proto(np.float32(0.5))
    proto.tensor_shape.unknown_rank = True
    with self.assertRaisesRegex(errors.ServingError, "unknown rank"):
      validation.array_from_tensor_proto("images", proto, _SPEC, _MAX_BATCH, pixels=True)


class NamesAndBatchTest(absltest.TestCase):

  def testCheckInputNames_WrongName_ListsExtraAndMissing(self):
    with self.assertRaisesRegex(errors.ServingError, r"Sent extra: \{pixels\}. Missing but required: \{images\}."):
      validation.check_input_names(["pixels"], _SIGNATURE)

  def testOutputNames_NoFilter_AllSorted(self):
    self.assertEqual(validation.output_names(_SIGNATURE, []), ["classes", "logits", "probabilities"])

  def testOutputNames_Filter_KeptInItsOrder(self):
    self.assertEqual(validation.output_names(_SIGNATURE, ["logits", "classes"]), ["logits", "classes"])

  def testOutputNames_RepeatedOrUnknown_InvalidArgument(self):
    with self.assertRaisesRegex(errors.ServingError, "duplicate output tensor alias: logits"):
      validation.output_names(_SIGNATURE, ["logits", "logits"])
    with self.assertRaisesRegex(errors.ServingError, "output tensor alias not found in signature: scores"):
      validation.output_names(_SIGNATURE, ["scores"])

  def testCheckBatchSizes_Unequal_InvalidArgument(self):
    validation.check_batch_sizes({"a": np.zeros((2, 3)), "b": np.zeros((2,)), "scalar": np.zeros(())})
    with self.assertRaisesRegex(errors.ServingError, "equal 0th-dimension"):
      validation.check_batch_sizes({"a": np.zeros((2, 3)), "b": np.zeros((3,))})


if __name__ == "__main__":
  absltest.main()
