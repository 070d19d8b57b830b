"""Request validation: each input checked against its TensorSpec before the model runs, from TensorProto or JSON.

Dtype, rank, dimensions, batch size, size limit, and the [0, 1] pixel range of the inputs whose signature declares
it (`signatures.Signature.pixel_inputs`); the error codes are listed in docs/serving.md. Nothing a client sends may
take the server down, so no hostile shape is ever allocated and no JSON body larger than its batch limit is parsed.
"""

import grpc
import numpy as np

from tfrobprune.deploy.serving import errors
from tfrobprune.keras_compat import tf

MAX_REQUEST_BYTES = 64 * 1024 * 1024
PIXEL_RANGE = (0.0, 1.0)

_MAX_ELEMENTS = MAX_REQUEST_BYTES  # per input tensor; a TensorProto can repeat one value to fill any shape
_JSON_VALUE_SLACK = 1024  # values allowed beyond max_batch full instances (signature_name, ...)
_Code = grpc.StatusCode


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
    raise errors.invalid(f"Input '{name}' has shape {_shape_text(shape)} but the signature expects "
                         f"{_shape_text(expected)}.")
  if any(d < 0 for d in shape):
    raise errors.invalid(f"Input '{name}' has a negative dimension: {_shape_text(shape)}.")
  if np.prod(shape, dtype=np.float64) > _MAX_ELEMENTS:
    raise errors.invalid(f"Input '{name}' of shape {_shape_text(shape)} has more than {_MAX_ELEMENTS} elements.")
  if shape and shape[0] > max_batch:
    # The wording of TF Serving's batch scheduler, which also answers INVALID_ARGUMENT.
    raise errors.invalid(f"Task size {shape[0]} is larger than maximum input batch size {max_batch} (input '{name}').")


def _check_pixels(name, array, pixels):
  """Checks that a pixel input (`pixels`: its signature declares the range) is finite and within `PIXEL_RANGE`.

  Raises:
    ServingError: INVALID_ARGUMENT naming the input and what was found.
  """
  if not pixels or array.size == 0:
    return
  low, high = PIXEL_RANGE
  if not np.all(np.isfinite(array)):
    raise errors.invalid(f"Input '{name}' must be finite pixels in [{low:g}, {high:g}]: found NaN or Inf.")
  if array.min() < low or array.max() > high:
    raise errors.invalid(f"Input '{name}' must be pixels in [{low:g}, {high:g}]: found values in "
                         f"[{array.min():g}, {array.max():g}].")


def check_input_names(sent, signature):
  """TF Serving's check that the request names exactly the signature's inputs."""
  sent, expected = set(sent), set(signature.inputs)
  if sent != expected:
    raise errors.invalid(f"input size does not match signature: {len(sent)}!={len(expected)} "
                         f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                         f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                         f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")


def output_names(signature, output_filter):
  """The outputs to return: `output_filter` in order (each known, none twice), or all of them."""
  seen = []
  for alias in output_filter:
    if alias not in signature.outputs:
      raise errors.invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                           f"{{{','.join(sorted(signature.outputs))}}}.")
    if alias in seen:
      raise errors.invalid(f"duplicate output tensor alias: {alias}")
    seen.append(alias)
  return seen or sorted(signature.outputs)


def check_batch_sizes(arrays):
  """Checks that the batched inputs agree on their batch size (dimension 0)."""
  sizes = {name: array.shape[0] for name, array in arrays.items() if array.ndim}
  if len(set(sizes.values())) > 1:
    raise errors.invalid(f"Inputs must have equal 0th-dimension (batch) sizes, got {sizes}.")


