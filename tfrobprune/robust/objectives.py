"""Training objectives behind one interface, so pre-training and fine-tuning can use the same robust loss.

The paper's first rule: pre-training and fine-tuning minimise the objective the final model must satisfy. Each
objective here is called inside the compiled training step as `objective(model, x, y, step)` and returns
`(loss, metrics)`. Every objective calls the model with `training=True` exactly once per step (adversarial and clean
inputs share one batch when both are needed) because tfmot's pruning wrapper advances its step on each such call;
attacks use inference mode (`attacks.inference_fn`).

Objectives: `natural`, `pgd` (Madry et al.), `trades` (Zhang et al. 2019), `ibp` (Gowal et al. 2018),
`crown_ibp` (Zhang et al. 2020), and the single-step `nfgsm` (de Jorge et al. 2022), `fgsm_rs` (Wong et al. 2020)
and `fgsm` of `single_step`, each optionally with GradAlign. `robust_weight` mixes natural and robust loss:
loss = (1 - w) nat + w robust.
"""

import dataclasses
import weakref

from tfrobprune.keras_compat import tf
from tfrobprune.robust import attacks
from tfrobprune.robust import bound_registry
from tfrobprune.robust import crown_ibp
from tfrobprune.robust import crown_ibp_fused
from tfrobprune.robust import interval_propagation
from tfrobprune.robust import margins as margins_lib
from tfrobprune.robust import schedules
from tfrobprune.robust import single_step

