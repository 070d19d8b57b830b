"""Evaluation: benign, FGSM, PGD (with restarts) and verified accuracy on one fixed set of examples.

Dense and pruned models are evaluated on the same examples with the same attack settings, so their ratios mean
something. The default PGD is stronger than the training attack (more steps, several random starts).
"""

import dataclasses

import numpy as np

from tfrobprune.data import subsets
from tfrobprune.evaluate import verification
from tfrobprune.keras_compat import tf
from tfrobprune.robust import attacks


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How models are evaluated.

  Attributes:
    eps: attack / certification radius (pixel scale).
    norm: 'linf' or 'l2'.
    pgd_steps: PGD steps.
    pgd_restarts: random starts; an example counts as robust only if every start fails.
    pgd_step_size: step size; 0 means min(eps, 2.5 * eps / pgd_steps).
    fgsm: also report FGSM accuracy.
    verified: also report IBP and CROWN verified accuracy (L-inf only).
    batch_size: examples per evaluation batch.
    max_examples: evaluate on N test examples (0: all), a class-stratified subset chosen by the evaluation's seed
      (`evaluation_examples`), so that a class-ordered test split is still sampled fairly.
  """
  eps: float = 0.1
  norm: str = "linf"
  pgd_steps: int = 50
  pgd_restarts: int = 5
  pgd_step_size: float = 0.0
  fgsm: bool = True
  verified: bool = False
  batch_size: int = 500
  max_examples: int = 0

  def __post_init__(self):
    if not 0 <= self.eps <= 1:
      raise ValueError(f"eval eps must be in [0, 1], got {self.eps}.")
    if self.norm not in attacks.NORMS:
      raise ValueError(f"eval norm must be one of {sorted(attacks.NORMS)}, got {self.norm!r}.")
    if self.pgd_steps < 1 or self.pgd_restarts < 1:
      raise ValueError(f"pgd_steps and pgd_restarts must be >= 1, got {self.pgd_steps}, {self.pgd_restarts}.")
    if self.batch_size < 1 or self.max_examples < 0:
      raise ValueError(f"batch_size must be >= 1 and max_examples >= 0, got {self.batch_size}, {self.max_examples}.")
    if self.verified and self.norm != "linf":
      raise ValueError("verified accuracy bounds an L-inf ball; use norm 'linf'.")

  @property
  def step_size(self):
    return self.pgd_step_size or min(self.eps, 2.5 * self.eps / self.pgd_steps)

  def to_dict(self):
    return dataclasses.asdict(self)


def _batches(x, y, batch_size):
  for start in range(0, len(x), batch_size):
    yield x[start:start + batch_size], y[start:start + batch_size]


class _CompiledEval:
  """The per-batch evaluation functions of one model, compiled once."""

  def __init__(self, model, config, num_classes, seed):
    self.model_fn = attacks.inference_fn(model)
    self.model, self.config, self.num_classes, self.seed = model, config, num_classes, seed
    self.benign = tf.function(self._benign)
    self.fgsm = tf.function(self._fgsm)
    self.pgd = tf.function(self._pgd)

  def _correct(self, x, y):
    return tf.equal(tf.argmax(self.model_fn(x), axis=1), y)

  def _benign(self, x, y):
    return self._correct(x, y)

  def _fgsm(self, x, y):
    x_adv = attacks.fgsm(self.model_fn, x, y, self.config.eps, norm=self.config.norm)
    return self._correct(x_adv, y)

  def _pgd(self, x, y, batch_index):
    cfg = self.config
    seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(batch_index, tf.int64) * cfg.pgd_restarts])
    return attacks.pgd_with_restarts(self.model_fn, x, y, cfg.eps, cfg.step_size, cfg.pgd_steps,
                                     restarts=cfg.pgd_restarts, norm=cfg.norm, seed=seed)


def evaluate_model(model, x, y, config, num_classes, return_adversarial=False, seed=0):
  """Accuracy of `model` on (x, y) under the attacks and bounds that `config` asks for.

  Args:
    model: a Keras model (wrapped models must have their masks applied, see `wrapping.apply_masks`).
    x: float32 images in [0, 1].
    y: int64 labels.
    config: an `EvalConfig`.
    num_classes: number of classes.
    return_adversarial: also return the PGD adversarial examples (the artifacts are checked on them).
    seed: seed of the attacks' random starts (stateless: the same seed gives the same figures).

  Returns:
    A dict with `examples`, `benign_acc`, `pgd_acc`, optionally `fgsm_acc`, `verified_acc`, `verified_acc_crown`;
    and, with `return_adversarial`, a second value: the adversarial images as a numpy array.
  """
  x, y = evaluation_examples(x, y, config, seed)
  y = np.asarray(y, np.int64)
  compiled = _CompiledEval(model, config, num_classes, seed)
  counts = {"benign_acc": 0, "pgd_acc": 0}
  if config.fgsm:
    counts["fgsm_acc"] = 0
  adversarial = []
  for batch_index, (xb, yb) in enumerate(_batches(x, y, config.batch_size)):
    xb, yb = tf.constant(xb), tf.constant(yb)
    counts["benign_acc"] += int(tf.reduce_sum(tf.cast(compiled.benign(xb, yb), tf.int32)))
    x_adv, robust = compiled.pgd(xb, yb, tf.constant(batch_index, tf.int64))
    counts["pgd_acc"] += int(tf.reduce_sum(tf.cast(robust, tf.int32)))
    if config.fgsm:
      counts["fgsm_acc"] += int(tf.reduce_sum(tf.cast(compiled.fgsm(xb, yb), tf.int32)))
    if return_adversarial:
      adversarial.append(x_adv.numpy())
  results = {key: value / len(x) for key, value in counts.items()}
  results["examples"] = len(x)
  if config.verified:
    results.update(verified_accuracies(model, x, y, config, num_classes))
  if return_adversarial:
    return results, np.concatenate(adversarial) if adversarial else np.zeros_like(x)
  return results


def evaluation_examples(x, y, config, seed):
  """The examples an evaluation runs on: all of (x, y), or `config.max_examples` of them stratified by class.

  The same seed gives the same subset, so two models (and the export's checks) are measured on the same examples.
  """
  if not config.max_examples:
    return x, y
  index = subsets.stratified_subset(y, config.max_examples, seed)
  return x[index], np.asarray(y)[index]


def verified_accuracies(model, x, y, config, num_classes):
  """IBP and CROWN verified accuracy (fraction of examples provably classified correctly in the eps ball)."""
  return {
      "verified_acc": verification.verified_accuracy(model, x, y, config.eps, num_classes, method="ibp",
                                                     batch_size=config.batch_size),
      "verified_acc_crown": verification.verified_accuracy(model, x, y, config.eps, num_classes, method="crown_ibp",
                                                           batch_size=config.batch_size),
  }
