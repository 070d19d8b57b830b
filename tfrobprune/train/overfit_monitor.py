"""Catastrophic-overfitting monitor: PGD accuracy on a fixed held-out batch after every epoch of single-step training.

Single-step adversarial training can fail suddenly (Wong et al. 2020): within an epoch or two the model learns to
defeat the one FGSM step while PGD's accuracy collapses to near zero. Wong et al. watch PGD accuracy on a fixed
training minibatch; so does this monitor, after every epoch of a phase whose objective is single-step (`nfgsm`,
`fgsm_rs`, `fgsm`): PGD-k (k = `pgd_steps`) on `examples` fixed examples (a class-stratified subset of the
validation split if the run holds one out, else of the training set), at the objective's final epsilon, from the
same seeded starts every epoch.

An event is an epoch whose PGD accuracy is below `drop_ratio` times, AND more than `min_drop` below (by default:
below half of, and more than 0.1 lower than), either
- the best PGD accuracy of the phase's earlier epochs (a sharp drop), or
- the FGSM accuracy (one eps step from the clean image) of the same examples after the same epoch: the model
  defeats the single step but not PGD, the signature of catastrophic overfitting, which also catches a collapse from
  the first epoch on, where there is no better epoch to drop from.
So the slow changes of normal training (or of a pruning ramp) do not count, nor the noise of a few hundred
examples, nor PGD's normal margin under FGSM. Each such epoch is an event in the epoch's metrics (`overfit` = 1),
which the report lists. What follows is `action`:
- 'warn': nothing more (the default);
- 'stop': the phase ends after that epoch, with the weights of its best epoch (Wong et al.'s early stopping;
  `best_weights` keeps them on disk) where the monitor has a snapshot file, i.e. in phases without pruning: in a
  fine-tuning phase going back would also undo pruning steps, so that phase ends with the epoch's own model;
- 'fallback': the rest of the phase trains with PGD (`pgd_steps` steps, default step size), the same phase
  otherwise; a resumed phase that had switched switches again before its first step (`resume`).
"""

import dataclasses

from absl import logging
import numpy as np

from tfrobprune.data import subsets
from tfrobprune.keras_compat import tf
from tfrobprune.robust import attacks
from tfrobprune.robust import objectives
from tfrobprune.train import best_weights
from tfrobprune.train import training

ACTIONS = ("warn", "stop", "fallback")
# Epoch metrics the monitor adds (recorded in the phase's history, and so in the report).
PGD_ACC, FGSM_ACC, EVENT, FALLBACK = "overfit_check_pgd_acc", "overfit_check_fgsm_acc", "overfit", "overfit_fallback"
RESTORED = "overfit_restored_best"
_BATCH = 256


@dataclasses.dataclass(frozen=True)
class OverfitConfig:
  """How single-step phases are watched for catastrophic overfitting.

  Attributes:
    action: 'warn', 'stop' or 'fallback' (module docstring).
    examples: held-out examples attacked after each epoch (0: no monitor).
    pgd_steps: steps of the check's PGD, and of the fallback's.
    drop_ratio: an event needs accuracy below `drop_ratio` x the best of the earlier epochs ...
    min_drop: ... and more than `min_drop` below it (absolute).
  """
  action: str = "warn"
  examples: int = 512
  pgd_steps: int = 10
  drop_ratio: float = 0.5
  min_drop: float = 0.1

  def __post_init__(self):
    if self.action not in ACTIONS:
      raise ValueError(f"on_overfit must be one of {', '.join(ACTIONS)}, got {self.action!r}.")
    if self.examples < 0 or self.pgd_steps < 1:
      raise ValueError(f"overfit examples must be >= 0 and pgd_steps >= 1, got {self.examples}, {self.pgd_steps}.")
    if not 0 < self.drop_ratio < 1 or not 0 <= self.min_drop < 1:
      raise ValueError(f"overfit drop_ratio must be in (0, 1) and min_drop in [0, 1), got {self.drop_ratio}, "
                       f"{self.min_drop}.")

  def to_dict(self):
    return dataclasses.asdict(self)


def _far_below(accuracy, reference, config):
  """Below `drop_ratio` times `reference` and more than `min_drop` under it (the module docstring's event rule)."""
  return accuracy < config.drop_ratio * reference and reference - accuracy > config.min_drop


