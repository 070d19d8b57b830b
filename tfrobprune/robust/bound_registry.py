"""The bound registry: the table from a Keras layer class to its bound steps, and how to register a new class.

Interval propagation and CROWN-IBP both read one description of each layer: this table turns a Keras layer into a
few `bound_steps` (affine maps, ReLU, monotone maps, sums). Anything unsupported raises a `NotImplementedError`
naming the layer. A tfmot pruned layer is its inner layer's steps with the kernel replaced by `kernel * mask`,
whether or not tfmot has applied the mask yet. Layer classes defined elsewhere join with `register_layer`.

BatchNormalization is an affine map by its moving statistics (inference), or, within `batch_statistics`, by the
statistics of the training batch, as the training pass computes it (Gowal et al. bound the training network so).
"""

import contextlib
import threading

from tfrobprune.keras_compat import keras, tf
from tfrobprune.models import Standardize
from tfrobprune.robust import bound_steps
# tfmot imports TensorFlow, so it must follow keras_compat (which selects Keras 2 first).
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper  # noqa: E402,I100

layers = keras.layers

__all__ = ["register_layer", "layer_steps", "unsupported", "batch_statistics", "normalises_by_batch"]

# {BatchNormalization layer: (mean, variance)} while `batch_statistics` is active; per thread, because a mirrored
# strategy traces each replica's step in its own thread.
_BATCH_STATISTICS = threading.local()


def unsupported(layer, reason):
  """The error for a layer (or a layer option) without a bound rule, naming the layer and its class."""
  return NotImplementedError(f"Layer {layer.name!r} ({type(layer).__name__}): {reason}")


_ACTIVATIONS = {
    keras.activations.relu: bound_steps.Relu(),
    keras.activations.sigmoid: bound_steps.Monotone(tf.sigmoid),
    keras.activations.tanh: bound_steps.Monotone(tf.tanh),
}


def _activation_steps(layer, activation):
  """[] for the identity, else the monotone activation's step."""
  if activation is keras.activations.linear:
    return []
  if activation not in _ACTIVATIONS:
    raise unsupported(layer, f"activation {getattr(activation, '__name__', activation)!r} is not one of linear, "
                      f"{', '.join(fn.__name__ for fn in _ACTIVATIONS)}.")
  return [_ACTIVATIONS[activation]]


def _identity_steps(layer):
  del layer
  return []


def _standardize_steps(layer):
  """`(x - mean) / std = x / std - mean / std` with std > 0."""
  return [bound_steps.Affine(bound_steps.scale_linear(1. / layer.std, positive=True), -layer.mean / layer.std)]


@contextlib.contextmanager
def batch_statistics(statistics):
  """Within the block, each BatchNormalization layer in `statistics` ({layer: (mean, variance)}) is bounded as the
  affine map those statistics give (the batch's, in a training step), the others by their moving statistics.

  The dict is read when a layer's steps are built, so entries added inside the block count from then on.
  """
  previous = getattr(_BATCH_STATISTICS, "current", None)
  _BATCH_STATISTICS.current = statistics
  try:
    yield statistics
  finally:
    _BATCH_STATISTICS.current = previous


def normalises_by_batch(layer):
  """True for a BatchNormalization layer that a Keras 2 training pass normalises by the batch's statistics (a
  frozen one, `trainable=False`, runs in inference mode)."""
  return type(layer) is layers.BatchNormalization and layer.trainable


def _batch_norm_steps(layer):
  """BatchNormalization: `x gamma / sqrt(var + epsilon) + (beta - mean gamma / sqrt(var + epsilon))`, with the
  moving mean and variance, or the batch's within `batch_statistics`."""
  if list(layer.axis) != [layer.input_spec.ndim - 1]:
    raise unsupported(layer, f"BatchNormalization over axis {list(layer.axis)}; only the last axis is supported.")
  statistics = getattr(_BATCH_STATISTICS, "current", None) or {}
  mean, variance = statistics.get(layer, (layer.moving_mean, layer.moving_variance))
  scale = tf.math.rsqrt(variance + layer.epsilon)
  if layer.scale:
    scale *= layer.gamma
  shift = -mean * scale
  if layer.center:
    shift += layer.beta
  return [bound_steps.Affine(bound_steps.scale_linear(scale), shift)]


