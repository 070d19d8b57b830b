"""Evaluation: benign, FGSM, PGD (with restarts), AutoAttack and verified accuracy on one fixed set of examples.

Dense and pruned models are evaluated on the same examples with the same attack settings, so their ratios mean
something. The default PGD is stronger than the training attack (more steps, several random starts); AutoAttack
(`autoattack`, `--eval_attack=autoattack`) is the ensemble reviewers expect, and runs with the gradient-masking
checks of `gradient_masking`.

Every per-batch function is compiled once per model for one fixed batch shape: the last partial batch is padded
(with copies of its first example) and the padding's results are dropped, so nothing retraces. Padding sits at the
end of a batch, and stateless random draws are prefix-consistent, so the real examples get the same random starts
as in an unpadded batch.
"""

import dataclasses

import numpy as np

from tfrobprune.data import subsets
from tfrobprune.evaluate import autoattack
from tfrobprune.evaluate import gradient_masking
from tfrobprune.evaluate import verification
from tfrobprune.keras_compat import tf
from tfrobprune.robust import attacks

# The attacks `EvalConfig.attacks` may name: PGD with restarts, and the standard AutoAttack ensemble.
ATTACKS = ("pgd", "autoattack")


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
    attacks: which robust accuracies to report, a tuple of `ATTACKS`: 'pgd' (`pgd_acc`) and 'autoattack'
      (`autoattack_acc`, its per-attack breakdown and the gradient-masking checks).
    autoattack_examples: run AutoAttack on N of the evaluated examples (0: all of them), a class-stratified subset
      chosen by the evaluation's seed; standard AutoAttack costs far more per example than PGD (docs/performance.md).
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
  attacks: tuple[str, ...] = ("pgd",)
  autoattack_examples: int = 0

  def __post_init__(self):
    if not 0 <= self.eps <= 1:
      raise ValueError(f"eval eps must be in [0, 1], got {self.eps}.")
    if self.norm not in attacks.NORMS:
      raise ValueError(f"eval norm must be one of {sorted(attacks.NORMS)}, got {self.norm!r}.")
    if self.pgd_steps < 1 or self.pgd_restarts < 1:
      raise ValueError(f"pgd_steps and pgd_restarts must be >= 1, got {self.pgd_steps}, {self.pgd_restarts}.")
    if self.batch_size < 1 or self.max_examples < 0:
      raise ValueError(f"batch_size must be >= 1 and max_examples >= 0, got {self.batch_size}, {self.max_examples}.")
    if self.autoattack_examples < 0:
      raise ValueError(f"autoattack_examples (--eval_autoattack_examples) must be >= 0, got "
                       f"{self.autoattack_examples}.")
    if self.verified and self.norm != "linf":
      raise ValueError("verified accuracy bounds an L-inf ball; use norm 'linf'.")
    object.__setattr__(self, "attacks", _attack_names(self.attacks))  # a JSON list reads back as a tuple

  @property
  def step_size(self):
    return self.pgd_step_size or min(self.eps, 2.5 * self.eps / self.pgd_steps)

  def to_dict(self):
    return dataclasses.asdict(self)


def _attack_names(names):
  """`names` as a tuple of distinct `ATTACKS` (a comma-separated string is accepted too)."""
  if isinstance(names, str):
    names = [name.strip() for name in names.split(",")]
  names = tuple(names)
  unknown = [name for name in names if name not in ATTACKS]
  if not names or unknown or len(set(names)) != len(names):
    raise ValueError(f"eval attacks (--eval_attack) must be distinct names from {', '.join(ATTACKS)}, "
                     f"got {','.join(map(str, names)) or 'none'!r}.")
  return names


def padded_batches(x, y, batch_size):
  """Yields (images, labels, count) batches of exactly `batch_size` rows; the last one is padded with copies of its
  first example, and `count` says how many rows are real."""
  for start in range(0, len(x), batch_size):
    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
    count = len(xb)
    if count < batch_size:
      xb = np.concatenate([xb, np.repeat(xb[:1], batch_size - count, axis=0)])
      yb = np.concatenate([yb, np.repeat(yb[:1], batch_size - count, axis=0)])
    yield xb, yb, count


class _CompiledEval:
  """The per-batch evaluation functions of one model, each compiled once.

  With `batch_size`, the functions take exactly that batch shape (an input signature), so a second shape fails
  instead of retracing; without it they trace on first use.
  """

  def __init__(self, model, config, num_classes, seed, batch_size=None, image_shape=None):
    self.model_fn = attacks.inference_fn(model)
    self.model, self.config, self.num_classes, self.seed = model, config, num_classes, seed
    images = labels = index = None
    if batch_size is not None:
      images = tf.TensorSpec((batch_size,) + tuple(image_shape), tf.float32)
      labels, index = tf.TensorSpec((batch_size,), tf.int64), tf.TensorSpec((), tf.int64)
    self.benign = tf.function(self._benign, input_signature=None if images is None else [images, labels])
    self.fgsm = tf.function(self._fgsm, input_signature=None if images is None else [images, labels])
    self.pgd = tf.function(self._pgd, input_signature=None if images is None else [images, labels, index])

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


