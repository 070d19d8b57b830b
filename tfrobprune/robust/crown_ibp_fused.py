"""Loss-fused CROWN-IBP: an upper bound of the cross-entropy over the eps ball from ONE backward bound pass.

CROWN-IBP's margins (`crown_ibp`) back-substitute K specifications (`z_y - z_j`, one per class) through the
network: K times the work of a backward pass. The training loss only needs an upper bound of the cross-entropy
`CE = log sum_j exp(d_j)`, `d_j = z_j - z_y`, and that is one scalar function of the logits. Loss fusion (Xu et al.
2020, auto_LiRPA's `CrossEntropyWrapper`) bounds it directly:

1. IBP gives the box at every ReLU's input and, with the specification folded into the last layer (pairwise, as
   `margins` does), an interval `[dl_j, du_j]` of every `d_j`.
2. `exp` is convex, so on that interval it lies below its chord: `exp(d_j) <= a_j d_j + b_j`. (Every exp is taken
   relative to `s = max_j du_j`, which cancels exactly and keeps the chords finite.)
3. `sum_j a_j d_j = g . z` with `g = a - (sum_j a_j) e_y` is ONE linear function of the logits; CROWN-IBP
   back-substitutes it through the network once (`bound_steps.back_substitute` with a single specification) and
   concretises its maximum over the input box.
4. `CE <= s + log(max_z g . z + sum_j b_j)`, with the label's own term `exp(d_y - s) = exp(-s)` kept exact.

The result is sound (an upper bound at every point of the ball) and exact at eps = 0. It is not always tighter
than the IBP bound `log sum_j exp(du_j)`, so `robust_cross_entropy` takes the elementwise minimum of the two (both
sound), and mixes it with IBP's by CROWN-IBP's beta as `crown_ibp.crown_ibp_training_margins` mixes margins.
Verification needs per-class margins, not a loss bound, so it keeps `crown_ibp`.
"""

from tfrobprune.keras_compat import tf
from tfrobprune.robust import bound_steps
from tfrobprune.robust import crown_ibp
from tfrobprune.robust import intervals
from tfrobprune.robust import margins

__all__ = ["loss_bounds", "robust_cross_entropy", "logit_difference_bounds"]

# Floor of the chord sum inside the logarithm (the label's exp(-s) term is added exactly, in log space).
_TINY = 1e-30


def logit_difference_bounds(steps, bounds, y, num_classes):
  """IBP bounds `(lower, upper)` of `d_j = z_j - z_y`, each [batch, K], with the specification folded into the
  last layer's `steps` (entered by the box `bounds`); `d_y` is exactly 0.

  A final Dense layer `z = x W + b` is done pairwise: the center's logit differences, plus or minus the spread
  `|W[:, j] - W[:, y]| r` read from the K x K table of column differences (no per-example `C W` matrices).
  """
  if len(steps) == 1 and steps[0].linear.matrix is not None and bounds.shape.rank == 2:
    kernel, bias = steps[0].linear.matrix, steps[0].bias
    num_inputs = kernel.shape[0]
    logits = tf.matmul(bounds.center, kernel) + (0. if bias is None else bias)
    differences = tf.abs(kernel[:, :, None] - kernel[:, None, :])  # [n, K (label), K (other class)]
    spreads = tf.matmul(bounds.radius, tf.reshape(differences, [num_inputs, num_classes * num_classes]))
    spread = tf.gather(tf.reshape(spreads, [-1, num_classes, num_classes]), y, axis=1, batch_dims=1)
    center = logits - tf.gather(logits, y, axis=1, batch_dims=1)[:, None]
    return center - spread, center + spread
  spec = -margins.margin_spec(y, num_classes)  # rows e_j - e_y
  inputs, _ = bound_steps.forward(steps, bounds)
  lam, offset = bound_steps.back_substitute(steps, inputs, spec)
  return (bound_steps.concretize(lam, offset, bounds), -bound_steps.concretize(-lam, -offset, bounds))


