"""Auto-PGD (Croce & Hein, ICML 2020): PGD without a step-size parameter, untargeted (CE, DLR) and targeted (DLR).

APGD is the gradient attack of AutoAttack. Compared with fixed-step PGD (`attacks.pgd`) it
- starts at step size 2 * eps and halves it at checkpoints (iterations 22%, 41%, 57%, ... of the budget) for each
  example whose loss rose in at most a fraction `rho` of the steps since the last checkpoint, or whose best loss and
  step size both stayed put since then; a halving example restarts from its best point so far;
- adds momentum 0.75 to the projected step;
- keeps, per example, the point of highest loss and the latest adversarial point it met, not only the last iterate.
The DLR loss (difference of logits ratio) is invariant to shifting and rescaling the logits, so it does not vanish
on over-confident or badly scaled models the way cross-entropy does; the targeted version aims at the classes ranked
2 .. num_targets + 1 by the clean logits.

Each attack is pure TensorFlow: the iterations run in a `tf.while_loop` (one forward and one backward pass each), the
restarts and target classes in an outer `tf.while_loop`, each run only on the examples still robust (gathered, so the
work shrinks with them). Compile it once per model and batch shape:
`tf.function(lambda x, y, s: apgd.apgd(model_fn, x, y, eps, seed=s))` (a None batch dimension works too).
Every returned verdict is re-checked: the points are projected into the eps-ball and [clip_min, clip_max] and run
through the model once more (`recheck`).

The helpers below the losses (`run_on_robust`, `ranked_targets`, `recheck`, `project`) are shared with FAB-T
(`fab.py`). The algorithm follows the paper and the authors' reference (`fra31/auto-attack`, autopgd_base.py),
including its oscillation test (at most `rho` * window increases) and its random start on the sphere of radius eps.
"""

from typing import NamedTuple

import numpy as np

from tfrobprune.keras_compat import tf
from tfrobprune.robust import attacks

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75
INITIAL_STEP = 2.0  # the first step size, in units of eps (both norms)
_TINY = 1e-12


# ----------------------------------------------------------------------------------------------------------------------
# The step-size schedule and the losses.

def checkpoint_windows(nb_iter):
  """Iteration -> length of the window it closes (0: no checkpoint), as a list of `nb_iter` ints.

  Checkpoints sit at fractions p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) of the budget
  (in whole iterations, as the reference rounds them).
  """
  first, shortest, shrink = (max(int(fraction * nb_iter), 1) for fraction in (0.22, 0.06, 0.03))
  windows, last, length = [0] * nb_iter, -1, first
  while last + length < nb_iter:
    last += length
    windows[last] = length
    length = max(length - shrink, shortest)
  return windows


def _label_logit(logits, labels):
  return tf.gather(logits, labels, axis=1, batch_dims=1)


def ce_loss(logits, y, target=None):
  """Per-example cross-entropy of the true class (`target` unused)."""
  del target
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def dlr_loss(logits, y, target=None):
  """Per-example DLR loss -(z_y - max_{i != y} z_i) / (z_(1) - z_(3)), z_(k) the k-th largest logit."""
  del target
  top = tf.math.top_k(logits, 3).values
  runner_up = tf.where(tf.equal(tf.argmax(logits, axis=1), y), top[:, 1], top[:, 0])
  return -(_label_logit(logits, y) - runner_up) / (top[:, 0] - top[:, 2] + _TINY)


def targeted_dlr_loss(logits, y, target):
  """Per-example targeted DLR loss -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)."""
  top = tf.math.top_k(logits, 4).values
  scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY
  return -(_label_logit(logits, y) - _label_logit(logits, target)) / scale


_LOSS_FUNCTIONS = {"ce": ce_loss, "dlr": dlr_loss}


# ----------------------------------------------------------------------------------------------------------------------
# Geometry: norms, projection, random start.

