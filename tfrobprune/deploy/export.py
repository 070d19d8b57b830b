"""Export: a TF Serving SavedModel and LiteRT (TFLite) flatbuffers, each proved by loading it and re-measuring it.

Nothing here is assumed to work because a converter returned: every artifact is loaded in the runtime a user
would use (the SavedModel by `tf.saved_model.load` in a fresh Python process, each flatbuffer by LiteRT's
`Interpreter`) and re-evaluated on the same test and adversarial examples as the Keras model.

Layout written by `export_all(model, output_dir, ...)`
------------------------------------------------------
    output_dir/export/
      saved_model/<model_name>/<version>/   TF Serving layout; versions are integers 1, 2, ...
      tflite/<variant>.tflite              one flatbuffer per variant (`TFLITE_VARIANTS`; dense_float32, pqat_int8)
      manifest.json                        sizes raw and gzipped, sha256, sparsity, quantization, source run,
                                           the runtime setting each artifact needed, and the re-measured accuracy

The serving signature
---------------------
`serving_default`, the only signature of the SavedModel:

    inputs   'images'         float32 [None, H, W, C]   raw pixels in [0, 1] (the model standardises them itself)
    outputs  'logits'         float32 [None, K]
             'probabilities'  float32 [None, K]         softmax of the logits
             'classes'        int64   [None]            argmax of the logits

The function checks its input before running the model: every value finite and within [0, 1]. A violation fails
with `InvalidArgumentError` (HTTP 400 from TF Serving's REST API) instead of a silent, meaningless prediction.
The SavedModel holds this function and the weights only, not a Keras model: it loads without tfrobprune (the
`Standardize` layer is traced into the graph as `(x - mean) / std`). `saved_model_cli show --dir DIR --all` lists
the signature.

Serving it with TF Serving (version directories are picked up as they appear; `.tmp-*` directories are not
versions, so a half-written export is never served):

    tensorflow_model_server --model_base_path=EXPORT_DIR/<model_name> --model_name=<model_name> \\
        --rest_api_port=8501
    curl -d '{"signature_name": "serving_default", "inputs": {"images": [[[[0.0], ...]]]}}' \\
        http://localhost:8501/v1/models/<model_name>:predict

where EXPORT_DIR is output_dir/export/saved_model (an absolute path).

TFLite variants
---------------
All take float32 images in [0, 1] and return float32 logits (no softmax/argmax, no input checks: those live in
the SavedModel's signature). The int8 variants quantize inside the graph and keep float32 input and output, so
every variant is called and compared the same way; `run_tflite` still handles int8/uint8 input and output tensors
(scale and zero point) for flatbuffers converted elsewhere.

    float32         plain conversion; zeros stored densely
    float32_sparse  Optimize.EXPERIMENTAL_SPARSITY: sparse (CSR-like) weight tensors expanded by DENSIFY ops at load
    int8_dynamic    Optimize.DEFAULT without data: int8 weights, float activations (dynamic range)
    int8_full       full integer: int8 weights and activations, calibrated on `representative_images`
    int8_sparse     int8_full + EXPERIMENTAL_SPARSITY: the smallest; >= 10x smaller than the dense float model at
                    90% sparsity (cnn_small 28x28x1, Fashion-MNIST reference: 668,864 -> 60,568 bytes, 11.0x)
    int8_float_logits  int8_full with the last layer (the logits) left in float32: its int8 output has 256 levels
                    (0.08 apart for the Fashion-MNIST reference), so two classes tie on ~2% of adversarial inputs,
                    which sit on the decision boundary; a float last layer (0.6% of cnn_small's weights, 3 KB more)
                    removes the ties and follows the Keras model's decisions. Not for integer-only accelerators.
    pqat_int8       optional (`export_pqat`, `export_all(pqat_data=...)`): pruning-preserving quantization-aware
                    fine-tuning (tfmot Default8BitPrunePreserveQuantizeScheme), then int8 + EXPERIMENTAL_SPARSITY

LiteRT's default XNNPACK delegate cannot prepare the sparse int8 FULLY_CONNECTED kernel ('failed to delegate
FULLY_CONNECTED node ... failed to prepare'); `run_tflite` then falls back to the builtin kernels without default
delegates and reports which setting ran ('xnnpack' or 'builtin_no_delegates'). `tflite_bench` times them.
"""

import datetime
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

from tfrobprune.keras_compat import keras, require_keras2_model, tf
from tfrobprune import report as report_lib

# After keras_compat, which makes tfmot bind to Keras 2.
import tensorflow_model_optimization as tfmot  # noqa: E402

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities", "classes")

TFLITE_VARIANTS = ("float32", "float32_sparse", "int8_dynamic", "int8_full", "int8_sparse",
                   "int8_float_logits")
DENSE_BASELINE = "dense_float32"
PQAT_VARIANT = "pqat_int8"
SAVED_MODEL = "saved_model"

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

RUNTIME_XNNPACK = "xnnpack"
RUNTIME_BUILTIN = "builtin_no_delegates"

