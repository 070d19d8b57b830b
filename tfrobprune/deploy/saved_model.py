"""The TF Serving SavedModel: a checked `serving_default` signature over the model's weights, in TF Serving's layout.

`export_saved_model(model, base_dir, model_name)` writes base_dir/<model_name>/<version>/, versions being integers
1, 2, ...; each is written into a hidden temporary directory and renamed into place when complete.

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

where EXPORT_DIR is base_dir as an absolute path (output_dir/export/saved_model for `export.export_all`).
"""

import os
import secrets
import shutil

import numpy as np

from tfrobprune.deploy import canonical_saved_model
from tfrobprune.deploy import checks
from tfrobprune.keras_compat import tf

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities", "classes")


def serving_function(model):
  """The `serving_default` function of `model`: checked [0, 1] images -> logits, probabilities, classes."""
  shape = checks.check_exportable(model)

  @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32, name=INPUT_NAME)])
  def serve(images):
    logits = tf.cast(model(_checked_pixels(images), training=False), tf.float32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1)}

  return serve


def _checked_pixels(images):
  """`images`, once they are known to be finite and in [0, 1]; otherwise the call fails naming the problem.

  A finite check, then the batch's min and max: three passes over the images that write nothing, where a
  comparison per bound would write a boolean tensor each and reduce it again (a small model's serving call is
  dominated by such fixed costs; docs/structured_pruning.md).
  """
  images = tf.debugging.check_numerics(images, "images must be finite (no NaN or Inf).")
  in_range = [
      tf.debugging.Assert(tf.reduce_min(images) >= 0.0, ["images must be pixels in [0, 1]: found a value < 0."]),
      tf.debugging.Assert(tf.reduce_max(images) <= 1.0, ["images must be pixels in [0, 1]: found a value > 1."])]
  with tf.control_dependencies(in_range):
    return tf.identity(images)


def _serving_module(model):
  """A tf.Module holding the serving function and the model's variables, but not the Keras model itself."""
  module = tf.Module()
  module.model_variables = list(model.variables)
  module.serve = serving_function(model)
  return module


def _check_model_name(model_name):
  if not model_name or os.sep in model_name or model_name.startswith(".") or model_name != model_name.strip():
    raise ValueError(f"model_name must be a plain directory name (no '{os.sep}', not starting with '.'), got "
                     f"{model_name!r}.")


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

  The files are byte-reproducible (`canonical_saved_model`): with one TensorFlow version, the same layers and
  weights give the same bytes whichever process exports them and whatever it traced before, so a resumed run
  exports what an uninterrupted one does.

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
  checks.check_exportable(model)
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
    canonical_saved_model.canonicalize(tmp)
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
