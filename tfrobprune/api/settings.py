"""The settings of the Python API, one small object per group of CLI flags: `Objective`, `Pruning`, `Training`,
`Evaluation`.

They take the CLI's names and defaults (`--eps_ramp_epochs` is `Objective(eps_ramp_epochs=...)`, `--sparsity` is
`Pruning(sparsity=...)`, ...), validate on construction with the errors of the configs they become, and turn into
the `RunConfig` the CLI builds from the matching flags (`run_config`), so the API and the CLI run the same pipeline.
`Objective` is the objectives' own config record, so every objective setting the CLI has is there too.
"""

import dataclasses
import numbers

from tfrobprune import config as config_lib
from tfrobprune.evaluate import evaluation
from tfrobprune.prune import pruning_config
from tfrobprune.prune import scores
from tfrobprune.robust import layer_support
from tfrobprune.robust import objectives
from tfrobprune.train import training

__all__ = ["Objective", "DEFAULT_OBJECTIVE", "Pruning", "Training", "Evaluation", "without_ramp", "run_config"]


# The training objective: the CLI's --objective, --eps, --pgd_steps, --eps_ramp_epochs, ... flags as one record,
# e.g. `Objective("pgd", eps=0.1, pgd_steps=10, eps_ramp_epochs=5)` (fields: `objectives.ObjectiveConfig`).
Objective = objectives.ObjectiveConfig
# What `robust_prune` trains with by default: the CLI's defaults (--objective=pgd --eps=0.1).
DEFAULT_OBJECTIVE = Objective("pgd", eps=0.1)
# The evaluation epsilon when the objective has none (natural training): the CLI's --eps default.
_DEFAULT_EVAL_EPS = 0.1


def without_ramp(objective):
  """`objective` starting at its full epsilon: the CLI's fine-tuning objective (its ramps are pre-training's)."""
  return dataclasses.replace(objective, eps_warmup_steps=0, eps_ramp_steps=0, eps_warmup_epochs=0.0,
                             eps_ramp_epochs=0.0, eps_ramp_shape="linear")



def _names(value):
  """A tuple of names from a sequence, or from one string as the CLI's comma-separated list ('a,b'; 'logits')."""
  if isinstance(value, str):
    return tuple(name.strip() for name in value.split(",") if name.strip())
  return tuple(value)