def array_from_tensor_proto(name, proto, spec, max_batch, *, pixels):
  """The checked numpy value of input `name`: dtype and shape first, so no hostile shape is ever allocated.

  `pixels` says whether the signature declares the input as pixels in `PIXEL_RANGE` (then NaN, Inf and values
  outside the range are refused before the model runs).

  Raises:
    ServingError: INVALID_ARGUMENT.
  """
  try:
    dtype = tf.dtypes.as_dtype(proto.dtype)
  except TypeError:
    raise errors.invalid(f"Input '{name}' has an unknown dtype enum value {proto.dtype}.") from None
  if dtype != spec.dtype:
    raise errors.invalid(f"Expects arg '{name}' to be {spec.dtype.name} but {dtype.name} is provided")
  if proto.tensor_shape.unknown_rank:
    raise errors.invalid(f"Input '{name}' has an unknown rank; the signature expects {_shape_text(spec.shape)}.")
  _check_shape(name, [d.size for d in proto.tensor_shape.dim], spec, max_batch)
  try:
    array = tf.make_ndarray(proto)
  except Exception as error:  # numpy's ValueError/TypeError for content that does not fill the shape.
    raise errors.invalid(f"Input '{name}' is not a valid TensorProto: {type(error).__name__}: {error}") from None
  _check_pixels(name, array, pixels)
  return array


def _json_shape_and_leaves(name, value):
  """The dense shape of nested JSON lists and their leaves in row-major order, level by level (no recursion)."""
  shape, level = [], [value]
  while level and all(type(item) is list for item in level):
    size = len(level[0])
    if any(len(item) != size for item in level):
      raise errors.invalid(f"Input '{name}' is ragged: lists of different lengths at level {len(shape)}.")
    shape.append(size)
    level = [leaf for item in level for leaf in item]
  if any(type(item) is list for item in level):
    raise errors.invalid(f"Input '{name}' mixes lists and values at level {len(shape)}.")
  return shape, level


def _json_leaf_types(dtype):
  if dtype.is_floating:
    return (int, float)
  if dtype.is_integer:
    return (int,)
  if dtype.is_bool:
    return (bool,)
  raise errors.ServingError(_Code.UNIMPLEMENTED, f"JSON inputs of type {dtype.name} are not supported by this server.")


def array_from_json(name, value, spec, max_batch, *, pixels):
  """The checked numpy value of input `name` from JSON (the batch dimension included); `pixels` as above.

  Raises:
    ServingError: INVALID_ARGUMENT for ragged lists, wrong JSON types, shapes or values.
  """
  shape, leaves = _json_shape_and_leaves(name, value)
  _check_shape(name, shape, spec, max_batch)
  allowed = _json_leaf_types(spec.dtype)
  for leaf in leaves:
    if type(leaf) not in allowed:  # type(), not isinstance(): JSON true is not the number 1.
      raise errors.invalid(f"JSON Value: {errors.snippet(leaf)} of input '{name}' is not of expected type: "
                           f"{spec.dtype.name}")
  try:
    with np.errstate(all="ignore"):  # float32 overflow becomes Inf.
      array = np.asarray(leaves, dtype=spec.dtype.as_numpy_dtype).reshape(shape)
  except (OverflowError, ValueError) as error:
    raise errors.invalid(f"Input '{name}' has a value out of range for {spec.dtype.name}: {error}") from None
  _check_pixels(name, array, pixels)
  return array


def values_per_instance(signatures):
  """The most values one instance (batch element) of any of `signatures` holds, or None if a shape is not fixed.

  An instance of a signature holds one value per element of each input without its batch dimension.
  """
  largest = 0
  for signature in signatures:
    total = 0
    for spec in signature.inputs.values():
      dims = spec.shape.as_list() if spec.shape.rank is not None else [None]
      if any(d is None for d in dims[1:]):
        return None
      total += int(np.prod(dims[1:], dtype=np.int64))
    largest = max(largest, total)
  return largest


def check_json_value_count(count, per_instance, max_batch):
  """Refuses a JSON body holding more values than `max_batch` instances of `per_instance` values, before parsing it.

  `count` is `json_prescan.ValueCounter.count` (while the body is read, or once it is); `_JSON_VALUE_SLACK` leaves
  room for the request's other fields.

  Raises:
    ServingError: INVALID_ARGUMENT, as for a batch larger than `max_batch`.
  """
  if per_instance is None:
    return
  limit = max_batch * per_instance + _JSON_VALUE_SLACK
  if count > limit:
    raise errors.invalid(f"The request holds at least {count} JSON values, more than a batch of at most {max_batch} "
                         f"instances of {per_instance} values each (at most {limit} values with the other fields); "
                         "it was refused before parsing it.")
