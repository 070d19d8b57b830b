"""The signatures of a loaded SavedModel: their input/output specs, their SignatureDefs, and running one.

See docs/serving.md for what the server serves.
"""

import dataclasses
import os

from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
import grpc

from tfrobprune.deploy import saved_model
from tfrobprune.deploy.serving import errors
from tfrobprune.deploy.serving import validation
from tfrobprune.keras_compat import tf

# tensorflow_serving's protos import TensorFlow's, so they must follow keras_compat (which imports TensorFlow first).
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: I100

SIGNATURE_KEY = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"

_Code = grpc.StatusCode
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _declared_pixel_inputs(key, inputs, outputs):
  """The inputs that a signature declares as pixels in `validation.PIXEL_RANGE`.

  The declaration is the exports' serving signature as `saved_model` writes it (and asserts in its graph):
  `serving_default` taking one float32 input 'images' [None, H, W, C] ("raw pixels in [0, 1]") to exactly 'logits',
  'probabilities' and 'classes'. Any other signature declares no range, so its inputs are passed on as sent.
  """
  if key != saved_model.SIGNATURE_KEY or set(outputs) != set(saved_model.OUTPUT_NAMES):
    return frozenset()
  spec = inputs.get(saved_model.INPUT_NAME)
  if len(inputs) != 1 or spec is None or spec.dtype != tf.float32 or spec.shape.rank != 4:
    return frozenset()
  return frozenset([saved_model.INPUT_NAME])


@dataclasses.dataclass(frozen=True)
class Signature:
  """A loaded signature: its function, its input and output specs, and the inputs it declares as [0, 1] pixels."""
  function: object
  inputs: dict
  outputs: dict
  pixel_inputs: frozenset = frozenset()

  @classmethod
  def from_function(cls, key, function):
    _, inputs = function.structured_input_signature
    inputs, outputs = dict(inputs), dict(function.structured_outputs)
    return cls(function, inputs, outputs, _declared_pixel_inputs(key, inputs, outputs))


def read_signature_defs(export_dir):
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


def _tf_error_code(error):
  return _CODE_BY_NUMBER.get(getattr(error, "error_code", None), _Code.INTERNAL)


def run_signature(signature, arrays, output_names):
  """Calls a signature on checked numpy inputs; returns {output name: numpy array}.

  Raises:
    ServingError: with the code of a TensorFlow error the model itself raises (e.g. an in-graph assertion).
  """
  validation.check_batch_sizes(arrays)
  try:
    outputs = signature.function(**{name: tf.convert_to_tensor(array) for name, array in arrays.items()})
  except tf.errors.OpError as error:
    raise errors.ServingError(_tf_error_code(error), error.message) from error
  return {name: outputs[name].numpy() for name in output_names}
