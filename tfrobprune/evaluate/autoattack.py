"""AutoAttack (Croce & Hein, ICML 2020): an ensemble of parameter-free attacks, run as data.

A version names the attacks and their order (`VERSIONS`); 'standard' is APGD on the cross-entropy loss, targeted
APGD on the DLR loss, targeted FAB and Square (score-based, no gradients), with the reference's budgets (`Budget`).
Each attack runs only on the examples the model classifies correctly and no earlier attack fooled, so an example
counts as robust exactly when it is classified correctly and every attack's result on it is robust: the per-example
worst case is the AND of the per-attack results (`AutoAttackResult.stage_robust`). The result keeps the robust
accuracy after each attack and its wall time (`breakdown`).

The examples an attack gets are cut into batches of one fixed shape (`balanced_batch_size`; the last one padded
and its padding dropped), so each attack is compiled once per model. Each batch's random draws are seeded
statelessly from (seed, attack, index of the batch's first example), so a run is reproducible, and an attack run
alone on one example per batch draws exactly what it draws for that example inside the ensemble.
"""

import dataclasses
import time
import zlib

from absl import logging
import numpy as np

from tfrobprune.keras_compat import tf
from tfrobprune.robust import apgd
from tfrobprune.robust import attacks
from tfrobprune.robust import fab
from tfrobprune.robust import square

# The ensembles, by version: attack names in the order they run (those of `ATTACK_BUILDERS`).
VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square")}


@dataclasses.dataclass(frozen=True)
class Budget:
  """The attacks' budgets; the defaults are AutoAttack's standard ones (L-inf and L2).

  Attributes:
    nb_iter: iterations of APGD and FAB per run.
    restarts: random starts of APGD-CE, and per target class of APGD-T and FAB-T.
    num_targets: target classes of APGD-T and FAB-T (at most the number of classes - 1 are used).
    n_queries: queries per example of Square.
    p_init: Square's initial square area, as a fraction of the image.
  """
  nb_iter: int = 100
  restarts: int = 1
  num_targets: int = 9
  n_queries: int = square.STANDARD_QUERIES
  p_init: float = 0.8

  def __post_init__(self):
    for name in ("nb_iter", "restarts", "num_targets"):
      if getattr(self, name) < 1:
        raise ValueError(f"AutoAttack budget {name} must be >= 1, got {getattr(self, name)}.")
    if self.n_queries < 0 or not 0 < self.p_init <= 1:
      raise ValueError(f"AutoAttack budget needs n_queries >= 0 and p_init in (0, 1], got {self.n_queries}, "
                       f"{self.p_init}.")


@dataclasses.dataclass(frozen=True)
class Target:
  """What an attack is built for: one model, threat model and batch shape."""
  model: object
  model_fn: object
  eps: float
  norm: str
  num_classes: int
  batch_size: int
  image_shape: tuple

  def targets(self, budget):
    return min(budget.num_targets, self.num_classes - 1)


def _compiled(target, attack):
  """`attack(x, y, seed) -> (x_adv, robust)` compiled for the target's batch shape, returning numpy arrays."""
  signature = [tf.TensorSpec((target.batch_size,) + tuple(target.image_shape), tf.float32),
               tf.TensorSpec((target.batch_size,), tf.int64), tf.TensorSpec((2,), tf.int64)]
  function = tf.function(attack, input_signature=signature)

  def run(x, y, seed):
    x_adv, robust = function(x, y, tf.constant(seed, tf.int64))
    return x_adv.numpy(), robust.numpy()

  run.function = function  # exposed for tests (tracing counts)
  return run


def _apgd_ce(target, budget):
  def attack(x, y, seed):
    return apgd.apgd(target.model_fn, x, y, target.eps, nb_iter=budget.nb_iter, norm=target.norm, loss="ce",
                     restarts=budget.restarts, seed=seed)
  return _compiled(target, attack)


def _apgd_t(target, budget):
  def attack(x, y, seed):
    return apgd.apgd_targeted(target.model_fn, x, y, target.eps, nb_iter=budget.nb_iter,
                              num_targets=target.targets(budget), norm=target.norm, restarts=budget.restarts,
                              seed=seed)
  return _compiled(target, attack)


def _fab_t(target, budget):
  def attack(x, y, seed):
    return fab.fab_targeted(target.model_fn, x, y, target.eps, nb_iter=budget.nb_iter,
                            num_targets=target.targets(budget), norm=target.norm, restarts=budget.restarts, seed=seed)
  return _compiled(target, attack)


