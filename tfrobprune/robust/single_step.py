"""Single-step adversarial examples for fast adversarial training: N-FGSM, FGSM with a random start, GradAlign.

PGD-k training pays k input-gradient passes per step. One FGSM step is enough if the training does not
"catastrophically overfit" (Wong et al. 2020: the model learns to defeat the single step while multi-step attacks
succeed; `train/overfit_monitor.py` watches for it). Two remedies, both here:
- N-FGSM (de Jorge et al., NeurIPS 2022): start from strong noise `x + U[-k eps, k eps]` (k = 2) and take one
  signed-gradient step of size alpha (their experiments: alpha = eps), with NO projection back to the eps ball; the
  training perturbation is then up to (k + alpha / eps) eps in L-inf, only clipped to the pixel range.
- FGSM-RS (Wong et al. 2020): start uniformly in the eps ball, step 1.25 eps, project back to the ball;
- and plain FGSM from the clean image (step eps), which on its own overfits catastrophically at larger eps, but is
  what GradAlign (Andriushchenko & Flammarion 2020) pairs its penalty with: `1 - cos(grad_x l(x),
  grad_x l(x + eta))` on the misalignment of input gradients at x and at a uniform point of the ball, which needs
  the gradient of an input gradient (double backpropagation). The penalty goes with any of the three.

The attacks call the model through `attacks.inference_fn` (inference mode, input gradients only), as every attack
here does (tfmot's pruning step must not advance); the reference implementations attack in training mode, which
differs only for BatchNorm models (batch statistics). The polyphase input gradient of `input_gradients` is twice
differentiable, so GradAlign goes through it too. GradAlign's weight needs tuning with eps (the reference grows
it roughly with eps squared). Noise is drawn statelessly from a seed, as the PGD starts are, so that resumed runs
repeat it.
"""

import numpy as np
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

from tfrobprune.keras_compat import tf
from tfrobprune.robust import attacks

__all__ = ["nfgsm", "fgsm_rs", "fgsm", "gradalign_penalty", "NFGSM_NOISE", "NFGSM_STEP", "FGSM_RS_STEP", "FGSM_STEP"]

# The methods' default noise magnitude (k, in units of eps) and step sizes (alpha, in units of eps).
NFGSM_NOISE = 2.0
NFGSM_STEP = 1.0
FGSM_RS_STEP = 1.25
FGSM_STEP = 1.0


def _cross_entropy(labels, logits):
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _check(eps, step_size, noise=1.0):
  for name, value in (("eps", eps), ("step_size", step_size), ("noise", noise)):
    if isinstance(value, (int, float)) and value < 0:
      raise ValueError(f"{name} must be >= 0, got {value}.")


def _signed_step(model_fn, start, y, step_size, clip_min, clip_max):
  """`start + step_size * sign(grad_x CE(model_fn(x), y))` at x = start, clipped to the pixel range."""
  return fast_gradient_method(model_fn, start, tf.cast(step_size, start.dtype), np.inf, loss_fn=_cross_entropy,
                              clip_min=clip_min, clip_max=clip_max, y=y)


def _projected_step(model_fn, x, start, y, eps, step_size, clip_min, clip_max):
  """`_signed_step` from `start`, projected back to the L-inf ball of radius `eps` around `x` and the pixel range."""
  stepped = _signed_step(model_fn, start, y, step_size, clip_min, clip_max)
  return tf.clip_by_value(x + tf.clip_by_value(stepped - x, -eps, eps), clip_min, clip_max)


def nfgsm(model_fn, x, y, eps, step_size, noise=NFGSM_NOISE, seed=None, clip_min=0.0, clip_max=1.0):
  """N-FGSM: one signed-gradient step from `x + U[-noise eps, noise eps]`, not projected to the eps ball.

  Args:
    model_fn: images -> logits, inference mode (`attacks.inference_fn`).
    x: images in [clip_min, clip_max].
    y: true integer labels.
    eps: the threat model's radius (float or scalar tensor); the noise is `noise * eps`.
    step_size: alpha, the absolute step (float or scalar tensor).
    noise: k, the noise magnitude in units of eps.
    seed: optional shape-[2] integer seed of the noise (stateless, see `attacks.random_start`).
    clip_min, clip_max: the pixel range.

  Returns:
    Training inputs within `(noise * eps + step_size)` of x in L-inf and within the pixel range.
  """
  _check(eps, step_size, noise)
  x = tf.convert_to_tensor(x, tf.float32)
  eta = attacks.random_start(tf.shape(x), "linf", tf.cast(eps, x.dtype) * noise, seed, x.dtype)
  start = tf.clip_by_value(x + eta, clip_min, clip_max)
  return _signed_step(model_fn, start, y, step_size, clip_min, clip_max)


