"""Magnitude pruning with tfmot: wrapping, schedules, global magnitude, m:n, step driving, sparsity stats.

Sehwag et al. (2019) prune a robustly pre-trained network by weight magnitude and fine-tune it robustly. The
pruning itself is tensorflow-model-optimization's `PruneLowMagnitude` wrapper; this module chooses per-layer
schedules for it (tfmot has no global-threshold mode), drives its step counter from a custom training loop, and
measures the result.

How tfmot 0.8.1 prunes (read from `pruning_wrapper.py`, `pruning_impl.py`, `pruning_callbacks.py`)
---------------------------------------------------------------------------------------------------
A wrapper holds, per kernel, a `mask` (ones at first) and a `threshold`, plus one int64 `pruning_step` that
starts at -1. Each call of the wrapper does, in this order:

1. `training=True` only: `pruning_step += 1`.
2. `training=True` only: assert `pruning_step >= 1` (tfmot's "requires the UpdatePruningStep callback" error),
   then, if `schedule(pruning_step)` says "prune now" (step in [begin_step, end_step] and
   `(step - begin_step) % frequency == 0`), recompute mask and threshold from |kernel| at the schedule's sparsity
   for that step. m:n masks ignore the schedule: they are computed once, when `pruning_step == 1`.
3. every call, `training=False` included: `kernel.assign(kernel * mask)`.
4. the wrapped layer's own call, which reads the masked kernel.

What follows from this:
- `pruning_step` counts training-mode forward passes, not optimizer steps. Attack and evaluation passes must call
  the model with `training=False` (a bare `model(x)` is also inference in TF2); a loop that makes two
  training-mode passes per step (TRADES with BatchNorm) advances it twice, and one that makes none never prunes.
- `UpdatePruningStep` in 0.8.1 has only `on_train_begin` (-1 -> 0) and `on_epoch_end` (step 3 for every
  wrapper); there is no per-batch hook any more. `PruningSummaries` reads `model.optimizer.iterations`, so it fails
  on a model that a custom loop trains without `compile`.
- The mask chosen at step k already masks the forward pass of step k, but gradients are not masked: the optimizer
  update moves pruned entries off zero, so the variables are dense again until the next call or `on_epoch_end`.
  `strip_pruning` copies the variables as they are, so strip only after the masks have been re-applied
  (`PruningStepDriver.finalize`, `apply_masks`; `strip` does it itself).
- tfmot's first step is 1: `ConstantSparsity(begin_step=0, end_step=0)` never prunes, and `begin_step=0,
  frequency=100` first prunes at the 100th step.
- `prune_low_magnitude` wraps the model's own layer objects and `strip_pruning` returns the wrapped layers' own
  layers, so dense, pruned and stripped models share variables. `prune_model` and `strip` here return copies.

Step convention of this module
------------------------------
`PruningConfig` counts optimizer steps from 0: step k is the one that starts after k optimizer updates. The driver
sets `pruning_step = k` at the start of step k, so the step's training-mode forward pass sees k + 1; the tfmot
schedules built here have begin/end shifted by one accordingly. So `begin_step=0` prunes in the very first step,
and a polynomial schedule reaches its target in step `end_step` (train at least `end_step + 1` steps).
"""

import dataclasses
import numbers

import numpy as np

from tfrobprune.keras_compat import keras, require_keras2_model, tf
from tfrobprune.models import prunable_layers

# After keras_compat, which makes tfmot bind to Keras 2.
import tensorflow_model_optimization as tfmot
# `PruneLowMagnitude` and `collect_prunable_layers` are not exported by tfmot's public API.
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

SCHEDULES = ("constant", "polynomial")
SCOPES = ("layer", "global")

# tfmot schedules need a sparsity < 1 (and keep at least one weight per kernel anyway).
_MAX_LAYER_SPARSITY = 0.999999
# A step no training reaches (`fixed_mask_prune`).
_NEVER = 2**62


def _is_wrapper(layer):
  return isinstance(layer, pruning_wrapper.PruneLowMagnitude)