# Calibration images for full-integer quantization; more adds conversion time, not accuracy, on small models.
_REPRESENTATIVE_EXAMPLES = 200
_BATCH = 128
_SUBPROCESS_TIMEOUT_S = 900


def _read_umask():
  umask = os.umask(0o022)  # read by setting; restored at once (import time, before any threads of ours)
  os.umask(umask)
  return umask


_UMASK = _read_umask()


# ----------------------------------------------------------------------------------------------------------------
# Checks.


def _check_exportable(model):
  """Raises unless `model` is a built Keras 2 model without pruning wrappers; returns its (H, W, C) input shape."""
  require_keras2_model(model)
  for layer in model.layers:
    if type(layer).__name__ == "PruneLowMagnitude":
      raise ValueError(f"Model {model.name!r} still has the pruning wrapper {layer.name!r}; export the stripped "
                       "model (`pruning.strip(model)`), whose kernels hold the sparse weights.")
  shape = tuple(model.input_shape[1:])
  if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
    raise ValueError(f"Model {model.name!r} must take images of a fixed shape [None, H, W, C]; its input shape is "
                     f"{model.input_shape}.")
  return shape


def _check_images(name, images, shape):
  images = np.asarray(images)
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
    raise ValueError(f"{name} must have shape [N, {', '.join(map(str, shape))}], got {list(images.shape)}.")
  if images.size and not (np.all(np.isfinite(images)) and images.min() >= 0 and images.max() <= 1):
    raise ValueError(f"{name} must hold finite pixels in [0, 1] (the model's input scale).")
  return images.astype(np.float32)


def _check_labels(name, labels, count):
  labels = np.asarray(labels)
  if labels.shape != (count,):
    raise ValueError(f"{name} must have shape [{count}] (one class index per image), got {list(labels.shape)}.")
  return labels.astype(np.int64)


def _check_model_name(model_name):
  if not model_name or os.sep in model_name or model_name.startswith(".") or model_name != model_name.strip():
    raise ValueError(f"model_name must be a plain directory name (no '{os.sep}', not starting with '.'), got "
                     f"{model_name!r}.")


# ----------------------------------------------------------------------------------------------------------------
# Files.


def _sha256(path):
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _files(directory):
  """Relative paths of every file under `directory`, sorted."""
  found = []
  for root, _, names in os.walk(directory):
    found += [os.path.relpath(os.path.join(root, name), directory) for name in names]
  return sorted(found)


def directory_sizes(directory):
  """(total bytes, bytes of a gzipped tar) of every file under `directory` (what shipping the directory costs)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as archive:
    for name in _files(directory):
      archive.add(os.path.join(directory, name), arcname=name, recursive=False)
  return sum(os.path.getsize(os.path.join(directory, name)) for name in _files(directory)), buffer.tell()


# ----------------------------------------------------------------------------------------------------------------
# SavedModel.


def serving_function(model):
  """The `serving_default` function of `model`: checked [0, 1] images -> logits, probabilities, classes."""
  shape = _check_exportable(model)

  @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32, name=INPUT_NAME)])
  def serve(images):
    checks = [
        tf.debugging.assert_all_finite(images, "images must be finite (no NaN or Inf)."),
        tf.debugging.assert_greater_equal(images, 0.0, message="images must be pixels in [0, 1]: found a value < 0."),
        tf.debugging.assert_less_equal(images, 1.0, message="images must be pixels in [0, 1]: found a value > 1."),
    ]
    with tf.control_dependencies(checks):
      logits = tf.cast(model(tf.identity(images), training=False), tf.float32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1)}

  return serve


def _serving_module(model):
  """A tf.Module holding the serving function and the model's variables, but not the Keras model itself."""
  module = tf.Module()
  module.model_variables = list(model.variables)
  module.serve = serving_function(model)
  return module


def _model_dir_versions(model_dir):
  if not os.path.isdir(model_dir):
    return []
  return sorted(int(name) for name in os.listdir(model_dir) if name.isascii() and name.isdigit())


def _check_version(version):
  if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
    raise ValueError(f"version must be an integer >= 1 (TF Serving's version directories), got {version!r}.")
  return int(version)


