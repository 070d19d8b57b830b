"""Robustness-aware pruning masks: importance scores learned with the robust objective (HYDRA).

Magnitude pruning keeps the largest weights. HYDRA (Sehwag, Wang, Mittal & Jana, NeurIPS 2020) keeps the weights the
robust objective needs: every prunable kernel `W` gets a score tensor `S` of its shape, the network computes with
`W * M(S)`, `M(S)` the 0/1 mask of the k largest `|S|`, and only the scores are trained, with the objective the
pruned network must satisfy, while weights stay frozen. The top-k has no useful gradient, so it is passed straight
through (edge-popup, Ramanujan et al. 2020):

    dL/dS = dL/dM * sign(S) = (dL/dW_eff * W) * sign(S),    W_eff = W * M(S).

Pruned weights get a gradient too, so a score can climb back into the top k. `learn_masks` returns the final masks;
`wrapping.fixed_mask_prune` then fine-tunes the network under them (schedule 'oneshot', HYDRA's). With schedule
'gradual' the pipeline calls `learn_masks` at every mask update of the magnitude criterion's gradual schedule
instead (`drivers.ScheduledMaskDriver`), on the weights as fine-tuning has left them, so that the kept weights adapt
between updates as they do under gradual magnitude pruning; weights an earlier update removed are zero, so their
scores start at zero, get no gradient, and stay pruned.

Choices, checked against the paper and its code (github.com/inspire-group/hydra):
- Initialisation. Scope 'layer': HYDRA's scaled initialisation `S = sqrt(6 / fan_in) * W / max|W|` per layer, so
  the first mask is layer-wise magnitude pruning and scores have the scale of Kaiming-uniform weights (that is what
  lets HYDRA train them with an ordinary weight learning rate). Scope 'global' is not in HYDRA; it needs scores
  that compare across layers, so `S = W`, and the first mask is global magnitude pruning
  (`global_allocation.global_magnitude_targets`).
- Selection. 'layer' keeps the `n_l - round(t_l * n_l)` largest `|S|` of each layer (`t_l` its target); 'global'
  keeps the `N - round(s * N)` largest `|S|` of all layers together, raw, not normalised per layer (the common
  initial scale is what makes them comparable). Every layer keeps at least one weight. Ties go to the lower flat
  index (`tf.math.top_k`), so the masks are a deterministic function of the scores.
- The mask is recomputed from the scores once per optimizer step, before the step's attack (HYDRA recomputes it in
  every forward pass; the scores change only at the update, so the masks are the same) and after the last step.
- The network is frozen: kernels and biases are not trainable, BatchNormalization is frozen, which in Keras 2 also
  runs it in inference mode, so the masks are chosen for the very network `fixed_mask_prune` will mask. (HYDRA's
  code keeps BatchNorm in train mode and trains its affine parameters while learning scores; masks alone could not
  carry those changes.)
- Optimiser. SGD with Nesterov momentum 0.9 and cosine decay from lr 0.1, HYDRA's setting (it trains 20 epochs and
  adds weight decay 1e-4 on the scores, which we leave out: it shrinks all scores alike and barely moves a top-k).
- The objective runs at the end of its epsilon (and kappa) ramp: the network it prunes is already robustly trained.

Prunable layers are Dense and Conv2D (`models.prunable_layers`), as for magnitude pruning.
"""

import dataclasses
import math
import numbers

from absl import logging
import numpy as np

from tfrobprune.keras_compat import keras, require_keras2_model, tf
from tfrobprune.models import prunable_layers
from tfrobprune.prune import global_allocation
from tfrobprune.prune import validation
from tfrobprune.robust import bound_registry
from tfrobprune.train import training

SCOPES = ("layer", "global")
BUDGETS = ("learned", "magnitude")
SCHEDULES = ("oneshot", "gradual")
OPTIMIZERS = training.OPTIMIZERS


