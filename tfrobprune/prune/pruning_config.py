"""`PruningConfig`: how to prune (target, schedule, scope, exclusions, m:n), validated when it is built.

The config is plain data: `magnitude.prune_model` turns it into wrapped layers and tfmot schedules
(`pruning_schedules`), and it round-trips through JSON (`to_dict` / `from_dict`) for run configs and resumption.
"""

import dataclasses

from tfrobprune.prune import m_by_n_sparsity
from tfrobprune.prune import validation

SCHEDULES = ("constant", "polynomial")
SCOPES = ("layer", "global")


@dataclasses.dataclass(frozen=True)
class PruningConfig:
  """How to prune: target, schedule, scope and exclusions.

  Steps count optimizer steps from 0 (see `pruning_schedules`); masks change only in training-mode passes.

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
      threshold implies (`global_allocation.global_magnitude_targets`).
    exclude_layers: names of Dense/Conv2D layers to keep dense (typically the first and the last).
    m_by_n: (m, n), e.g. (2, 4): m zeros in every n consecutive input-channel weights of each output (tfmot
      `sparsity_m_by_n`). tfmot computes this mask once, at the first training step, whatever the schedule, so
      `target_sparsity` and the schedule fields then play no part. Each pruned layer's input-channel count must
      be a multiple of n (`magnitude.prune_model` names the layer that is not). Not combinable with scope 'global'.
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
    object.__setattr__(self, "exclude_layers", validation.layer_names_tuple("exclude_layers", self.exclude_layers))
    if self.m_by_n is not None:
      object.__setattr__(self, "m_by_n", validation.as_tuple("m_by_n", self.m_by_n))
    self._validate()

  def _validate(self):
    validation.check_fraction("target_sparsity", self.target_sparsity)
    validation.check_fraction("initial_sparsity", self.initial_sparsity)
    validation.check_choice("schedule", self.schedule, SCHEDULES)
    validation.check_choice("scope", self.scope, SCOPES)
    validation.check_int("begin_step", self.begin_step, 0)
    validation.check_int("end_step", self.end_step, 0)
    validation.check_int("frequency", self.frequency, 1)
    validation.check_strings("exclude_layers", self.exclude_layers)
    if self.schedule == "polynomial":
      self._validate_polynomial()
    if self.m_by_n is not None:
      m_by_n_sparsity.check_m_by_n(self.m_by_n)
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
