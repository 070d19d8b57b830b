"""CROWN-IBP (Zhang et al., 2020): margin lower bounds by back-substitution through IBP's boxes.

CROWN-IBP keeps IBP's box at every ReLU's input but bounds the output by back-substitution: starting from the
margin specification `Lambda = C`, every affine layer becomes `Lambda <- Lambda W` (the offset gathers
`Lambda b`), and every ReLU with pre-activation box `[l, u]` is replaced by a linear bound chosen per sign of
`Lambda`. At the input box the linear function `Lambda x + offset` is minimised in closed form,
`Lambda c - |Lambda| r + offset`. It reads the same layer steps as IBP (`bound_registry`), for chain models of
affine layers and ReLUs.
"""

from tfrobprune.keras_compat import keras, tf
from tfrobprune.robust import bound_registry
from tfrobprune.robust import bound_steps
from tfrobprune.robust import interval_propagation
from tfrobprune.robust import intervals
from tfrobprune.robust import margins

__all__ = ["crown_ibp_margin_bounds", "tightest_margin_bounds", "crown_ibp_training_margins", "crown_ibp_steps"]


def _chain_layers(model):
  """The layers of a model that is one chain (no merges or branches), in order."""
  interval_propagation.check_single_input_output(model)
  if isinstance(model, keras.Sequential):
    return list(model.layers)
  nodes = interval_propagation.graph_nodes(model)
  merges = [node for node in nodes if len(node.flat_input_ids) != 1]
  if merges:
    raise bound_registry.unsupported(merges[0].layer,
                                     "CROWN-IBP back-substitutes through chain models only, not merges.")
  previous = str(id(model.inputs[0]))
  for node in nodes:
    if node.flat_input_ids[0] != previous:
      raise bound_registry.unsupported(node.layer,
                                       "CROWN-IBP back-substitutes through chain models only; this layer branches.")
    previous = node.flat_output_ids[0]
  return [node.layer for node in nodes]


def crown_ibp_steps(model):
  """The model's layers and their steps, checked to be ones CROWN-IBP can back-substitute through.

  Raises:
    NotImplementedError: naming the first layer CROWN-IBP cannot relax.
    ValueError: for a model with several inputs or outputs.
  """
  chain = _chain_layers(model)
  layer_steps = [bound_registry.layer_steps(layer) for layer in chain]
  for layer, steps in zip(chain, layer_steps):
    if not all(isinstance(step, (bound_steps.Affine, bound_steps.Relu)) for step in steps):
      raise bound_registry.unsupported(layer,
                                       "CROWN-IBP relaxes affine layers and ReLU only (use IBP for this model).")
  return chain, layer_steps


def _ibp_and_crown_ibp_margins(model, x, y, eps, num_classes):
  """IBP and CROWN-IBP margin lower bounds from one IBP pass, each [batch, K]."""
  chain, layer_steps = crown_ibp_steps(model)
  last = layer_steps[-1]
  margins.check_final_affine(chain[-1], last, num_classes)
  steps = [step for steps in layer_steps for step in steps]
  box = intervals.IntervalBounds.from_epsilon(x, eps)
  inputs, _ = bound_steps.forward(steps, box)
  spec = margins.margin_spec(y, num_classes)
  ibp = bound_steps.concretize(*bound_steps.back_substitute(last, inputs[-len(last):], spec),
                               inputs[-len(last)])
  crown_ibp = bound_steps.concretize(*bound_steps.back_substitute(steps, inputs, spec), box)
  return ibp, crown_ibp


def crown_ibp_margin_bounds(model, x, y, eps, num_classes):
  """CROWN-IBP lower bounds of the margins `logit_y - logit_j` (Zhang et al., 2020).

  IBP gives the box `[l, u]` at every ReLU's input; the margin specification C is then back-substituted through
  the whole network to the input box (`Lambda <- Lambda W`, ReLUs relaxed linearly), which is concretised as
  `Lambda c - |Lambda| r + offset`. Not always tighter than IBP: see `tightest_margin_bounds`.

  Args:
    model: a chain model (Sequential, or functional without branches) of affine layers and ReLUs whose last layer
      is affine; tfmot-pruned layers are fine.
    x: inputs, [batch, ...] in [0, 1].
    y: integer labels, [batch].
    eps: the L-inf radius (number or scalar tensor).
    num_classes: K, the number of logits.

  Returns:
    A [batch, K] tensor of lower bounds; the entry `j == y` is 0.

  Raises:
    NotImplementedError: naming the first layer CROWN-IBP cannot relax (Add, max pooling, sigmoid, ...).
    ValueError: if the last layer is not affine or has other than K outputs.
  """
  return _ibp_and_crown_ibp_margins(model, x, y, eps, num_classes)[1]


def tightest_margin_bounds(model, x, y, eps, num_classes):
  """The elementwise maximum of the CROWN-IBP and IBP margin lower bounds: both are sound, so is their max.

  Takes the arguments of `crown_ibp_margin_bounds` and raises like it; never looser than `margins.margin_bounds`.
  """
  ibp, crown_ibp = _ibp_and_crown_ibp_margins(model, x, y, eps, num_classes)
  return tf.maximum(ibp, crown_ibp)


def crown_ibp_training_margins(model, x, y, eps, num_classes, beta):
  """`beta * CROWN-IBP + (1 - beta) * IBP` margin lower bounds, CROWN-IBP's training bound (beta ramps 1 -> 0).

  Differentiable with respect to the model's weights and free of Python-side numerics, so it traces once in a
  `tf.function` for a fixed batch shape; pass `eps` and `beta` as tensors when they follow a schedule.

  Args:
    model, x, y, eps, num_classes: as for `crown_ibp_margin_bounds`.
    beta: the weight of the CROWN-IBP bound, in [0, 1].

  Returns:
    A [batch, K] tensor of margin lower bounds.
  """
  ibp, crown_ibp = _ibp_and_crown_ibp_margins(model, x, y, eps, num_classes)
  beta = tf.cast(beta, ibp.dtype)
  return beta * crown_ibp + (1. - beta) * ibp
