"""Multiply-accumulates (MACs) per example: the arithmetic cost of a model, counted from its layer shapes.

`count_macs(model)` sums, over the layers that multiply activations by weights, the MACs one example costs:

    Dense                    positions x in_features x units          (positions: 1 for a [batch, features] input)
    Conv1D / Conv2D / Conv3D output positions x kh x kw x (in_channels / groups) x filters
    DepthwiseConv1D / 2D     output positions x kh x kw x in_channels x depth_multiplier
    SeparableConv1D / 2D     the depthwise part plus the 1x1 pointwise part, both at the output positions

i.e. output positions x the number of kernel weights, where the output positions are the output's spatial size
(height x width for a 2D convolution). Elementwise work costs 0 here: bias adds, BatchNormalization (folded into the
preceding convolution when converted to TFLite), activations, standardisation, pooling, residual `Add`, reshapes.
It grows with the activations only, not with activations x fan-in, so it is small beside the counted layers.

Zeros from unstructured pruning are still counted: dense kernels (XNNPACK, TF's CPU and GPU kernels) multiply them
too, which is why unstructured sparsity does not make a model faster. A structurally pruned model, rebuilt with
fewer filters and units, has physically smaller kernels and so fewer MACs. Layers wrapped by tfmot
(`PruneLowMagnitude`, quantization wrappers: any `keras.layers.Wrapper`) count as the layer they wrap; nested models
count as their layers. A layer called more than once (shared weights) is refused rather than counted once.
"""

import numpy as np

from tfrobprune.keras_compat import keras

layers = keras.layers


def _kernel_weights(*names):
  """A cost rule: the MACs are the output positions times the number of weights in the named kernels."""
  def count(layer):
    return sum(int(np.prod(getattr(layer, name).shape)) for name in names)
  return count


def _unsupported(layer):
  raise ValueError(f"count_macs does not support layer {layer.name!r} ({type(layer).__name__}); supported layers "
                   "with weights: Dense, Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D.")


# Layer class -> kernel weights per output position. Looked up along the class's MRO, so the most specific entry
# wins (DepthwiseConv2D and the transposed convolutions are also Conv subclasses).
_RULES = {
    layers.Dense: _kernel_weights("kernel"),
    layers.Conv1D: _kernel_weights("kernel"),
    layers.Conv2D: _kernel_weights("kernel"),
    layers.Conv3D: _kernel_weights("kernel"),
    layers.DepthwiseConv1D: _kernel_weights("depthwise_kernel"),
    layers.DepthwiseConv2D: _kernel_weights("depthwise_kernel"),
    layers.SeparableConv1D: _kernel_weights("depthwise_kernel", "pointwise_kernel"),
    layers.SeparableConv2D: _kernel_weights("depthwise_kernel", "pointwise_kernel"),
    layers.Conv1DTranspose: _unsupported,
    layers.Conv2DTranspose: _unsupported,
    layers.Conv3DTranspose: _unsupported,
}


def _rule(layer):
  """The cost rule of `layer`'s class (None for a layer without one)."""
  for cls in type(layer).__mro__:
    if cls in _RULES:
      return _RULES[cls]
  return None


def _output_positions(layer, shape_source):
  """Spatial positions of one example's output (1 for a [batch, units] output), from `shape_source`'s shape."""
  try:
    shape = shape_source.output_shape
  except (AttributeError, RuntimeError) as error:
    raise ValueError(f"count_macs needs the output shape of layer {layer.name!r}: the model must be built on a "
                     f"known input shape, and the layer called once ({error}).") from error
  channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
  spatial = shape[2:] if channels_first else shape[1:-1]
  if any(dim is None for dim in spatial):
    raise ValueError(f"count_macs needs a fixed input size; layer {layer.name!r} has output shape {shape}.")
  return int(np.prod(spatial, dtype=np.int64))


# Layers with matrix-shaped weights that still work elementwise (PReLU's slope is per unit and position).
_ELEMENTWISE_WITH_WEIGHTS = (layers.PReLU,)


def _check_no_unknown_kernel(layer):
  """Raises for a layer with matrix-like weights that has no cost rule (its MACs would be silently lost)."""
  if isinstance(layer, _ELEMENTWISE_WITH_WEIGHTS):
    return
  if any(len(weight.shape) >= 2 for weight in layer.weights):
    _unsupported(layer)


def _check_called_once(layer):
  if len(layer.inbound_nodes) > 1:
    raise ValueError(f"count_macs counts each layer once, but layer {layer.name!r} is called "
                     f"{len(layer.inbound_nodes)} times (shared weights).")


def layer_macs(model):
  """{layer name: MACs per example} of the weighted layers of `model`, in layer order (see the module docstring).

  Args:
    model: a built Keras 2 model (Sequential or functional, possibly with tfmot wrappers or nested models).

  Returns:
    An ordered dict from the name of each counted layer (the wrapped layer's name for a tfmot wrapper, the nested
    model's layer names for a nested model) to its MACs per example.

  Raises:
    ValueError: for a layer with weights that no rule covers (e.g. Conv2DTranspose), a layer called more than once,
      or an unknown input size.
  """
  counts = {}
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      counts.update(layer_macs(layer))
      continue
    inner = layer.layer if isinstance(layer, layers.Wrapper) else layer
    rule = _rule(inner)
    if rule is None:
      _check_no_unknown_kernel(inner)
      continue
    _check_called_once(layer)
    weights = rule(inner)
    counts[inner.name] = _output_positions(inner, layer) * weights
  return counts


def count_macs(model):
  """Multiply-accumulates one example costs in `model` (an int; see the module docstring for what counts).

  Raises:
    ValueError: as `layer_macs`.
  """
  return int(sum(layer_macs(model).values()))