def per_example(values, like):
  """Reshapes a [batch] vector to broadcast against `like` ([batch, ...])."""
  return tf.reshape(values, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def _flat(x):
  return tf.reshape(x, [tf.shape(x)[0], -1])


def lp_norm(delta, norm):
  """Per-example L-inf or L2 norm of a batch of perturbations ([batch])."""
  flat = _flat(delta)
  return tf.reduce_max(tf.abs(flat), axis=1) if norm == "linf" else tf.norm(flat, axis=1)


def project(points, x, eps, norm, clip_min, clip_max):
  """`points` moved into the `norm` ball of radius `eps` around `x`, then clipped to [clip_min, clip_max].

  L2 rescales the perturbation; clipping afterwards moves no coordinate away from `x`, so the point stays in both
  sets (the reference's order).
  """
  if norm == "linf":
    points = tf.clip_by_value(points, x - eps, x + eps)
  else:
    delta = points - x
    points = x + delta * per_example(tf.minimum(1.0, eps / (lp_norm(delta, norm) + _TINY)), delta)
  return tf.clip_by_value(points, clip_min, clip_max)


def _unit(vectors, norm):
  """Per example, `vectors` scaled to norm 1 (zero stays zero)."""
  return vectors / per_example(lp_norm(vectors, norm) + _TINY, vectors)


def step_direction(grad, norm):
  """The steepest-ascent direction of unit `norm`: sign(grad) for L-inf, grad / ||grad||_2 for L2."""
  return tf.sign(grad) if norm == "linf" else _unit(grad, norm)


def sphere_start(x, eps, norm, seed, clip_min, clip_max):
  """x plus a random perturbation of norm exactly eps (uniform directions in the cube / Gaussian), then clipped."""
  shape = tf.shape(x)
  if norm == "linf":
    noise = (tf.random.uniform(shape, -1.0, 1.0) if seed is None else
             tf.random.stateless_uniform(shape, seed, -1.0, 1.0))
  else:
    noise = tf.random.normal(shape) if seed is None else tf.random.stateless_normal(shape, seed)
  return tf.clip_by_value(x + eps * _unit(noise, norm), clip_min, clip_max)


def run_seed(seed, run_index):
  """The stateless seed of run `run_index` (None stays None: TensorFlow's stateful generator)."""
  if seed is None:
    return None
  return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), tf.cast(run_index, tf.int64))


# ----------------------------------------------------------------------------------------------------------------------
# One APGD run on a batch.

class _Run(NamedTuple):
  """What one run keeps constant."""
  model_fn: object
  x: tf.Tensor
  y: tf.Tensor
  target: tf.Tensor
  loss_fn: object
  eps: tf.Tensor
  norm: str
  rho: float
  clip: tuple
  windows: tf.Tensor
  box: tuple  # L-inf: per-pixel bounds of the ball within [clip_min, clip_max]


class _State(NamedTuple):
  """The loop variables of one run, per example unless noted."""
  i: tf.Tensor  # iteration (scalar)
  x_adv: tf.Tensor
  x_prev: tf.Tensor  # the previous iterate (momentum)
  grad: tf.Tensor
  step: tf.Tensor  # step size [batch, 1, ...]
  x_best: tf.Tensor  # highest-loss point so far
  grad_best: tf.Tensor
  loss_best: tf.Tensor
  x_found: tf.Tensor  # an adversarial point, where `fooled`
  fooled: tf.Tensor
  loss_prev: tf.Tensor  # the loss of the previous iterate
  increases: tf.Tensor  # loss increases since the last checkpoint
  loss_best_at_check: tf.Tensor
  halved_at_check: tf.Tensor


