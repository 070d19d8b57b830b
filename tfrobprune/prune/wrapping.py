"""tfmot's pruning wrappers on a model: wrap it (here with masks chosen elsewhere), read its kernels, apply, strip.

Every pruning criterion ends in tfmot's `PruneLowMagnitude` wrapper, which multiplies each kernel by its mask in
every forward pass: `magnitude.prune_model` lets tfmot choose the masks, `fixed_mask_prune` takes masks chosen
elsewhere (learned scores, another criterion) and keeps them.

- Gradients are not masked: the optimizer update moves pruned entries off zero, so the variables are dense again
  until the next call or `apply_masks`. `strip_pruning` copies the variables as they are, so strip only after the
  masks have been re-applied (`drivers.PruningStepDriver.finalize`, `apply_masks`; `strip` does it itself).
- `prune_low_magnitude` wraps the model's own layer objects and `strip_pruning` returns the wrapped layers' own
  layers, so dense, pruned and stripped models share variables. `wrapped_clone` and `strip` here return copies.
"""

import numpy as np

from tfrobprune.keras_compat import keras, require_keras2_model
from tfrobprune.models import prunable_layers
from tfrobprune.prune import pruning_schedules

# After keras_compat, which makes tfmot bind to Keras 2.
import tensorflow_model_optimization as tfmot
# `PruneLowMagnitude` and `collect_prunable_layers` are not exported by tfmot's public API.
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper


def is_wrapper(layer):
  """True if `layer` is a tfmot pruning wrapper."""
  return isinstance(layer, pruning_wrapper.PruneLowMagnitude)


def check_built(layer):
  """Raises a ValueError naming `layer` unless it is built (its variables, and a wrapper's mask, exist)."""
  if not layer.built:
    raise ValueError(f"Layer {layer.name!r} is not built; build the model (give it an Input or call it once).")


# ----------------------------------------------------------------------------------------------------------------
# Inspecting kernels of dense or wrapped models.


def prunable_kernels(model):
  """(name, effective kernel) of every Dense/Conv2D layer, wrapped or not, in layer order.

  The effective kernel of a wrapped layer is kernel * mask (what its forward pass uses); names are the
  wrapped layers' own names, so dense, wrapped and stripped models give the same keys.
  """
  dense_prunable = {id(layer) for layer in prunable_layers(model)}
  kernels = []
  for layer in model.layers:
    if is_wrapper(layer):
      check_built(layer)
      weight, mask, _ = layer.pruning_vars[0]
      kernels.append((layer.layer.name, weight.numpy() * mask.numpy()))
    elif id(layer) in dense_prunable:
      kernels.append((layer.name, layer.kernel.numpy()))
  return kernels


def check_layer_names(model, names, what):
  """Raises a ValueError naming `what` and listing the model's layers unless `model` has every layer in `names`."""
  known = {layer.name for layer in model.layers} | {layer.layer.name for layer in model.layers if is_wrapper(layer)}
  unknown = sorted(set(names) - known)
  if unknown:
    raise ValueError(f"{what} names layers {unknown} that model {model.name!r} does not have; its layers are "
                     f"{', '.join(layer.name for layer in model.layers)}.")


# ----------------------------------------------------------------------------------------------------------------
# Wrapping.


def check_prunable_model(model):
  """Raises unless `model` is a built, unwrapped Keras 2 model without nested models (what tfmot can wrap)."""
  require_keras2_model(model)
  if not model.built:
    raise ValueError(f"Model {model.name!r} is not built; give it an Input or call it once before pruning.")
  for layer in model.layers:
    if is_wrapper(layer):
      raise ValueError(f"Model {model.name!r} is already wrapped for pruning (layer {layer.name!r}); strip it "
                       "first.")
    if isinstance(layer, keras.Model):
      raise ValueError(f"Nested model {layer.name!r} inside {model.name!r} is not supported; flatten it.")


