"""A model of one's own, from a file: `--model=PATH`, a `.keras` file or a SavedModel folder of a `tf_keras` model.

The run starts from the saved model as it is (its weights are where pre-training starts; with zero pre-training
epochs they are the dense model). Unlike the zoo models, nothing is added to it: it receives pixels in [0, 1] (so
epsilon keeps its meaning) and standardises them itself if it needs to, and it must end in logits.

Loading is safe: `.keras` files are read with Keras' `safe_mode=True`, so a file holding a Python `lambda` (which
Keras would unmarshal and run) is refused; SavedModel folders are read inside Keras' safe-mode scope, and a layer
that Keras could then only revive from the SavedModel's graphs is refused too (pruning rebuilds layers from their
configs, which would run that code). Layers of one's own load where their class is registered with
`keras.utils.register_keras_serializable`.
"""

import os
import re
import zipfile

from absl import logging
import numpy as np

from tfrobprune.keras_compat import keras, require_keras2_model
from tfrobprune import models

# Keras' safe-mode switch for deserialisation; not exported by tf_keras' public API.
from tf_keras.src.saving import serialization_lib  # noqa: I100

__all__ = ["is_model_path", "check_model_spec", "load_model_file", "check_fits_data", "model_name"]

_SAVED_MODEL_PB = "saved_model.pb"
# Where tf_keras defines the stand-in classes of layers it revives from a SavedModel's graphs.
_REVIVED_MODULE = "tf_keras.src.saving.legacy.saved_model"


def is_model_path(spec):
  """True if `spec` names a saved model rather than a zoo architecture: it ends in `.keras`, holds a path
  separator, or is an existing folder."""
  if spec in models.MODEL_NAMES:
    return False
  return spec.endswith(".keras") or os.sep in spec or "/" in spec or os.path.isdir(spec)


def check_model_spec(spec):
  """Raises a ValueError naming `spec` unless it is a zoo name or looks like the path of a saved model."""
  if not isinstance(spec, str) or not spec or not (spec in models.MODEL_NAMES or is_model_path(spec)):
    raise ValueError(f"model must be one of {', '.join(models.MODEL_NAMES)}, or the path of a saved Keras model (a "
                     f".keras file or a SavedModel folder), got {spec!r}.")


def _read(path):
  if path.endswith(".keras"):
    if not zipfile.is_zipfile(path):
      raise ValueError("it is not a .keras archive (a zip file); is it truncated or another format?")
    return keras.models.load_model(path, safe_mode=True, compile=False)
  if not os.path.isfile(os.path.join(path, _SAVED_MODEL_PB)):
    raise ValueError(f"a folder must be a SavedModel (holding {_SAVED_MODEL_PB}); a file must end in .keras.")
  with serialization_lib.SafeModeScope(True):
    model = keras.models.load_model(path, compile=False)
  _check_rebuilt(model)
  return model


def _check_rebuilt(model):
  """Refuses a SavedModel layer that Keras could not rebuild from its config in safe mode (a Python lambda, an
  unregistered class) and revived from traced graphs instead: it could not be cloned for pruning without running
  the code in its config."""
  for layer in [model] + [m for m in model.submodules if isinstance(m, keras.layers.Layer)]:
    if type(layer).__module__.startswith(_REVIVED_MODULE):
      raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) could not be rebuilt from its config in safe "
                       "mode (a Python lambda, or a class that is not registered), so it cannot be pruned.")


def load_model_file(path):
  """Loads a `tf_keras` model saved with `model.save` (`.keras`, or a SavedModel folder) in safe mode.

  Args:
    path: the `.keras` file or SavedModel folder.

  Returns:
    The uncompiled `tf_keras.Model`, with one input and one output.

  Raises:
    ValueError: naming `path`: it does not exist, is not a saved Keras model, is corrupt, holds a Python lambda,
      needs an unregistered layer class, or its model has other than one input and one output.
  """
  if not os.path.exists(path):
    raise ValueError(f"Model {path!r} does not exist: give a zoo name ({', '.join(models.MODEL_NAMES)}) or the "
                     "path of a saved Keras model (a .keras file or a SavedModel folder).")
  try:
    model = _read(path)
  except (OSError, ValueError, TypeError, KeyError, AttributeError, zipfile.BadZipFile) as error:
    raise ValueError(f"Cannot load the model {path!r}: {error}") from error
  try:
    require_keras2_model(model)
  except TypeError as error:
    raise ValueError(f"Model {path!r}: {error}") from error
  if len(model.inputs) != 1 or len(model.outputs) != 1:
    raise ValueError(f"Model {path!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; tfrobprune "
                     "needs one image input and one logits output.")
  return model


def _rescales_bytes(model):
  """Whether the model's first layer divides by 255 (`Rescaling(1/255)`): written for uint8 pixels."""
  first = next((layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)), None)
  return isinstance(first, keras.layers.Rescaling) and abs(float(np.mean(first.scale)) - 1 / 255) < 1e-6


def check_fits_data(model, input_shape, num_classes, source):
  """Raises a ValueError naming `source` unless `model` takes images of `input_shape` and returns `num_classes`
  logits; warns when the model rescales by 1/255 (the pipeline's images are in [0, 1] already)."""
  if _rescales_bytes(model):
    logging.warning("Model %r starts with Rescaling(1/255), but tfrobprune feeds it images in [0, 1] (uint8 data is "
                    "scaled on loading): it will see [0, 1/255] and eps would be 255 times larger than meant. Remove "
                    "the layer.", source)
  expected_input = model.input_shape[1:]
  if len(expected_input) != len(input_shape) or any(
      dim is not None and dim != data_dim for dim, data_dim in zip(expected_input, input_shape)):
    raise ValueError(f"Model {source!r} takes inputs of shape {tuple(expected_input)}, but the data's images are "
                     f"{tuple(input_shape)}.")
  output_shape = model.output_shape
  if len(output_shape) != 2 or output_shape[-1] != num_classes:
    raise ValueError(f"Model {source!r} returns outputs of shape {tuple(output_shape[1:])}; it must return one logit "
                     f"per class ({num_classes},).")


def model_name(spec):
  """A plain name for the model of `spec` (the SavedModel export's directory, TF Serving's --model_name): the zoo
  name, or the file or folder name without `.keras`."""
  if not is_model_path(spec):
    return spec
  base = os.path.basename(os.path.normpath(spec))
  base = base[:-len(".keras")] if base.endswith(".keras") else base
  return re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".") or "model"