# ----------------------------------------------------------------------------------------------------------------
# Configuration.


def check_fraction(name, value):
  """Raises a ValueError naming `name` unless `value` is a number in [0, 1) (a sparsity)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
    raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")


def check_int(name, value, minimum):
  """Raises a ValueError naming `name` unless `value` is an integer >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


def _as_tuple(name, value):
  """JSON gives lists where the config holds tuples."""
  try:
    return tuple(value)
  except TypeError:
    raise ValueError(f"{name} must be a sequence, got {value!r}.") from None


def _check_m_by_n(m_by_n):
  valid = (len(m_by_n) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in m_by_n) and
           0 < m_by_n[0] < m_by_n[1])
  if not valid:
    raise ValueError(f"m_by_n must be two integers (m, n) with 0 < m < n (m zeros in every n weights), "
                     f"got {m_by_n!r}.")


@dataclasses.dataclass(frozen=True)
class PruningConfig:
  """How to prune: target, schedule, scope and exclusions.

  Steps count optimizer steps from 0 (see the module docstring); masks change only in training-mode passes.

  Attributes:
    target_sparsity: fraction of zeros to reach in the pruned kernels, in [0, 1). With scope 'global' it is the
      fraction over all pruned kernels together.
    schedule: 'constant' prunes once, at `begin_step`, to `target_sparsity` and keeps that mask (one-shot,
      tfmot `ConstantSparsity`); 'polynomial' raises the sparsity from `initial_sparsity` at `begin_step` to
      `target_sparsity` at `end_step` every `frequency` steps (gradual, tfmot `PolynomialDecay`, power 3) and
      keeps the last mask after `end_step`.
    initial_sparsity: the polynomial schedule's starting sparsity, <= `target_sparsity`.
    begin_step: the optimizer step at which pruning starts.
    end_step: the polynomial schedule's last pruning step; `end_step - begin_step` must be a positive multiple of
      `frequency`, else tfmot's last update would fall short of the target.
    frequency: steps between the polynomial schedule's mask updates.
    scope: 'layer' prunes every layer to the target (tfmot's own behaviour); 'global' ranks the magnitudes of all
      pruned kernels together once, when the model is wrapped, and gives each layer the sparsity that one
      threshold implies (`global_magnitude_targets`).
    exclude_layers: names of Dense/Conv2D layers to keep dense (typically the first and the last).
    m_by_n: (m, n), e.g. (2, 4): m zeros in every n consecutive input-channel weights of each output (tfmot
      `sparsity_m_by_n`). tfmot computes this mask once, at the first training step, whatever the schedule, so
      `target_sparsity` and the schedule fields then play no part. Each pruned layer's input-channel count must
      be a multiple of n (`prune_model` names the layer that is not). Not combinable with scope 'global'.
  """

  target_sparsity: float
  schedule: str = "polynomial"
  initial_sparsity: float = 0.0
  begin_step: int = 0
  end_step: int = 1000
  frequency: int = 100
  scope: str = "layer"
  exclude_layers: tuple[str, ...] = ()
  m_by_n: tuple[int, int] | None = None

  def __post_init__(self):
    if isinstance(self.exclude_layers, str):
      raise ValueError(f"exclude_layers must be a sequence of layer names, got the string {self.exclude_layers!r}; "
                       f"did you mean ({self.exclude_layers!r},)?")
    object.__setattr__(self, "exclude_layers", _as_tuple("exclude_layers", self.exclude_layers))
    if self.m_by_n is not None:
      object.__setattr__(self, "m_by_n", _as_tuple("m_by_n", self.m_by_n))
    self._validate()

  def _validate(self):
    check_fraction("target_sparsity", self.target_sparsity)
    check_fraction("initial_sparsity", self.initial_sparsity)
    _check_choice("schedule", self.schedule, SCHEDULES)
    _check_choice("scope", self.scope, SCOPES)
    check_int("begin_step", self.begin_step, 0)
    check_int("end_step", self.end_step, 0)
    check_int("frequency", self.frequency, 1)
    if not all(isinstance(name, str) for name in self.exclude_layers):
      raise ValueError(f"exclude_layers must hold layer names (strings), got {self.exclude_layers!r}.")
    if self.schedule == "polynomial":
      self._validate_polynomial()
    if self.m_by_n is not None:
      _check_m_by_n(self.m_by_n)
      if self.scope == "global":
        raise ValueError(f"m_by_n {self.m_by_n!r} fixes every layer's sparsity at m/n; it cannot be combined with "
                         "scope 'global'.")

  def _validate_polynomial(self):
    if self.initial_sparsity > self.target_sparsity:
      raise ValueError(f"initial_sparsity {self.initial_sparsity!r} must not exceed target_sparsity "
                       f"{self.target_sparsity!r}.")
    if self.end_step <= self.begin_step:
      raise ValueError(f"end_step {self.end_step!r} must be > begin_step {self.begin_step!r} for the polynomial "
                       "schedule.")
    if (self.end_step - self.begin_step) % self.frequency:
      raise ValueError(f"end_step - begin_step ({self.end_step!r} - {self.begin_step!r}) must be a multiple of "
                       f"frequency {self.frequency!r}, or the last mask update falls short of target_sparsity.")

  def to_dict(self):
    """Returns the fields as a JSON-compatible dict (tuples become lists)."""
    config = dataclasses.asdict(self)
    config["exclude_layers"] = list(self.exclude_layers)
    config["m_by_n"] = None if self.m_by_n is None else list(self.m_by_n)
    return config

  @classmethod
  def from_dict(cls, config):
    """Builds a config from `to_dict`'s output (or its JSON round trip).

    Raises:
      ValueError: for unknown keys or invalid values.
    """
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f"Unknown PruningConfig fields {unknown}; known fields: {', '.join(sorted(known))}.")
    return cls(**config)