def fgsm_rs(model_fn, x, y, eps, step_size, seed=None, clip_min=0.0, clip_max=1.0):
  """FGSM with a random start (Wong et al. 2020): uniform start in the eps ball, one step, projected to the ball.

  Args:
    model_fn, x, y, seed, clip_min, clip_max: as for `nfgsm`.
    eps: the radius of the L-inf ball the result stays in.
    step_size: alpha, the absolute step (Wong et al.: 1.25 eps).

  Returns:
    Adversarial images within eps of x in L-inf and within the pixel range.
  """
  _check(eps, step_size)
  x = tf.convert_to_tensor(x, tf.float32)
  eps = tf.cast(eps, x.dtype)
  start = tf.clip_by_value(x + attacks.random_start(tf.shape(x), "linf", eps, seed, x.dtype), clip_min, clip_max)
  return _projected_step(model_fn, x, start, y, eps, step_size, clip_min, clip_max)


def fgsm(model_fn, x, y, eps, step_size, clip_min=0.0, clip_max=1.0):
  """FGSM from the clean image: one signed-gradient step of `step_size`, projected to the eps ball.

  Args:
    model_fn, x, y, clip_min, clip_max: as for `nfgsm`.
    eps: the radius of the L-inf ball the result stays in.
    step_size: alpha, the absolute step (eps: Goodfellow et al.'s FGSM; GradAlign's 1.25 eps projects back to it).

  Returns:
    Adversarial images within eps of x in L-inf and within the pixel range.
  """
  _check(eps, step_size)
  x = tf.convert_to_tensor(x, tf.float32)
  return _projected_step(model_fn, x, x, y, tf.cast(eps, x.dtype), step_size, clip_min, clip_max)


def gradalign_penalty(model_fn, x, y, eps, seed=None, clip_min=0.0, clip_max=1.0):
  """GradAlign (Andriushchenko & Flammarion 2020): `1 - mean cos(grad_x l(x), grad_x l(x + eta))`, eta ~ U(ball).

  Both input gradients come from one batched pass; the noisy point's stays on the caller's tape, so the penalty is
  differentiable with respect to the weights (double backpropagation). It is 0 where the loss is linear in the input
  along the ball (aligned gradients) and up to 2; the mean runs over examples whose two gradients are non-zero.

  Args:
    model_fn: images -> logits, inference mode; must be twice differentiable (`attacks.inference_fn` is).
    x, y: clean images and true labels.
    eps: the ball's radius.
    seed: optional shape-[2] integer seed of eta.
    clip_min, clip_max: the pixel range (the noisy point is clipped to it).

  Returns:
    A scalar tensor.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  noisy = tf.clip_by_value(x + attacks.random_start(tf.shape(x), "linf", tf.cast(eps, x.dtype), seed, x.dtype),
                           clip_min, clip_max)
  both = tf.concat([x, noisy], axis=0)
  with tf.GradientTape() as tape:
    tape.watch(both)
    loss = tf.reduce_sum(_cross_entropy(tf.concat([y, y], axis=0), model_fn(both)))
  gradients = tf.reshape(tape.gradient(loss, both), [2, tf.shape(x)[0], -1])
  # As in the reference, the clean gradient is a constant target (no backpropagation through it), and examples
  # whose gradient is exactly 0 at either point (a saturated softmax) carry no direction and are left out: counting
  # them as cos = 0 would penalise confident examples, and dividing by their norm is unstable.
  clean, noisy = tf.stop_gradient(gradients[0]), gradients[1]
  squared_norms = tf.reduce_sum(tf.square(clean), axis=1), tf.reduce_sum(tf.square(noisy), axis=1)
  nonzero = tf.logical_and(squared_norms[0] > 0, squared_norms[1] > 0)
  norms = [tf.sqrt(tf.where(nonzero, squared, tf.ones_like(squared))) for squared in squared_norms]
  cosine = tf.reduce_sum(clean * noisy, axis=1) / (norms[0] * norms[1])
  misalignment = tf.where(nonzero, 1.0 - cosine, tf.zeros_like(cosine))
  return tf.math.divide_no_nan(tf.reduce_sum(misalignment), tf.reduce_sum(tf.cast(nonzero, misalignment.dtype)))
