"""Gradient-masking checks of an AutoAttack evaluation: signs that gradient attacks were blocked, not defeated.

A model that hides or breaks its gradient (obfuscated gradients, Athalye et al. 2018) looks robust to gradient
attacks without being robust. Pruned, quantized and IBP-trained models are where that happens most often, so every
evaluation that runs AutoAttack also runs these checks on a class-stratified sample of the evaluated examples:

- `large_eps`: APGD-CE at a large radius must drive accuracy to about 0. At L-inf radius 0.5 every image in [0, 1]
  can reach the uniform grey image 0.5 (for L2 the same holds at 0.5 * sqrt(pixels)), so even a perfect attack that
  only knew that point would leave at most the examples of the one class the model gives grey, about 1 / classes
  of a balanced sample; an attack that follows a working gradient leaves almost none. The check fails above
  `LARGE_EPS_MAX_ACC` (0.05, half the chance level of ten classes): more than that survives only when the
  gradient leads the attack nowhere.
- `square_vs_whitebox`: AutoAttack's own `check_square_sr`, on every example the ensemble attacked. Square, which
  uses no gradients, runs after the white-box attacks (APGD-CE, APGD-T, FAB-T) on the examples they left robust;
  if it breaks more than `SQUARE_TOLERANCE` of all examples (AutoAttack's threshold), the gradients misled the
  white-box attacks there. Counted on the ensemble's result, so it costs no extra attack.
- `gradient`: the input gradient the attacks use (`attacks.inference_fn`; and `input_gradients`' polyphase
  first-layer gradient forced on, whether or not this machine uses it) equals `tf.GradientTape` on the plain model
  to a relative `GRADIENT_RTOL` per example, and no example has an all-zero gradient (AutoAttack's
  `check_zero_gradients`) of the logit margin: unlike cross-entropy's, that gradient does not vanish on a
  confidently classified example whose softmax saturates in float32, so only a blocked gradient trips it.
"""

import functools
import math

import numpy as np

from tfrobprune.data import subsets
from tfrobprune.evaluate import autoattack
from tfrobprune.keras_compat import tf
from tfrobprune.robust import attacks
from tfrobprune.robust import input_gradients

SAMPLE_SIZE = 200
LARGE_EPS_LINF = 0.5
LARGE_EPS_MAX_ACC = 0.05
SQUARE_TOLERANCE = 0.002
GRADIENT_RTOL = 1e-3
CHECKS = ("large_eps", "square_vs_whitebox", "gradient")


def large_eps(norm, image_shape):
  """The radius at which every image in [0, 1] can reach the grey image 0.5 (module docstring)."""
  return LARGE_EPS_LINF if norm == "linf" else LARGE_EPS_LINF * math.sqrt(float(np.prod(image_shape)))


def check_large_eps(model, x, y, num_classes, norm="linf", budget=autoattack.Budget(), batch_size=500, seed=0):
  """APGD-CE at `large_eps`: passes when its robust accuracy is at most `LARGE_EPS_MAX_ACC`."""
  eps = large_eps(norm, x.shape[1:])
  result = autoattack.run_autoattack(model, x, y, eps, num_classes, norm=norm, budget=budget, batch_size=batch_size,
                                     seed=seed, attack_stages=autoattack.stages(names=("apgd-ce",)))
  return {"eps": eps, "robust_acc": result.robust_acc, "max_acc": LARGE_EPS_MAX_ACC,
          "passed": result.robust_acc <= LARGE_EPS_MAX_ACC}


def check_square_vs_whitebox(result):
  """AutoAttack's `check_square_sr` on the ensemble's `result` (an `autoattack.AutoAttackResult`): passes unless
  Square lowered the white-box attacks' robust accuracy by more than `SQUARE_TOLERANCE`.

  None when the result cannot tell: no Square stage, no white-box stage, or a white-box attack that ran after Square
  (it never saw the examples Square broke first).
  """
  names = result.stage_names
  whitebox_stages = [names.index(name) for name in autoattack.WHITE_BOX if name in names]
  if "square" not in names or not whitebox_stages or max(whitebox_stages) > names.index("square"):
    return None
  whitebox = result.robust_against(autoattack.WHITE_BOX)
  after_square = whitebox & result.stage_robust("square")
  count = max(len(whitebox), 1)
  whitebox_acc, after_square_acc = float(np.sum(whitebox)) / count, float(np.sum(after_square)) / count
  return {"examples": len(whitebox), "whitebox_acc": whitebox_acc, "after_square_acc": after_square_acc,
          "square_broke": int(np.sum(whitebox & ~after_square)), "tolerance": SQUARE_TOLERANCE,
          "passed": after_square_acc >= whitebox_acc - SQUARE_TOLERANCE}


