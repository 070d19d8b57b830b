"""Ramp-up schedules for epsilon, kappa and beta, as small serialisable data evaluated on a step tensor.

Robust training starts gently: epsilon grows from `initial` to `final` after `warmup_steps`, over `ramp_steps`
(Gowal et al. 2018; Zhang et al. 2020). Each schedule maps an int64 step tensor to a float32 tensor inside a compiled
training step, so changing epochs never retraces the step.
"""

import dataclasses

from tfrobprune.keras_compat import tf

SHAPES = ("linear", "smoothed", "constant")


@dataclasses.dataclass(frozen=True)
class Ramp:
  """A value that moves from `initial` to `final` between `warmup_steps` and `warmup_steps + ramp_steps`.

  Attributes:
    initial: value before and at `warmup_steps`.
    final: value from `warmup_steps + ramp_steps` on.
    warmup_steps: steps held at `initial`.
    ramp_steps: length of the transition (0: jump to `final` right after the warm-up).
    shape: 'linear'; 'smoothed' (the smooth-start schedule of CROWN-IBP: a cubic for the first quarter of the ramp,
      then linear, continuous in value and slope); or 'constant' (always `final`).
  """
  initial: float = 0.0
  final: float = 0.0
  warmup_steps: int = 0
  ramp_steps: int = 0
  shape: str = "linear"

  def __post_init__(self):
    if self.shape not in SHAPES:
      raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}.")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
    if self.ramp_steps < 0:
      raise ValueError(f"ramp_steps must be >= 0, got {self.ramp_steps}.")

  @classmethod
  def constant(cls, value):
    return cls(initial=value, final=value, shape="constant")

  def fraction(self, step):
    """Progress through the ramp in [0, 1] at `step` (a scalar tensor or number)."""
    step = tf.cast(step, tf.float32)
    if self.shape == "constant":
      return tf.ones_like(step)
    if self.ramp_steps == 0:
      return tf.cast(step >= self.warmup_steps, tf.float32)
    t = tf.clip_by_value((step - self.warmup_steps) / float(self.ramp_steps), 0.0, 1.0)
    if self.shape == "linear":
      return t
    return _smoothed(t)

  def __call__(self, step):
    """The scheduled value at `step`, a float32 scalar tensor."""
    return self.initial + (self.final - self.initial) * self.fraction(step)

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, config):
    return cls(**config)


def _smoothed(t, mid=0.25):
  """Cubic ease-in on [0, mid] joined to a line on [mid, 1], continuous with a continuous slope.

  On [0, mid] the value is a * t^3 with a chosen so that value and slope meet the line through (1, 1) at `mid`:
  slope of the line s = (1 - a mid^3) / (1 - mid) and 3 a mid^2 = s give a = 1 / (mid^2 (3 - 2 mid)).
  """
  a = 1.0 / (mid * mid * (3.0 - 2.0 * mid))
  at_mid = a * mid ** 3
  line = at_mid + (t - mid) * (1.0 - at_mid) / (1.0 - mid)
  return tf.where(t < mid, a * t ** 3, line)