def iterative_targets(final_sparsity, rounds):
  """Sparsity after each prune/fine-tune round when every round keeps the same fraction of the remaining weights.

  Example: `iterative_targets(0.9, 2) == [1 - 0.1 ** 0.5, 0.9]` (each round keeps ~31.6%).

  Args:
    final_sparsity: the sparsity after the last round, in [0, 1).
    rounds: the number of rounds, >= 1.

  Returns:
    A list of `rounds` increasing sparsities ending exactly at `final_sparsity`.

  Raises:
    ValueError: for a sparsity outside [0, 1) or fewer than one round.
  """
  check_fraction("final_sparsity", final_sparsity)
  check_int("rounds", rounds, 1)
  keep_per_round = (1.0 - final_sparsity)**(1.0 / rounds)
  return [1.0 - keep_per_round**r for r in range(1, rounds)] + [float(final_sparsity)]


# ----------------------------------------------------------------------------------------------------------------
# Inspecting kernels of dense or wrapped models.


def _prunable_kernels(model):
  """(name, effective kernel) of every Dense/Conv2D layer, wrapped or not, in layer order.

  The effective kernel of a wrapped layer is kernel * mask (what its forward pass uses); names are the
  wrapped layers' own names, so dense, wrapped and stripped models give the same keys.
  """
  dense_prunable = {id(layer) for layer in prunable_layers(model)}
  kernels = []
  for layer in model.layers:
    if _is_wrapper(layer):
      _check_built(layer)
      weight, mask, _ = layer.pruning_vars[0]
      kernels.append((layer.layer.name, weight.numpy() * mask.numpy()))
    elif id(layer) in dense_prunable:
      kernels.append((layer.name, layer.kernel.numpy()))
  return kernels


def _check_built(layer):
  if not layer.built:
    raise ValueError(f"Layer {layer.name!r} is not built; build the model (give it an Input or call it once).")


def layer_sparsity(model):
  """Fraction of zeros in each Dense/Conv2D kernel (kernel * mask for wrapped layers).

  Args:
    model: a dense, wrapped or stripped model.

  Returns:
    {layer name: zero fraction}, keyed by the unwrapped layer names.
  """
  return {name: float(np.mean(kernel == 0)) for name, kernel in _prunable_kernels(model)}


