"""Sparsity statistics of a dense, wrapped or stripped model: per-layer zero fractions and parameter counts.

All three forms of a model give the same numbers: wrapped layers count with kernel * mask (what their forward pass
uses) and under their own layer names, and tfmot's masks, thresholds and step counters are not parameters.
"""

import numpy as np

from tfrobprune.prune import wrapping


def layer_sparsity(model):
  """Fraction of zeros in each Dense/Conv2D kernel (kernel * mask for wrapped layers).

  Args:
    model: a dense, wrapped or stripped model.

  Returns:
    {layer name: zero fraction}, keyed by the unwrapped layer names.
  """
  return {name: float(np.mean(kernel == 0)) for name, kernel in wrapping.prunable_kernels(model)}


def _stored_weights(model):
  """Every variable a deployed (stripped) model stores: wrappers' masks, thresholds and steps left out."""
  weights = {}
  for layer in model.layers:
    for weight in (layer.layer.weights if wrapping.is_wrapper(layer) else layer.weights):
      weights[id(weight)] = weight
  return list(weights.values())


def parameter_counts(model):
  """Parameter counts of a dense, wrapped or stripped model.

  Returns:
    A dict with
    - 'params': every parameter a deployed (stripped) model stores: kernels, biases, BatchNorm scale, offset and
      moving statistics, trainable or not; tfmot's masks, thresholds and step counters are not counted.
    - 'prunable_params': entries of the Dense/Conv2D kernels (excluded layers included).
    - 'prunable_nonzero': their non-zero entries (kernel * mask for wrapped layers).
    - 'nonzero_params': 'params' minus the zero kernel entries, i.e. what a sparse format stores (biases and
      BatchNorm values count even where they happen to be zero).
    - 'sparsity': zero fraction over all prunable kernels together.
    - 'compression': 'params' / 'nonzero_params'.
  """
  params = sum(weight.shape.num_elements() for weight in _stored_weights(model))
  kernels = [kernel for _, kernel in wrapping.prunable_kernels(model)]
  prunable = int(sum(kernel.size for kernel in kernels))
  prunable_nonzero = int(sum(np.count_nonzero(kernel) for kernel in kernels))
  nonzero = params - (prunable - prunable_nonzero)
  return {
      "params": params,
      "nonzero_params": nonzero,
      "prunable_params": prunable,
      "prunable_nonzero": prunable_nonzero,
      "sparsity": 1.0 - prunable_nonzero / prunable if prunable else 0.0,
      "compression": params / nonzero if nonzero else float("inf"),
  }


def sparsity_report(model):
  """`parameter_counts(model)` plus the per-layer sparsities under 'layers'."""
  return {**parameter_counts(model), "layers": layer_sparsity(model)}