def _cross_entropy_gradient(model_fn, x, y):
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x)))
  return tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _margin_gradient(model_fn, x, y):
  """Input gradient of (largest other logit - true logit), which stays non-zero where softmax saturates."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    logits = model_fn(x)
    true = tf.gather(logits, y, axis=1, batch_dims=1)
    others = tf.where(tf.one_hot(y, tf.shape(logits)[1]) > 0, tf.fill(tf.shape(logits), logits.dtype.min), logits)
    loss = tf.reduce_sum(tf.reduce_max(others, axis=1) - true)
  return tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _polyphase_fn(model):
  """Logits of `model` with the polyphase input gradient on every eligible layer, whether or not it pays off here."""
  def logits(x):
    with input_gradients.polyphase_input_gradients(input_gradients.eligible_layers(model)):
      return model(x, training=False)
  return logits


def _relative_errors(gradient, reference):
  """Per example ||gradient - reference|| / ||reference|| (0 where both are zero)."""
  difference = np.linalg.norm((gradient - reference).reshape(len(reference), -1), axis=1)
  scale = np.linalg.norm(reference.reshape(len(reference), -1), axis=1)
  return difference / np.maximum(scale, 1e-30)  # finite (JSON has no infinity): huge where only one is zero


def check_gradients(model, x, y):
  """The attacks' input gradients against `tf.GradientTape` autodiff of the plain model, and zero gradients."""
  x, y = tf.constant(x, tf.float32), tf.constant(y, tf.int64)
  reference = _cross_entropy_gradient(lambda images: model(images, training=False), x, y).numpy()
  errors = {}
  for path, model_fn in (("attack", attacks.inference_fn(model)), ("polyphase", _polyphase_fn(model))):
    gradient = tf.function(functools.partial(_cross_entropy_gradient, model_fn))
    errors[path] = float(np.max(_relative_errors(gradient(x, y).numpy(), reference), initial=0.0))
  margin_gradient = _margin_gradient(lambda images: model(images, training=False), x, y).numpy()
  zero = np.all(margin_gradient.reshape(len(margin_gradient), -1) == 0, axis=1)
  zero_fraction = float(np.mean(zero)) if len(zero) else 0.0
  return {"max_relative_error": max(errors.values()), "relative_errors": errors, "rtol": GRADIENT_RTOL,
          "polyphase_layers": len(input_gradients.eligible_layers(model)), "zero_gradient_fraction": zero_fraction,
          "passed": max(errors.values()) <= GRADIENT_RTOL and zero_fraction == 0.0}


def run_checks(model, x, y, num_classes, result, norm="linf", budget=autoattack.Budget(), batch_size=500,
               seed=0, sample_size=SAMPLE_SIZE):
  """All checks, given the ensemble's `result` on all of (x, y): `large_eps` and `gradient` on a class-stratified
  sample of (x, y), `square_vs_whitebox` on all of them (from `result`).

  Returns:
    {'examples': sample size, 'large_eps': ..., 'square_vs_whitebox': ... (None where `result` cannot tell, see
     `check_square_vs_whitebox`), 'gradient': ..., 'passed': all passed}.
  """
  index = subsets.stratified_subset(y, sample_size, seed)
  xs, ys = np.asarray(x)[index], np.asarray(y)[index]
  checks = {"examples": len(index),
            "large_eps": check_large_eps(model, xs, ys, num_classes, norm, budget, batch_size, seed),
            "square_vs_whitebox": check_square_vs_whitebox(result),
            "gradient": check_gradients(model, xs, ys)}
  checks["passed"] = all(checks[name]["passed"] for name in CHECKS if checks[name] is not None)
  return checks


def warnings(checks, model_name):
  """One plain-text warning per failed check of `run_checks`' output (for report['warnings'] and report.md)."""
  if not checks:
    return []
  lines, n = [], checks["examples"]
  large, square_check, gradient = checks["large_eps"], checks.get("square_vs_whitebox"), checks["gradient"]
  if not large["passed"]:
    lines.append(f"gradient masking? {model_name}: APGD-CE at eps {large['eps']:g} leaves {large['robust_acc']:.1%} "
                 f"of {n} examples robust (expected <= {large['max_acc']:.0%}); the gradient attacks' figures may "
                 "overstate robustness.")
  if square_check is not None and not square_check["passed"]:
    lines.append(f"gradient masking? {model_name}: Square (no gradients) broke {square_check['square_broke']} of "
                 f"{square_check['examples']} examples the white-box attacks left robust ("
                 f"{square_check['whitebox_acc']:.1%} -> {square_check['after_square_acc']:.1%}, tolerance "
                 f"{square_check['tolerance']:.1%}); the gradient attacks' figures may overstate robustness.")
  if not gradient["passed"]:
    lines.append(f"gradient masking? {model_name}: the attacks' input gradient differs from TensorFlow's autodiff by "
                 f"{gradient['max_relative_error']:.2g} (relative, tolerance {gradient['rtol']:g}) or is zero on "
                 f"{gradient['zero_gradient_fraction']:.1%} of {n} examples.")
  return lines


def report_warnings(results_by_model):
  """The warnings of every model's `masking_checks` ({model name: its evaluation results}), in order."""
  return [line for name, results in results_by_model.items()
          for line in warnings((results or {}).get("masking_checks"), name)]
