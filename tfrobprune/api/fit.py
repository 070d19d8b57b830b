"""`prune_for_fit`: a model wrapped for magnitude pruning on the schedule `model.fit` of a given length needs.

The counterpart of tfmot's `prune_low_magnitude` for `tfrobprune.RobustModel`: the same wrappers and schedules as a
CLI fine-tuning phase (`magnitude.prune_model`, with the pipeline's rule for fitting the schedule into the phase),
so that the target is reached within the steps `fit` will run.
"""

from tfrobprune import pipeline
from tfrobprune.prune import magnitude

__all__ = ["prune_for_fit"]


def prune_for_fit(model, pruning, steps):
  """Returns a copy of `model` wrapped for magnitude pruning that reaches `pruning`'s target within `steps`.

  Args:
    model: a built, dense `tf_keras` Sequential or functional model (no nested models).
    pruning: a `tfrobprune.Pruning` with one target sparsity; its schedule, scope, frequency, exclusions and m:n
      apply, and the sparsity ramps up over its `end_fraction` of `steps` (one-shot schedules prune at the first
      step).
    steps: the optimizer steps the `fit` will run (epochs x steps per epoch).

  Returns:
    The wrapped model (tfmot `PruneLowMagnitude` layers); train it with `RobustModel`, whose `fit` drives the
    pruning step, then take `RobustModel.stripped()`.

  Raises:
    ValueError: a sweep or several rounds (one `fit` is one round at one target), the 'scores' criterion, fewer
      than one step, or pruning settings the model cannot take (named layers).
  """
  if len(pruning.sparsities) != 1 or pruning.rounds != 1 or pruning.criterion != "magnitude":
    raise ValueError(f"prune_for_fit prunes to one target in one round by magnitude; got sparsity "
                     f"{pruning.sparsity!r}, rounds {pruning.rounds}, criterion {pruning.criterion!r} (robust_prune "
                     "runs sweeps, rounds and scores).")
  if steps < 1:
    raise ValueError(f"steps must be >= 1 (the optimizer steps of the fit), got {steps}.")
  ramp_steps = max(1, int(pruning.end_fraction * steps))
  # The pipeline's own rule, so a fit and a CLI fine-tuning phase of the same length prune alike.
  config = pipeline._round_pruning_config(  # pylint: disable=protected-access
      pruning.to_pruning_config(), pruning.sparsities[0], ramp_steps)
  return magnitude.prune_model(model, config)