@dataclasses.dataclass(frozen=True)
class Pruning:
  """How to prune (the CLI's --sparsity, --prune_* flags).

  Attributes:
    sparsity: the target fraction of zero weights, or a tuple of them (a sweep: one pruned model per target from
      the same dense model; the last one is returned).
    schedule: 'polynomial' (gradual, tfmot's PolynomialDecay) or 'constant' (one-shot).
    scope: 'layer' (every layer to the target) or 'global' (one magnitude threshold over all layers).
    frequency: optimizer steps between mask updates (a short fine-tuning updates more often).
    exclude_layers: names of Dense/Conv2D layers kept dense (e.g. the first and the last).
    m_by_n: structured sparsity, e.g. (2, 4).
    rounds: prune/fine-tune rounds to reach each target.
    end_fraction: the part of each fine-tuning round over which the sparsity ramps up.
    criterion: 'magnitude' (the paper's) or 'scores' (HYDRA's learned masks; `robust_prune` only).
    score_epochs, score_learning_rate, score_budgets, score_schedule, score_update_steps: how the scores are
      learned with criterion 'scores' (the CLI's --score_* flags; `scores.ScoreConfig`).
  """
  sparsity: float | tuple[float, ...] = 0.9
  schedule: str = "polynomial"
  scope: str = "layer"
  frequency: int = 100
  exclude_layers: tuple[str, ...] = ()
  m_by_n: tuple[int, int] | None = None
  rounds: int = 1
  end_fraction: float = 0.5
  criterion: str = "magnitude"
  score_epochs: int = 1
  score_learning_rate: float = 0.1
  score_budgets: str = "learned"
  score_schedule: str = "oneshot"
  score_update_steps: int = 100

  def __post_init__(self):
    object.__setattr__(self, "sparsity", float(self.sparsity) if isinstance(self.sparsity, numbers.Real)
                       else tuple(self.sparsity))
    object.__setattr__(self, "exclude_layers", _names(self.exclude_layers))
    if not 0 < self.end_fraction <= 1:
      raise ValueError(f"end_fraction must be in (0, 1], got {self.end_fraction}.")
    if self.rounds < 1:
      raise ValueError(f"rounds must be >= 1, got {self.rounds}.")
    if self.criterion not in config_lib.PRUNE_CRITERIA:
      raise ValueError(f"criterion must be one of {', '.join(config_lib.PRUNE_CRITERIA)}, got {self.criterion!r}.")
    for target in self.sparsities:
      self.to_pruning_config(target)
    self.score_config()

  @property
  def sparsities(self):
    """The targets as a tuple (one entry unless `sparsity` is a sweep)."""
    sparsities = (self.sparsity,) if isinstance(self.sparsity, numbers.Real) else self.sparsity
    if not sparsities:
      raise ValueError("Pruning needs at least one target sparsity.")
    return tuple(float(s) for s in sparsities)

  def to_pruning_config(self, target=None):
    """The `PruningConfig` for `target` (default: the last sparsity); the pipeline fits its steps to the phase."""
    target = self.sparsities[-1] if target is None else target
    return pruning_config.PruningConfig(
        target_sparsity=target, schedule=self.schedule, frequency=self.frequency, end_step=self.frequency,
        scope=self.scope, exclude_layers=self.exclude_layers, m_by_n=self.m_by_n)

  def score_config(self):
    """The `scores.ScoreConfig` of criterion 'scores'."""
    return scores.ScoreConfig(epochs=self.score_epochs, learning_rate=self.score_learning_rate,
                              budgets=self.score_budgets, schedule=self.score_schedule,
                              update_steps=self.score_update_steps)


@dataclasses.dataclass(frozen=True)
class Training:
  """How the dense model is pre-trained and each pruned model fine-tuned (the CLI's optimisation and data flags).

  Attributes:
    pretrain_epochs: dense pre-training epochs; 0 starts pruning from the model's weights as given.
    finetune_epochs: fine-tuning epochs per pruning round.
    batch_size: examples per optimizer step.
    learning_rate: pre-training peak learning rate.
    finetune_learning_rate: fine-tuning peak learning rate.
    lr_schedule: 'constant', 'cosine' or 'step'.
    warmup_epochs: learning-rate warm-up epochs.
    optimizer: 'adam' or 'sgd'.
    weight_decay: L2 penalty on kernels.
    augment: random crop + flip (CIFAR-like data).
    validation_fraction: part of the training data held out for per-epoch validation accuracy.
    max_train_examples: train on a class-stratified subset of N examples (0: all).
  """
  pretrain_epochs: int = 10
  finetune_epochs: int = 5
  batch_size: int = 128
  learning_rate: float = 1e-3
  finetune_learning_rate: float = 5e-4
  lr_schedule: str = "cosine"
  warmup_epochs: float = 0.0
  optimizer: str = "adam"
  weight_decay: float = 0.0
  augment: bool = False
  validation_fraction: float = 0.0
  max_train_examples: int = 0

  def __post_init__(self):
    if self.finetune_epochs < 1:
      raise ValueError(f"finetune_epochs must be >= 1, got {self.finetune_epochs}.")
    if self.max_train_examples < 0:
      raise ValueError(f"max_train_examples must be >= 0, got {self.max_train_examples}.")
    self.train_configs()

  def train_configs(self):
    """(pre-training, fine-tuning) `training.TrainConfig`s."""
    common = dict(batch_size=self.batch_size, lr_schedule=self.lr_schedule, warmup_epochs=self.warmup_epochs,
                  optimizer=self.optimizer, weight_decay=self.weight_decay)
    return (training.TrainConfig(epochs=self.pretrain_epochs, learning_rate=self.learning_rate, **common),
            training.TrainConfig(epochs=self.finetune_epochs, learning_rate=self.finetune_learning_rate, **common))


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """How the dense and pruned models are evaluated (the CLI's --eval_* flags).

  Attributes:
    eps: attack and certification radius (None: the objective's eps).
    pgd_steps: PGD steps.
    pgd_restarts: PGD random restarts.
    pgd_step_size: PGD step size (0: 2.5 eps / pgd_steps).
    examples: evaluate on a class-stratified subset of N test examples (0: all).
    batch_size: evaluation batch size.
    verified: report IBP/CROWN verified accuracy (None: for bound objectives only).
    attacks: robust accuracies to report: 'pgd' and/or 'autoattack' (`evaluation.ATTACKS`).

  Pass an `evaluation.EvalConfig` instead to set every evaluation field yourself.
  """
  eps: float | None = None
  pgd_steps: int = 50
  pgd_restarts: int = 5
  pgd_step_size: float = 0.0
  examples: int = 0
  batch_size: int = 500
  verified: bool | None = None
  attacks: tuple[str, ...] = ("pgd",)

  def __post_init__(self):
    self.to_config(eps=0.1, verified=False)

  def to_config(self, eps, verified, norm="linf"):
    """The `evaluation.EvalConfig`, with the objective's `eps`, `norm` and `verified` filling the gaps."""
    return evaluation.EvalConfig(
        eps=self.eps if self.eps is not None else eps, norm=norm, pgd_steps=self.pgd_steps,
        pgd_restarts=self.pgd_restarts, pgd_step_size=self.pgd_step_size,
        verified=self.verified if self.verified is not None else verified, batch_size=self.batch_size,
        max_examples=self.examples, attacks=_names(self.attacks))