OBJECTIVE_NAMES = ("natural", "pgd", "trades", "ibp", "crown_ibp", "nfgsm", "fgsm_rs", "fgsm")
SINGLE_STEP_OBJECTIVES = ("nfgsm", "fgsm_rs", "fgsm")
CROWN_IBP_BOUNDS = ("margins", "fused")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Everything an objective needs; one flat record so that it serialises into the report.

  Attributes:
    name: one of OBJECTIVE_NAMES.
    eps: final training epsilon (pixel scale, inputs in [0, 1]).
    norm: 'linf' or 'l2' (PGD and TRADES; bounds are L-inf).
    pgd_steps: attack steps during training.
    pgd_step_size: attack step size at the final epsilon (also the single step of nfgsm / fgsm_rs / fgsm); scaled
      with epsilon during the ramp-up; 0 takes the method's default (`step_size`).
    rand_init: random start for the training attack.
    robust_weight: w in (1 - w) natural + w robust, for pgd; kappa's final value is 1 - w for ibp objectives.
    trades_beta: TRADES' weight on the KL term.
    eps_warmup_steps: steps at epsilon 0 (natural-equivalent) before the ramp.
    eps_ramp_steps: steps over which epsilon grows to `eps`.
    eps_warmup_epochs, eps_ramp_epochs: the same lengths in epochs of the training set (`--eps_warmup_epochs`,
      `--eps_ramp_epochs`), for configs written before the data is loaded: `in_steps` turns them into the step
      fields once the training set's size is known (the pipeline does), and objectives are made from steps only.
    eps_ramp_shape: 'linear' or 'smoothed'.
    crown_beta_final: CROWN-IBP's beta at the end of the ramp (beta goes from 1 to this value).
    nfgsm_noise: N-FGSM's noise magnitude k: the start is x + U[-k eps, k eps].
    gradalign_weight: weight of the GradAlign penalty added to nfgsm / fgsm_rs / fgsm losses (0: none).
    crown_ibp_bound: what crown_ibp trains on: 'margins' (CROWN-IBP's per-class margin bounds, one backward bound
      pass with K specifications) or 'fused' (`crown_ibp_fused`: one bound of the loss itself, one specification).
  """
  name: str = "natural"
  eps: float = 0.0
  norm: str = "linf"
  pgd_steps: int = 10
  pgd_step_size: float = 0.0
  rand_init: bool = True
  robust_weight: float = 1.0
  trades_beta: float = 6.0
  eps_warmup_steps: int = 0
  eps_ramp_steps: int = 0
  eps_warmup_epochs: float = 0.0
  eps_ramp_epochs: float = 0.0
  eps_ramp_shape: str = "linear"
  crown_beta_final: float = 0.0
  nfgsm_noise: float = single_step.NFGSM_NOISE
  gradalign_weight: float = 0.0
  crown_ibp_bound: str = "margins"

  def __post_init__(self):
    if self.name not in OBJECTIVE_NAMES:
      raise ValueError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, got {self.name!r}.")
    if self.eps < 0 or self.eps > 1:
      raise ValueError(f"eps must be in [0, 1] (inputs are pixels in [0, 1]), got {self.eps}.")
    if self.name != "natural" and self.eps == 0:
      raise ValueError(f"objective {self.name!r} needs eps > 0.")
    if self.norm not in attacks.NORMS:
      raise ValueError(f"norm must be one of {sorted(attacks.NORMS)}, got {self.norm!r}.")
    if self.name in ("ibp", "crown_ibp", *SINGLE_STEP_OBJECTIVES) and self.norm != "linf":
      raise ValueError(f"objective {self.name!r} bounds an L-inf ball; norm must be 'linf', got {self.norm!r}.")
    if self.pgd_steps < 1:
      raise ValueError(f"pgd_steps must be >= 1, got {self.pgd_steps}.")
    if self.pgd_step_size < 0:
      raise ValueError(f"pgd_step_size must be >= 0, got {self.pgd_step_size}.")
    if not 0 <= self.robust_weight <= 1:
      raise ValueError(f"robust_weight must be in [0, 1], got {self.robust_weight}.")
    if self.trades_beta < 0:
      raise ValueError(f"trades_beta must be >= 0, got {self.trades_beta}.")
    if not 0 <= self.crown_beta_final <= 1:
      raise ValueError(f"crown_beta_final must be in [0, 1], got {self.crown_beta_final}.")
    if self.nfgsm_noise < 0 or self.gradalign_weight < 0:
      raise ValueError(f"nfgsm_noise and gradalign_weight must be >= 0, got {self.nfgsm_noise}, "
                       f"{self.gradalign_weight}.")
    if self.crown_ibp_bound not in CROWN_IBP_BOUNDS:
      raise ValueError(f"crown_ibp_bound must be one of {', '.join(CROWN_IBP_BOUNDS)}, got {self.crown_ibp_bound!r}.")
    if self.gradalign_weight and self.name not in SINGLE_STEP_OBJECTIVES:
      raise ValueError(f"gradalign_weight applies to {' and '.join(SINGLE_STEP_OBJECTIVES)}, not objective "
                       f"{self.name!r}.")
    if self.eps_warmup_epochs < 0 or self.eps_ramp_epochs < 0:
      raise ValueError(f"eps_warmup_epochs and eps_ramp_epochs must be >= 0, got {self.eps_warmup_epochs}, "
                       f"{self.eps_ramp_epochs}.")
    if (self.eps_warmup_epochs and self.eps_warmup_steps) or (self.eps_ramp_epochs and self.eps_ramp_steps):
      raise ValueError("give the epsilon warm-up and ramp in steps or in epochs, not both; got eps_warmup_steps "
                       f"{self.eps_warmup_steps}, eps_warmup_epochs {self.eps_warmup_epochs}, eps_ramp_steps "
                       f"{self.eps_ramp_steps}, eps_ramp_epochs {self.eps_ramp_epochs}.")
    self.epsilon_schedule()  # validates the ramp fields

  @property
  def step_size(self):
    """The attack step size at the final epsilon: the configured one, or the method's: min(eps, 2.5 eps / steps)
    for PGD (Madry et al.), eps for N-FGSM (de Jorge et al.'s experiments), 1.25 eps for FGSM-RS (Wong et al.), eps
    for FGSM."""
    single = {"nfgsm": single_step.NFGSM_STEP, "fgsm_rs": single_step.FGSM_RS_STEP,
              "fgsm": single_step.FGSM_STEP}.get(self.name)
    if self.pgd_step_size or single is None:
      return self.pgd_step_size or min(self.eps, 2.5 * self.eps / self.pgd_steps)
    return single * self.eps

  def epsilon_schedule(self):
    return schedules.Ramp(0.0, self.eps, self.eps_warmup_steps, self.eps_ramp_steps, self.eps_ramp_shape)

  def in_steps(self, steps_per_epoch):
    """This config with its epoch-valued ramp lengths turned into steps (`int(epochs * steps_per_epoch)`, as the
    learning-rate warm-up does) and the epoch fields zeroed; itself when they are 0."""
    if not (self.eps_warmup_epochs or self.eps_ramp_epochs):
      return self
    return dataclasses.replace(
        self, eps_warmup_steps=self.eps_warmup_steps + int(self.eps_warmup_epochs * steps_per_epoch),
        eps_ramp_steps=self.eps_ramp_steps + int(self.eps_ramp_epochs * steps_per_epoch), eps_warmup_epochs=0.0,
        eps_ramp_epochs=0.0)

  def to_dict(self):
    return dataclasses.asdict(self)


def _cross_entropy(y, logits):
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


def _accuracy(y, logits):
  return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=1), tf.cast(y, tf.int64)), tf.float32))


def _kl_from_logits(labels, logits):
  """Per-example KL(softmax(labels) || softmax(logits)); `labels` are clean logits (TRADES' attack loss)."""
  p = tf.nn.softmax(labels)
  return tf.reduce_sum(p * (tf.nn.log_softmax(labels) - tf.nn.log_softmax(logits)), axis=1)


class Objective:
  """Base class: `objective(model, x, y, step) -> (loss, metrics)`, both scalars / dict of scalars.

  Args:
    config: the ObjectiveConfig.
    seed: run seed; attack starts are drawn statelessly from (seed, step), so a resumed run repeats them exactly.
  """

  def __init__(self, config, seed=0):
    self.config = config
    self.seed = seed
    self.epsilon = config.epsilon_schedule()
    # {model: its attack function}, weakly keyed: one objective serves many models (each mask update of gradual
    # scores trains a new score model), and a model the caller dropped must take its functions with it.
    self._inference_fns = weakref.WeakKeyDictionary()

  def attack_seed(self, step):
    """The stateless seed of the attack at `step`; replicas of a distributed step each get their own starts."""
    replica = tf.distribute.get_replica_context()
    replica_id = 0 if replica is None else replica.replica_id_in_sync_group
    offset = tf.cast(replica_id, tf.int64) * (2 ** 40)  # replica 0 (and one device) keeps (seed, step)
    return tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64) + offset])

  def inference_fn(self, model):
    """The attack's model function, built once per model so that cleverhans' inner tf.function is not retraced.

    The function reaches the model through a weak proxy, so the cache entry does not keep its own key alive.
    """
    if model not in self._inference_fns:
      self._inference_fns[model] = attacks.inference_fn(weakref.proxy(model))
    return self._inference_fns[model]

  def attack_through(self, model, model_fn):
    """Makes the attacks on `model` call `model_fn` (images -> logits, inference mode) instead of the model itself.

    For a stand-in that computes what `model(x, training=False)` computes, e.g. the wrapper-free view of a pruned
    model that `distribute.route_attacks_around_pruning_wrappers` sets up. `model_fn` lives as long as `model`.
    """
    self._inference_fns[model] = model_fn

  def __call__(self, model, x, y, step):
    raise NotImplementedError