def _loss_and_grad(run, points):
  with tf.GradientTape() as tape:
    tape.watch(points)
    logits = run.model_fn(points)
    loss = run.loss_fn(logits, run.y, run.target)
  return tf.not_equal(tf.argmax(logits, axis=1), run.y), loss, tape.gradient(
      loss, points, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _start(run, seed):
  x_adv = sphere_start(run.x, run.eps, run.norm, seed, *run.clip)
  fooled, loss, grad = _loss_and_grad(run, x_adv)
  step = per_example(tf.fill(tf.shape(run.y), INITIAL_STEP * run.eps), run.x)
  return _State(tf.constant(0), x_adv, x_adv, grad, step, x_adv, grad, loss, x_adv, fooled, loss,
                tf.zeros_like(loss), loss, tf.ones_like(fooled))


def _where(mask, a, b):
  return tf.where(per_example(mask, a), a, b)


def _momentum_step(run, s):
  """The next iterate: a projected step, then 0.75 of it plus 0.25 of the last move (no momentum at iteration 0)."""
  weight = tf.where(s.i > 0, MOMENTUM, 1.0)
  z = _project(run, s.x_adv + s.step * step_direction(s.grad, run.norm))
  moved = s.x_adv + weight * (z - s.x_adv) + (1.0 - weight) * (s.x_adv - s.x_prev)
  return _project(run, moved)


def _project(run, points):
  """`project` into the run's ball and box; for L-inf one clip to the precomputed intersection of both."""
  if run.norm == "linf":
    return tf.clip_by_value(points, run.box[0], run.box[1])
  return project(points, run.x, run.eps, run.norm, *run.clip)


def _iterate(run, s):
  """One APGD iteration: step, evaluate, record the best points, and at a checkpoint maybe halve the step."""
  x_new = _momentum_step(run, s)
  fooled_now, loss, grad = _loss_and_grad(run, x_new)
  improved = loss > s.loss_best
  x_best, grad_best = _where(improved, x_new, s.x_best), _where(improved, grad, s.grad_best)
  loss_best = tf.where(improved, loss, s.loss_best)
  increases = s.increases + tf.cast(loss > s.loss_prev, tf.float32)
  window = tf.cast(run.windows[s.i], tf.float32)
  at_check = window > 0
  oscillating = increases <= run.rho * window
  stalled = tf.logical_and(tf.logical_not(s.halved_at_check), s.loss_best_at_check >= loss_best)
  halve = tf.logical_and(at_check, tf.logical_or(oscillating, stalled))
  return _State(
      i=s.i + 1, x_adv=_where(halve, x_best, x_new), x_prev=s.x_adv, grad=_where(halve, grad_best, grad),
      step=tf.where(per_example(halve, s.step), s.step / 2.0, s.step), x_best=x_best, grad_best=grad_best,
      loss_best=loss_best, x_found=_where(fooled_now, x_new, s.x_found),
      fooled=tf.logical_or(s.fooled, fooled_now), loss_prev=loss,
      increases=tf.where(at_check, tf.zeros_like(increases), increases),
      loss_best_at_check=tf.where(at_check, loss_best, s.loss_best_at_check),
      halved_at_check=tf.where(at_check, halve, s.halved_at_check))


def single_run(run, nb_iter, seed):
  """One APGD run from a random start: (point, best loss, fooled) per example.

  The point is the latest adversarial point met where `fooled`, else the highest-loss point.
  """
  state = _start(run, seed)
  has_examples = tf.size(run.y) > 0
  state = tf.while_loop(lambda s: tf.logical_and(s.i < nb_iter, has_examples), lambda s: (_iterate(run, s),),
                        (state,), maximum_iterations=nb_iter)[0]
  return _where(state.fooled, state.x_found, state.x_best), state.loss_best, state.fooled


# ----------------------------------------------------------------------------------------------------------------------
# Runs on the examples still robust, targets, re-checking. Shared with fab.py.

def run_on_robust(x, robust, num_runs, attack_run):
  """Runs `attack_run(run_index, index)` `num_runs` times, each on the examples still robust; merges the results.

  Args:
    x: the clean batch.
    robust: bool [batch], the examples to attack (e.g. those classified correctly).
    num_runs: Python int, number of runs (restarts x targets).
    attack_run: `(run_index, index) -> (points, scores, fooled)` for the examples `x[index]`: a point per example
      (adversarial where `fooled`), and a score (higher is better) that picks the point kept for robust examples.

  Returns:
    (points, robust): per example the adversarial point if a run found one, else the best-scoring point (x if never
    attacked); and whether no run fooled it.
  """
  def body(run_index, points, scores, robust):
    index = tf.where(robust)[:, 0]
    found, found_scores, fooled = attack_run(run_index, index)
    keep = tf.logical_or(fooled, found_scores > tf.gather(scores, index))
    update = lambda full, part: tf.tensor_scatter_nd_update(full, index[:, None], part)  # noqa: E731
    points = update(points, _where(keep, found, tf.gather(points, index)))
    scores = update(scores, tf.where(keep, found_scores, tf.gather(scores, index)))
    return run_index + 1, points, scores, update(robust, tf.logical_not(fooled))

  scores = tf.fill(tf.shape(robust), -np.inf)
  _, points, _, robust = tf.while_loop(lambda i, *_: i < num_runs, body, (tf.constant(0), x, scores, robust),
                                       maximum_iterations=num_runs)
  return points, robust


def ranked_targets(logits, num_targets):
  """The classes ranked 2 .. num_targets + 1 by `logits`, as int64 [batch, num_targets]."""
  num_classes = logits.shape[-1]
  if num_classes is not None and num_targets >= num_classes:
    raise ValueError(f"num_targets must be below the number of classes ({num_classes}), got {num_targets}.")
  return tf.cast(tf.math.top_k(logits, num_targets + 1).indices[:, 1:], tf.int64)


def correct(model_fn, x, y):
  """Whether `model_fn` classifies each of `x` as `y`."""
  return tf.equal(tf.argmax(model_fn(x), axis=1), y)


def recheck(model_fn, x, y, points, eps, norm, clip_min, clip_max):
  """(points projected into the eps-ball and [clip_min, clip_max], whether the model still classifies them right)."""
  points = project(points, x, eps, norm, clip_min, clip_max)
  return points, correct(model_fn, points, y)


def check_arguments(eps, nb_iter, norm, restarts, clip_min, clip_max, num_targets=1):
  """Raises ValueError naming the first bad argument (tensor epsilons are the caller's to check)."""
  if isinstance(eps, (int, float)) and eps < 0:
    raise ValueError(f"eps must be >= 0, got {eps}.")
  for name, value in (("nb_iter", nb_iter), ("restarts", restarts), ("num_targets", num_targets)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
  if norm not in attacks.NORMS:
    raise ValueError(f"norm must be one of {sorted(attacks.NORMS)}, got {norm!r}.")
  if not clip_min < clip_max:
    raise ValueError(f"clip_min must be below clip_max, got {clip_min} and {clip_max}.")


def _check_classes(logits, minimum, needed_by):
  if logits.shape[-1] is not None and logits.shape[-1] < minimum:
    raise ValueError(f"{needed_by} needs at least {minimum} classes, the model has {logits.shape[-1]}.")


def _check_rho(rho):
  if not 0 < rho <= 1:
    raise ValueError(f"rho must be in (0, 1], got {rho}.")


def apgd(model_fn, x, y, eps, nb_iter=100, norm="linf", loss="ce", restarts=1, seed=None, rho=0.75, clip_min=0.0,
         clip_max=1.0):
  """Untargeted APGD on the cross-entropy or DLR loss.

  Args:
    model_fn: callable from images to logits in inference mode (`attacks.inference_fn`).
    x: float32 images in [clip_min, clip_max].
    y: int64 true labels.
    eps: radius of the `norm` ball (float or scalar tensor).
    nb_iter: iterations per run (one forward and backward pass each).
    norm: 'linf' or 'l2'.
    loss: 'ce' or 'dlr' (DLR needs at least 3 classes).
    restarts: random starts; each runs only on the examples the previous ones did not fool.
    seed: None (TensorFlow's stateful generator) or a shape-[2] integer tensor for stateless random starts.
    rho: the step is halved where the loss rose in at most this fraction of the steps since the last checkpoint.
    clip_min: smallest valid pixel value.
    clip_max: largest valid pixel value.

  Returns:
    (x_adv, robust): per example an adversarial point if one was found, else the highest-loss point (x itself for
    examples misclassified to begin with), projected into the ball and pixel range; and whether the model still
    classifies that point correctly (re-run through the model).
  """
  check_arguments(eps, nb_iter, norm, restarts, clip_min, clip_max)
  _check_rho(rho)
  if loss not in _LOSS_FUNCTIONS:
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}.")
  x, y = tf.convert_to_tensor(x, tf.float32), tf.cast(y, tf.int64)
  logits = model_fn(x)
  _check_classes(logits, 3 if loss == "dlr" else 2, f"loss {loss!r}")
  targets = tf.expand_dims(y, 1)  # unused by the untargeted losses
  return _run_apgd(model_fn, x, y, eps, nb_iter, norm, _LOSS_FUNCTIONS[loss], targets, restarts, seed, rho,
                   (clip_min, clip_max), tf.equal(tf.argmax(logits, axis=1), y))


def apgd_targeted(model_fn, x, y, eps, nb_iter=100, num_targets=9, norm="linf", restarts=1, seed=None, clip_min=0.0,
                  clip_max=1.0, rho=0.75):
  """Targeted APGD on the targeted DLR loss (APGD-T): the classes ranked 2 .. num_targets + 1 by the clean logits.

  Each target (and restart) runs only on the examples no earlier one fooled. The model needs at least 4 classes.

  Args:
    model_fn, x, y, eps, nb_iter, norm, restarts, seed, rho, clip_min, clip_max: as in `apgd`.
    num_targets: number of target classes (below the number of classes).

  Returns:
    (x_adv, robust) as in `apgd`.
  """
  check_arguments(eps, nb_iter, norm, restarts, clip_min, clip_max, num_targets)
  _check_rho(rho)
  x, y = tf.convert_to_tensor(x, tf.float32), tf.cast(y, tf.int64)
  logits = model_fn(x)
  _check_classes(logits, 4, "apgd_targeted (targeted DLR loss)")
  targets = ranked_targets(logits, num_targets)
  robust = tf.equal(tf.argmax(logits, axis=1), y)
  return _run_apgd(model_fn, x, y, eps, nb_iter, norm, targeted_dlr_loss, targets, restarts, seed, rho,
                   (clip_min, clip_max), robust)


def _run_apgd(model_fn, x, y, eps, nb_iter, norm, loss_fn, targets, restarts, seed, rho, clip, robust):
  """APGD `restarts` times per column of `targets`, each run on the examples still robust; re-checked."""
  eps = tf.cast(eps, x.dtype)
  windows = tf.constant(checkpoint_windows(nb_iter), tf.int32)

  def attack_run(run_index, index):
    target = tf.gather(tf.gather(targets, run_index // restarts, axis=1), index)
    x_run = tf.gather(x, index)
    box = (tf.maximum(x_run - eps, clip[0]), tf.minimum(x_run + eps, clip[1]))
    run = _Run(model_fn, x_run, tf.gather(y, index), target, loss_fn, eps, norm, rho, clip, windows, box)
    return single_run(run, nb_iter, run_seed(seed, run_index))

  points, _ = run_on_robust(x, robust, restarts * targets.shape[1], attack_run)
  return recheck(model_fn, x, y, points, eps, norm, *clip)
