"""Adversarial attacks: thin, checked wrappers around cleverhans' TF2 PGD and FGSM.

One pure function per attack, cleverhans style. Differences from calling cleverhans directly, each a trap we hit:
- the true labels are required: cleverhans attacks the model's own predictions when `y` is None;
- the loss is passed as `loss_fn(labels=..., logits=...)`, the call cleverhans makes (Keras loss objects fail);
- the model is always called with `training=False` (`inference_fn`): tfmot's pruning wrapper advances its pruning
  step on every `training=True` call, and BatchNorm must not update its statistics on adversarial inputs;
- epsilon and step size may be tensors (an epsilon ramp-up inside one compiled training step does not retrace):
  cleverhans' `projected_gradient_descent` asserts `eps_iter <= eps` in Python, which a tensor cannot answer, so
  `pgd` runs the same loop from cleverhans' own pieces (`random_lp_vector`, `fast_gradient_method`, `clip_eta`);
- `norm` is a name ('linf' or 'l2') checked up front;
- the random start can be seeded statelessly (`seed`, a pair of ints): the same seed gives the same start in a fresh
  process, which is what makes a killed and resumed run bit-identical to an uninterrupted one.
"""

import numpy as np
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.utils import clip_eta, random_lp_vector

from tfrobprune.keras_compat import tf
from tfrobprune.robust import input_gradients

NORMS = {"linf": np.inf, "l2": 2}


def inference_fn(model):
  """A model function for attacks: logits of `model` in inference mode. Build it once per model.

  Where it pays off (oneDNN kernels, `input_gradients.pays_off`), its image-facing convolutions differentiate
  with respect to the image by `input_gradients`' polyphase forward convolution: the same gradient up to rounding,
  in less time (docs/performance.md). Plain calls of `model` are unaffected.
  """
  layers = None if input_gradients.pays_off() else []

  def logits(x):
    nonlocal layers
    if layers is None and model.built:
      layers = input_gradients.eligible_layers(model)
    with input_gradients.polyphase_input_gradients(layers or []):
      return model(x, training=False)

  return logits


def _cross_entropy(labels, logits):
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _norm_order(norm):
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}.")
  return NORMS[norm]


def random_start(shape, norm, eps, seed=None, dtype=tf.float32):
  """A uniform sample of the `norm` ball of radius `eps` (cleverhans' `random_lp_vector`, optionally stateless).

  Args:
    shape: batch shape of the sample, batch first.
    norm: 'linf' or 'l2'.
    eps: radius (scalar tensor or float).
    seed: None for TensorFlow's stateful RNG, or a shape-[2] integer seed for `tf.random.stateless_*`.
    dtype: sample dtype.

  Returns:
    A tensor of `shape`.
  """
  order = _norm_order(norm)
  if seed is None:
    return random_lp_vector(shape, order, tf.cast(eps, dtype), dtype=dtype)
  seed = tf.cast(seed, tf.int64)
  eps = tf.cast(eps, dtype)
  if order == np.inf:
    return tf.random.stateless_uniform(shape, seed, -1.0, 1.0, dtype=dtype) * eps
  # Uniform in the L2 ball: a Gaussian direction scaled by w^(1/d), w ~ U[0, 1] (Calafiore et al. 1998).
  direction_seed, radius_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  flat = tf.random.stateless_normal(tf.stack([shape[0], tf.reduce_prod(shape[1:])]), direction_seed, dtype=dtype)
  dim = tf.cast(tf.shape(flat)[1], dtype)
  radius = tf.pow(tf.random.stateless_uniform(tf.stack([shape[0], 1]), radius_seed, dtype=dtype), 1.0 / dim)
  return eps * tf.reshape(radius * flat / tf.norm(flat, axis=1, keepdims=True), shape)


def _check_budget(eps, eps_iter=None, nb_iter=None):
  """Validates Python-number budgets (tensors are checked by the caller's schedule)."""
  if isinstance(eps, (int, float)) and eps < 0:
    raise ValueError(f"eps must be >= 0, got {eps}.")
  if isinstance(eps_iter, (int, float)) and eps_iter < 0:
    raise ValueError(f"eps_iter must be >= 0, got {eps_iter}.")
  if nb_iter is not None and (not isinstance(nb_iter, int) or nb_iter < 1):
    raise ValueError(f"nb_iter must be an integer >= 1, got {nb_iter!r}.")


def fgsm(model_fn, x, y, eps, norm="linf", clip_min=0.0, clip_max=1.0):
  """Fast gradient (sign) method: one step of size `eps` up the loss gradient.

  Args:
    model_fn: callable from images to logits (see `inference_fn`).
    x: images in [clip_min, clip_max].
    y: true integer labels (required).
    eps: perturbation size, a float or scalar tensor.
    norm: 'linf' (FGSM) or 'l2'.
    clip_min: smallest valid pixel value.
    clip_max: largest valid pixel value.

  Returns:
    Adversarial images of x's shape and dtype.
  """
  _check_budget(eps)
  eps = tf.cast(eps, x.dtype)
  return fast_gradient_method(model_fn, x, eps, _norm_order(norm), loss_fn=_cross_entropy, clip_min=clip_min,
                              clip_max=clip_max, y=y)