def _copy_weights(source, target):
  """Copies every layer's weights from `source` to the same-named (possibly wrapped) layer of `target`."""
  by_name = {(layer.layer if is_wrapper(layer) else layer).name: layer for layer in target.layers}
  for layer in source.layers:
    if layer.weights:
      by_name[layer.name].set_weights(layer.get_weights())


def wrapped_clone(model, schedules, m_by_n=None):
  """Clones `model` with fresh layers, wraps the layers named in `schedules` with their schedule, copies weights."""

  def clone(layer):
    fresh = layer.__class__.from_config(layer.get_config())
    if layer.name not in schedules:
      return fresh
    return tfmot.sparsity.keras.prune_low_magnitude(fresh, pruning_schedule=schedules[layer.name],
                                                    sparsity_m_by_n=m_by_n)

  pruned = keras.models.clone_model(model, clone_function=clone)
  _copy_weights(model, pruned)
  return pruned


def check_masks(model, masks):
  """Raises a ValueError naming the layer unless every mask is a 0/1 array shaped like its Dense/Conv2D kernel."""
  check_layer_names(model, masks, "masks")
  kernels = {layer.name: layer.kernel for layer in prunable_layers(model)}
  for name, mask in masks.items():
    if name not in kernels:
      raise ValueError(f"masks names layer {name!r}, which is not a Dense/Conv2D layer.")
    if np.shape(mask) != tuple(kernels[name].shape):
      raise ValueError(f"The mask for layer {name!r} has shape {np.shape(mask)}, but its kernel has shape "
                       f"{tuple(kernels[name].shape)}.")
    if not np.all((np.asarray(mask) == 0) | (np.asarray(mask) == 1)):
      raise ValueError(f"The mask for layer {name!r} must hold only 0 and 1.")


def fixed_mask_prune(model, masks):
  """Returns a wrapped copy of `model` whose given layers are masked by `masks`, which training never changes.

  For masks chosen elsewhere (learned scores, a previous round). Each wrapper's schedule starts at a step no
  training reaches, so tfmot never recomputes the mask; every forward pass still multiplies the kernel by it, so
  training with a `PruningStepDriver` keeps exactly these zeros. Layers not in `masks` stay unwrapped.

  Args:
    model: a built, dense Keras 2 model.
    masks: {Dense/Conv2D layer name: array of 0/1 shaped like its kernel}; 0 prunes the weight.

  Returns:
    The wrapped model, already masked (its kernels hold kernel * mask).

  Raises:
    ValueError: for unknown or non-prunable layer names, or a mask of the wrong shape or with values other than
      0 and 1.
  """
  check_prunable_model(model)
  check_masks(model, masks)
  schedules = {name: pruning_schedules.frozen_schedule(mask) for name, mask in masks.items()}
  pruned = wrapped_clone(model, schedules)
  for wrapper in pruning_wrapper.collect_prunable_layers(pruned):
    wrapper.pruning_vars[0][1].assign(np.asarray(masks[wrapper.layer.name], np.float32))
  apply_masks(pruned)
  return pruned


# ----------------------------------------------------------------------------------------------------------------
# Training and after.


def apply_masks(model):
  """Sets kernel = kernel * mask in every pruning wrapper of `model` (what `UpdatePruningStep.on_epoch_end` does).

  The optimizer moves pruned entries off zero after each step; call this (or `PruningStepDriver.finalize`)
  before reading, saving, stripping or exporting the weights. Works at any time, eagerly.
  """
  for wrapper in pruning_wrapper.collect_prunable_layers(model):
    check_built(wrapper)
    wrapper.pruning_obj.weight_mask_op()


def strip(model):
  """Applies the masks and removes the pruning wrappers.

  Returns:
    A plain Keras model with the sparse weights, sharing no variables with `model` (tfmot's `strip_pruning`
    alone would share them, so further training of `model` would change it).
  """
  apply_masks(model)
  shared = tfmot.sparsity.keras.strip_pruning(model)
  stripped = keras.models.clone_model(shared)
  stripped.set_weights(shared.get_weights())
  return stripped
