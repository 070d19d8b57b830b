"""Margin bounds: lower bounds of `logit_y - logit_j` over an L-inf ball, the quantity robust training and
verification need, and the robust loss built from them.

The margin specification is the matrix C with `(C z)_j = z_y - z_j`. IBP folds it into the last (affine) layer,
as in Gowal et al. (2018); CROWN-IBP (`crown_ibp`) back-substitutes it through the whole network.
"""

from tfrobprune.keras_compat import tf
from tfrobprune.robust import bound_registry
from tfrobprune.robust import bound_steps
from tfrobprune.robust import interval_propagation
from tfrobprune.robust import intervals

__all__ = ["margin_bounds", "robust_cross_entropy", "margin_spec", "check_final_affine"]


def margin_spec(y, num_classes):
  """C with `C[b, j] = e_y - e_j`, so that `(C z)_j = z_y - z_j`; row y is zero. Shape [batch, K, K]."""
  return tf.one_hot(y, num_classes)[:, None, :] - tf.eye(num_classes)[None]


def check_final_affine(layer, steps, num_classes):
  """Checks that the last layer is affine (the spec folds into it) with `num_classes` outputs."""
  if not steps or not all(isinstance(step, bound_steps.Affine) for step in steps):
    raise ValueError(f"The margin specification folds into an affine last layer (logits, no activation); "
                     f"{layer.name!r} ({type(layer).__name__}) is not one.")
  if layer.output_shape[-1] != num_classes:
    raise ValueError(f"num_classes={num_classes} but layer {layer.name!r} has {layer.output_shape[-1]} outputs.")


def _folded_margins(steps, bounds, spec):
  """IBP with the spec folded into the last layer (its checked `steps`): `min (C W) x + C b` over the box of its
  input."""
  inputs, _ = bound_steps.forward(steps, bounds)
  lam, offset = bound_steps.back_substitute(steps, inputs, spec)
  return bound_steps.concretize(lam, offset, bounds)


def _pairwise_margins(kernel, bias, bounds, y):
  """`_folded_margins` for a final Dense layer `z = x W + b` and the margin spec of labels `y`, computed pairwise.

  Row j of `C W` is `W[:, y] - W[:, j]`, so the bound `(z_y - z_j)(c) - |W[:, y] - W[:, j]| r` needs the center's
  logits and, for the radius, the K x K table of column differences `|W[:, i] - W[:, j]|`, whichever the labels:
  one [batch, n] x [n, K*K] matmul replaces the [batch, K, n] per-example matrices `C W` (and their backward),
  which are K times the size of the last hidden layer's activations.
  """
  num_inputs, num_classes = kernel.shape
  logits = tf.matmul(bounds.center, kernel)
  if bias is not None:
    logits += bias
  differences = tf.abs(kernel[:, :, None] - kernel[:, None, :])  # [n, K (label), K (other class)]
  spreads = tf.matmul(bounds.radius, tf.reshape(differences, [num_inputs, num_classes * num_classes]))
  spread = tf.gather(tf.reshape(spreads, [-1, num_classes, num_classes]), y, axis=1, batch_dims=1)
  return tf.gather(logits, y, axis=1, batch_dims=1)[:, None] - logits - spread


def margin_bounds(model, x, y, eps, num_classes):
  """IBP lower bounds of the margins `logit_y - logit_j` over the L-inf ball (clipped to [0, 1]).

  As in Gowal et al. (2018), the specification C (`C z = z_y - z_j`) is folded into the last layer, which then has
  weights `C W` and bias `C b`; this is never looser than `lower(logit_y) - upper(logit_j)`.

  Args:
    model: a single-input, single-output model whose last layer is affine (Dense logits).
    x: inputs, [batch, ...] in [0, 1].
    y: integer labels, [batch].
    eps: the L-inf radius (number or scalar tensor).
    num_classes: K, the number of logits.

  Returns:
    A [batch, K] tensor of lower bounds; the entry `j == y` is 0.

  Raises:
    NotImplementedError: for an unsupported layer (see `interval_propagation.propagate_bounds`).
    ValueError: if the last layer is not affine or has other than K outputs.
  """
  box = intervals.IntervalBounds.from_epsilon(x, eps)
  penultimate = interval_propagation.propagate_bounds(model, box, stop_before_last=True)
  last = interval_propagation.last_layer(model)
  steps = bound_registry.layer_steps(last)
  check_final_affine(last, steps, num_classes)
  if len(steps) == 1 and steps[0].linear.matrix is not None and penultimate.shape.rank == 2:
    return _pairwise_margins(steps[0].linear.matrix, steps[0].bias, penultimate, tf.cast(y, tf.int32))
  return _folded_margins(steps, penultimate, margin_spec(y, num_classes))


def robust_cross_entropy(margin_lower):
  """The IBP worst-case loss: softmax cross-entropy of the logits `z_j = -margin_lower_j` with label y.

  Since `margin_lower_y = 0`, `z_y = 0` and the loss is `log sum_j exp(-margin_lower_j)`, an upper bound of the
  cross-entropy at every point of the ball.

  Args:
    margin_lower: [batch, K] margin lower bounds from `margin_bounds` or one of `crown_ibp`'s margin functions.

  Returns:
    The per-example losses, [batch].
  """
  return tf.reduce_logsumexp(-margin_lower, axis=-1)