def _stored_weights(model):
  """Every variable a deployed (stripped) model stores: wrappers' masks, thresholds and steps left out."""
  weights = {}
  for layer in model.layers:
    for weight in (layer.layer.weights if _is_wrapper(layer) else layer.weights):
      weights[id(weight)] = weight
  return list(weights.values())


def parameter_counts(model):
  """Parameter counts of a dense, wrapped or stripped model.

  Returns:
    A dict with
    - 'params': every parameter a deployed (stripped) model stores: kernels, biases, BatchNorm scale, offset and
      moving statistics, trainable or not; tfmot's masks, thresholds and step counters are not counted.
    - 'prunable_params': entries of the Dense/Conv2D kernels (excluded layers included).
    - 'prunable_nonzero': their non-zero entries (kernel * mask for wrapped layers).
    - 'nonzero_params': 'params' minus the zero kernel entries, i.e. what a sparse format stores (biases and
      BatchNorm values count even where they happen to be zero).
    - 'sparsity': zero fraction over all prunable kernels together.
    - 'compression': 'params' / 'nonzero_params'.
  """
  params = sum(weight.shape.num_elements() for weight in _stored_weights(model))
  kernels = [kernel for _, kernel in _prunable_kernels(model)]
  prunable = int(sum(kernel.size for kernel in kernels))
  prunable_nonzero = int(sum(np.count_nonzero(kernel) for kernel in kernels))
  nonzero = params - (prunable - prunable_nonzero)
  return {
      "params": params,
      "nonzero_params": nonzero,
      "prunable_params": prunable,
      "prunable_nonzero": prunable_nonzero,
      "sparsity": 1.0 - prunable_nonzero / prunable if prunable else 0.0,
      "compression": params / nonzero if nonzero else float("inf"),
  }


def sparsity_report(model):
  """`parameter_counts(model)` plus the per-layer sparsities under 'layers'."""
  return {**parameter_counts(model), "layers": layer_sparsity(model)}


def _check_layer_names(model, names, what):
  known = {layer.name for layer in model.layers} | {layer.layer.name for layer in model.layers if _is_wrapper(layer)}
  unknown = sorted(set(names) - known)
  if unknown:
    raise ValueError(f"{what} names layers {unknown} that model {model.name!r} does not have; its layers are "
                     f"{', '.join(layer.name for layer in model.layers)}.")


def global_magnitude_targets(model, sparsity, exclude_layers=()):
  """Per-layer sparsities that one global magnitude threshold over all prunable kernels implies.

  The `round(sparsity * N)` smallest |w| among the N entries of all Dense/Conv2D kernels not excluded are the
  ones a global threshold removes; each layer's target is the fraction of its own kernel among them.

  Args:
    model: a built Keras 2 model (wrapped layers count with kernel * mask).
    sparsity: the global fraction of zeros, in [0, 1).
    exclude_layers: names of layers left out of the ranking (and of the result).

  Returns:
    {layer name: sparsity}, in layer order; the size-weighted mean is `round(sparsity * N) / N`.

  Raises:
    ValueError: for a sparsity outside [0, 1), unknown excluded names or no prunable layer left.
  """
  check_fraction("sparsity", sparsity)
  _check_layer_names(model, exclude_layers, "exclude_layers")
  kernels = [(name, kernel) for name, kernel in _prunable_kernels(model) if name not in exclude_layers]
  if not kernels:
    raise ValueError(f"Model {model.name!r} has no Dense/Conv2D layer left to prune.")
  magnitudes = np.concatenate([np.abs(kernel).ravel() for _, kernel in kernels])
  pruned = np.zeros(magnitudes.size, bool)
  pruned[np.argsort(magnitudes, kind="stable")[:int(round(sparsity * magnitudes.size))]] = True
  ends = np.cumsum([kernel.size for _, kernel in kernels])
  return {name: float(np.mean(part)) for (name, _), part in zip(kernels, np.split(pruned, ends[:-1]))}


# ----------------------------------------------------------------------------------------------------------------
# Wrapping.


