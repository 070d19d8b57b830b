"""The configuration of one run, as plain frozen dataclasses that round-trip through JSON.

The CLI turns flags into a `RunConfig`; the library only ever sees a `RunConfig`. The same record is written into
`report.json` and the checkpoints, so a run can be reproduced and a resume can be checked against it.
"""

import dataclasses
import json

from tfrobprune.data import datasets
from tfrobprune.evaluate import evaluation as evaluation_lib
from tfrobprune import models
from tfrobprune.prune import pruning_config
from tfrobprune.prune import scores as scores_lib
from tfrobprune.robust import objectives
from tfrobprune.train import distribute as distribute_lib
from tfrobprune.train import training


PRUNE_CRITERIA = ("magnitude", "scores")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which dataset and how it is fed.

  Attributes:
    dataset: one of `datasets.DATASET_NAMES`.
    data_dir: folder with the dataset files (None: the dataset's default location).
    image_size: (height, width) for image folders.
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
    if self.dataset not in datasets.DATASET_NAMES:
      raise ValueError(f"dataset must be one of {', '.join(datasets.DATASET_NAMES)}, got {self.dataset!r}.")
    if not 0 <= self.validation_fraction < 1:
      raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")
    if self.dataset == "image_folder" and not self.image_size:
      raise ValueError("the image_folder dataset needs image_size (height, width).")
    if self.max_train_examples < 0:
      raise ValueError(f"max_train_examples must be >= 0, got {self.max_train_examples}.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a `pipeline.run` needs.

  Attributes:
    data: the DataConfig.
    model: one of `models.MODEL_NAMES`.
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
    prune_criterion: which weights pruning removes: 'magnitude' (the paper's, tfmot's schedules) or 'scores'
      (HYDRA: a mask learned with the fine-tuning objective while the weights stay frozen, then fine-tuned).
    scores: settings of the score optimisation (`prune_criterion='scores'`).
    distribute: the `tf.distribute` strategy training runs under, one of `distribute.STRATEGY_NAMES` ('default':
      one device). Recorded because it changes results slightly: batch normalisation normalises each replica's
      share of the batch by its own statistics.
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
  prune_criterion: str = "magnitude"
  scores: scores_lib.ScoreConfig = scores_lib.ScoreConfig()
  distribute: str = "default"

  def __post_init__(self):
    if self.model not in models.MODEL_NAMES:
      raise ValueError(f"model must be one of {', '.join(models.MODEL_NAMES)}, got {self.model!r}.")
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
    }
    values = {key: fields[key](value) if key in fields else value for key, value in config.items()}
    values["sparsities"] = tuple(values.get("sparsities", (0.9,)))
    return cls(**values)


def _tuples(record):
  return {key: tuple(value) if isinstance(value, list) else value for key, value in record.items()}


# Settings added after runs were first recorded, with the value a record written before them implies.
_ADDED_FIELDS = {"distribute": "default"}


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