def is_sharp_drop(accuracy, best, config):
  """Whether `accuracy` after an epoch is a sharp drop from `best`, the best accuracy of the earlier epochs."""
  return best is not None and _far_below(accuracy, best, config)


def is_fgsm_gap(accuracy, fgsm_accuracy, config):
  """Whether PGD `accuracy` is far below the FGSM accuracy of the same examples (module docstring)."""
  return _far_below(accuracy, fgsm_accuracy, config)


def held_out_examples(validation, x_train, y_train, count, seed):
  """`count` fixed examples to check, class-stratified (data stored class by class, as an image folder is, would
  otherwise give the first class only): of the validation split if there is one, else of the training set."""
  x, y = validation if len(validation[1]) else (x_train, y_train)
  index = np.sort(subsets.stratified_subset(y, min(count, len(y)), seed))
  return np.asarray(x[index], np.float32), np.asarray(y)[index].astype(np.int64)


def fallback_config(objective_config, config):
  """The PGD objective a 'fallback' switches to: the same epsilon and ramp, `config.pgd_steps` steps."""
  return dataclasses.replace(objective_config, name="pgd", pgd_steps=config.pgd_steps, pgd_step_size=0.0,
                             rand_init=True, gradalign_weight=0.0)


class OverfitMonitor:
  """Checks one phase's model after every epoch (`epoch_end`) and acts on a sharp drop (module docstring).

  Args:
    config: the `OverfitConfig`.
    objective_config: the phase's `ObjectiveConfig` (single-step).
    trainer: the phase's `training.Trainer` (its objective is replaced on a fallback).
    x, y: the held-out examples (`held_out_examples`).
    num_classes: the number of classes.
    seed: the run's seed (the check's PGD starts, and the fallback objective's).
    phase: the phase's name, for the log.
    log: where a line about an event goes.
    snapshot: a `best_weights.BestWeights` where 'stop' keeps the best epoch's weights to go back to, or None (the
      phase then ends with the model it has).
  """

  def __init__(self, config, objective_config, trainer, x, y, num_classes, seed=0, phase="train",
               log=logging.warning, snapshot=None):
    self.config, self.objective_config, self.trainer = config, objective_config, trainer
    self.snapshot = snapshot if config.action == "stop" else None
    self.num_classes, self.seed, self.phase, self.log = num_classes, seed, phase, log
    self.batches = [(tf.constant(x[i:i + _BATCH]), tf.constant(y[i:i + _BATCH])) for i in range(0, len(y), _BATCH)]
    self.examples = len(y)
    self.best, self.switched = None, False
    self._pgd_count, self._fgsm_count = tf.function(self._pgd_robust_count), tf.function(self._fgsm_robust_count)

  def _model_fn(self):
    return self.trainer.objective.inference_fn(self.trainer.model)

  def _correct(self, model_fn, x_adv, y):
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(model_fn(x_adv), axis=1), y), tf.int32))

  def _pgd_robust_count(self, x, y, index):
    eps, model_fn = self.objective_config.eps, self._model_fn()
    seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(index, tf.int64)])
    x_adv = attacks.pgd(model_fn, x, y, eps, 2.5 * eps / self.config.pgd_steps, self.config.pgd_steps, seed=seed)
    return self._correct(model_fn, x_adv, y)

  def _fgsm_robust_count(self, x, y):
    model_fn = self._model_fn()
    return self._correct(model_fn, attacks.fgsm(model_fn, x, y, self.objective_config.eps), y)

  def pgd_accuracy(self):
    """PGD accuracy of the model now on the held-out examples (the same starts every call)."""
    correct = sum(int(self._pgd_count(x, y, tf.constant(i, tf.int64))) for i, (x, y) in enumerate(self.batches))
    return correct / self.examples

  def fgsm_accuracy(self):
    """FGSM accuracy (one eps step from the clean image) of the model now on the held-out examples."""
    return sum(int(self._fgsm_count(x, y)) for x, y in self.batches) / self.examples

  def resume(self, history):
    """Replays the phase's finished epochs (a resumed phase): the best accuracy so far and a fallback taken."""
    accuracies = [entry[PGD_ACC] for entry in history if PGD_ACC in entry]
    self.best = max(accuracies) if accuracies else None
    if any(entry.get(FALLBACK) for entry in history):
      self._fall_back()

  def epoch_end(self, epoch, metrics):
    """The epoch's monitor metrics; on a sharp drop or an FGSM gap, an event and the configured action."""
    del metrics
    accuracy, fgsm_accuracy = self.pgd_accuracy(), self.fgsm_accuracy()
    result = {PGD_ACC: accuracy, FGSM_ACC: fgsm_accuracy}
    drop = is_sharp_drop(accuracy, self.best, self.config)
    if drop or is_fgsm_gap(accuracy, fgsm_accuracy, self.config):
      result[EVENT] = 1.0
      change = (f"fell from {self.best:.3f} to {accuracy:.3f}" if drop else
                f"is {accuracy:.3f}, against FGSM {fgsm_accuracy:.3f}")
      self.log(f"[{self.phase}] catastrophic overfitting suspected after epoch {epoch + 1}: PGD-"
               f"{self.config.pgd_steps} accuracy on {self.examples} held-out examples {change} "
               f"(--on_overfit={self.config.action}).")
      if self.config.action == "stop":
        result[training.STOP_PHASE] = 1.0
        if self.snapshot is not None and self.snapshot.restore(self.trainer.model):
          result[RESTORED] = 1.0
          self.log(f"[{self.phase}] back to the weights of the best epoch (PGD-{self.config.pgd_steps} accuracy "
                   f"{self.best:.3f}).")
      elif self.config.action == "fallback" and not self.switched:
        self._fall_back()
    if self.switched:
      result[FALLBACK] = 1.0
    if self.best is None or accuracy > self.best:
      self.best = accuracy
      if self.snapshot is not None:
        self.snapshot.save(self.trainer.model)
    return result

  def _fall_back(self):
    pgd = objectives.make_objective(fallback_config(self.objective_config, self.config), self.num_classes, self.seed)
    self.trainer.set_objective(pgd)
    self.switched = True


