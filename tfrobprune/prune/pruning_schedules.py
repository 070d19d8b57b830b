"""When to prune: tfmot schedules in this package's step convention, and the targets of iterative prune rounds.

Step convention
---------------
`PruningConfig` counts optimizer steps from 0: step k is the one that starts after k optimizer updates. The driver
(`drivers.PruningStepDriver`) sets `pruning_step = k` at the start of step k, so the step's training-mode forward
pass sees k + 1; the tfmot schedules built here have begin/end shifted by one accordingly. So `begin_step=0` prunes
in the very first step, and a polynomial schedule reaches its target in step `end_step` (train at least
`end_step + 1` steps). tfmot's own first step is 1: `ConstantSparsity(begin_step=0, end_step=0)` never prunes, and
`begin_step=0, frequency=100` first prunes at the 100th step.
"""

import numpy as np

from tfrobprune import keras_compat  # noqa: F401  (selects Keras 2, so it must come before tfmot)
from tfrobprune.prune import validation

# After keras_compat, which makes tfmot bind to Keras 2.
import tensorflow_model_optimization as tfmot

# tfmot schedules need a sparsity < 1 (and keep at least one weight per kernel anyway).
MAX_LAYER_SPARSITY = 0.999999
# A step no training reaches (`frozen_schedule`).
_NEVER = 2**62


def layer_schedule(config, initial, final):
  """The tfmot schedule of one layer for `config`'s schedule kind, from `initial` to `final` sparsity.

  Steps are shifted to tfmot's 1-based count (module docstring).
  """
  begin = config.begin_step + 1
  if config.schedule == "constant":
    return tfmot.sparsity.keras.ConstantSparsity(final, begin_step=begin, end_step=begin, frequency=1)
  return tfmot.sparsity.keras.PolynomialDecay(
      initial, final, begin_step=begin, end_step=config.end_step + 1, frequency=config.frequency)


def sparsity_schedule(config):
  """The tfmot schedule of `config` for its overall target (initial -> target sparsity), in tfmot's step count.

  `schedule(k + 1)` answers for optimizer step k (module docstring): a (should prune, sparsity) pair of tensors.
  """
  return layer_schedule(config, config.initial_sparsity, min(config.target_sparsity, MAX_LAYER_SPARSITY))


def frozen_schedule(mask):
  """A schedule whose only pruning turn is at a step no training reaches: tfmot never recomputes the mask."""
  sparsity = min(float(np.mean(np.asarray(mask) == 0)), MAX_LAYER_SPARSITY)
  return tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=_NEVER, end_step=_NEVER, frequency=1)


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
  validation.check_fraction("final_sparsity", final_sparsity)
  validation.check_int("rounds", rounds, 1)
  keep_per_round = (1.0 - final_sparsity)**(1.0 / rounds)
  return [1.0 - keep_per_round**r for r in range(1, rounds)] + [float(final_sparsity)]