# ----------------------------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
  """How the scores are learned and the masks chosen.

  Attributes:
    epochs: passes over `dataset_fn`'s data; 0 returns the initial masks, i.e. magnitude pruning.
    learning_rate: peak learning rate of the scores (cosine decay to 0 over the epochs).
    batch_size: examples per score step, for the caller building `dataset_fn` (`learn_masks` does not rebatch).
    scope: 'layer' gives every layer its own target (`sparsity`, or `layer_targets`) and keeps the top scores of
      each layer; 'global' keeps the top scores of all layers together, so the layers' sparsities are learned too.
    exclude_layers: names of Dense/Conv2D layers to keep dense (typically the first and the last).
    optimizer: 'sgd' (Nesterov momentum 0.9, HYDRA's choice) or 'adam'. Adam moves every score by about the
      learning rate per step whatever its gradient, so it needs a learning rate well below the scores' scale
      (about 1e-3 for zoo models).
    budgets: scope 'global' only, how many weights each layer keeps. 'learned': all layers' scores are ranked
      together, so the scores also move weights between layers (they start at the raw weights). 'magnitude': each
      layer keeps what one global magnitude threshold keeps (`global_allocation.global_magnitude_targets`, the
      allocation of magnitude pruning with scope 'global') and the scores choose which weights within the layer, as
      in HYDRA (per-layer top-k, scaled initialisation); 'magnitude' isolates "which weights" from "how many per
      layer".
    schedule: 'oneshot' (HYDRA): scores are learned for `epochs` on the dense model, and fine-tuning trains the
      weights under that one mask. 'gradual': fine-tuning follows the magnitude criterion's pruning schedule, and at
      each of its mask updates the scores are learned afresh for `update_steps` steps from the weights as
      fine-tuning has left them (frozen again), at that update's sparsity; the weights adapt between updates.
    update_steps: score steps per mask update (schedule 'gradual').
  """

  epochs: int = 2
  learning_rate: float = 0.1
  batch_size: int = 128
  scope: str = "layer"
  exclude_layers: tuple[str, ...] = ()
  optimizer: str = "sgd"
  budgets: str = "learned"
  schedule: str = "oneshot"
  update_steps: int = 100

  def __post_init__(self):
    exclude_layers = validation.layer_names_tuple("exclude_layers", self.exclude_layers, "a sequence of layer names")
    object.__setattr__(self, "exclude_layers", exclude_layers)
    validation.check_int("epochs", self.epochs, 0)
    validation.check_int("batch_size", self.batch_size, 1)
    if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, numbers.Real) or not (
        self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}.")
    validation.check_choice("scope", self.scope, SCOPES)
    validation.check_choice("optimizer", self.optimizer, OPTIMIZERS)
    validation.check_choice("budgets", self.budgets, BUDGETS)
    validation.check_choice("schedule", self.schedule, SCHEDULES)
    validation.check_int("update_steps", self.update_steps, 1)
    validation.check_strings("exclude_layers", self.exclude_layers)

  def to_dict(self):
    """Returns the fields as a JSON-compatible dict (the tuple becomes a list)."""
    return dict(dataclasses.asdict(self), exclude_layers=list(self.exclude_layers))

  @classmethod
  def from_dict(cls, config):
    """Builds a config from `to_dict`'s output (or its JSON round trip); unknown keys raise a ValueError."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f"Unknown ScoreConfig fields {unknown}; known fields: {', '.join(sorted(known))}.")
    return cls(**config)


# ----------------------------------------------------------------------------------------------------------------
# The straight-through top-k.


@tf.custom_gradient
def straight_through(values, mask):
  """Returns `mask` in the forward pass; its gradient goes to `values` unchanged (and none to `mask`).

  With `values = |S|` and `mask` the top-k of `|S|`, this is HYDRA's straight-through top-k.
  """

  def gradient(upstream):
    return upstream, tf.zeros_like(mask)

  return tf.identity(mask), gradient


def top_k_masks(scores, keep, scope="layer"):
  """The 0/1 masks of the largest `|score|` entries, per layer or over all layers together.

  Args:
    scores: a list of score tensors (any shapes).
    keep: scope 'layer': a list with the number of entries to keep in each tensor (1 to its size); scope 'global':
      the number to keep over all tensors together (at least one per tensor, at most their total size).
    scope: 'layer' or 'global'. Globally, each tensor's largest entry is kept first, then the largest of the rest.

  Returns:
    A list of float32 masks shaped like `scores`; equal `|score|` values are kept in flat-index order.
  """
  flat = [tf.reshape(tf.abs(tf.cast(score, tf.float32)), [-1]) for score in scores]
  if scope == "layer":
    kept = [_top_k_mask(values, count) for values, count in zip(flat, keep)]
  else:
    # Each tensor's best entry goes first (+inf), so that no layer is cut off entirely.
    boosted = [tf.tensor_scatter_nd_update(values, tf.reshape(tf.argmax(values), [1, 1]), [np.inf])
               for values in flat]
    kept = tf.split(_top_k_mask(tf.concat(boosted, 0), keep), [int(values.shape[0]) for values in flat])
  return [tf.reshape(mask, tf.shape(score)) for mask, score in zip(kept, scores)]


def _top_k_mask(values, k):
  _, indices = tf.math.top_k(values, k, sorted=True)
  return tf.scatter_nd(indices[:, None], tf.ones([k], tf.float32), tf.shape(values))


# ----------------------------------------------------------------------------------------------------------------
# The score model.


@keras.utils.register_keras_serializable(package="tfrobprune")
class ScoredLayer(keras.layers.Wrapper):
  """A frozen Dense or Conv2D that computes with `kernel * mask`, the mask passed straight through to `|scores|`.

  The inner layer keeps its kernel and bias, not trainable; `scores` (trainable) and `mask` (not trainable) are
  kernel-shaped. `ScoreModel` writes the mask from the scores; every call, `training` or not, uses it. The inner
  layer's own `call` runs with its `kernel` attribute swapped for the masked kernel (as tfmot's quantization wrapper
  does), so padding, strides and activation stay the inner layer's.
  """

  def __init__(self, layer, **kwargs):
    if type(layer) not in (keras.layers.Dense, keras.layers.Conv2D):
      raise ValueError(f"ScoredLayer wraps Dense or Conv2D layers, got {layer.name!r} ({type(layer).__name__}).")
    kwargs.setdefault("name", f"scored_{layer.name}")
    super().__init__(layer, **kwargs)

  def build(self, input_shape):
    if not self.layer.built:
      self.layer.build(input_shape)
    self.layer.trainable = False
    shape = self.layer.kernel.shape
    self.scores = self.add_weight("scores", shape=shape, initializer="zeros", trainable=True)
    self.mask = self.add_weight("mask", shape=shape, initializer="ones", trainable=False)
    super().build(input_shape)

  def masked_kernel(self):
    """`kernel * mask`, differentiable in the scores through the straight-through estimator."""
    return self.layer.kernel * straight_through(tf.abs(self.scores), tf.convert_to_tensor(self.mask))

  def call(self, inputs):
    kernel = self.layer.kernel
    masked = self.masked_kernel()
    # object.__setattr__: Keras' tracking would otherwise drop the variable from the layer's weights and re-add it.
    object.__setattr__(self.layer, "kernel", masked)
    try:
      return self.layer.call(inputs)
    finally:
      object.__setattr__(self.layer, "kernel", kernel)

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)


def _scored_bound_steps(layer):
  """Bound propagation through a `ScoredLayer`: its inner layer's steps with the kernel `kernel * mask`."""
  inner = layer.layer
  return bound_registry.layer_steps(inner, kernel=layer.masked_kernel())