def run_config(model, *, objective, pruning, training_settings, evaluation_settings, pretrain_objective=None, seed=0,
               deterministic=False, export=True):
  """The `RunConfig` the API's settings describe: what `cli.config_from_flags` builds from the matching flags.

  Args:
    model: the model spec (a zoo name or the path of a saved model).
    objective: the `Objective` of both phases (pre-training's ramps included; fine-tuning has none, as in the CLI;
      epoch-valued ramps become steps when the pipeline has the data).
    pruning: a `Pruning`.
    training_settings: a `Training`.
    evaluation_settings: an `Evaluation` or an `evaluation.EvalConfig`.
    pretrain_objective: another `Objective` for pre-training (e.g. natural, the paper's ablation), or None.
    seed, deterministic, export: as the CLI's flags.
  """
  pretrain_objective = pretrain_objective or objective
  names = (pretrain_objective.name, objective.name)
  verified = any(name in layer_support.BOUND_OBJECTIVES for name in names)  # the CLI's --verified default
  pretrain, finetune = training_settings.train_configs()
  return config_lib.RunConfig(
      data=config_lib.DataConfig(dataset=config_lib.API_DATASET, augment=training_settings.augment,
                                 validation_fraction=training_settings.validation_fraction,
                                 max_train_examples=training_settings.max_train_examples),
      model=model, seed=seed, deterministic=deterministic,
      pretrain=pretrain, pretrain_objective=pretrain_objective,
      finetune=finetune, finetune_objective=without_ramp(objective),
      pruning=pruning.to_pruning_config(), sparsities=pruning.sparsities, prune_rounds=pruning.rounds,
      prune_end_fraction=pruning.end_fraction, prune_criterion=pruning.criterion, scores=pruning.score_config(),
      evaluation=_eval_config(evaluation_settings, objective, verified),
      export=export)


def _eval_config(evaluation_settings, objective, verified):
  """An `Evaluation`'s `EvalConfig` (the objective's eps filling the gaps), or an `EvalConfig` given as is."""
  if isinstance(evaluation_settings, evaluation.EvalConfig):
    return evaluation_settings
  return evaluation_settings.to_config(eps=objective.eps or _DEFAULT_EVAL_EPS, verified=verified, norm=objective.norm)
