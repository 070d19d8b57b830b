"""Model surgery: rebuild a channel-pruned model physically smaller, with its weights copied.

After channel-pruned fine-tuning the masked model still computes with full-size kernels. `shrink` builds the same
architecture (same layer types, names and configs) with fewer filters and units, and copies every weight it keeps:
the producers' kept output channels (kernel columns and bias), the BatchNorms' kept scale, offset and moving
statistics, and the consumers' kept input rows (through a Flatten, the kept channels at every position). As the
masks already cut every removed channel off from its readers (`channels.channel_masks`), the shrunken model
computes what the masked one does, up to float summation order. It is a plain Keras model: it trains, bounds,
saves and exports like any zoo model.
"""

import numpy as np

from tfrobprune.keras_compat import keras, require_keras2_model

layers = keras.layers


def _slices(groups, removed):
  """({layer: kept output channels}, {layer: kept input rows}) of the Dense/Conv2D and BatchNorm layers."""
  outputs, inputs = {}, {}
  for group in groups:
    kept = np.setdiff1d(np.arange(group.channels), group.removed_indices(removed))
    if len(kept) == 0:
      raise ValueError(f"Channel group {group.name!r} would lose all its {group.channels} channels; keep at least one.")
    for name in group.producers + group.batch_norms:
      outputs[name] = kept
    for consumer in group.consumers:
      inputs[consumer.layer] = consumer.rows(group.channels, kept)
  return outputs, inputs


def _shrunken_config(layer, outputs):
  config = layer.get_config()
  if layer.name in outputs and isinstance(layer, layers.Conv2D):
    config["filters"] = len(outputs[layer.name])
  elif layer.name in outputs and isinstance(layer, layers.Dense):
    config["units"] = len(outputs[layer.name])
  return config


def _shrunken_weights(layer, outputs, inputs):
  """The layer's weights with the removed output channels (last axis) and input rows (kernel axis -2) dropped."""
  weights = layer.get_weights()
  if layer.name in inputs:
    weights[0] = np.take(weights[0], inputs[layer.name], axis=-2)
  if layer.name in outputs:
    weights = [np.take(weight, outputs[layer.name], axis=-1) for weight in weights]
  return weights


def shrink(model, groups, removed):
  """A new, smaller model without the removed channels, its weights copied (module docstring).

  Args:
    model: the unwrapped model (dense, or stripped after masked fine-tuning) the groups were found in.
    groups: `channel_groups.ChannelGroup`s of `model`.
    removed: {group name: removed channel indices} (`channels.removed_channels`); groups left out lose nothing.

  Returns:
    A new built Keras model with the same layer names and types; it shares no variables with `model`.

  Raises:
    ValueError: for a wrapped model, or a group that would lose every channel.
  """
  require_keras2_model(model)
  wrapped = [layer.name for layer in model.layers if isinstance(layer, layers.Wrapper)]
  if wrapped:
    raise ValueError(f"shrink needs an unwrapped model; strip the pruning wrappers of {wrapped} first.")
  outputs, inputs = _slices(groups, removed)

  def clone(layer):
    return layer.__class__.from_config(_shrunken_config(layer, outputs))

  shrunken = keras.models.clone_model(model, clone_function=clone)
  for layer in model.layers:
    if layer.weights:
      shrunken.get_layer(layer.name).set_weights(_shrunken_weights(layer, outputs, inputs))
  return shrunken


def channel_sparsity(dense_model, pruned_model):
  """{layer name: fraction of output channels removed} of every Dense/Conv2D layer both models have, by width."""
  widths = {layer.name: int(layer.kernel.shape[-1]) for layer in pruned_model.layers
            if isinstance(layer, (layers.Dense, layers.Conv2D))}
  return {layer.name: 1.0 - widths[layer.name] / int(layer.kernel.shape[-1]) for layer in dense_model.layers
          if isinstance(layer, (layers.Dense, layers.Conv2D)) and layer.name in widths}
