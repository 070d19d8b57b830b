"""The compiled custom training loop shared by pre-training and fine-tuning.

One `tf.function` holds the whole step (attack or bounds, forward, backward, optimizer), traced once per input
shape. The loop drives tfmot by hand when the model is wrapped for pruning (`drivers.PruningStepDriver`): step
begin before each optimizer step, masks re-applied at each epoch end, so a model evaluated or stripped after
`train` returns is sparse.

Under a `tf.distribute` strategy (see `distribute`) the same loop runs the per-replica part of the step with
`strategy.run` inside that one `tf.function`: each replica computes its objective and gradients on its share of the
global batch, the gradients are all-reduced (summed, the loss being scaled for the global batch), the metrics
averaged, and the optimizer applies the same update on every replica.
"""

import dataclasses
import math

from absl import logging
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune.prune import wrapping
from tfrobprune.train import distribute

LR_SCHEDULES = ("constant", "cosine", "step")
OPTIMIZERS = ("adam", "sgd")
# An epoch metric that ends the phase after its epoch (`overfit_monitor`'s 'stop'); a resumed phase stays ended.
STOP_PHASE = "stop_phase"


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or Inf; training stopped before applying the bad update."""

  def __init__(self, step, metrics):
    super().__init__(f"Training loss, inputs or gradients not finite at step {step} ({metrics}); stopped before "
                     "applying the update. Lower the learning rate or epsilon, or check the data for NaN.")
    self.step = step


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings of one phase (pre-training or fine-tuning).

  Attributes:
    epochs: passes over the training set.
    batch_size: examples per optimizer step.
    learning_rate: peak learning rate.
    lr_schedule: 'constant'; 'cosine' (decay to 0 over the phase); or 'step' (x0.1 at 50% and 75% of the phase).
    warmup_epochs: linear learning-rate warm-up at the start of the phase (fractional epochs allowed).
    optimizer: 'adam' or 'sgd' (momentum 0.9, Nesterov).
    weight_decay: L2 penalty on kernels added to the loss (0 disables).
  """
  epochs: int = 1
  batch_size: int = 128
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  warmup_epochs: float = 0.0
  optimizer: str = "adam"
  weight_decay: float = 0.0

  def __post_init__(self):
    if self.epochs < 0:
      raise ValueError(f"epochs must be >= 0, got {self.epochs}.")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
    if self.lr_schedule not in LR_SCHEDULES:
      raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
    if self.warmup_epochs < 0 or self.weight_decay < 0:
      raise ValueError(f"warmup_epochs and weight_decay must be >= 0, got {self.warmup_epochs}, {self.weight_decay}.")

  def to_dict(self):
    return dataclasses.asdict(self)


class _PhaseLearningRate(keras.optimizers.schedules.LearningRateSchedule):
  """Warm-up then constant / cosine / step decay over one phase of `total_steps` optimizer steps."""

  def __init__(self, peak, total_steps, warmup_steps, kind):
    super().__init__()
    self.peak, self.total_steps, self.warmup_steps, self.kind = peak, max(total_steps, 1), warmup_steps, kind

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    progress = tf.clip_by_value(step / self.total_steps, 0.0, 1.0)
    if self.kind == "cosine":
      rate = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
    elif self.kind == "step":
      rate = self.peak * tf.where(progress < 0.5, 1.0, tf.where(progress < 0.75, 0.1, 0.01))
    else:
      rate = tf.constant(self.peak, tf.float32)
    if self.warmup_steps > 0:
      rate = rate * tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
    return rate

  def get_config(self):
    return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "kind": self.kind}


def learning_rate_schedule(config, steps_per_epoch):
  """The phase's learning rate as a function of its optimizer step."""
  return _PhaseLearningRate(config.learning_rate, config.epochs * steps_per_epoch,
                            int(config.warmup_epochs * steps_per_epoch), config.lr_schedule)