class NaturalObjective(Objective):
  """Cross-entropy on clean inputs."""

  def __call__(self, model, x, y, step):
    logits = model(x, training=True)
    loss = _cross_entropy(y, logits)
    return loss, {"loss": loss, "natural_acc": _accuracy(y, logits)}


class PGDObjective(Objective):
  """Madry adversarial training, optionally mixed with the clean loss (`robust_weight`)."""

  def adversarial_examples(self, model, x, y, eps, step):
    cfg = self.config
    return attacks.pgd(self.inference_fn(model), x, y, eps, cfg.step_size * eps / cfg.eps, cfg.pgd_steps,
                       norm=cfg.norm, rand_init=cfg.rand_init, seed=self.attack_seed(step))

  def __call__(self, model, x, y, step):
    cfg = self.config
    eps = self.epsilon(step)
    x_adv = tf.stop_gradient(self.adversarial_examples(model, x, y, eps, step))
    if cfg.robust_weight == 1:
      adv_logits = model(x_adv, training=True)
      robust_loss = _cross_entropy(y, adv_logits)
      return robust_loss, {"loss": robust_loss, "robust_loss": robust_loss, "robust_acc": _accuracy(y, adv_logits),
                           "eps": eps}
    logits, adv_logits = tf.split(model(tf.concat([x, x_adv], axis=0), training=True), 2)
    natural_loss, robust_loss = _cross_entropy(y, logits), _cross_entropy(y, adv_logits)
    loss = (1 - cfg.robust_weight) * natural_loss + cfg.robust_weight * robust_loss
    return loss, {"loss": loss, "natural_loss": natural_loss, "robust_loss": robust_loss,
                  "natural_acc": _accuracy(y, logits), "robust_acc": _accuracy(y, adv_logits), "eps": eps}