def _layer_targets(model, config):
  """{layer name: (initial sparsity, final sparsity)} for every layer to wrap."""
  names = [layer.name for layer in prunable_layers(model) if layer.name not in config.exclude_layers]
  if config.scope == "layer":
    return {name: (config.initial_sparsity, config.target_sparsity) for name in names}
  final = global_magnitude_targets(model, config.target_sparsity, config.exclude_layers)
  initial = global_magnitude_targets(model, config.initial_sparsity, config.exclude_layers)
  return {name: (min(initial[name], _MAX_LAYER_SPARSITY), min(final[name], _MAX_LAYER_SPARSITY)) for name in names}


def _schedule(config, initial, final):
  """The tfmot schedule for one layer, with steps shifted to tfmot's 1-based count (module docstring)."""
  begin = config.begin_step + 1
  if config.schedule == "constant":
    return tfmot.sparsity.keras.ConstantSparsity(final, begin_step=begin, end_step=begin, frequency=1)
  return tfmot.sparsity.keras.PolynomialDecay(
      initial, final, begin_step=begin, end_step=config.end_step + 1, frequency=config.frequency)


def sparsity_schedule(config):
  """The tfmot schedule of `config` for its overall target (initial -> target sparsity), in tfmot's step count.

  `schedule(k + 1)` answers for optimizer step k (module docstring): a (should prune, sparsity) pair of tensors.
  """
  return _schedule(config, config.initial_sparsity, min(config.target_sparsity, _MAX_LAYER_SPARSITY))


def _check_m_by_n_layer(layer, m_by_n):
  """Raises unless tfmot's m:n mask can give `layer` exactly m zeros in every n input-channel weights.

  tfmot rearranges a Dense [in, out] or Conv2D [h, w, in, out] kernel so that each output's input-channel
  weights are consecutive, and groups them by n, zero-padding the last group: an input-channel count that is not
  a multiple of n is silently left denser (a 1-channel image conv gets no zeros at all).
  """
  m, n = m_by_n
  if type(layer) not in (keras.layers.Dense, keras.layers.Conv2D):
    raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) cannot take {m}:{n} sparsity: tfmot's m:n "
                     "masks assume a Dense or Conv2D kernel layout. Add it to exclude_layers.")
  channels = layer.kernel.shape[-2]
  if channels % n:
    raise ValueError(f"Layer {layer.name!r} cannot take {m}:{n} sparsity: its kernel {tuple(layer.kernel.shape)} "
                     f"has {channels} input channels, not a multiple of {n}, so tfmot would leave it denser than "
                     f"{m}:{n}. Add {layer.name!r} to exclude_layers.")


def _check_prunable_model(model):
  require_keras2_model(model)
  if not model.built:
    raise ValueError(f"Model {model.name!r} is not built; give it an Input or call it once before pruning.")
  for layer in model.layers:
    if _is_wrapper(layer):
      raise ValueError(f"Model {model.name!r} is already wrapped for pruning (layer {layer.name!r}); strip it "
                       "first.")
    if isinstance(layer, keras.Model):
      raise ValueError(f"Nested model {layer.name!r} inside {model.name!r} is not supported; flatten it.")


def _copy_weights(source, target):
  """Copies every layer's weights from `source` to the same-named (possibly wrapped) layer of `target`."""
  by_name = {(layer.layer if _is_wrapper(layer) else layer).name: layer for layer in target.layers}
  for layer in source.layers:
    if layer.weights:
      by_name[layer.name].set_weights(layer.get_weights())


def _wrapped_clone(model, schedules, m_by_n=None):
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
  _check_prunable_model(model)
  _check_layer_names(model, config.exclude_layers, "exclude_layers")
  targets = _layer_targets(model, config)
  if not targets:
    raise ValueError(f"Model {model.name!r} has no Dense/Conv2D layer left to prune after exclude_layers "
                     f"{config.exclude_layers!r}.")
  if config.m_by_n:
    for layer in prunable_layers(model):
      if layer.name in targets:
        _check_m_by_n_layer(layer, config.m_by_n)
  schedules = {name: _schedule(config, initial, final) for name, (initial, final) in targets.items()}
  return _wrapped_clone(model, schedules, config.m_by_n)