def make_optimizer(config, steps_per_epoch):
  """A Keras 2 optimizer with the phase's learning-rate schedule."""
  learning_rate = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "sgd":
    return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
  return keras.optimizers.Adam(learning_rate)


def _weight_decay_loss(model, weight_decay):
  if not weight_decay:
    return 0.0
  kernels = [v for v in model.trainable_variables if "kernel" in v.name]
  return weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in kernels])


def _all_finite(tensors):
  """True if every floating-point entry of `tensors` (None entries skipped) is finite.

  The loss alone is not enough: oneDNN's fused MatMul/Conv + BiasAdd + ReLU maps NaN to 0, so on machines where
  TensorFlow uses oneDNN a NaN input or hidden activation can give a finite loss, and zero or NaN gradients would
  then pass unnoticed. Checking the inputs and the gradients too makes NaN data and NaN updates stop the run on every
  backend.
  """
  checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors
            if t is not None and not isinstance(t, tf.IndexedSlices) and t.dtype.is_floating]
  return tf.reduce_all(tf.stack(checks))


class Trainer:
  """Owns the compiled step of one phase: a model, an objective, an optimizer and the global schedule step.

  Args:
    model: the Keras model (possibly tfmot-wrapped) to train.
    objective: an `objectives.Objective`.
    optimizer: a Keras 2 optimizer (see `make_optimizer`).
    weight_decay: L2 coefficient on kernels.
    schedule_step: int64 variable counting optimizer steps across phases (drives epsilon/kappa ramps); a new one
      starting at 0 if None.
    strategy: the `tf.distribute.Strategy` to train under; None takes the strategy in scope (the default strategy
      outside any scope). Under a strategy other than the default one, `model` and `optimizer` must have been made
      in its scope; the trainer is then made in it too.

  Under a strategy the step is `_distributed_train_step`; its non-finite-loss behaviour is the single-device one
  (the update is skipped on every replica, the caller stops the run).
  """

  def __init__(self, model, objective, optimizer, weight_decay=0.0, schedule_step=None, strategy=None):
    self.model, self.objective, self.optimizer = model, objective, optimizer
    self.weight_decay = weight_decay
    self.strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    with self.strategy.scope():
      self.schedule_step = schedule_step if schedule_step is not None else tf.Variable(0, dtype=tf.int64,
                                                                                       trainable=False)
      # Slots are created up front: variables cannot be created inside the tf.cond that guards the update.
      self.optimizer.build(model.trainable_variables)
    if distribute.is_default(self.strategy):
      self.train_step = tf.function(self._train_step)
    else:
      self._wrapped = distribute.has_pruning_wrappers(model)
      if self._wrapped:
        distribute.route_attacks_around_pruning_wrappers(objective, model)
      self.train_step = tf.function(self._distributed_train_step)

  def set_objective(self, objective):
    """Trains with `objective` from the next step on (the step is traced again): `overfit_monitor`'s fallback."""
    self.objective = objective
    if distribute.is_default(self.strategy):
      self.train_step = tf.function(self._train_step)
      return
    if self._wrapped:
      distribute.route_attacks_around_pruning_wrappers(objective, self.model)
    self.train_step = tf.function(self._distributed_train_step)

  def distribute_dataset(self, dataset):
    """`dataset` of global batches, split over the replicas (unchanged under the default strategy)."""
    return distribute.distribute_dataset(self.strategy, dataset)

  def _gradients(self, x, y):
    """One replica's objective, metrics and gradients (of its loss scaled for the global batch); a non-finite loss,
    input or gradient gives zero gradients."""
    with tf.GradientTape() as tape:
      loss, metrics = self.objective(self.model, x, y, self.schedule_step)
      total = loss + _weight_decay_loss(self.model, self.weight_decay)
      if self.model.losses:
        total += tf.add_n(self.model.losses)
      scaled = distribute.scale_to_global_batch(total, self.strategy.num_replicas_in_sync)
    gradients = tape.gradient(scaled, self.model.trainable_variables)
    finite = _all_finite([total, x] + gradients)
    # A non-finite loss must not reach the weights: the update is skipped and the caller stops the run.
    gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
    return gradients, dict(metrics, finite=tf.cast(finite, tf.float32))

  def _train_step(self, x, y):
    gradients, metrics = self._gradients(x, y)
    variables = self.model.trainable_variables

    def apply_update():
      self.optimizer.apply_gradients(zip(gradients, variables))
      return tf.constant(True)

    tf.cond(metrics["finite"] > 0, apply_update, lambda: tf.constant(False))
    self.schedule_step.assign_add(1)
    return metrics

  def _distributed_train_step(self, x, y):
    """The step under a strategy: replica gradients -> all-reduce (SUM) -> one update on every replica, or none.

    The update is decided in cross-replica context: MirroredStrategy does not allow `merge_call` (which
    `apply_gradients` makes) inside a `tf.cond` of a replica function, so the replicas' gradients are summed here
    and a second `strategy.run`, inside the `tf.cond`, applies them on each replica without aggregating again (as
    Keras' LossScaleOptimizer does). A replica with a non-finite loss makes every replica skip the update.
    """
    strategy, variables = self.strategy, self.model.trainable_variables
    with strategy.scope():
      if self._wrapped:  # in cross-replica context: the attacks read the kernels through an unwrapped view
        wrapping.apply_masks(self.model)
      gradients, metrics = strategy.run(self._gradients, args=(x, y))
      gradients = strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, list(zip(gradients, variables)))
      finite_replicas = strategy.reduce(tf.distribute.ReduceOp.SUM, metrics.pop("finite"), axis=None)
      metrics = {key: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None) for key, value in metrics.items()}

      def apply_update():
        strategy.run(lambda g: self.optimizer.apply_gradients(zip(g, variables), skip_gradients_aggregation=True),
                     args=(gradients,))
        return tf.constant(True)

      finite = tf.equal(finite_replicas, strategy.num_replicas_in_sync)
      tf.cond(finite, apply_update, lambda: tf.constant(False))
      self.schedule_step.assign_add(1)
    return dict(metrics, finite=tf.cast(finite, tf.float32))