def pgd(model_fn, x, y, eps, eps_iter, nb_iter, norm="linf", rand_init=True, clip_min=0.0, clip_max=1.0,
        loss_fn=None, seed=None):
  """Projected gradient descent (Madry et al. 2018) with cleverhans' TF2 implementation.

  Args:
    model_fn: callable from images to logits (see `inference_fn`).
    x: images in [clip_min, clip_max].
    y: true integer labels (required; without them cleverhans attacks the model's own predictions).
    eps: radius of the norm ball, a float or scalar tensor.
    eps_iter: step size, a float or scalar tensor, at most `eps`.
    nb_iter: number of steps (Python int; one `tf.while_loop` in a compiled graph).
    norm: 'linf' or 'l2'.
    rand_init: start from a uniformly random point of the ball.
    clip_min: smallest valid pixel value.
    clip_max: largest valid pixel value.
    loss_fn: `loss_fn(labels=y, logits=...)` to ascend; per-example cross-entropy by default. TRADES passes the
      clean logits as `y` and a KL divergence here.
    seed: optional shape-[2] integer seed of the random start (see `random_start`).

  Returns:
    Adversarial images within `eps` of `x` (in `norm`) and within [clip_min, clip_max].
  """
  _check_pgd_arguments(eps, eps_iter, nb_iter, y)
  eta = random_start(tf.shape(x), norm, eps, seed, x.dtype) if rand_init else tf.zeros_like(x)
  return _pgd_from(model_fn, x, y, eta, eps, eps_iter, nb_iter, norm, clip_min, clip_max, loss_fn)


def _check_pgd_arguments(eps, eps_iter, nb_iter, y):
  _check_budget(eps, eps_iter, nb_iter)
  if isinstance(eps, (int, float)) and isinstance(eps_iter, (int, float)) and eps_iter > eps:
    raise ValueError(f"eps_iter ({eps_iter}) must not exceed eps ({eps}).")
  if y is None:
    raise ValueError("pgd needs the true labels y (cleverhans would attack the model's own predictions).")


def _pgd_from(model_fn, x, y, eta, eps, eps_iter, nb_iter, norm, clip_min, clip_max, loss_fn=None):
  """PGD's iterations from the start x + eta (arguments checked by the caller)."""
  order = _norm_order(norm)
  eps = tf.cast(eps, x.dtype)
  eps_iter = tf.minimum(tf.cast(eps_iter, x.dtype), eps)
  x_adv = tf.clip_by_value(x + clip_eta(eta, order, eps), clip_min, clip_max)

  def iteration(i, x_adv):
    x_adv = fast_gradient_method(model_fn, x_adv, eps_iter, order, loss_fn=loss_fn or _cross_entropy,
                                 clip_min=clip_min, clip_max=clip_max, y=y)
    return i + 1, tf.clip_by_value(x + clip_eta(x_adv - x, order, eps), clip_min, clip_max)

  # A graph loop, not nb_iter unrolled copies: the compiled graph (and its tracing time) does not grow with nb_iter.
  _, x_adv = tf.while_loop(lambda i, _: i < nb_iter, iteration, (tf.constant(0), x_adv))
  return x_adv


def pgd_with_restarts(model_fn, x, y, eps, eps_iter, nb_iter, restarts=1, norm="linf", clip_min=0.0, clip_max=1.0,
                      seed=None):
  """PGD from several random starts; per example keeps the first start that fools the model.

  Each start attacks only the examples that the model still classifies correctly after the earlier ones (the
  others' verdict is settled), gathered into a smaller batch. The random starts are drawn for the whole batch, so an
  example starts from the same point, and gets the same verdict, as if every example were attacked every time.

  Args:
    model_fn, x, y, eps, eps_iter, nb_iter, norm, clip_min, clip_max: as in `pgd`.
    restarts: number of random starts (>= 1).
    seed: optional shape-[2] integer seed; restart r uses `seed + [0, r]`.

  Returns:
    (x_adv, robust) where `robust` is a boolean vector: the model classifies every tried start correctly.
  """
  if not isinstance(restarts, int) or restarts < 1:
    raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}.")
  _check_pgd_arguments(eps, eps_iter, nb_iter, y)
  y = tf.cast(y, tf.int64)
  robust = tf.equal(tf.argmax(model_fn(x), axis=1), y)

  def attack_robust_rows(eta, x_adv, robust):
    rows = tf.where(robust)
    candidate = _pgd_from(model_fn, tf.gather_nd(x, rows), tf.gather_nd(y, rows), tf.gather_nd(eta, rows), eps,
                          eps_iter, nb_iter, norm, clip_min, clip_max)
    fooled = tf.not_equal(tf.argmax(model_fn(candidate), axis=1), tf.gather_nd(y, rows))
    newly_fooled = tf.tensor_scatter_nd_update(tf.zeros_like(robust), rows, fooled)
    x_adv = tf.tensor_scatter_nd_update(x_adv, tf.boolean_mask(rows, fooled), tf.boolean_mask(candidate, fooled))
    return x_adv, tf.logical_and(robust, tf.logical_not(newly_fooled))

  def restart(r, x_adv, robust):
    restart_seed = None if seed is None else tf.cast(seed, tf.int64) + tf.stack([tf.constant(0, tf.int64), r])
    eta = random_start(tf.shape(x), norm, eps, restart_seed, x.dtype)
    # No rows left: skip the attack (oneDNN's convolutions fail on an empty batch).
    x_adv, robust = tf.cond(tf.reduce_any(robust), lambda: attack_robust_rows(eta, x_adv, robust),
                            lambda: (x_adv, robust))
    return r + 1, x_adv, robust

  # The restarts are a graph loop too (around the iterations' loop): one copy of the attack in the graph.
  _, x_adv, robust = tf.while_loop(lambda r, *_: r < restarts, restart, (tf.constant(0, tf.int64), x, robust))
  return x_adv, robust