def _check_masks(model, masks):
  _check_layer_names(model, masks, "masks")
  kernels = {layer.name: layer.kernel for layer in prunable_layers(model)}
  for name, mask in masks.items():
    if name not in kernels:
      raise ValueError(f"masks names layer {name!r}, which is not a Dense/Conv2D layer.")
    if np.shape(mask) != tuple(kernels[name].shape):
      raise ValueError(f"The mask for layer {name!r} has shape {np.shape(mask)}, but its kernel has shape "
                       f"{tuple(kernels[name].shape)}.")
    if not np.all((np.asarray(mask) == 0) | (np.asarray(mask) == 1)):
      raise ValueError(f"The mask for layer {name!r} must hold only 0 and 1.")


def _frozen_schedule(mask):
  """A schedule whose only pruning turn is at a step no training reaches: tfmot never recomputes the mask."""
  sparsity = min(float(np.mean(np.asarray(mask) == 0)), _MAX_LAYER_SPARSITY)
  return tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=_NEVER, end_step=_NEVER, frequency=1)


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
  _check_prunable_model(model)
  _check_masks(model, masks)
  schedules = {name: _frozen_schedule(mask) for name, mask in masks.items()}
  pruned = _wrapped_clone(model, schedules)
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
    _check_built(wrapper)
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


class PruningStepDriver:
  """Drives tfmot's pruning step counter from a custom training loop (what `fit` does with `UpdatePruningStep`).

  Call it around the loop like Keras callbacks, outside any `tf.function`:

  ```python
  driver = PruningStepDriver(model, log_dir)   # once per model
  driver.on_train_begin()                      # before the first training-mode call
  for epoch in range(epochs):
    for step_in_epoch, (x, y) in enumerate(batches):
      driver.on_step_begin(step_in_epoch)      # before the step's forward passes
      x_adv = attack(lambda z: model(z, training=False), x, y)   # any number of inference passes
      train_step(x_adv, y)                     # model(x_adv, training=True), gradient, optimizer update
    driver.on_epoch_end(epoch)                 # re-applies the masks
  driver.finalize()                            # masks applied: evaluate, strip, export
  ```

  The driver counts optimizer steps itself and sets every wrapper's `pruning_step` to that count at each step's
  start, so the schedule follows optimizer steps, not forward passes: inference passes do not count, and a step
  with several training-mode passes (TRADES with BatchNorm) has its first pass see step k and the others k + 1,
  ... (at worst a mask update one step early), reset at the next step. It raises if a step made no training-mode
  pass, since the masks would then never update. A second driver on the same model (another fine-tuning run)
  continues from the model's `pruning_step`.

  Attributes:
    step: optimizer steps driven so far (None before `on_train_begin`).
  """

  def __init__(self, model, log_dir=None):
    """Args:
      model: a model from `prune_model` or `fixed_mask_prune` (a model without wrappers makes this a no-op).
      log_dir: if set, each `on_epoch_end` writes every wrapper's mask sparsity and threshold there as TensorBoard
        scalars '<layer>/sparsity' and '<layer>/threshold' at the current step. (tfmot's `PruningSummaries`
        needs a compiled model's optimizer, which a custom loop need not have.)
    """
    self.model = model
    self.step = None
    self._wrappers = pruning_wrapper.collect_prunable_layers(model)
    self._callback = tfmot.sparsity.keras.UpdatePruningStep()
    self._callback.set_model(model)
    self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None

  def on_train_begin(self):
    """Sets fresh wrappers' `pruning_step` from -1 to 0 and starts counting from the model's current step."""
    self._callback.on_train_begin()
    self.step = int(self._wrappers[0].pruning_step.numpy()) if self._wrappers else 0

  def on_step_begin(self, step_in_epoch):
    """Call before each optimizer step's forward passes.

    Args:
      step_in_epoch: the step's index within the epoch (passed on to the callback as Keras' batch index).

    Raises:
      RuntimeError: before `on_train_begin`, or if the previous step made no training-mode forward pass.
    """
    self._check_previous_step()
    self._set_pruning_step(self.step)
    self.step += 1
    self._callback.on_train_batch_begin(step_in_epoch)

  def on_epoch_end(self, epoch):
    """Re-applies the masks (the weights are dense after the last optimizer update) and writes the summaries."""
    self._check_previous_step()
    self._set_pruning_step(self.step)
    self._callback.on_epoch_end(epoch)
    self._write_summaries()

  def finalize(self):
    """Makes the weights sparse (kernel * mask) for evaluation, stripping or export; safe to call repeatedly."""
    if self.step is not None:
      self._set_pruning_step(self.step)
    apply_masks(self.model)

  def _check_previous_step(self):
    if self.step is None:
      raise RuntimeError("Call PruningStepDriver.on_train_begin() before the first step.")
    if self._wrappers and self._wrappers[0].pruning_step.numpy() < self.step:
      raise RuntimeError(
          f"Optimizer step {self.step - 1} made no training-mode forward pass: pruning masks only update in "
          "model(x, training=True); call it once per optimizer step (and training=False for attacks).")

  def _set_pruning_step(self, value):
    keras.backend.batch_set_value([(wrapper.pruning_step, value) for wrapper in self._wrappers])

  def _write_summaries(self):
    if self._writer is None:
      return
    with self._writer.as_default(step=self.step):
      for wrapper in self._wrappers:
        _, mask, threshold = wrapper.pruning_vars[0]
        tf.summary.scalar(f"{wrapper.layer.name}/sparsity", 1.0 - tf.reduce_mean(mask))
        tf.summary.scalar(f"{wrapper.layer.name}/threshold", threshold)
    self._writer.flush()