# The ibp / crown_ibp objectives propagate bounds through the table of `bound_registry` (exact classes only).
bound_registry.register_layer(ScoredLayer, _scored_bound_steps)


class ScoreModel:
  """The score network of a dense model: a frozen clone whose chosen layers are `ScoredLayer`s.

  The clone shares no variables with the model. Its only trainable variables are the scores, initialised from the
  weights (module docstring), and its masks start as the magnitude masks of `keep`.

  Args:
    model: a built, dense Keras 2 model (Sequential or functional, no nested models, no pruning wrappers).
    names: the Dense/Conv2D layers to score, a subset of `models.prunable_layers(model)`.
    keep: scope 'layer': {name: number of kernel entries to keep}; scope 'global': the total number to keep.
    scope: 'layer' or 'global'.
    seed: the seed of the clone's random layers (e.g. Dropout) that have none of their own.

  Attributes:
    model: the Keras score network (call it like the dense one).
    layers: {layer name: its `ScoredLayer`}, in layer order.
  """

  def __init__(self, model, names, keep, scope="layer", seed=0):
    self.scope = scope
    self.model = keras.models.clone_model(model, clone_function=lambda layer: _clone_layer(layer, set(names), seed))
    originals = {layer.name: layer for layer in model.layers}
    self.layers = {}
    for layer in self.model.layers:
      inner = layer.layer if isinstance(layer, ScoredLayer) else layer
      if layer.weights:
        inner.set_weights(originals[inner.name].get_weights())
      if isinstance(layer, ScoredLayer):
        self.layers[inner.name] = layer
      else:
        layer.trainable = False
    self._keep = [keep[name] for name in self.layers] if scope == "layer" else keep
    self._initialise_scores()
    self.refresh_masks()

  def _initialise_scores(self):
    for layer in self.layers.values():
      kernel = layer.layer.kernel.numpy()
      if self.scope == "layer":
        fan_in = int(np.prod(kernel.shape[:-1]))
        scale = math.sqrt(6.0 / fan_in) / max(float(np.max(np.abs(kernel))), np.finfo(np.float32).tiny)
        layer.scores.assign(scale * kernel)
      else:
        layer.scores.assign(kernel)

  def refresh_masks(self):
    """Sets every layer's mask to the top-k of its current scores (callable eagerly or in a `tf.function`)."""
    layers = list(self.layers.values())
    masks = top_k_masks([layer.scores for layer in layers], self._keep, self.scope)
    for layer, mask in zip(layers, masks):
      layer.mask.assign(mask)

  def masks(self):
    """{layer name: the current float32 0/1 mask as a numpy array}."""
    return {name: layer.mask.numpy() for name, layer in self.layers.items()}


