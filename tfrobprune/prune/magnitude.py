"""Magnitude pruning with tfmot: wrap a dense model so that training removes its smallest weights.

Sehwag et al. (2019) prune a robustly pre-trained network by weight magnitude and fine-tune it robustly. The
pruning itself is tensorflow-model-optimization's `PruneLowMagnitude` wrapper; this module gives each wrapped layer
its schedule (`pruning_schedules`): the config's target per layer, the global allocation's per-layer target for
scope 'global' (`global_allocation`, as tfmot has no global-threshold mode), or tfmot's m:n masks
(`m_by_n_sparsity`). Train the result with a `drivers.PruningStepDriver`.
"""

from tfrobprune.models import prunable_layers
from tfrobprune.prune import global_allocation
from tfrobprune.prune import m_by_n_sparsity
from tfrobprune.prune import pruning_schedules
from tfrobprune.prune import wrapping


def _layer_targets(model, config):
  """{layer name: (initial sparsity, final sparsity)} for every layer to wrap."""
  names = [layer.name for layer in prunable_layers(model) if layer.name not in config.exclude_layers]
  if config.scope == "layer":
    return {name: (config.initial_sparsity, config.target_sparsity) for name in names}
  final = global_allocation.global_magnitude_targets(model, config.target_sparsity, config.exclude_layers)
  initial = global_allocation.global_magnitude_targets(model, config.initial_sparsity, config.exclude_layers)
  cap = pruning_schedules.MAX_LAYER_SPARSITY
  return {name: (min(initial[name], cap), min(final[name], cap)) for name in names}


def prune_model(model, config):
  """Returns a copy of `model` with a tfmot pruning wrapper on each Dense/Conv2D layer not excluded.

  Each wrapped layer gets its own schedule (its global-magnitude target for scope 'global'). Masks start at one,
  so the result computes exactly what `model` does until training prunes it; it shares no variables with `model`.
  Train it with a `PruningStepDriver`.

  Args:
    model: a built, dense Keras 2 Sequential or functional model (no nested models).
    config: a `PruningConfig`.

  Returns:
    The wrapped `keras.Model`; wrappers are named 'prune_low_magnitude_<layer name>'.

  Raises:
    ValueError: for an unbuilt or already-wrapped model, unknown names in `config.exclude_layers`, no layer to
      prune, or (with `m_by_n`) a layer whose kernel cannot take m:n sparsity.
    TypeError: for a model that is not a Keras 2 model.
  """
  wrapping.check_prunable_model(model)
  wrapping.check_layer_names(model, config.exclude_layers, "exclude_layers")
  targets = _layer_targets(model, config)
  if not targets:
    raise ValueError(f"Model {model.name!r} has no Dense/Conv2D layer left to prune after exclude_layers "
                     f"{config.exclude_layers!r}.")
  if config.m_by_n:
    for layer in prunable_layers(model):
      if layer.name in targets:
        m_by_n_sparsity.check_layer(layer, config.m_by_n)
  schedules = {name: pruning_schedules.layer_schedule(config, initial, final)
               for name, (initial, final) in targets.items()}
  return wrapping.wrapped_clone(model, schedules, config.m_by_n)