def _square(target, budget):
  """Square on the model's logits only (`square.keras_logits_fn`: no gradient is ever taken)."""
  logits_fn = square.keras_logits_fn(target.model, batch_size=target.batch_size)

  def run(x, y, seed):
    return square.square_attack(logits_fn, x, y, target.eps, n_queries=budget.n_queries, p_init=budget.p_init,
                                norm=target.norm, seed=int(zlib.crc32(np.asarray(seed, np.int64).tobytes())))

  return run


# Attack name -> builder(target, budget) returning a batch function `(x, y, seed pair) -> (x_adv, robust)` (numpy).
ATTACK_BUILDERS = {"apgd-ce": _apgd_ce, "apgd-t": _apgd_t, "fab-t": _fab_t, "square": _square}
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t")
# Classes an attack needs: the targeted DLR loss divides by z_(1) - (z_(3) + z_(4)) / 2. With fewer the attack is
# skipped, and its breakdown row says so (as AutoAttack's `check_n_classes` warns).
MIN_CLASSES = {"apgd-t": 4}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One attack of an ensemble: its reported name and its builder (see `ATTACK_BUILDERS`)."""
  name: str
  build: object


def stages(version="standard", names=None):
  """The stages of `version`, or of the attack `names` given (a subset or reordering of `ATTACK_BUILDERS`)."""
  if names is None:
    if version not in VERSIONS:
      raise ValueError(f"AutoAttack version must be one of {', '.join(VERSIONS)}, got {version!r}.")
    names = VERSIONS[version]
  unknown = [name for name in names if name not in ATTACK_BUILDERS]
  if unknown:
    raise ValueError(f"unknown AutoAttack attack(s) {unknown}; choose from {', '.join(ATTACK_BUILDERS)}.")
  return tuple(Stage(name, ATTACK_BUILDERS[name]) for name in names)


@dataclasses.dataclass
class AutoAttackResult:
  """What an ensemble run found, per example and per attack.

  Attributes:
    stage_names: the attacks, in the order they ran.
    correct: bool [N], the model classifies the clean example correctly.
    fooled_by: int [N], index of the attack that fooled the example, -1 where none did (or none ran).
    x_adv: the adversarial point of each fooled example, the clean image elsewhere.
    attacked: examples each attack ran on.
    seconds: wall time of each attack (compilation included).
    budget: the `Budget`.
    version: the version name ('custom' for an explicit list of stages).
    skipped: {attack name: why} of the attacks that could not run (`MIN_CLASSES`).
  """
  stage_names: tuple
  correct: np.ndarray
  fooled_by: np.ndarray
  x_adv: np.ndarray
  attacked: list
  seconds: list
  budget: Budget
  version: str
  skipped: dict = dataclasses.field(default_factory=dict)

  @property
  def robust(self):
    """bool [N]: correct and fooled by no attack."""
    return self.correct & (self.fooled_by < 0)

  @property
  def robust_acc(self):
    return float(np.mean(self.robust)) if len(self.correct) else 0.0

  def stage_robust(self, name):
    """bool [N]: the attack `name` did not fool the example (where it did not run, an earlier attack had)."""
    return self.fooled_by != self.stage_names.index(name)

  def robust_against(self, names):
    """bool [N]: correct and fooled by none of the attacks `names` (e.g. `WHITE_BOX`).

    Exact for any subset: an attack skips only examples that an earlier attack fooled, and those count as fooled.
    """
    fooled = np.isin(self.fooled_by, [self.stage_names.index(n) for n in names if n in self.stage_names])
    return self.correct & ~fooled

  def breakdown(self):
    """The per-attack breakdown of a report: robust accuracy after each attack, examples attacked, seconds."""
    total = max(len(self.correct), 1)
    rows = []
    for index, name in enumerate(self.stage_names):
      robust_after = int(np.sum(self.correct & ~((self.fooled_by >= 0) & (self.fooled_by <= index))))
      rows.append({"attack": name, "examples": int(self.attacked[index]), "robust_acc": robust_after / total,
                   "seconds": round(float(self.seconds[index]), 2), **({"skipped": self.skipped[name]}
                                                                       if name in self.skipped else {})})
    return {"version": self.version, "examples": len(self.correct), "clean_acc": float(np.sum(self.correct)) / total,
            "robust_acc": self.robust_acc, "seconds": round(float(sum(self.seconds)), 2), "stages": rows,
            "budget": dataclasses.asdict(self.budget)}


def batch_seed(seed, attack, first_index):
  """The stateless seed pair of one batch: (hash of run seed and attack, index of the batch's first example)."""
  return np.array([zlib.crc32(f"{seed}/{attack}".encode()), int(first_index)], np.int64)


def balanced_batch_size(count, batch_size):
  """The batch size that splits `count` examples into as many batches as `batch_size` would, as evenly as possible:
  the last batch's padding is then at most one row per batch, not up to `batch_size - 1` rows of wasted attack."""
  batches = -(-count // max(batch_size, 1))
  return max(1, -(-count // max(batches, 1)))


def _pad(values, size):
  """`values` padded to `size` rows with copies of its first row."""
  return np.concatenate([values, np.repeat(values[:1], size - len(values), axis=0)]) if len(values) < size else values


def _correct(model, x, y, batch_size):
  """bool [N]: the model's prediction on each clean example is its label (fixed batch shape, compiled once)."""
  if not len(x):
    return np.zeros(0, bool)
  logits_fn = square.keras_logits_fn(model, batch_size=batch_size)
  return np.argmax(logits_fn(x), axis=1) == y


def attack_model_fn(model, model_fn):
  """`model_fn` (images -> logits of `model`) made safe for the attacks, which gather the examples still robust: an
  empty batch gives empty logits without running the model (TensorFlow's oneDNN convolutions fail on a batch of 0
  images, and an attack's later target classes or restarts meet one whenever all its examples fell earlier). A
  model that stops its input gradient needs nothing here: the attacks take a missing gradient as zero."""
  classes = model.output_shape[-1]

  def logits(x):
    return tf.cond(tf.shape(x)[0] > 0, lambda: model_fn(x), lambda: tf.zeros([0, classes], tf.float32))

  return logits


def run_autoattack(model, x, y, eps, num_classes, *, norm="linf", version="standard", attack_stages=None,
                   budget=Budget(), batch_size=500, seed=0, progress=None, name="model"):
  """Runs the ensemble on (x, y): each attack on the examples still robust, in order.

  Args:
    model: a Keras model from images in [0, 1] to logits (wrapped models must have their masks applied).
    x: float32 images [N, H, W, C] in [0, 1].
    y: int labels [N].
    eps: radius of the threat model (pixel scale).
    num_classes: number of classes (targeted attacks use at most num_classes - 1 targets).
    norm: 'linf' or 'l2'.
    version: a key of `VERSIONS`, when `attack_stages` is None.
    attack_stages: explicit stages (`stages(names=...)`) instead of a version.
    budget: the attacks' `Budget`.
    batch_size: examples per batch at most (`balanced_batch_size` evens them out).
    seed: seeds every random draw (`batch_seed`).
    progress: None, or a factory `progress(name, attack, examples)` returning a bar with
      `update(examples_done, values=[('robust_acc', robust accuracy so far)])`.
    name: the model's name in progress bars and logs.

  Returns:
    An `AutoAttackResult`.
  """
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
  run_stages = attack_stages if attack_stages is not None else stages(version)
  model_fn = attack_model_fn(model, attacks.inference_fn(model))
  correct = _correct(model, x, y, balanced_batch_size(len(x), batch_size))
  result = AutoAttackResult(tuple(s.name for s in run_stages), correct, np.full(len(x), -1, np.int64), x.copy(),
                            [], [], budget, version if attack_stages is None else "custom")
  for index, stage in enumerate(run_stages):
    started = time.perf_counter()
    todo = np.flatnonzero(result.robust)
    if num_classes < MIN_CLASSES.get(stage.name, 0):
      result.skipped[stage.name] = f"needs at least {MIN_CLASSES[stage.name]} classes, the data has {num_classes}"
      todo = todo[:0]
    if len(todo):
      target = Target(model, model_fn, float(eps), norm, num_classes, balanced_batch_size(len(todo), batch_size),
                      x.shape[1:])
      _run_stage(stage, stage.build(target, budget), index, todo, x, y, result, target.batch_size, seed,
                 progress(name, stage.name, len(todo)) if progress else None)
    result.attacked.append(len(todo))
    result.seconds.append(time.perf_counter() - started)
    logging.debug("AutoAttack %s, %s: robust accuracy %.4f after %d examples (%.1f s)", name, stage.name,
                 result.robust_acc, len(todo), result.seconds[-1])
  return result


def _run_stage(stage, attack, index, todo, x, y, result, batch_size, seed, bar):
  """Runs one attack over the examples `todo` in fixed-shape batches; records whom it fooled."""
  total = max(len(x), 1)
  for start in range(0, len(todo), batch_size):
    chunk = todo[start:start + batch_size]
    x_adv, robust = attack(_pad(x[chunk], batch_size), _pad(y[chunk], batch_size),
                           batch_seed(seed, stage.name, chunk[0]))
    fooled = ~np.asarray(robust[:len(chunk)], bool)
    result.fooled_by[chunk[fooled]] = index
    result.x_adv[chunk[fooled]] = x_adv[:len(chunk)][fooled]
    if bar is not None:
      bar.update(start + len(chunk), values=[("robust_acc", float(np.sum(result.robust)) / total)])