def _exp_chords(lower, upper, shift, is_label):
  """Slopes and summed intercepts of the chords of `exp(d - shift)` over `[lower, upper]`, the label's column
  left out (its term is the constant `exp(-shift)`). A zero-width interval takes the tangent, which is exact."""
  exp_lower, exp_upper = tf.exp(lower - shift), tf.exp(upper - shift)
  width = upper - lower
  wide = width > 1e-6
  slope = tf.where(wide, (exp_upper - exp_lower) / tf.where(wide, width, 1.), exp_upper)
  slope = tf.where(is_label, 0., slope)
  intercepts = tf.reduce_sum(tf.where(is_label, 0., exp_lower - slope * lower), axis=1)
  return slope, intercepts


def loss_bounds(model, x, y, eps, num_classes):
  """Upper bounds of the cross-entropy over the L-inf ball (clipped to [0, 1]): loss-fused CROWN-IBP and IBP.

  Args:
    model: a chain model of affine layers and ReLUs whose last layer is affine (as for `crown_ibp`).
    x: inputs, [batch, ...] in [0, 1].
    y: integer labels, [batch].
    eps: the L-inf radius (number or scalar tensor).
    num_classes: K, the number of logits.

  Returns:
    `(fused, ibp, ibp_margins)`: the loss-fused CROWN-IBP and the IBP upper bounds of each example's
    cross-entropy, [batch] each, and IBP's margin lower bounds `z_y - z_j` [batch, K] (0 at `j == y`).

  Raises:
    NotImplementedError, ValueError: as `crown_ibp.crown_ibp_margin_bounds`.
  """
  chain, layer_steps = crown_ibp.crown_ibp_steps(model)
  last = layer_steps[-1]
  margins.check_final_affine(chain[-1], last, num_classes)
  steps = [step for steps in layer_steps for step in steps]
  box = intervals.IntervalBounds.from_epsilon(x, eps)
  inputs, _ = bound_steps.forward(steps, box)
  penultimate = inputs[-len(last)]
  y = tf.cast(y, tf.int32)
  lower, upper = logit_difference_bounds(last, penultimate, y, num_classes)
  shift = tf.stop_gradient(tf.reduce_max(upper, axis=1, keepdims=True))  # >= 0: upper[y] = 0
  is_label = tf.one_hot(y, num_classes) > 0
  slope, intercepts = _exp_chords(lower, upper, shift, is_label)
  g = slope - tf.reduce_sum(slope, axis=1, keepdims=True) * tf.cast(is_label, slope.dtype)
  # max over the ball of g . z = -(min of -g . z): one specification, back-substituted through the whole chain.
  lam, offset = bound_steps.back_substitute(steps, inputs, -g[:, None])
  chord_sum = tf.maximum(intercepts - bound_steps.concretize(lam, offset, box)[:, 0], _TINY)
  shift = shift[:, 0]
  fused = shift + tf.reduce_logsumexp(tf.stack([tf.math.log(chord_sum), -shift], axis=1), axis=1)
  return fused, tf.reduce_logsumexp(upper, axis=1), -upper


def robust_cross_entropy(model, x, y, eps, num_classes, beta):
  """CROWN-IBP's training loss by loss fusion: `beta * min(fused, IBP) + (1 - beta) * IBP` per example.

  Both bounds are sound upper bounds of the cross-entropy, so their minimum and any mix of them are too; beta
  follows CROWN-IBP's ramp (1 -> `crown_beta_final`). auto_LiRPA's loss fusion mixes the two bounds of the sum of
  exponentials before the logarithm, without the minimum; mixing the logarithms is never looser (log is concave). Differentiable with respect to the weights; traces once per
  batch shape (pass `eps` and `beta` as tensors when they follow a schedule).

  Args:
    model, x, y, eps, num_classes: as for `loss_bounds`.
    beta: the weight of the loss-fused CROWN-IBP bound, in [0, 1].

  Returns:
    `(losses, ibp_margins)`: per-example loss upper bounds [batch], and IBP's margin lower bounds [batch, K].
  """
  fused, ibp, ibp_margins = loss_bounds(model, x, y, eps, num_classes)
  beta = tf.cast(beta, fused.dtype)
  return beta * tf.minimum(fused, ibp) + (1. - beta) * ibp, ibp_margins