def _dense_steps(layer, kernel=None):
  kernel = layer.kernel if kernel is None else kernel
  return ([bound_steps.Affine(bound_steps.dense_linear(kernel), layer.bias)] +
          _activation_steps(layer, layer.activation))


def _conv2d_steps(layer, kernel=None):
  if layer.data_format != "channels_last" or layer.groups != 1:
    raise unsupported(layer, "only channels_last convolutions with groups=1 are supported.")
  kernel = layer.kernel if kernel is None else kernel
  return ([bound_steps.Affine(bound_steps.conv2d_linear(layer, kernel), layer.bias)] +
          _activation_steps(layer, layer.activation))


def _relu_layer_steps(layer):
  """A ReLU layer; with max_value, threshold or negative_slope it is still monotone (IBP) but not relaxed."""
  plain = layer.max_value is None and layer.threshold == 0 and layer.negative_slope == 0
  return [bound_steps.Relu() if plain else bound_steps.Monotone(layer.call)]


def _activation_layer_steps(layer):
  return _activation_steps(layer, layer.activation)


def _flatten_steps(layer):
  if layer.data_format != "channels_last":
    raise unsupported(layer, "only channels_last Flatten is supported.")
  return [bound_steps.Affine(bound_steps.reshape_linear([-1]))]


def _reshape_steps(layer):
  return [bound_steps.Affine(bound_steps.reshape_linear(list(layer.target_shape)))]


def _average_pooling_steps(layer):
  """Averages have non-negative weights, so `|A| = A`."""
  average = bound_steps.Linear(layer.call, layer.call, bound_steps.vjp_transpose(layer.call), nonnegative=True)
  return [bound_steps.Affine(average)]


def _max_pooling_steps(layer):
  return [bound_steps.Monotone(layer.call)]


def _add_steps(layer):
  del layer
  return [bound_steps.Sum()]


def _pruned_steps(wrapper):
  """A tfmot `PruneLowMagnitude` layer: the inner layer's steps with its kernel replaced by `kernel * mask`."""
  inner = wrapper.layer
  steps_fn = _steps_fn(inner)
  if not wrapper.pruning_vars:
    return steps_fn(inner)
  kernel = getattr(inner, "kernel", None)
  if len(wrapper.pruning_vars) != 1 or wrapper.pruning_vars[0][0] is not kernel:
    raise unsupported(wrapper, "only pruned kernels (of Dense and Conv2D) are supported.")
  return steps_fn(inner, kernel=kernel * wrapper.pruning_vars[0][1])


_LAYER_STEPS = {
    layers.InputLayer: _identity_steps,
    layers.Dropout: _identity_steps,
    layers.SpatialDropout2D: _identity_steps,
    Standardize: _standardize_steps,
    layers.BatchNormalization: _batch_norm_steps,
    layers.Dense: _dense_steps,
    layers.Conv2D: _conv2d_steps,
    layers.ReLU: _relu_layer_steps,
    layers.Activation: _activation_layer_steps,
    layers.Flatten: _flatten_steps,
    layers.Reshape: _reshape_steps,
    layers.AveragePooling2D: _average_pooling_steps,
    layers.GlobalAveragePooling2D: _average_pooling_steps,
    layers.MaxPooling2D: _max_pooling_steps,
    layers.GlobalMaxPooling2D: _max_pooling_steps,
    layers.Add: _add_steps,
    pruning_wrapper.PruneLowMagnitude: _pruned_steps,
}


def register_layer(layer_class, steps_fn):
  """Adds bound propagation for a layer class defined elsewhere (e.g. `scores.ScoredLayer`).

  Args:
    layer_class: the exact Keras layer class.
    steps_fn: `steps_fn(layer)` returning the layer's steps; `layer_steps(inner_layer, kernel=...)` builds the
      steps of a Dense/Conv2D with a substituted kernel (a masked one, say).
  """
  _LAYER_STEPS[layer_class] = steps_fn


def layer_steps(layer, **kwargs):
  """The steps of `layer` from the table, with optional substitutions (`kernel=` for Dense and Conv2D)."""
  return _steps_fn(layer)(layer, **kwargs)


def _steps_fn(layer):
  """The table entry for the layer's exact class (a subclass may compute something else)."""
  if type(layer) not in _LAYER_STEPS:
    supported = ", ".join(sorted(cls.__name__ for cls in _LAYER_STEPS))
    raise unsupported(layer, f"no bound propagation for this layer class; supported: {supported}.")
  return _LAYER_STEPS[type(layer)]
