"""The single import point for TensorFlow and Keras 2 (`tf_keras`).

tensorflow-model-optimization only works with Keras 2. TensorFlow >= 2.16 binds `tf.keras` to Keras 3 unless
`TF_USE_LEGACY_KERAS=1` is set *before* TensorFlow is first imported, so every module of this package imports
`tf` and `keras` from here and nowhere else.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  (must follow the environment variable)
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras", "require_keras2_model"]


def require_keras2_model(model):
  """Returns `model` if it is a Keras 2 (`tf_keras`) model, else raises.

  Args:
    model: any object handed to the library as a model.

  Raises:
    TypeError: for Keras 3 models (tfmot cannot wrap them) and for anything that is not a Keras model.
  """
  if isinstance(model, keras.Model):
    return model
  module = type(model).__module__
  if module.startswith("keras"):
    raise TypeError(
        f"{type(model).__name__} is a Keras 3 model ({module}); tfrobprune needs a Keras 2 model: build it with "
        "`tf_keras` (or `tfrobprune.keras_compat.keras`) and set TF_USE_LEGACY_KERAS=1 before importing TensorFlow.")
  raise TypeError(f"Expected a tf_keras.Model, got {type(model).__name__}.")