def evaluate_model(model, x, y, config, num_classes, return_adversarial=False, seed=0, progress=None, name="model",
                   autoattack_budget=autoattack.Budget()):
  """Accuracy of `model` on (x, y) under the attacks and bounds that `config` asks for.

  Args:
    model: a Keras model (wrapped models must have their masks applied, see `wrapping.apply_masks`).
    x: float32 images in [0, 1].
    y: int64 labels.
    config: an `EvalConfig`.
    num_classes: number of classes.
    return_adversarial: also return the PGD adversarial examples (the artifacts are checked on them; PGD runs for
      them even when `config.attacks` leaves it out).
    seed: seed of the attacks' random starts (stateless: the same seed gives the same figures).
    progress: None, or a factory `progress(name, attack, examples)` returning a bar with
      `update(examples_done, values=[('robust_acc', accuracy so far)])` (the CLI's `console.EvaluationProgressBars`);
      one bar per model and attack.
    name: the model's name in progress bars ('dense', 's0.9', ...).
    autoattack_budget: the AutoAttack budgets (`autoattack.Budget`; the standard ones by default).

  Returns:
    A dict with `examples`, `benign_acc`, and as asked `pgd_acc`, `fgsm_acc`, `verified_acc`, `verified_acc_crown`,
    `autoattack_acc` with `autoattack` (per-attack breakdown) and `masking_checks`; and, with `return_adversarial`,
    a second value: the PGD adversarial images as a numpy array.
  """
  x, y = evaluation_examples(x, y, config, seed)
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
  results, adversarial = _gradient_attacks(model, x, y, config, num_classes, seed, progress, name,
                                           run_pgd="pgd" in config.attacks or return_adversarial)
  if "pgd" not in config.attacks:
    results.pop("pgd_acc", None)
  if "autoattack" in config.attacks:
    results.update(_autoattack(model, x, y, config, num_classes, seed, progress, name, autoattack_budget))
  if config.verified:
    results.update(verified_accuracies(model, x, y, config, num_classes))
  if return_adversarial:
    return results, adversarial
  return results


def _gradient_attacks(model, x, y, config, num_classes, seed, progress, name, run_pgd):
  """Benign, FGSM and PGD accuracy in one pass over fixed-shape batches; (results, PGD adversarial images)."""
  batch_size = autoattack.balanced_batch_size(len(x), config.batch_size)
  compiled = _CompiledEval(model, config, num_classes, seed, batch_size=batch_size, image_shape=x.shape[1:])
  counts = dict(benign_acc=0, **({"pgd_acc": 0} if run_pgd else {}), **({"fgsm_acc": 0} if config.fgsm else {}))
  adversarial, done = [], 0
  bar = progress(name, "pgd" if run_pgd else "benign", len(x)) if progress else None
  for batch_index, (xb, yb, count) in enumerate(padded_batches(x, y, batch_size)):
    xb, yb = tf.constant(xb), tf.constant(yb)
    counts["benign_acc"] += _count(compiled.benign(xb, yb), count)
    if run_pgd:
      x_adv, robust = compiled.pgd(xb, yb, tf.constant(batch_index, tf.int64))
      counts["pgd_acc"] += _count(robust, count)
      adversarial.append(x_adv.numpy()[:count])
    if config.fgsm:
      counts["fgsm_acc"] += _count(compiled.fgsm(xb, yb), count)
    done += count
    if bar is not None:
      bar.update(done, values=[("robust_acc", counts["pgd_acc" if run_pgd else "benign_acc"] / done)])
  results = {key: value / max(len(x), 1) for key, value in counts.items()}
  results["examples"] = len(x)
  return results, np.concatenate(adversarial) if adversarial else np.zeros_like(x)


def _count(correct, count):
  """Correct (or robust) examples among the first `count` rows of a padded batch."""
  return int(np.sum(correct.numpy()[:count]))


def _autoattack(model, x, y, config, num_classes, seed, progress, name, budget):
  """`autoattack_acc`, the per-attack breakdown and the gradient-masking checks of `model` (on
  `config.autoattack_examples` of the examples)."""
  if config.autoattack_examples:
    index = subsets.stratified_subset(y, config.autoattack_examples, seed)
    x, y = x[index], y[index]
  result = autoattack.run_autoattack(model, x, y, config.eps, num_classes, norm=config.norm, budget=budget,
                                     batch_size=config.batch_size, seed=seed, progress=progress, name=name)
  checks = gradient_masking.run_checks(model, x, y, num_classes, result, norm=config.norm, budget=budget,
                                       batch_size=config.batch_size, seed=seed)
  return {"autoattack_acc": result.robust_acc, "autoattack": result.breakdown(), "masking_checks": checks}


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