class ScheduledMaskDriver(PruningStepDriver):
  """A `PruningStepDriver` whose masks are chosen by the caller at a schedule's pruning turns: gradual pruning by
  any criterion.

  tfmot's wrappers can only recompute masks from |kernel|. Here the model comes from `fixed_mask_prune` (its own
  schedules never fire) and, at the start of every optimizer step at which `schedule` prunes, the driver calls
  `choose_masks(stripped, sparsity, step)` with a stripped copy of the model as it is (masks applied) and writes
  the masks it returns into the wrappers (kernel * mask at once). Steps between turns train under fixed masks, so
  the kept weights adapt before the next turn, as in tfmot's gradual magnitude pruning.

  Args:
    model: a model from `fixed_mask_prune`.
    schedule: a tfmot `PruningSchedule` in tfmot's step count (`sparsity_schedule`); turns with sparsity 0 are
      skipped.
    choose_masks: `choose_masks(model, sparsity, step)` returns {wrapped layer name: 0/1 mask shaped like its
      kernel}; a weight it keeps after an earlier turn pruned it stays at zero until training moves it.
    log_dir: as for `PruningStepDriver`.
  """

  def __init__(self, model, schedule, choose_masks, log_dir=None):
    super().__init__(model, log_dir)
    self._schedule = schedule
    self._choose_masks = choose_masks

  def on_step_begin(self, step_in_epoch):
    self._check_previous_step()
    due, sparsity = self._schedule(self.step + 1)
    if bool(due) and float(sparsity) > 0:
      stripped = strip(self.model)
      self._set_masks(stripped, self._choose_masks(stripped, float(sparsity), self.step))
    super().on_step_begin(step_in_epoch)

  def _set_masks(self, stripped, masks):
    wrapped_names = {wrapper.layer.name for wrapper in self._wrappers}
    if set(masks) != wrapped_names:
      raise ValueError(f"choose_masks returned masks for {sorted(masks)}, but the wrapped layers are "
                       f"{sorted(wrapped_names)}.")
    _check_masks(stripped, masks)  # shapes and 0/1 values, as for `fixed_mask_prune`
    for wrapper in self._wrappers:
      wrapper.pruning_vars[0][1].assign(np.asarray(masks[wrapper.layer.name], np.float32))
    apply_masks(self.model)
