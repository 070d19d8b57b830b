"""Global magnitude allocation: the per-layer sparsities that one magnitude threshold over all kernels implies.

tfmot has no global-threshold mode: each wrapper prunes its own kernel to its own schedule's sparsity. Scope
'global' therefore ranks the magnitudes of all pruned kernels together once and hands each layer the sparsity that
one threshold gives it (`magnitude.prune_model`); learned scores with budgets 'magnitude' take the same per-layer
counts (`scores.learn_masks`).
"""

import numpy as np

from tfrobprune.prune import validation
from tfrobprune.prune import wrapping


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
  validation.check_fraction("sparsity", sparsity)
  wrapping.check_layer_names(model, exclude_layers, "exclude_layers")
  kernels = [(name, kernel) for name, kernel in wrapping.prunable_kernels(model) if name not in exclude_layers]
  if not kernels:
    raise ValueError(f"Model {model.name!r} has no Dense/Conv2D layer left to prune.")
  magnitudes = np.concatenate([np.abs(kernel).ravel() for _, kernel in kernels])
  pruned = np.zeros(magnitudes.size, bool)
  pruned[np.argsort(magnitudes, kind="stable")[:int(round(sparsity * magnitudes.size))]] = True
  ends = np.cumsum([kernel.size for _, kernel in kernels])
  return {name: float(np.mean(part)) for (name, _), part in zip(kernels, np.split(pruned, ends[:-1]))}