class TrainingInterrupted(RuntimeError):
  """A stop was requested (SIGINT/SIGTERM); the phase was checkpointed after the current step."""


def train(trainer, dataset_fn, epochs, *, pruning_driver=None, summary_writer=None, progress=None, epoch_end_fn=None,
          phase="train", checkpointer=None, should_stop=None, on_resume=None):
  """Runs a phase of `epochs` epochs, resuming from `checkpointer`'s latest checkpoint if it has one.

  Args:
    trainer: a `Trainer`.
    dataset_fn: `dataset_fn(epoch)` returns that epoch's finite dataset of (images, labels) batches, in an order
      that depends only on the epoch (so a resumed epoch can skip the batches already trained on). Under a
      strategy these are global batches, split over the replicas here.
    epochs: the phase's number of epochs.
    pruning_driver: a `drivers.PruningStepDriver` if the model is wrapped for pruning.
    summary_writer: a `tf.summary` writer for per-epoch scalars (prefixed by `phase`), or None.
    progress: None, or a factory `progress(phase, epoch, epochs, steps)` returning a bar with
      `update(step, values)` (the CLI's `console.EpochProgressBars`); the library itself never prints.
    epoch_end_fn: called as `epoch_end_fn(epoch, metrics)` after each epoch; may return extra metrics (with
      `STOP_PHASE` true, the phase ends after that epoch).
    phase: name used in logs and summaries ('pretrain', 'finetune_s0.9', ...).
    checkpointer: a `checkpointing.PhaseCheckpointer`; saves every N steps and at each epoch end (every worker
      saves under a multi-worker strategy: give non-chief workers one in a temporary directory).
    should_stop: a function polled after every step; when it returns True the phase is checkpointed and
      `TrainingInterrupted` is raised (on every worker of a multi-worker run, when it returns True on any).
    on_resume: called as `on_resume(history)` with the finished epochs' metrics when a checkpoint was restored,
      before training goes on (`overfit_monitor` replays its state so).

  Returns:
    A list with one dict of mean metrics per epoch of the phase (resumed epochs included).

  Raises:
    NonFiniteLossError: the loss became NaN or Inf (the bad update was not applied; the last checkpoint stays).
    TrainingInterrupted: `should_stop` returned True.
  """
  # The driver and `epoch_end_fn` touch the model's (possibly mirrored) variables eagerly: in the strategy's scope.
  # The checkpointer stays outside it, so that its own counters are plain variables.
  in_scope = trainer.strategy.scope
  restored = checkpointer.restore_latest() if checkpointer is not None else None
  start_epoch, start_step, state = restored or (0, 0, {})
  history, sums, count = state.get("history", []), state.get("sums", {}), state.get("count", 0)
  if restored:
    logging.info("[%s] resuming from its checkpoint at epoch %d, step %d", phase, start_epoch + 1, start_step)
    if any(entry.get(STOP_PHASE) for entry in history):
      return history
    if on_resume is not None:
      with in_scope():
        on_resume(history)
  if pruning_driver is not None:
    with in_scope():
      pruning_driver.on_train_begin()
  for epoch in range(start_epoch, epochs):
    skip = start_step if epoch == start_epoch else 0
    dataset = dataset_fn(epoch)
    steps_per_epoch = int(dataset.cardinality())
    bar = progress(phase, epoch, epochs, steps_per_epoch) if progress else _NO_BAR
    for step_in_epoch, (x, y) in enumerate(trainer.distribute_dataset(dataset.skip(skip)), start=skip):
      if pruning_driver is not None:
        with in_scope():
          pruning_driver.on_step_begin(step_in_epoch)
      metrics = {key: float(value) for key, value in trainer.train_step(x, y).items()}
      if not metrics.pop("finite"):
        raise NonFiniteLossError(int(trainer.schedule_step.numpy()) - 1, metrics)
      for key, value in metrics.items():
        sums[key] = sums.get(key, 0.0) + value
      count += 1
      bar.update(step_in_epoch + 1, values=[(k, v) for k, v in metrics.items() if k != "eps"])
      stop = should_stop is not None and distribute.any_worker(trainer.strategy, should_stop())
      if checkpointer is not None and (stop or _due(checkpointer, trainer)):
        checkpointer.save(epoch, step_in_epoch + 1, {"history": history, "sums": sums, "count": count})
      if stop:
        raise TrainingInterrupted(f"Stopped in {phase}, epoch {epoch + 1}, after step {step_in_epoch + 1}; "
                                  "checkpoint written: rerun the same command to resume.")
    if pruning_driver is not None:
      with in_scope():
        pruning_driver.on_epoch_end(epoch)
    means = {key: value / max(count, 1) for key, value in sums.items()}
    if epoch_end_fn is not None:
      with in_scope():
        means.update(epoch_end_fn(epoch, means) or {})
    _write_summaries(summary_writer, phase, epoch, means)
    history.append(dict(means, epoch=epoch + 1))
    sums, count = {}, 0
    if checkpointer is not None:
      checkpointer.save(epoch + 1, 0, {"history": history, "sums": sums, "count": count})
    if means.get(STOP_PHASE):
      logging.warning("[%s] ends after epoch %d of %d (%s).", phase, epoch + 1, epochs, STOP_PHASE)
      break
  return history


class _NoProgressBar:
  """Stands in for a progress bar when none is shown."""

  def update(self, current, values=None):
    del current, values


_NO_BAR = _NoProgressBar()


def _due(checkpointer, trainer):
  every = checkpointer.every_steps
  return bool(every) and int(trainer.schedule_step.numpy()) % every == 0


def _write_summaries(writer, phase, epoch, metrics):
  if writer is None:
    return
  with writer.as_default():
    for key, value in metrics.items():
      if np.isscalar(value):
        tf.summary.scalar(f"{phase}/{key}", value, step=epoch + 1)
  writer.flush()
