"""Checks of what the exporters are given: a stripped Keras 2 model of a fixed input shape, images and labels.

Every exporter fails early, with a message naming the argument, rather than writing an artifact of a model or of
data that cannot be served or measured.
"""

import numpy as np

from tfrobprune.keras_compat import require_keras2_model


def check_exportable(model):
  """Raises unless `model` is a built Keras 2 model without pruning wrappers; returns its (H, W, C) input shape."""
  require_keras2_model(model)
  for layer in model.layers:
    if type(layer).__name__ == "PruneLowMagnitude":
      raise ValueError(f"Model {model.name!r} still has the pruning wrapper {layer.name!r}; export the stripped "
                       "model (`wrapping.strip(model)`), whose kernels hold the sparse weights.")
  shape = tuple(model.input_shape[1:])
  if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
    raise ValueError(f"Model {model.name!r} must take images of a fixed shape [None, H, W, C]; its input shape is "
                     f"{model.input_shape}.")
  return shape


def check_images(name, images, shape):
  """Raises unless `images` is [N, *shape] of finite pixels in [0, 1]; returns them as float32."""
  images = np.asarray(images)
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
    raise ValueError(f"{name} must have shape [N, {', '.join(map(str, shape))}], got {list(images.shape)}.")
  if images.size and not (np.all(np.isfinite(images)) and images.min() >= 0 and images.max() <= 1):
    raise ValueError(f"{name} must hold finite pixels in [0, 1] (the model's input scale).")
  return images.astype(np.float32)


def check_labels(name, labels, count):
  """Raises unless `labels` holds `count` class indices; returns them as int64."""
  labels = np.asarray(labels)
  if labels.shape != (count,):
    raise ValueError(f"{name} must have shape [{count}] (one class index per image), got {list(labels.shape)}.")
  return labels.astype(np.int64)