def _clone_layer(layer, names, seed):
  """A fresh copy of `layer` that draws nothing from global random state: its weights are initialised to zeros
  (the original's are copied in next) and a random layer without a seed of its own gets `seed`."""
  config = layer.get_config()
  for key in config:
    if key.endswith("_initializer"):
      config[key] = "zeros"
  if "seed" in config and config["seed"] is None:
    config["seed"] = seed
  fresh = layer.__class__.from_config(config)
  return ScoredLayer(fresh) if layer.name in names else fresh


class _RefreshingObjective:
  """The objective, preceded by a refresh of the score model's masks: one top-k per optimizer step."""

  def __init__(self, objective, score_model):
    self.objective, self.score_model = objective, score_model

  def __call__(self, model, x, y, step):
    self.score_model.refresh_masks()
    return self.objective(model, x, y, step)


# ----------------------------------------------------------------------------------------------------------------
# The entry point.


def learn_masks(model, objective, dataset_fn, sparsity, config, *, layer_targets=None, seed=0, log=logging.info):
  """Chooses pruning masks by training importance scores with `objective` while the weights stay frozen (HYDRA).

  Args:
    model: the dense, trained Keras 2 model (zoo Sequential or functional); it is not modified.
    objective: an `objectives.Objective` (called as `objective(model, x, y, step)` inside the compiled step); the
      scores are learned at the end of its epsilon ramp.
    dataset_fn: `dataset_fn(epoch)` returns that epoch's finite `tf.data.Dataset` of (images, labels) batches.
    sparsity: target fraction of zeros in [0, 1): per layer for scope 'layer' (unless `layer_targets` says
      otherwise), over all scored kernels together for scope 'global'.
    config: a `ScoreConfig`.
    layer_targets: scope 'layer' only: {layer name: sparsity in [0, 1)} for some or all scored layers; the others
      get `sparsity`. E.g. `global_allocation.global_magnitude_targets(model, sparsity)` for magnitude-derived
      budgets.
    seed: the seed of the score network's random layers (such as Dropout) that have none; the masks are otherwise
      a deterministic function of the model, the data order and the objective's own attack seed. Global random
      state (Python's, NumPy's, TensorFlow's) is neither read nor reset.
    log: called with one line per epoch and a summary line (absl's `logging.info` by default).

  Returns:
    {layer name: float32 0/1 mask shaped like its kernel} for every Dense/Conv2D layer not excluded, in layer order.
    Scope 'layer': layer l has exactly `round(t_l * n_l)` zeros (`n_l` entries, target `t_l`), but at least one
    one; scope 'global': `round(sparsity * N)` zeros over all N entries, each layer keeping at least one weight
    (budgets 'magnitude': as scope 'layer' with the targets of `global_allocation.global_magnitude_targets`).

  Raises:
    ValueError: for a sparsity or layer target outside [0, 1), unknown or non-prunable layer names, `layer_targets`
      with scope 'global' (either budgets), a model that is unbuilt, wrapped, nested or has no Dense/Conv2D layer
      left to prune.
    TypeError: for a model that is not a Keras 2 model.
  """
  if not isinstance(config, ScoreConfig):
    raise TypeError(f"config must be a ScoreConfig, got {type(config).__name__}.")
  validation.check_fraction("sparsity", sparsity)
  _check_model(model)
  names = _scored_layer_names(model, config.exclude_layers)
  sizes = {layer.name: int(np.prod(layer.kernel.shape)) for layer in prunable_layers(model) if layer.name in names}
  scope = config.scope
  if scope == "global" and config.budgets == "magnitude":
    if layer_targets is not None:
      raise ValueError("layer_targets conflict with budgets 'magnitude', which sets every layer's target from "
                       "global magnitude; pass layer_targets with scope 'layer' instead.")
    # A global threshold may remove a whole layer; as with scope 'global', every layer keeps at least one weight.
    layer_targets = {name: min(target, 1.0 - 1.0 / sizes[name]) for name, target in
                     global_allocation.global_magnitude_targets(model, sparsity, config.exclude_layers).items()}
    scope = "layer"
  keep = _keep_counts(sizes, sparsity, scope, layer_targets)
  if (keep == sum(sizes.values())) if scope == "global" else all(keep[n] == sizes[n] for n in sizes):
    log(f"[scores] sparsity 0: every weight of {len(sizes)} layers kept, nothing to learn.")
    return {layer.name: np.ones(layer.kernel.shape, np.float32) for layer in prunable_layers(model)
            if layer.name in names}
  score_model = ScoreModel(model, names, keep, scope, seed)
  magnitude_masks = score_model.masks()
  if config.epochs:
    _train_scores(score_model, objective, dataset_fn, config, magnitude_masks, log)
  masks = score_model.masks()
  total = sum(sizes.values())
  kept = sum(int(mask.sum()) for mask in masks.values())
  log(f"[scores] {len(masks)} layers, sparsity {1 - kept / total:.4f} ({total - kept} of {total} weights pruned); "
      f"{_changed_fraction(magnitude_masks, masks):.1%} of the kept weights differ from magnitude pruning's.")
  return masks


