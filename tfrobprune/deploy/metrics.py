"""Scores of an artifact's outputs: plain accuracy, and accuracy with tied top logits splitting the credit.

int8 artifacts output logits on a grid, so two classes can share the top logit; `tie_aware_accuracy` scores such
a row fairly instead of letting `np.argmax` settle it for the lower class index.
"""

import numpy as np


def accuracy(predictions, labels):
  """The fraction of `predictions` (class indices) equal to `labels`; None without labels."""
  return float(np.mean(np.asarray(predictions) == np.asarray(labels))) if len(labels) else None


def _tied_top(logits):
  """[N, K] booleans: which classes share the top logit of each row (several only where the logits tie)."""
  logits = np.asarray(logits)
  return logits == logits.max(axis=1, keepdims=True)


def tie_aware_accuracy(logits, targets):
  """The fraction of rows whose top logit names `targets`, a row tied between k classes counting 1/k if one is it.

  int8 artifacts output logits on a grid (an 8-bit output), so two classes can tie exactly, mostly on adversarial
  inputs, which sit on the decision boundary. `np.argmax` would settle every tie for the lower class index, which
  favours some labels over others (on Fashion-MNIST, T-shirt 0 over shirt 6): splitting the credit is the
  expectation of a fair tie-break. Float outputs practically never tie, so
  for them this is ordinary accuracy.
  """
  if not len(targets):
    return None
  tied = _tied_top(logits)
  return float(np.mean(tied[np.arange(len(tied)), np.asarray(targets)] / tied.sum(axis=1)))


def tie_fraction(logits):
  """The fraction of rows whose top logit is shared by several classes (0 without rows)."""
  return float(np.mean(_tied_top(logits).sum(axis=1) > 1)) if len(logits) else 0.0
