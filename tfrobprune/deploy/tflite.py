"""LiteRT (TFLite) flatbuffers of a Keras model: the conversion variants, each written atomically with its record.

TFLite variants
---------------
All take float32 images in [0, 1] and return float32 logits (no softmax/argmax, no input checks: those live in
the SavedModel's signature). The int8 variants quantize inside the graph and keep float32 input and output, so
every variant is called and compared the same way; `tflite_runner` still handles int8/uint8 input and output
tensors (scale and zero point) for flatbuffers converted elsewhere.

    float32         plain conversion; zeros stored densely
    float32_sparse  Optimize.EXPERIMENTAL_SPARSITY: sparse (CSR-like) weight tensors expanded by DENSIFY ops at load
    int8_dynamic    Optimize.DEFAULT without data: int8 weights, float activations (dynamic range)
    int8_full       full integer: int8 weights and activations, calibrated on `representative_images`
    int8_sparse     int8_full + EXPERIMENTAL_SPARSITY: the smallest
    int8_float_logits  int8_full with the last layer (the logits) left in float32: its int8 output has 256 levels,
                    so two classes can tie on adversarial inputs, which sit on the decision boundary; a float last
                    layer (a small part of the weights) removes the ties and follows the Keras model's decisions.
                    Not for integer-only accelerators.

`pqat.export_pqat` writes one more variant, 'pqat_int8', through `write_flatbuffer`.
"""

import gzip
import hashlib

import numpy as np

from tfrobprune.deploy import artifact_files
from tfrobprune.deploy import checks
from tfrobprune.keras_compat import tf

TFLITE_VARIANTS = ("float32", "float32_sparse", "int8_dynamic", "int8_full", "int8_sparse",
                   "int8_float_logits")

# variant -> (converter optimizations, needs representative images, quantization description).
_VARIANTS = {
    "float32": ((), False, "none (float32)"),
    "float32_sparse": (("EXPERIMENTAL_SPARSITY",), False, "none (float32)"),
    "int8_dynamic": (("DEFAULT",), False, "dynamic range: int8 weights, float32 activations"),
    "int8_full": (("DEFAULT",), True, "full integer: int8 weights and activations, float32 input/output"),
    "int8_sparse": (("DEFAULT", "EXPERIMENTAL_SPARSITY"), True,
                    "full integer: int8 weights and activations, float32 input/output"),
    "int8_float_logits": (("DEFAULT",), True,
                          "int8 weights and activations except the last layer (float32), float32 input/output"),
}
# Variants whose last layer stays float32 (quantized by LiteRT's quantization debugger with that layer deny-listed).
_FLOAT_LOGITS = ("int8_float_logits",)

# Calibration images for full-integer quantization; more adds conversion time, not accuracy, on small models.
_REPRESENTATIVE_EXAMPLES = 200


def _representative_dataset(images):
  """Up to `_REPRESENTATIVE_EXAMPLES` images spread over the whole set (training sets may be ordered by class)."""
  chosen = images[np.linspace(0, len(images) - 1, min(len(images), _REPRESENTATIVE_EXAMPLES)).astype(int)]

  def generate():
    for image in chosen:
      yield [image[None]]

  return generate


def check_variants(variants):
  """Raises unless every name of `variants` is one of `TFLITE_VARIANTS`; returns them as a tuple."""
  variants = tuple(variants)
  unknown = [v for v in variants if v not in _VARIANTS]
  if unknown:
    raise ValueError(f"Unknown TFLite variants {unknown}; choose from {', '.join(TFLITE_VARIANTS)}.")
  return variants


def convert_tflite(model, variant, representative_images=None):
  """Converts `model` to a TFLite flatbuffer of one of `TFLITE_VARIANTS`; returns the bytes.

  Raises:
    ValueError: for an unknown variant, or a calibrated int8 variant without representative images.
  """
  if variant not in _VARIANTS:
    raise ValueError(f"Unknown TFLite variant {variant!r}; choose one of {', '.join(TFLITE_VARIANTS)}.")
  shape = checks.check_exportable(model)
  optimizations, needs_data, _ = _VARIANTS[variant]
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  converter.optimizations = [getattr(tf.lite.Optimize, name) for name in optimizations]
  if needs_data:
    if representative_images is None or not len(representative_images):
      raise ValueError(f"TFLite variant {variant!r} quantizes activations and needs representative_images (training "
                       "images in [0, 1]) to calibrate their ranges.")
    images = checks.check_images("representative_images", representative_images, shape)
    converter.representative_dataset = _representative_dataset(images)
    if variant in _FLOAT_LOGITS:
      return _quantized_except_output(model, converter)
    # Fail rather than silently keep float ops: int8 weights *and* activations, float32 input and output.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  return converter.convert()


def _quantized_except_output(model, converter):
  """Full-integer quantization of everything but the op producing the model's output (the logits layer).

  LiteRT's quantization debugger calibrates the model and quantizes it with a deny-list of ops, named by their output
  tensor in the float model; the logits op's output is the model's output tensor.
  """
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top

  float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
  output_name = litert.Interpreter(model_content=float_model).get_output_details()[0]["name"]
  options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=[output_name])
  debugger = tf.lite.experimental.QuantizationDebugger(
      converter=converter, debug_dataset=converter.representative_dataset, debug_options=options)
  return debugger.get_nondebug_quantized_model()


def sparse_tensors(flatbuffer):
  """Names of the tensors the flatbuffer stores in TFLite's sparse format (with sparsity parameters)."""
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=g-import-not-at-top

  model = schema.Model.GetRootAsModel(flatbuffer, 0)
  names = []
  for s in range(model.SubgraphsLength()):
    subgraph = model.Subgraphs(s)
    for t in range(subgraph.TensorsLength()):
      tensor = subgraph.Tensors(t)
      if tensor.Sparsity() is not None:
        names.append(tensor.Name().decode())
  return names


def export_tflite(model, path, variant, representative_images=None):
  """Converts `model` to one TFLite variant and writes it to `path` atomically.

  Args:
    model: a built, stripped Keras 2 model from [0, 1] images to logits.
    path: the .tflite file to write (its directory must exist).
    variant: one of `TFLITE_VARIANTS` (see the module docstring).
    representative_images: float32 [N, H, W, C] training images in [0, 1]; required by 'int8_full',
      'int8_sparse' and 'int8_float_logits' (200 spread over them calibrate the activation ranges).

  Returns:
    {'path', 'bytes', 'gzip_bytes', 'sha256', 'variant', 'quantization', 'sparse_encoding'}, where
    'sparse_encoding' lists the tensors stored in TFLite's sparse format (empty for a dense encoding).

  Raises:
    ValueError: for an unknown variant, a wrapped model or missing representative images.
  """
  flatbuffer = convert_tflite(model, variant, representative_images)
  return write_flatbuffer(path, flatbuffer, variant, _VARIANTS[variant][2])


def write_flatbuffer(path, flatbuffer, variant, quantization):
  """Writes a TFLite flatbuffer atomically; returns its record (sizes raw and gzipped, checksum, encoding)."""
  artifact_files.write_artifact(path, flatbuffer)
  return {
      "path": path,
      "bytes": len(flatbuffer),
      "gzip_bytes": len(gzip.compress(flatbuffer, compresslevel=9)),
      "sha256": hashlib.sha256(flatbuffer).hexdigest(),
      "variant": variant,
      "quantization": quantization,
      "sparse_encoding": sparse_tensors(flatbuffer),
  }
