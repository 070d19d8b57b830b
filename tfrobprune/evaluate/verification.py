"""Verified accuracy: the fraction of examples provably classified correctly within an L-inf ball.

An example is verified when every margin lower bound `logit_y - logit_j`, `j != y`, is positive; the bounds come
from IBP (`margins.margin_bounds`) or CROWN-IBP (`crown_ibp.tightest_margin_bounds`).
"""

from absl import logging

from tfrobprune.keras_compat import tf
from tfrobprune.robust import crown_ibp
# A local `margins` (the bounds of a batch) would hide a module of that name.
from tfrobprune.robust import margins as margins_lib

__all__ = ["verified_accuracy"]


_MARGIN_METHODS = {"ibp": margins_lib.margin_bounds, "crown_ibp": crown_ibp.tightest_margin_bounds}


def _verified_count(model, margin_fn, x, y, eps, num_classes):
  """The number of examples in a batch that are verified and correctly classified."""
  margins = margin_fn(model, x, y, eps, num_classes)
  is_label = tf.one_hot(y, num_classes, on_value=True, off_value=False)
  verified = tf.reduce_all((margins > 0.) | is_label, axis=1)
  correct = tf.argmax(model(x, training=False), axis=1) == y
  return int(tf.reduce_sum(tf.cast(verified & correct, tf.int64)))


def verified_accuracy(model, x, y, eps, num_classes, method="ibp", batch_size=256):
  """The fraction of examples that are correctly classified and provably robust within the L-inf ball.

  An example counts if every margin lower bound `logit_y - logit_j`, `j != y`, is positive.

  Args:
    model: a single-input, single-output model ending in Dense logits.
    x: inputs, [n, ...] in [0, 1] (array or tensor).
    y: integer labels, [n].
    eps: the L-inf radius.
    num_classes: K, the number of logits.
    method: 'ibp' (`margin_bounds`) or 'crown_ibp' (`tightest_margin_bounds`, so never below the IBP figure). For a
      model CROWN-IBP cannot relax (Add, max pooling, sigmoid, ...) 'crown_ibp' logs a warning and reports the IBP
      figure.
    batch_size: examples per bound computation.

  Returns:
    The verified accuracy, a float in [0, 1].

  Raises:
    ValueError: for an unknown method, a non-positive batch size or no examples.
  """
  if method not in _MARGIN_METHODS:
    raise ValueError(f"method must be one of {', '.join(_MARGIN_METHODS)}, got {method!r}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  num_examples = int(x.shape[0])
  if num_examples == 0:
    raise ValueError("verified_accuracy needs at least one example, got none.")
  if method == "crown_ibp":
    try:
      crown_ibp.crown_ibp_steps(model)
    except NotImplementedError as error:
      logging.warning("%s Verified accuracy falls back to IBP.", error)
      method = "ibp"
  y = tf.cast(y, tf.int64)
  verified = sum(
      _verified_count(model, _MARGIN_METHODS[method], x[start:start + batch_size], y[start:start + batch_size], eps,
                      num_classes) for start in range(0, num_examples, batch_size))
  return verified / num_examples
