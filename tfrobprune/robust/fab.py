"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), L-inf or L2, as AutoAttack runs it.

FAB looks for the adversarial point closest to x rather than the highest loss in the ball. Each iteration linearises
the margin z_t - z_y of the target class t over the true class y at the current point x1, projects both x1 and the
original x0 onto that hyperplane (intersected with the pixel box: the smallest step that reaches it), and moves
to a convex combination of the two projections, biased towards x0 (weight alpha = ||d1|| / (||d1|| + ||d2||), at
most alpha_max), overshooting by eta. When the new point is adversarial it is recorded if it is the closest so far,
and the search steps back towards x0 by the factor beta. An example counts as fooled only if its closest
adversarial point lies within eps (the AutoAttack rule), so the points returned never leave the ball.

The targets are the classes ranked 2 .. num_targets + 1 by the clean logits, each run only on the examples still
robust (`apgd.run_on_robust`); restarts after the first start from a random point at distance eps / 2, as in
the reference (`fra31/auto-attack`, fab_base.py). The loop is a `tf.while_loop` of one forward and backward pass for
the linearisation plus one forward pass for the adversarial check per iteration (the algorithm needs both); compile
it once per model and batch shape like `apgd`.
"""

from typing import NamedTuple

import numpy as np

from tfrobprune.keras_compat import tf
from tfrobprune.robust import apgd

ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9
_MIN_STEP = 1e-8  # the reference's floor on projection lengths
_TINY = 1e-12
NEWTON_STEPS = 20  # cap on the projection's Newton steps (it is exact after a few)
_NEWTON_TOLERANCE = 1e-6  # relative move below which a Newton step counts as converged


def project_to_hyperplane_in_box(points, w, b, clip_min, clip_max, norm="linf", max_newton_steps=NEWTON_STEPS):
  """The smallest step d (in `norm`) with w.(p + d) = b and p + d inside [clip_min, clip_max], per row.

  Oriented so that w.p must fall, the optimal step moves each coordinate towards the box corner that lowers w.p, by
  min(lambda * rate_i, room_i), with rate_i = 1 for L-inf and |w_i| for L2 (the KKT conditions of each problem).
  Then w.p falls by g(lambda) = sum_i |w_i| min(lambda * rate_i, room_i): increasing, concave and piecewise linear.
  Newton's method from lambda = 0 climbs to the lambda with g(lambda) = |w.p - b| without overshooting (the tangents
  of a concave function lie above it) and is exact once on the right linear piece, usually after two or three steps;
  the reference finds the piece by sorting every row's breakpoints, which is slow on CPU. Where even the corner
  cannot reach the hyperplane, the step goes to the corner (the reference's choice).

  Args:
    points: [n, d] flat points inside the box.
    w: [n, d] hyperplane normals.
    b: [n] offsets.
    clip_min: lower pixel bound.
    clip_max: upper pixel bound.
    norm: 'linf' or 'l2'.
    max_newton_steps: cap on Newton steps (the loop stops earlier once no lambda moves).

  Returns:
    The steps d, [n, d].
  """
  gap = tf.reduce_sum(w * points, axis=1) - b  # w.p must fall by gap (or rise, where gap < 0)
  w = w * tf.where(gap >= 0, 1.0, -1.0)[:, None]  # orient: w.p must fall by |gap|
  room = tf.where(w < 0, clip_max - points, points - clip_min)  # how far each coordinate can move that way
  weight, need = tf.abs(w), tf.abs(gap)
  weighted_room = weight * room
  if norm == "linf":
    rate, weighted_rate, breakpoint = 1.0, weight, room  # coordinate i stops moving at lambda = breakpoint_i
  else:
    rate, weighted_rate = weight, weight * weight
    breakpoint = tf.where(weight > 0, room / tf.where(weight > 0, weight, 1.0), 0.0)

  def newton(i, lam, _):
    free = breakpoint > lam[:, None]
    slope = tf.reduce_sum(tf.where(free, weighted_rate, 0.0), axis=1)
    reach = lam * slope + tf.reduce_sum(tf.where(free, 0.0, weighted_room), axis=1)
    step = tf.where(slope > 0, tf.maximum(need - reach, 0.0) / tf.maximum(slope, _TINY), 0.0)
    return i + 1, lam + step, tf.reduce_any(step > _NEWTON_TOLERANCE * (lam + step))

  _, lam, _ = tf.while_loop(lambda i, _, moving: tf.logical_and(i < max_newton_steps, moving), newton,
                            (tf.constant(0), tf.zeros_like(need), tf.constant(True)))
  short = tf.reduce_sum(weighted_room, axis=1) < need  # even the corner falls short: go there
  lam = tf.where(short, tf.reduce_max(breakpoint, axis=1), lam)
  return -tf.sign(w) * tf.minimum(lam[:, None] * rate, room)


class _Run(NamedTuple):
  """What one FAB-T run keeps constant."""
  model_fn: object
  x: tf.Tensor
  y: tf.Tensor
  target: tf.Tensor
  eps: tf.Tensor
  norm: str
  clip: tuple
  alpha_max: float
  eta: float
  beta: float


def _flat(x):
  return tf.reshape(x, [tf.shape(x)[0], -1])


def _margin_and_grad(run, points):
  """z_t - z_y at `points` and its gradient."""
  with tf.GradientTape() as tape:
    tape.watch(points)
    logits = run.model_fn(points)
    margin = (tf.gather(logits, run.target, axis=1, batch_dims=1) -
              tf.gather(logits, run.y, axis=1, batch_dims=1))
  return margin, tape.gradient(
      margin, points, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _boundary_step(run, x1):
  """Projects x1 and x0 onto the linearised boundary and moves to their biased, overshot combination."""
  margin, grad = _margin_and_grad(run, x1)
  w, flat_x1, flat_x0 = _flat(grad), _flat(x1), _flat(run.x)
  b = tf.reduce_sum(w * flat_x1, axis=1) - margin
  steps = project_to_hyperplane_in_box(tf.concat([flat_x1, flat_x0], 0), tf.concat([w, w], 0),
                                       tf.concat([b, b], 0), *run.clip, norm=run.norm)
  lengths = tf.maximum(apgd.lp_norm(steps, run.norm), _MIN_STEP)
  d1, d2 = tf.split(tf.reshape(steps, tf.concat([[-1], tf.shape(x1)[1:]], 0)), 2)
  a1, a2 = tf.split(lengths, 2)
  alpha = apgd.per_example(tf.clip_by_value(a1 / (a1 + a2), 0.0, run.alpha_max), x1)
  moved = (x1 + run.eta * d1) * (1.0 - alpha) + (run.x + run.eta * d2) * alpha
  return tf.clip_by_value(moved, *run.clip)


def _iterate(run, i, x1, best, best_dist):
  x1 = _boundary_step(run, x1)
  fooled = tf.logical_not(apgd.correct(run.model_fn, x1, run.y))
  dist = apgd.lp_norm(x1 - run.x, run.norm)
  closer = tf.logical_and(fooled, dist < best_dist)
  best = tf.where(apgd.per_example(closer, x1), x1, best)
  best_dist = tf.where(closer, dist, best_dist)
  x1 = tf.where(apgd.per_example(fooled, x1), run.x + run.beta * (x1 - run.x), x1)
  return i + 1, x1, best, best_dist


def _random_start(run, seed):
  """x0 plus a random perturbation of norm eps / 2, clipped (the reference's restarts after the first)."""
  return apgd.sphere_start(run.x, run.eps / 2.0, run.norm, seed, *run.clip)


def single_run(run, nb_iter, seed, random_start):
  """One FAB-T run: (point, score, fooled) per example; fooled where the closest adversarial point is within eps."""
  x1 = tf.cond(random_start, lambda: _random_start(run, seed), lambda: run.x)
  best_dist = tf.fill(tf.shape(run.y), np.inf)
  has_examples = tf.size(run.y) > 0
  _, _, best, best_dist = tf.while_loop(lambda i, *_: tf.logical_and(i < nb_iter, has_examples),
                                        lambda *state: _iterate(run, *state), (tf.constant(0), x1, run.x, best_dist),
                                        maximum_iterations=nb_iter)
  fooled = best_dist <= run.eps
  return tf.where(apgd.per_example(fooled, best), best, run.x), tf.where(fooled, -best_dist, -np.inf), fooled


def fab_targeted(model_fn, x, y, eps, nb_iter=100, num_targets=9, norm="linf", restarts=1, seed=None, clip_min=0.0,
                 clip_max=1.0, alpha_max=ALPHA_MAX, eta=ETA, beta=BETA):
  """FAB-T with AutoAttack's standard settings (alpha_max 0.1, eta 1.05, beta 0.9, 100 iterations, 9 targets).

  Args:
    model_fn: callable from images to logits in inference mode (`attacks.inference_fn`).
    x: float32 images in [clip_min, clip_max].
    y: int64 true labels.
    eps: radius (in `norm`) within which an adversarial point counts (float or scalar tensor).
    nb_iter: iterations per target and restart.
    num_targets: target classes, ranked 2 .. num_targets + 1 by the clean logits (below the number of classes).
    norm: 'linf' or 'l2'.
    restarts: starts per target; the first from x, the others from random points at distance eps / 2.
    seed: None (TensorFlow's stateful generator) or a shape-[2] integer tensor for the random restarts.
    clip_min: smallest valid pixel value.
    clip_max: largest valid pixel value.
    alpha_max: largest weight of the projection of x0 in a step.
    eta: overshoot of the projections.
    beta: backward step towards x0 after an adversarial point.

  Returns:
    (x_adv, robust): per example the closest adversarial point found within eps (x where none was), projected into
    the ball and pixel range; and whether the model still classifies that point correctly (re-run through it).

  Raises:
    ValueError: for a bad argument.
  """
  apgd.check_arguments(eps, nb_iter, norm, restarts, clip_min, clip_max, num_targets)
  x, y = tf.convert_to_tensor(x, tf.float32), tf.cast(y, tf.int64)
  eps = tf.cast(eps, x.dtype)
  logits = model_fn(x)
  targets = apgd.ranked_targets(logits, num_targets)

  def attack_run(run_index, index):
    run = _Run(model_fn, tf.gather(x, index), tf.gather(y, index), tf.gather(targets[:, run_index // restarts], index),
               eps, norm, (clip_min, clip_max), alpha_max, eta, beta)
    return single_run(run, nb_iter, apgd.run_seed(seed, run_index), run_index % restarts > 0)

  robust = tf.equal(tf.argmax(logits, axis=1), y)
  points, _ = apgd.run_on_robust(x, robust, restarts * num_targets, attack_run)
  return apgd.recheck(model_fn, x, y, points, eps, norm, clip_min, clip_max)