def make_monitor(config, objective_config, trainer, held_out_fn, num_classes, seed, phase, log=logging.warning,
                 best_weights_path=None):
  """An `OverfitMonitor` for a phase whose objective is single-step (and `config.examples` > 0), else None.

  `held_out_fn()` returns the examples to check, (x, y) (called only when there is a monitor). `best_weights_path`:
  where 'stop' keeps the best epoch's weights (None: the phase ends with the model it has).
  """
  if objective_config.name not in objectives.SINGLE_STEP_OBJECTIVES or not config.examples:
    return None
  snapshot = best_weights.BestWeights(best_weights_path) if best_weights_path else None
  return OverfitMonitor(config, objective_config, trainer, *held_out_fn(), num_classes, seed, phase, log, snapshot)


def with_monitor(epoch_end_fn, monitor):
  """`epoch_end_fn` (or None) followed by the monitor's `epoch_end`, their metrics merged."""
  if monitor is None:
    return epoch_end_fn

  def epoch_end(epoch, metrics):
    extra = dict(epoch_end_fn(epoch, metrics) or {}) if epoch_end_fn is not None else {}
    extra.update(monitor.epoch_end(epoch, metrics))
    return extra

  return epoch_end


def events(history, phase):
  """The overfitting events of a phase's history: [{phase, epoch, pgd_acc, best_before, fgsm_acc, ...}]."""
  found, best = [], None
  for entry in history:
    accuracy = entry.get(PGD_ACC)
    if entry.get(EVENT):
      found.append({"phase": phase, "epoch": entry.get("epoch"), "pgd_acc": accuracy, "best_before": best,
                    "fgsm_acc": entry.get(FGSM_ACC), "fallback": bool(entry.get(FALLBACK)),
                    "stopped": bool(entry.get(training.STOP_PHASE)), "restored_best": bool(entry.get(RESTORED))})
    if accuracy is not None:
      best = accuracy if best is None else max(best, accuracy)
  return found


def run_events(pretrain_history, finetune_histories):
  """The report's `overfitting` list: the events of pre-training and of each sparsity's fine-tuning."""
  found = events(pretrain_history, "pretrain")
  for sparsity, history in finetune_histories.items():
    found += events(history, f"finetune_s{sparsity}")
  return found