class SingleStepObjective(PGDObjective):
  """N-FGSM, FGSM-RS or FGSM training (`single_step`): the PGD objective with a single-step attack, plus GradAlign's
  penalty when `gradalign_weight` > 0 (its input gradients in inference mode: still one training-mode call)."""

  def adversarial_examples(self, model, x, y, eps, step):
    cfg = self.config
    model_fn, step_size = self.inference_fn(model), cfg.step_size * eps / cfg.eps
    if cfg.name == "nfgsm":
      return single_step.nfgsm(model_fn, x, y, eps, step_size, cfg.nfgsm_noise, seed=self.attack_seed(step))
    if cfg.name == "fgsm":
      return single_step.fgsm(model_fn, x, y, eps, step_size)
    return single_step.fgsm_rs(model_fn, x, y, eps, step_size, seed=self.attack_seed(step))

  def __call__(self, model, x, y, step):
    loss, metrics = super().__call__(model, x, y, step)
    if not self.config.gradalign_weight:
      return loss, metrics
    seed = tf.random.experimental.stateless_fold_in(self.attack_seed(step), 1)  # not the attack's noise
    penalty = single_step.gradalign_penalty(self.inference_fn(model), x, y, metrics["eps"], seed=seed)
    loss += self.config.gradalign_weight * penalty
    return loss, dict(metrics, loss=loss, gradalign=penalty)


class TradesObjective(Objective):
  """TRADES: CE(f(x), y) + beta KL(f(x) || f(x')), x' maximising the KL term by PGD."""

  def __call__(self, model, x, y, step):
    cfg = self.config
    eps = self.epsilon(step)
    model_fn = self.inference_fn(model)
    clean_logits = tf.stop_gradient(model_fn(x))
    x_adv = attacks.pgd(model_fn, x, clean_logits, eps, cfg.step_size * eps / cfg.eps, cfg.pgd_steps,
                        norm=cfg.norm, rand_init=True, loss_fn=_kl_from_logits, seed=self.attack_seed(step))
    x_adv = tf.stop_gradient(x_adv)
    logits, adv_logits = tf.split(model(tf.concat([x, x_adv], axis=0), training=True), 2)
    natural_loss = _cross_entropy(y, logits)
    robust_loss = tf.reduce_mean(_kl_from_logits(logits, adv_logits))
    loss = natural_loss + cfg.trades_beta * robust_loss
    return loss, {"loss": loss, "natural_loss": natural_loss, "robust_loss": robust_loss,
                  "natural_acc": _accuracy(y, logits), "robust_acc": _accuracy(y, adv_logits), "eps": eps}