def export_saved_model(model, base_dir, model_name, version=None):
  """Writes `model` as a SavedModel with the `serving_default` signature, in TF Serving's layout.

  The SavedModel is written into a hidden temporary directory beside the version directory
  (base_dir/<model_name>/.tmp-<version>-<random>, which TF Serving ignores because its name is not an integer) and
  renamed into place when complete, so a server watching base_dir/<model_name> never sees a half-written version.
  If writing fails or is interrupted, the temporary directory is removed and no version appears.

  Args:
    model: a built, stripped Keras 2 model from [0, 1] images [None, H, W, C] to logits.
    base_dir: the directory holding one subdirectory per model name.
    model_name: the model's directory name (TF Serving's --model_name).
    version: the integer version (>= 1) to write; by default one more than the largest existing version (1 for
      the first).

  Returns:
    The path of the new version directory, base_dir/<model_name>/<version>.

  Raises:
    ValueError: for a bad model, name or version, or if that version already exists (versions are never
      overwritten: a served version must not change under a running server).
  """
  _check_exportable(model)
  _check_model_name(model_name)
  model_dir = os.path.join(base_dir, model_name)
  if version is None:
    version = max(_model_dir_versions(model_dir), default=0) + 1
  version = _check_version(version)
  final = os.path.join(model_dir, str(version))
  if os.path.exists(final):
    raise ValueError(f"Version {version} of model {model_name!r} already exists at {final}; exported versions are "
                     "never overwritten. Pass another version, or omit it for the next free one.")
  os.makedirs(model_dir, exist_ok=True)
  # Not tempfile.mkdtemp: its 0700 mode would survive the rename and hide the version from a server running as
  # another user; os.mkdir applies the umask like any other directory.
  tmp = os.path.join(model_dir, f".tmp-{version}-{secrets.token_hex(4)}")
  os.mkdir(tmp)
  try:
    module = _serving_module(model)
    tf.saved_model.save(module, tmp, signatures={SIGNATURE_KEY: module.serve})
    _rename_version(tmp, final, model_name, version)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


def _rename_version(tmp, final, model_name, version):
  """Moves the complete export into place; a version that appeared meanwhile (another exporter) is not replaced."""
  if os.path.exists(final):
    raise ValueError(f"Version {version} of model {model_name!r} appeared at {final} while exporting; not "
                     "overwriting it.")
  try:
    os.rename(tmp, final)
  except OSError as error:
    raise ValueError(f"Could not move the export of version {version} of model {model_name!r} into {final}: "
                     f"{error.strerror}.") from error


def _describe_signature(function):
  """{'inputs': {name: [dtype, shape]}, 'outputs': {...}} of a concrete (signature) function."""
  _, inputs = function.structured_input_signature
  return {
      "inputs": {name: [spec.dtype.name, spec.shape.as_list()] for name, spec in sorted(inputs.items())},
      "outputs": {name: [spec.dtype.name, spec.shape.as_list()]
                  for name, spec in sorted(function.structured_outputs.items())},
  }


def _serve_in_batches(signature, images):
  outputs = [signature(**{INPUT_NAME: tf.constant(images[start:start + _BATCH])})
             for start in range(0, len(images), _BATCH)]
  if not outputs:
    return np.zeros((0,), np.int64), np.zeros((0, signature.structured_outputs["logits"].shape[-1]), np.float32)
  return (np.concatenate([out["classes"].numpy() for out in outputs]),
          np.concatenate([out["logits"].numpy() for out in outputs]))


def _verify_main(argv):
  """The fresh process of `verify_saved_model_in_subprocess`: load, call the signature, write the predictions."""
  export_path, arrays_path, result_path = argv
  with np.load(arrays_path, allow_pickle=False) as arrays:
    images, adversarial = arrays["images"], arrays["adversarial"]
  signature = tf.saved_model.load(export_path).signatures[SIGNATURE_KEY]
  classes, logits = _serve_in_batches(signature, images)
  adversarial_classes, adversarial_logits = _serve_in_batches(signature, adversarial)
  info = {
      "signature": _describe_signature(signature),
      "tensorflow": tf.__version__,
      # The Standardize layer's class lives in tfrobprune.models: not importing it shows the export is standalone.
      "loaded_without_tfrobprune_models": "tfrobprune.models" not in sys.modules,
  }
  np.savez(result_path, classes=classes, logits=logits, adversarial_classes=adversarial_classes,
           adversarial_logits=adversarial_logits, info=np.array(json.dumps(info)))
  return 0


def _package_root():
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def verify_saved_model_in_subprocess(export_path, images, labels, adversarial=None):
  """Loads the SavedModel in a fresh Python process and measures it through its `serving_default` signature.

  The child process runs `sys.executable` with this package's root prepended to PYTHONPATH, imports only
  `tfrobprune.deploy.export` (not `tfrobprune.models`, where the `Standardize` class lives), loads the export with
  `tf.saved_model.load` and calls the signature. Arrays travel through temporary .npz files (read with
  `allow_pickle=False`).

  Args:
    export_path: a version directory written by `export_saved_model`.
    images: float32 [N, H, W, C] test images in [0, 1].
    labels: int64 [N] labels.
    adversarial: float32 [M, H, W, C] adversarial images for the same labels (M == N), or None.

  Returns:
    A dict with 'benign_acc', 'pgd_acc' (accuracy on `adversarial`, None without it), 'predictions' and
    'adversarial_predictions' (int64 classes from the signature), 'logits' and 'adversarial_logits', 'signature'
    (input and output dtypes and shapes), 'tensorflow' (the version that loaded it),
    'loaded_without_tfrobprune_models' and 'runtime'.

  Raises:
    RuntimeError: if the child process fails (its stderr is in the message).
  """
  images = np.asarray(images, np.float32)
  labels = _check_labels("labels", labels, len(images))
  adversarial = np.zeros((0,) + images.shape[1:], np.float32) if adversarial is None else np.asarray(
      adversarial, np.float32)
  if len(adversarial) not in (0, len(images)):
    raise ValueError(f"adversarial must have one image per label ({len(images)}), got {len(adversarial)}.")
  with tempfile.TemporaryDirectory(prefix="tfrobprune-verify-") as work:
    arrays_path, result_path = os.path.join(work, "arrays.npz"), os.path.join(work, "result.npz")
    np.savez(arrays_path, images=images, adversarial=adversarial)
    _run_child(["import sys; from tfrobprune.deploy import export; sys.exit(export._verify_main(sys.argv[1:]))",
                os.path.abspath(export_path), arrays_path, result_path], export_path)
    with np.load(result_path, allow_pickle=False) as result:
      arrays = {key: result[key] for key in ("classes", "logits", "adversarial_classes", "adversarial_logits")}
      info = json.loads(str(result["info"]))
  return {
      "benign_acc": _accuracy(arrays["classes"], labels),
      "pgd_acc": _accuracy(arrays["adversarial_classes"], labels) if len(adversarial) else None,
      "predictions": arrays["classes"],
      "adversarial_predictions": arrays["adversarial_classes"],
      "logits": arrays["logits"],
      "adversarial_logits": arrays["adversarial_logits"],
      "runtime": f"tf.saved_model.load in a fresh process (TensorFlow {info['tensorflow']})",
      **info,
  }