def _check_model(model):
  require_keras2_model(model)
  if not model.built:
    raise ValueError(f"Model {model.name!r} is not built; give it an Input or call it once before scoring.")
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      raise ValueError(f"Nested model {layer.name!r} inside {model.name!r} is not supported; flatten it.")
    if isinstance(layer, keras.layers.Wrapper):
      raise ValueError(f"Model {model.name!r} has wrapper layer {layer.name!r} ({type(layer).__name__}); scores are "
                       "learned on a dense model (strip pruning wrappers first).")


def _scored_layer_names(model, exclude_layers):
  all_names = [layer.name for layer in model.layers]
  unknown = sorted(set(exclude_layers) - set(all_names))
  if unknown:
    raise ValueError(f"exclude_layers names layers {unknown} that model {model.name!r} does not have; its layers "
                     f"are {', '.join(all_names)}.")
  names = [layer.name for layer in prunable_layers(model) if layer.name not in exclude_layers]
  if not names:
    raise ValueError(f"Model {model.name!r} has no Dense/Conv2D layer to prune"
                     + (f" after exclude_layers {tuple(exclude_layers)!r}." if exclude_layers else "."))
  return names


def _keep_counts(sizes, sparsity, scope, layer_targets):
  """Entries to keep: {name: count} for scope 'layer', one total for 'global' (at least one per layer)."""
  if scope == "global":
    if layer_targets is not None:
      raise ValueError("layer_targets apply to scope 'layer'; scope 'global' learns the per-layer sparsities. Pass "
                       "layer_targets=None or use scope 'layer'.")
    total = sum(sizes.values())
    return max(len(sizes), total - int(round(sparsity * total)))
  targets = dict(layer_targets or {})
  unknown = sorted(set(targets) - set(sizes))
  if unknown:
    raise ValueError(f"layer_targets names layers {unknown} that are not scored Dense/Conv2D layers; scored layers "
                     f"are {', '.join(sizes)}.")
  for name, target in targets.items():
    validation.check_fraction(f"layer_targets[{name!r}]", target)
  return {name: max(1, size - int(round(targets.get(name, sparsity) * size))) for name, size in sizes.items()}