class IBPObjective(Objective):
  """Interval bound propagation training: kappa CE(f(x)) + (1 - kappa) CE(-margin lower bounds).

  kappa goes from 1 to `1 - robust_weight` with the epsilon ramp (Gowal et al. use a final kappa of 0.5). With
  `crown_ibp`, the margins mix CROWN-IBP and IBP with beta going from 1 to `crown_beta_final` (Zhang et al. 2020);
  with `crown_ibp_bound` 'fused' the loss bounds mix so instead (`crown_ibp_fused`), and the `verified_acc` metric
  is IBP's. The bounds are of the network the step trains: BatchNormalization layers normalise by the batch's
  statistics, as in the clean training pass (Gowal et al.), not by their moving averages.
  """

  def __init__(self, config, num_classes, seed=0):
    super().__init__(config, seed)
    self.num_classes = num_classes
    ramp = (config.eps_warmup_steps, config.eps_ramp_steps, config.eps_ramp_shape)
    self.kappa = schedules.Ramp(1.0, 1.0 - config.robust_weight, *ramp)
    self.beta = schedules.Ramp(1.0, config.crown_beta_final, *ramp)

  def margins(self, model, x, y, eps, step):
    with bound_registry.batch_statistics(interval_propagation.nominal_batch_statistics(model, x)):
      if self.config.name == "crown_ibp":
        return crown_ibp.crown_ibp_training_margins(model, x, y, eps, self.num_classes, self.beta(step))
      return margins_lib.margin_bounds(model, x, y, eps, self.num_classes)

  def robust_losses(self, model, x, y, eps, step):
    """Per-example upper bounds of the cross-entropy over the ball, and the margin bounds of `verified_acc`."""
    if self.config.name == "crown_ibp" and self.config.crown_ibp_bound == "fused":
      with bound_registry.batch_statistics(interval_propagation.nominal_batch_statistics(model, x)):
        return crown_ibp_fused.robust_cross_entropy(model, x, y, eps, self.num_classes, self.beta(step))
    margins = self.margins(model, x, y, eps, step)
    return margins_lib.robust_cross_entropy(margins), margins

  def __call__(self, model, x, y, step):
    eps = self.epsilon(step)
    kappa = self.kappa(step)
    losses, margins = self.robust_losses(model, x, y, eps, step)
    robust_loss = tf.reduce_mean(losses)

    def mixed():
      logits = model(x, training=True)
      natural_loss = _cross_entropy(y, logits)
      return logits, natural_loss, kappa * natural_loss + (1 - kappa) * robust_loss

    def robust_only():
      # kappa = 0 (after the ramp, with robust_weight 1, CROWN-IBP's usual final value): the clean pass only feeds
      # the metrics and tfmot's step, so no gradient goes through it, which saves a third of the step's work.
      logits = tf.stop_gradient(model(x, training=True))
      return logits, _cross_entropy(y, logits), robust_loss

    logits, natural_loss, loss = tf.cond(kappa > 0, mixed, robust_only)
    # margins[i, y_i] is 0 by construction; every other margin must be positive.
    is_true_class = tf.one_hot(y, self.num_classes) > 0
    verified = tf.reduce_mean(tf.cast(tf.reduce_all(tf.logical_or(margins > 0, is_true_class), axis=1), tf.float32))
    return loss, {"loss": loss, "natural_loss": natural_loss, "robust_loss": robust_loss,
                  "natural_acc": _accuracy(y, logits), "verified_acc": verified, "eps": eps, "kappa": kappa}


def make_objective(config, num_classes, seed=0):
  """Builds the objective named by `config.name`.

  Args:
    config: an ObjectiveConfig.
    num_classes: number of classes (the margin specification of the bound objectives needs it).
    seed: run seed for the attacks' random starts.

  Returns:
    An `Objective`.

  Raises:
    ValueError: the epsilon ramp is still in epochs (resolve it with `config.in_steps(steps_per_epoch)`).
  """
  if config.eps_warmup_epochs or config.eps_ramp_epochs:
    raise ValueError(f"objective {config.name!r} has its epsilon warm-up / ramp in epochs; turn them into steps with "
                     "ObjectiveConfig.in_steps(steps_per_epoch) once the training set's size is known.")
  if config.name in ("ibp", "crown_ibp"):
    return IBPObjective(config, num_classes, seed)
  if config.name in SINGLE_STEP_OBJECTIVES:
    return SingleStepObjective(config, seed)
  return {"natural": NaturalObjective, "pgd": PGDObjective, "trades": TradesObjective}[config.name](config, seed)