def _run_child(args, export_path):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
  try:
    done = subprocess.run([sys.executable, "-c", *args], env=env, capture_output=True, text=True,
                          timeout=_SUBPROCESS_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as error:
    raise RuntimeError(f"Verifying the SavedModel {export_path} took over {_SUBPROCESS_TIMEOUT_S} s.") from error
  if done.returncode:
    raise RuntimeError(f"Loading the SavedModel {export_path} in a fresh process failed (exit {done.returncode}):\n"
                       f"{done.stderr[-4000:]}")


def _accuracy(predictions, labels):
  return float(np.mean(np.asarray(predictions) == np.asarray(labels))) if len(labels) else None


# ----------------------------------------------------------------------------------------------------------------
# TFLite.


def _representative_dataset(images):
  """Up to `_REPRESENTATIVE_EXAMPLES` images spread over the whole set (training sets may be ordered by class)."""
  chosen = images[np.linspace(0, len(images) - 1, min(len(images), _REPRESENTATIVE_EXAMPLES)).astype(int)]

  def generate():
    for image in chosen:
      yield [image[None]]

  return generate


def convert_tflite(model, variant, representative_images=None):
  """Converts `model` to a TFLite flatbuffer of one of `TFLITE_VARIANTS`; returns the bytes.

  Raises:
    ValueError: for an unknown variant, or a calibrated int8 variant without representative images.
  """
  if variant not in _VARIANTS:
    raise ValueError(f"Unknown TFLite variant {variant!r}; choose one of {', '.join(TFLITE_VARIANTS)}.")
  shape = _check_exportable(model)
  optimizations, needs_data, _ = _VARIANTS[variant]
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  converter.optimizations = [getattr(tf.lite.Optimize, name) for name in optimizations]
  if needs_data:
    if representative_images is None or not len(representative_images):
      raise ValueError(f"TFLite variant {variant!r} quantizes activations and needs representative_images (training "
                       "images in [0, 1]) to calibrate their ranges.")
    images = _check_images("representative_images", representative_images, shape)
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


def _write_artifact(path, content):
  """Writes `content` atomically, readable like any file the user creates (the temporary file is 0600)."""
  report_lib.atomic_write(path, content, mode="wb" if isinstance(content, bytes) else "w")
  os.chmod(path, 0o666 & ~_UMASK)


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
  return _write_flatbuffer(path, flatbuffer, variant, _VARIANTS[variant][2])


def _write_flatbuffer(path, flatbuffer, variant, quantization):
  """Writes a TFLite flatbuffer atomically; returns its record (sizes raw and gzipped, checksum, encoding)."""
  _write_artifact(path, flatbuffer)
  return {
      "path": path,
      "bytes": len(flatbuffer),
      "gzip_bytes": len(gzip.compress(flatbuffer, compresslevel=9)),
      "sha256": hashlib.sha256(flatbuffer).hexdigest(),
      "variant": variant,
      "quantization": quantization,
      "sparse_encoding": sparse_tensors(flatbuffer),
  }


class TFLiteRunner:
  """A LiteRT interpreter for one flatbuffer, batch size fixed, with the XNNPACK -> builtin-kernels fallback.

  Attributes:
    runtime: 'xnnpack' (LiteRT's default, XNNPACK delegate) or 'builtin_no_delegates'
      (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`), whichever prepared and ran.
    xnnpack_error: why XNNPACK was not used (None if it was).
    batch: images per `invoke`.
  """

  def __init__(self, path, num_threads=1, batch=1):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top

    self.batch = batch
    self.xnnpack_error = None
    try:
      self._open(litert.Interpreter(model_path=path, num_threads=num_threads))
      self.runtime = RUNTIME_XNNPACK
    except (RuntimeError, ValueError) as error:
      self.xnnpack_error = " ".join(str(error).split())
      self._open(litert.Interpreter(
          model_path=path, num_threads=num_threads,
          experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
      self.runtime = RUNTIME_BUILTIN

  def _open(self, interpreter):
    """Sizes the input to `batch`, allocates (delegates prepare here) and runs once on zeros."""
    (self._input,), (self._output,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(self._input["index"], [self.batch, *self._input["shape"][1:]])
    interpreter.allocate_tensors()
    self._input = interpreter.get_input_details()[0]
    self.interpreter = interpreter
    self.set_input(np.zeros(self._input["shape"], np.float32))
    interpreter.invoke()

  def set_input(self, images):
    """Sets a float [batch, H, W, C] input, quantizing it if the input tensor is int8/uint8."""
    dtype = self._input["dtype"]
    if np.issubdtype(dtype, np.integer):
      scale, zero_point = self._input["quantization"]
      info = np.iinfo(dtype)
      images = np.clip(np.round(images / scale + zero_point), info.min, info.max)
    self.interpreter.set_tensor(self._input["index"], np.asarray(images, dtype))

  def output(self):
    """The float logits of the last invoke (dequantized if the output tensor is int8/uint8)."""
    values = self.interpreter.get_tensor(self._output["index"])
    if np.issubdtype(self._output["dtype"], np.integer):
      scale, zero_point = self._output["quantization"]
      return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)

  def predict(self, images):
    """Logits for any number of images, `batch` at a time (the last batch zero-padded)."""
    images = np.asarray(images, np.float32)
    logits = []
    for start in range(0, len(images), self.batch):
      chunk = images[start:start + self.batch]
      padded = np.concatenate([chunk, np.zeros((self.batch - len(chunk),) + chunk.shape[1:], np.float32)])
      self.set_input(padded)
      self.interpreter.invoke()
      logits.append(self.output()[:len(chunk)])
    if not logits:
      return np.zeros((0, self._output["shape"][-1]), np.float32)
    return np.concatenate(logits)


def run_tflite(path, images, num_threads=1):
  """Runs a TFLite flatbuffer with LiteRT on `images`.

  LiteRT's default (XNNPACK delegate) is tried first; if the flatbuffer fails to prepare or run under it (sparse
  int8 FULLY_CONNECTED does), the builtin kernels without default delegates run it instead.

  Args:
    path: a .tflite file.
    images: float32 [N, H, W, C] in [0, 1].
    num_threads: LiteRT's CPU threads.

  Returns:
    (float32 logits [N, K], runtime setting 'xnnpack' or 'builtin_no_delegates').
  """
  images = np.asarray(images, np.float32)
  runner = TFLiteRunner(path, num_threads, batch=max(1, min(_BATCH, len(images))))
  return runner.predict(images), runner.runtime


# ----------------------------------------------------------------------------------------------------------------
# Pruning-preserving quantization-aware training (PQAT).


class _OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
  """Quantizes only a layer's output: for `Standardize`, whose output feeds the first quantized convolution.

  tfmot's default registry has no entry for custom layers and refuses to quantize the input of an annotated layer
  whose producer it does not know.
  """

  def get_weights_and_quantizers(self, layer):
    return []

  def get_activations_and_quantizers(self, layer):
    return []

  def set_quantize_weights(self, layer, quantize_weights):
    pass

  def set_quantize_activations(self, layer, quantize_activations):
    pass

  def get_output_quantizers(self, layer):
    return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                                        narrow_range=False)]

  def get_config(self):
    return {}


def _is_plain_relu(layer):
  config = layer.get_config()
  return (isinstance(layer, keras.layers.ReLU) and config.get("max_value") is None and
          not config.get("negative_slope") and not config.get("threshold"))


def _fused_layer_configs(model):
  """(class, config, weights) per layer, with each Conv2D/Dense -> ReLU pair fused into activation='relu'.

  tfmot 0.8.1's `LayerReLUQuantize` transform gives a Conv2D or Dense followed by a separate ReLU layer a
  NoOpQuantizeConfig: its kernel would get no fake quantization and no pruning-preserving mask, so PQAT would
  silently train the pruned zeros back. With the ReLU inside the layer, the default Conv/Dense configs apply.
  """
  if not isinstance(model, keras.Sequential):
    raise ValueError(f"export_pqat needs a Sequential model (the zoo's mlp, cnn_small, cnn_medium, dm_large); "
                     f"{model.name!r} is a {type(model).__name__}.")
  fused, layers = [], list(model.layers)
  for index, layer in enumerate(layers):
    if fused and fused[-1][0] == "skip":
      fused.pop()
      continue
    config = layer.get_config()
    following = layers[index + 1] if index + 1 < len(layers) else None
    if (isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and config.get("activation") == "linear" and
        following is not None and _is_plain_relu(following)):
      fused.append((type(layer), dict(config, activation="relu"), layer.get_weights()))
      fused.append(("skip", None, None))
    else:
      fused.append((type(layer), config, layer.get_weights()))
  return [entry for entry in fused if entry[0] != "skip"]


def _annotated_copy(model):
  """A copy of `model` with ReLUs fused and every layer annotated for quantization (weights copied)."""
  shape = _check_exportable(model)
  annotate = tfmot.quantization.keras.quantize_annotate_layer
  layers, weights = [], []
  for layer_class, config, layer_weights in _fused_layer_configs(model):
    layer = layer_class.from_config(config)
    custom = not layer_class.__module__.startswith(("tf_keras", "keras"))
    layers.append(annotate(layer, quantize_config=_OutputQuantizeConfig() if custom else None))
    weights.append((layer, layer_weights))
  annotated = keras.Sequential([keras.Input(shape=shape, name="images")] + layers, name=f"{model.name}_pqat")
  for layer, layer_weights in weights:
    layer.set_weights(layer_weights)
  return annotated


def _zero_masks(model):
  """{layer name: kernel == 0} of every kernel variable ('<layer>/kernel:0', also inside quantization wrappers)."""
  return {weight.name[:-len("/kernel:0")]: weight.numpy() == 0
          for weight in model.weights if weight.name.endswith("/kernel:0")}


def pqat_model(model, x, y, epochs=1, batch_size=64, learning_rate=1e-4):
  """Pruning-preserving quantization-aware fine-tuning (tfmot's Default8BitPrunePreserveQuantizeScheme).

  Fake-quantizes weights and activations to int8 while a mask keeps every pruned weight at zero, and fine-tunes
  with a plain Keras `fit` on the natural cross-entropy (not adversarially: this recovers quantization error, it
  does not re-train robustness; check pgd_acc on the exported model).

  Args:
    model: a stripped, pruned Sequential Keras 2 model from [0, 1] images to logits.
    x: float32 training images in [0, 1].
    y: int64 labels.
    epochs: fine-tuning epochs.
    batch_size: fine-tuning batch size.
    learning_rate: Adam's learning rate (small: the model is already trained).

  Returns:
    (the quantization-aware Keras model, {kernel name: fraction of its zeros kept zero}).
  """
  annotated = _annotated_copy(model)
  with tfmot.quantization.keras.quantize_scope({"_OutputQuantizeConfig": _OutputQuantizeConfig}):
    quantized = tfmot.quantization.keras.quantize_apply(
        annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
  before = _zero_masks(model)
  quantized.compile(keras.optimizers.Adam(learning_rate),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  quantized.fit(np.asarray(x, np.float32), np.asarray(y, np.int64), epochs=epochs, batch_size=batch_size, verbose=0)
  after = _zero_masks(quantized)
  kept = {name: float(np.mean(after[name][zeros])) if zeros.any() else 1.0
          for name, zeros in before.items() if name in after}
  return quantized, kept


def export_pqat(model, x, y, path, epochs=1):
  """Fine-tunes `model` with pruning-preserving QAT (`pqat_model`) and writes it as the 'pqat_int8' TFLite variant.

  The flatbuffer is int8 (weights and activations, ranges learned during QAT; float32 input and output) and
  sparse-encoded (EXPERIMENTAL_SPARSITY), like 'int8_sparse' but trained for quantization instead of calibrated.

  Args:
    model: a stripped, pruned Sequential Keras 2 model.
    x: float32 training images in [0, 1].
    y: int64 labels.
    path: the .tflite file to write (atomically).
    epochs: fine-tuning epochs.

  Returns:
    The `export_tflite` fields ('path', 'bytes', 'gzip_bytes', 'sha256', 'variant' 'pqat_int8', 'quantization',
    'sparse_encoding') plus 'zeros_kept' ({kernel: fraction of pruned weights still zero after fine-tuning}) and
    'model' (the quantization-aware Keras model, for comparison; not JSON).

  Raises:
    ValueError: for a model that is not Sequential, still wrapped, or has no fixed input shape.
  """
  quantized, kept = pqat_model(model, x, y, epochs)
  converter = tf.lite.TFLiteConverter.from_keras_model(quantized)
  converter.optimizations = [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
  record = _write_flatbuffer(
      path, converter.convert(), PQAT_VARIANT,
      "quantization-aware int8 weights and activations (pruning-preserving), float32 input/output")
  return dict(record, zeros_kept=kept, model=quantized)


# ----------------------------------------------------------------------------------------------------------------
# Everything, verified.


def _keras_logits(model, images):
  return np.concatenate([model(images[start:start + _BATCH], training=False).numpy()
                         for start in range(0, len(images), _BATCH)] or [np.zeros((0, model.output_shape[-1]))])


def _tied_top(logits):
  """[N, K] booleans: which classes share the top logit of each row (several only where the logits tie)."""
  logits = np.asarray(logits)
  return logits == logits.max(axis=1, keepdims=True)


def tie_aware_accuracy(logits, targets):
  """The fraction of rows whose top logit names `targets`, a row tied between k classes counting 1/k if one is it.

  int8 artifacts output logits on a grid (an 8-bit output, 0.08 apart for the Fashion-MNIST reference), so two
  classes can tie exactly, mostly on adversarial inputs, which sit on the decision boundary. `np.argmax` would settle
  every tie for the lower class index, which favours some labels over others (on Fashion-MNIST, T-shirt 0 over
  shirt 6): splitting the credit is the expectation of a fair tie-break. Float outputs practically never tie, so
  for them this is ordinary accuracy.
  """
  if not len(targets):
    return None
  tied = _tied_top(logits)
  return float(np.mean(tied[np.arange(len(tied)), np.asarray(targets)] / tied.sum(axis=1)))


def _tie_fraction(logits):
  return float(np.mean(_tied_top(logits).sum(axis=1) > 1)) if len(logits) else 0.0


def _figures(logits, adversarial_logits, reference, data):
  """Accuracies and agreement of an artifact's outputs with its Keras model on the same examples (ties split)."""
  return {
      "benign_acc": tie_aware_accuracy(logits, data["y_test"]),
      "pgd_acc": tie_aware_accuracy(adversarial_logits, data["y_test"]),
      "agreement": tie_aware_accuracy(logits, reference["predictions"]),
      "adversarial_agreement": tie_aware_accuracy(adversarial_logits, reference["adversarial_predictions"]),
      "benign_ties": _tie_fraction(logits),
      "pgd_ties": _tie_fraction(adversarial_logits),
      "max_abs_logit_diff": float(np.max(np.abs(logits - reference["logits"]))) if len(logits) else 0.0,
  }


def _reference(model, data, predictions=None):
  logits = _keras_logits(model, data["x_test"])
  return {
      "logits": logits,
      "predictions": np.argmax(logits, axis=1) if predictions is None else predictions,
      "adversarial_predictions": np.argmax(_keras_logits(model, data["x_adv"]), axis=1),
  }


def _verified_tflite(info, data, reference):
  """(report figures, manifest details) of a written flatbuffer, re-measured with LiteRT on one thread."""
  path = info["path"]
  runner = TFLiteRunner(path, num_threads=1, batch=max(1, min(_BATCH, len(data["x_test"]))))
  figures = _figures(runner.predict(data["x_test"]), runner.predict(data["x_adv"]), reference, data)
  details = {"path": os.path.relpath(path, os.path.dirname(os.path.dirname(path))), "sha256": info["sha256"],
             "quantization": info["quantization"], "sparse_encoding": info["sparse_encoding"],
             "xnnpack_error": runner.xnnpack_error}
  if "zeros_kept" in info:
    details["zeros_kept"] = info["zeros_kept"]
  return {"bytes": info["bytes"], "gzip_bytes": info["gzip_bytes"], **figures, "runtime": runner.runtime}, details


def _saved_model_artifact(model, base_dir, model_name, data, reference):
  path = export_saved_model(model, base_dir, model_name)
  verified = verify_saved_model_in_subprocess(path, data["x_test"], data["y_test"], data["x_adv"])
  figures = _figures(verified["logits"], verified["adversarial_logits"], reference, data)
  size, gzip_size = directory_sizes(path)
  export_dir = os.path.dirname(base_dir)
  return {"bytes": size, "gzip_bytes": gzip_size, **figures, "runtime": verified["runtime"]}, {
      "path": os.path.relpath(path, export_dir), "version": int(os.path.basename(path)),
      "sha256": _sha256(os.path.join(path, "saved_model.pb")),
      "files": {name: _sha256(os.path.join(path, name)) for name in _files(path)},
      "quantization": "none (float32)", "signature": verified["signature"],
      "loaded_without_tfrobprune_models": verified["loaded_without_tfrobprune_models"],
  }


def _check_variants(variants):
  variants = tuple(variants)
  unknown = [v for v in variants if v not in _VARIANTS]
  if unknown:
    raise ValueError(f"Unknown TFLite variants {unknown}; choose from {', '.join(TFLITE_VARIANTS)}.")
  return variants


def _litert_version():
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version("ai-edge-litert")
  except Exception:  # pylint: disable=broad-except
    return None


def export_all(model, output_dir, *, model_name, x_test, y_test, x_adv, keras_predictions, representative_images,
               source_run, sparsity, variants=TFLITE_VARIANTS, dense_model=None, pqat_data=None, pqat_epochs=1):
  """Exports the SavedModel and every TFLite variant, loads each back, re-measures it and writes the manifest.

  Every artifact is evaluated on the examples the Keras model was evaluated on: benign accuracy on
  (x_test, y_test) and PGD accuracy on x_adv, the adversarial examples found against the Keras model (so an
  artifact's pgd_acc is that of those fixed examples, which is what the Keras pgd_acc also counts). The SavedModel
  is loaded in a fresh process; each flatbuffer with LiteRT (`TFLiteRunner`, one thread).

  Args:
    model: the stripped, pruned Keras 2 model.
    output_dir: the run directory; artifacts go to output_dir/export (see the module docstring).
    model_name: TF Serving's model name (the SavedModel's directory name).
    x_test: float32 [N, H, W, C] test images in [0, 1].
    y_test: int64 [N] labels.
    x_adv: float32 [N, H, W, C] adversarial versions of x_test (same labels).
    keras_predictions: int64 [N] the Keras model's classes on x_test ('agreement' compares with these).
    representative_images: training images in [0, 1] to calibrate the int8 variants with quantized activations.
    source_run: JSON-compatible facts about the run that produced the model (config, sparsity report, ...), copied
      into the manifest.
    sparsity: the model's sparsity (fraction of zero kernel weights), copied into the manifest.
    variants: the TFLite variants to write (`TFLITE_VARIANTS` by default).
    dense_model: the dense (unpruned) Keras model, if available: exported as 'dense_float32' so the other sizes
      have a baseline. Its agreement and logit difference are against the dense Keras model itself; its pgd_acc is
      on x_adv, i.e. on examples found against the pruned model (a transfer attack).
    pqat_data: (training images, labels), if given: also fine-tune with pruning-preserving QAT (`export_pqat`)
      and export the result as 'pqat_int8'; its agreement is against the model before QAT.
    pqat_epochs: QAT fine-tuning epochs.

  Returns:
    {artifact name: figures} for report['artifacts'], artifacts 'saved_model', each variant, 'pqat_int8' and
    'dense_float32' (the last two when asked for);
    figures are 'bytes', 'gzip_bytes', 'benign_acc', 'pgd_acc', 'agreement' (fraction of x_test predictions equal
    to keras_predictions), 'adversarial_agreement' (the same on x_adv), all four with tied top logits splitting
    the credit (`tie_aware_accuracy`), 'benign_ties' and 'pgd_ties' (fractions of x_test and x_adv whose top logit
    is shared by several classes), 'max_abs_logit_diff' (vs the Keras logits on x_test), 'runtime' and, with a
    dense baseline, 'size_ratio_vs_dense_float' (dense float32 TFLite bytes / the artifact's bytes: 10 means ten
    times smaller).

  Raises:
    ValueError: for inconsistent inputs, an unknown variant, or a wrapped model.
    RuntimeError: if the SavedModel fails to load in the fresh process.
  """
  shape = _check_exportable(model)
  variants = _check_variants(variants)
  data = {"x_test": _check_images("x_test", x_test, shape)}
  data["y_test"] = _check_labels("y_test", y_test, len(data["x_test"]))
  data["x_adv"] = _check_images("x_adv", x_adv, shape)
  if len(data["x_adv"]) != len(data["x_test"]):
    raise ValueError(f"x_adv must hold one adversarial image per test image ({len(data['x_test'])}), got "
                     f"{len(data['x_adv'])}.")
  reference = _reference(model, data, _check_labels("keras_predictions", keras_predictions, len(data["x_test"])))
  export_dir = os.path.join(output_dir, "export")
  tflite_dir = os.path.join(export_dir, "tflite")
  os.makedirs(tflite_dir, exist_ok=True)

  artifacts, details = {}, {}
  artifacts[SAVED_MODEL], details[SAVED_MODEL] = _saved_model_artifact(
      model, os.path.join(export_dir, "saved_model"), model_name, data, reference)
  for variant in variants:
    info = export_tflite(model, os.path.join(tflite_dir, f"{variant}.tflite"), variant, representative_images)
    artifacts[variant], details[variant] = _verified_tflite(info, data, reference)
  if pqat_data is not None:
    x_train, y_train = pqat_data
    info = export_pqat(model, x_train, y_train, os.path.join(tflite_dir, f"{PQAT_VARIANT}.tflite"), pqat_epochs)
    artifacts[PQAT_VARIANT], details[PQAT_VARIANT] = _verified_tflite(info, data, reference)
  if dense_model is not None:
    if _check_exportable(dense_model) != shape:
      raise ValueError(f"dense_model takes images of shape {dense_model.input_shape}, the model {model.input_shape}.")
    info = export_tflite(dense_model, os.path.join(tflite_dir, f"{DENSE_BASELINE}.tflite"), "float32")
    artifacts[DENSE_BASELINE], details[DENSE_BASELINE] = _verified_tflite(info, data, _reference(dense_model, data))
    for figures in artifacts.values():
      figures["size_ratio_vs_dense_float"] = artifacts[DENSE_BASELINE]["bytes"] / figures["bytes"]

  _write_manifest(export_dir, model_name, artifacts, details, data, reference, source_run, sparsity)
  return artifacts


def _write_manifest(export_dir, model_name, artifacts, details, data, reference, source_run, sparsity):
  manifest = {
      "model_name": model_name,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "sparsity": sparsity,
      "source_run": source_run,
      "tensorflow": tf.__version__,
      "litert": _litert_version(),
      "examples": {"benign": len(data["x_test"]), "adversarial": len(data["x_adv"])},
      "keras": {"benign_acc": _accuracy(reference["predictions"], data["y_test"]),
                "pgd_acc": _accuracy(reference["adversarial_predictions"], data["y_test"])},
      "artifacts": {name: {**details[name], **artifacts[name]} for name in artifacts},
  }
  _write_artifact(os.path.join(export_dir, "manifest.json"), json.dumps(manifest, indent=2, default=_json))


def _json(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serializable")
