"""The configuration of one run, as plain frozen dataclasses that round-trip through JSON.

The CLI turns flags into a `RunConfig`; the library only ever sees a `RunConfig`. The same record is written into
`report.json` and the checkpoints, so a run can be reproduced and a resume can be checked against it.
"""

import dataclasses
import json

from tfrobprune.data import datasets
from tfrobprune.deploy import artifact_verification
from tfrobprune.evaluate import evaluation as evaluation_lib
from tfrobprune import model_files
from tfrobprune.prune import channels as channels_lib
from tfrobprune.prune import pruning_config
from tfrobprune.prune import scores as scores_lib
from tfrobprune.robust import objectives
from tfrobprune.train import distribute as distribute_lib
from tfrobprune.train import overfit_monitor
from tfrobprune.train import training


PRUNE_CRITERIA = ("magnitude", "scores")
PRUNE_STRUCTURES = ("unstructured", "channels")
# The `DataConfig.dataset` of a run whose data the Python API handed over (`tfrobprune.robust_prune`).
API_DATASET = "api"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which dataset and how it is fed.

  Attributes:
    dataset: one of `datasets.DATASET_NAMES`, or `API_DATASET` for data given to `tfrobprune.robust_prune`.
    data_dir: folder with the dataset files (None: the dataset's default location).
    image_size: (height, width) the images of an image folder or TFRecord dataset are decoded to (None: the first
      training image's size; images of another size are resized, bilinear).
    validation_fraction: part of the training set held out for validation (0: none).
    augment: random crop + flip (CIFAR-like data).
    synthetic_examples: (train, test) sizes of the synthetic dataset.
    synthetic_shape: image shape of the synthetic dataset.
    max_train_examples: train on N examples (0: all), a class-stratified subset chosen by the run's seed; for
      quick runs.
  """
  dataset: str = "fashion_mnist"
  data_dir: str | None = None
  image_size: tuple[int, int] | None = None
  validation_fraction: float = 0.0
  augment: bool = False
  synthetic_examples: tuple[int, int] = (1024, 256)
  synthetic_shape: tuple[int, int, int] = (28, 28, 1)
  max_train_examples: int = 0

  def __post_init__(self):
    if self.dataset not in datasets.DATASET_NAMES + (API_DATASET,):
      raise ValueError(f"dataset must be one of {', '.join(datasets.DATASET_NAMES)}, got {self.dataset!r}.")
    if not 0 <= self.validation_fraction < 1:
      raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")
    if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
      raise ValueError(f"image_size must be (height, width) with two positive integers, got {self.image_size}.")
    if self.max_train_examples < 0:
      raise ValueError(f"max_train_examples must be >= 0, got {self.max_train_examples}.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a `pipeline.run` needs.

  Attributes:
    data: the DataConfig.
    model: one of `models.MODEL_NAMES`, or the path of a saved Keras model (`model_files`).
    seed: seeds data order, initialisation and attacks.
    deterministic: enable TensorFlow op determinism (bit-identical reruns; slower).
    pretrain: optimisation of the dense pre-training phase.
    pretrain_objective: its objective.
    finetune: optimisation of each fine-tuning round after pruning.
    finetune_objective: its objective.
    pruning: how to prune (target sparsity is replaced by each entry of `sparsities`).
    sparsities: target sparsities; each gives one pruned model from the same dense model.
    prune_rounds: prune/fine-tune rounds to reach each target (constant keep ratio per round).
    prune_end_fraction: for gradual schedules, the part of each fine-tuning round over which sparsity ramps up.
    evaluation: the EvalConfig.
    dense_checkpoint: path of a dense checkpoint to start from; pre-training is skipped.
    export: write deployment artifacts at the end.
    artifact_square_examples: attack each exported TFLite file directly with Square (through its LiteRT
      interpreter, at the evaluation's eps and norm) on the first N evaluation examples (0: not attacked);
      reported per artifact as `square_acc`.
    prune_criterion: which weights pruning removes: 'magnitude' (the paper's, tfmot's schedules) or 'scores'
      (HYDRA: a mask learned with the fine-tuning objective while the weights stay frozen, then fine-tuned).
    scores: settings of the score optimisation (`prune_criterion='scores'`).
    distribute: the `tf.distribute` strategy training runs under, one of `distribute.STRATEGY_NAMES` ('default':
      one device). Recorded because it changes results slightly: batch normalisation normalises each replica's
      share of the batch by its own statistics.
    prune_structure: 'unstructured' (single weights, `pruning`) or 'channels': whole Conv2D filters and Dense units
      with every weight that reads them (`prune.channels`), fine-tuned under masks and then rebuilt smaller
      (`prune.surgery`); `sparsities` above 0 then prune the smaller model's weights on top.
    channel_sparsity: with 'channels', the fraction of channels removed (per group, or over all groups with
      `pruning.scope` 'global'), on `pruning`'s schedule.
    channel_norm: with 'channels', the filter norm that ranks channels: 'l1' or 'l2'.
    overfit: the catastrophic-overfitting monitor of single-step phases (`overfit_monitor.OverfitConfig`).
  """
  data: DataConfig = DataConfig()
  model: str = "cnn_small"
  seed: int = 0
  deterministic: bool = False
  pretrain: training.TrainConfig = training.TrainConfig()
  pretrain_objective: objectives.ObjectiveConfig = objectives.ObjectiveConfig()
  finetune: training.TrainConfig = training.TrainConfig()
  finetune_objective: objectives.ObjectiveConfig = objectives.ObjectiveConfig()
  pruning: pruning_config.PruningConfig = pruning_config.PruningConfig(target_sparsity=0.9)
  sparsities: tuple[float, ...] = (0.9,)
  prune_rounds: int = 1
  prune_end_fraction: float = 0.5
  evaluation: evaluation_lib.EvalConfig = evaluation_lib.EvalConfig()
  dense_checkpoint: str | None = None
  export: bool = True
  artifact_square_examples: int = artifact_verification.DEFAULT_SQUARE_EXAMPLES
  prune_criterion: str = "magnitude"
  scores: scores_lib.ScoreConfig = scores_lib.ScoreConfig()
  distribute: str = "default"
  prune_structure: str = "unstructured"
  channel_sparsity: float = 0.5
  channel_norm: str = "l2"
  overfit: overfit_monitor.OverfitConfig = overfit_monitor.OverfitConfig()

  def __post_init__(self):
    model_files.check_model_spec(self.model)
    if not self.sparsities:
      raise ValueError("at least one target sparsity is needed.")
    for sparsity in self.sparsities:
      if not 0 <= sparsity < 1:
        raise ValueError(f"each sparsity must be in [0, 1), got {sparsity}.")
    if self.prune_rounds < 1:
      raise ValueError(f"prune_rounds must be >= 1, got {self.prune_rounds}.")
    if not 0 < self.prune_end_fraction <= 1:
      raise ValueError(f"prune_end_fraction must be in (0, 1], got {self.prune_end_fraction}.")
    if self.prune_criterion not in PRUNE_CRITERIA:
      raise ValueError(f"prune_criterion must be one of {', '.join(PRUNE_CRITERIA)}, got {self.prune_criterion!r}.")
    if self.prune_criterion == "scores" and (self.distribute != "default" or self.pruning.m_by_n):
      raise ValueError("prune_criterion 'scores' learns unstructured masks on one device; it cannot be combined "
                       f"with distribute {self.distribute!r} or m_by_n {self.pruning.m_by_n}.")
    if self.distribute not in distribute_lib.STRATEGY_NAMES:
      raise ValueError(f"distribute must be one of {', '.join(distribute_lib.STRATEGY_NAMES)}, "
                       f"got {self.distribute!r}.")
    _check_structure(self)
    if self.artifact_square_examples < 0:
      raise ValueError(f"artifact_square_examples must be >= 0, got {self.artifact_square_examples}.")

  def to_dict(self):
    return dataclasses.asdict(self)

  def to_json(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, config):
    """Inverse of `to_dict` (JSON lists become tuples again)."""
    fields = {
        "data": lambda d: DataConfig(**_tuples(d)),
        "pretrain": lambda d: training.TrainConfig(**d),
        "finetune": lambda d: training.TrainConfig(**d),
        "pretrain_objective": lambda d: objectives.ObjectiveConfig(**d),
        "finetune_objective": lambda d: objectives.ObjectiveConfig(**d),
        "pruning": lambda d: pruning_config.PruningConfig(**_tuples(d)),
        "evaluation": lambda d: evaluation_lib.EvalConfig(**d),
        "scores": scores_lib.ScoreConfig.from_dict,
        "overfit": lambda d: overfit_monitor.OverfitConfig(**d),
    }
    values = {key: fields[key](value) if key in fields else value for key, value in config.items()}
    values["sparsities"] = tuple(values.get("sparsities", (0.9,)))
    return cls(**values)


def _check_structure(config):
  """Validates the channel-pruning fields and what they combine with."""
  if config.prune_structure not in PRUNE_STRUCTURES:
    raise ValueError(f"prune_structure must be one of {', '.join(PRUNE_STRUCTURES)}, got {config.prune_structure!r}.")
  if not 0 <= config.channel_sparsity < 1:
    raise ValueError(f"channel_sparsity must be in [0, 1), got {config.channel_sparsity}.")
  if config.channel_norm not in channels_lib.NORMS:
    raise ValueError(f"channel_norm must be one of {', '.join(channels_lib.NORMS)}, got {config.channel_norm!r}.")
  if config.prune_structure == "channels" and (config.prune_criterion != "magnitude" or config.pruning.m_by_n or
                                               config.distribute != "default"):
    raise ValueError("prune_structure 'channels' ranks channels by their norms on one device; it cannot be combined "
                     f"with prune_criterion {config.prune_criterion!r}, m_by_n {config.pruning.m_by_n} or "
                     f"distribute {config.distribute!r}.")


def with_epochs_in_steps(config, train_examples):
  """`config` with its epoch-valued settings turned into optimizer steps of a training set of `train_examples`.

  The CLI cannot know how many examples an image folder or TFRecord files hold, so the epsilon warm-up and ramp stay
  in epochs until the pipeline has loaded the data and calls this (each phase's objective with that phase's steps
  per epoch, `train_examples // batch_size`). A run records the result, so it resumes against the steps it used.
  """
  def resolved(objective, train):
    return objective.in_steps(train_examples // train.batch_size)

  return dataclasses.replace(config, pretrain_objective=resolved(config.pretrain_objective, config.pretrain),
                             finetune_objective=resolved(config.finetune_objective, config.finetune))


def _tuples(record):
  return {key: tuple(value) if isinstance(value, list) else value for key, value in record.items()}


# Settings added after runs were first recorded, with the value a record written before them implies.
_ADDED_FIELDS = {"distribute": "default", "prune_structure": "unstructured", "channel_sparsity": 0.5,
                 "channel_norm": "l2"}
_ADDED_FIELDS.update({"evaluation.attacks": ["pgd"], "evaluation.autoattack_examples": 0})  # --eval_attack, ...
_ADDED_FIELDS["artifact_square_examples"] = artifact_verification.DEFAULT_SQUARE_EXAMPLES  # only the export uses it
# Epoch-valued ramps: a run records them resolved into steps (0 epochs), as runs before these fields did.
_ADDED_FIELDS.update({f"{phase}_objective.eps_{part}_epochs": 0.0 for phase in ("pretrain", "finetune")
                      for part in ("warmup", "ramp")})
# Single-step objectives, the CROWN-IBP bound choice and the overfitting monitor (issue 19).
_ADDED_FIELDS.update({f"{phase}_objective.{name}": value for phase in ("pretrain", "finetune")
                      for name, value in (("nfgsm_noise", 2.0), ("gradalign_weight", 0.0),
                                          ("crown_ibp_bound", "margins"))})
_ADDED_FIELDS["overfit"] = overfit_monitor.OverfitConfig().to_dict()


def differing_fields(a, b, prefix=""):
  """Dotted names of the fields whose values differ between two config dicts (for refusing a resume).

  A field of `_ADDED_FIELDS` missing from a record counts as its default, so runs recorded before it existed resume.
  """
  names = []
  for key in sorted(set(a) | set(b)):
    implied = _ADDED_FIELDS.get(prefix + key)
    left, right = a.get(key, implied), b.get(key, implied)
    if isinstance(left, dict) and isinstance(right, dict):
      names += differing_fields(left, right, f"{prefix}{key}.")
    elif left != right:
      names.append(f"{prefix}{key}")
  return names