def _train_scores(score_model, objective, dataset_fn, config, magnitude_masks, log):
  steps = _steps_per_epoch(dataset_fn(0))
  train_config = training.TrainConfig(epochs=config.epochs, batch_size=config.batch_size,
                                      learning_rate=config.learning_rate, lr_schedule="cosine",
                                      optimizer=config.optimizer)
  trainer = training.Trainer(score_model.model, _RefreshingObjective(objective, score_model),
                             training.make_optimizer(train_config, steps),
                             schedule_step=tf.Variable(_ramp_end(objective), dtype=tf.int64, trainable=False))

  def epoch_end(epoch, metrics):
    score_model.refresh_masks()
    changed = _changed_fraction(magnitude_masks, score_model.masks())
    log(f"[scores] epoch {epoch + 1}/{config.epochs}: " +
        ", ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key != "eps") +
        f", kept weights not in the magnitude mask {changed:.1%}")
    return {"changed_from_magnitude": changed}

  training.train(trainer, dataset_fn, config.epochs, progress=False, epoch_end_fn=epoch_end, phase="scores")
  score_model.refresh_masks()


def _steps_per_epoch(dataset):
  steps = int(dataset.cardinality())
  if steps < 0:  # unknown or infinite: count (dataset_fn must give finite epochs)
    steps = sum(1 for _ in dataset)
  return max(steps, 1)


def _ramp_end(objective):
  """The first step at which the objective's epsilon (and kappa / beta) reach their final values."""
  config = getattr(objective, "config", None)
  return int(getattr(config, "eps_warmup_steps", 0) + getattr(config, "eps_ramp_steps", 0))


def _changed_fraction(before, after):
  """Fraction of the weights kept in `after` that `before` prunes."""
  kept = sum(float(mask.sum()) for mask in after.values())
  new = sum(float(np.sum(after[name] * (1 - before[name]))) for name in after)
  return new / kept if kept else 0.0
