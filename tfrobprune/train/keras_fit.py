"""Robust training through `model.fit`: `RobustModel`, a `keras.Model` whose `train_step` runs a robust objective.

For people who live in `fit`: wrap a model (dense, or tfmot-wrapped for pruning), compile, fit. The step is the CLI
loop's step (`training.Trainer`: the objective of `objectives`, weight decay, the model's own losses, no update on a
non-finite loss), so both paths train the same way. Keras then supplies the rest: callbacks (TensorBoard,
BackupAndRestore, EarlyStopping, tfmot's `UpdatePruningStep` and `PruningSummaries`), `evaluate` and `predict`.

Pruning follows tfmot's own convention: each objective calls the model with `training=True` exactly once per step,
and tfmot's wrapper advances its `pruning_step` on each such call, so `pruning_step` equals the optimizer's
`iterations` (attacks run in inference mode and do not count). `fit` adds tfmot's `UpdatePruningStep` callback
when the model is wrapped and the caller did not, first in the list, so the masks are re-applied at each epoch end
before other callbacks save or inspect the weights.

Metrics: `fit` logs the objective's metrics averaged over the epoch (`loss` is the training objective); `evaluate`
logs the clean `loss` and `natural_acc`, plus any `metrics=` given to `compile`.
"""

from tfrobprune.keras_compat import keras, require_keras2_model, tf
from tfrobprune.prune import wrapping
from tfrobprune.robust import layer_support
from tfrobprune.robust import objectives
from tfrobprune.train import distribute
from tfrobprune.train import training

# After keras_compat, which makes tfmot bind to Keras 2.
import tensorflow_model_optimization as tfmot  # noqa: I100
# `collect_prunable_layers` is not exported by tfmot's public API.
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

__all__ = ["RobustModel", "objective_config"]


def objective_config(objective, steps_per_epoch=None):
  """`objective` (a `tfrobprune.Objective`, i.e. an `objectives.ObjectiveConfig`) with its epoch-valued epsilon
  ramps in steps.

  Raises:
    ValueError: the ramps are in epochs and `steps_per_epoch` is not given.
  """
  if not isinstance(objective, objectives.ObjectiveConfig):
    raise TypeError(f"objective must be a tfrobprune.Objective, got {type(objective).__name__}.")
  if objective.eps_warmup_epochs or objective.eps_ramp_epochs:
    if not steps_per_epoch:
      raise ValueError(f"Objective {objective.name!r} ramps epsilon over epochs; RobustModel needs steps_per_epoch "
                       f"(optimizer steps per epoch) to count them, got {steps_per_epoch!r}.")
    return objective.in_steps(steps_per_epoch)
  return objective


def _images_and_labels(data):
  """(float32 images, int64 [batch] labels) of a batch `(x, y)` or `(x, y, sample_weight)`."""
  x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
  if y is None or sample_weight is not None:
    raise ValueError("RobustModel trains on (images, labels) batches; got "
                     f"{'no labels' if y is None else 'sample weights, which it does not support'}.")
  y = tf.cast(y, tf.int64)
  if y.shape.rank == 2 and y.shape[-1] == 1:
    y = tf.squeeze(y, axis=-1)
  return tf.cast(x, tf.float32), y


class _Trackers:
  """{metric name: keras.metrics.Mean}, made on first use (each objective reports its own metrics). Kept out of
  Keras' attribute tracking, so the metrics are not part of checkpoints."""

  def __init__(self):
    self.by_name = {}

  def record(self, values):
    for name, value in values.items():
      if name not in self.by_name:
        self.by_name[name] = keras.metrics.Mean(name=name)
      self.by_name[name].update_state(value)
    return {name: self.by_name[name].result() for name in values}


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
  """Raises `training.NonFiniteLossError` after a step whose loss, inputs or gradients were not finite (the step
  did not touch the weights)."""

  def __init__(self, finite):
    super().__init__()
    self._finite = finite

  def on_train_batch_end(self, batch, logs=None):
    if not self._finite.numpy():
      raise training.NonFiniteLossError(int(self.model.optimizer.iterations.numpy()), logs)


class RobustModel(keras.Model):
  """Trains `model` with a robust objective in `fit` (and prunes it, if it carries tfmot pruning wrappers).

  ```python
  pruned = tfrobprune.prune_for_fit(model, tfrobprune.Pruning(sparsity=0.9), steps=epochs * steps_per_epoch)
  robust = tfrobprune.RobustModel(pruned, tfrobprune.Objective("pgd", eps=0.1))
  robust.compile(optimizer=keras.optimizers.Adam(1e-3))
  robust.fit(train_batches, epochs=epochs, callbacks=[keras.callbacks.EarlyStopping("loss")])
  robust.evaluate(test_batches)
  sparse = robust.stripped()   # a plain Keras model with the sparse weights, to save or export
  ```

  It trains on one device (`compile` refuses a `tf.distribute` strategy scope; the CLI's `--distribute` covers that).

  Args:
    model: a built, single-input `tf_keras` model returning logits, possibly wrapped for pruning
      (`prune_for_fit`, `magnitude.prune_model`, tfmot's `prune_low_magnitude`).
    objective: a `tfrobprune.Objective` (an `objectives.ObjectiveConfig`).
    num_classes: number of classes (default: the model's output width).
    steps_per_epoch: optimizer steps per epoch; needed only to turn an Objective's epoch-valued epsilon ramp into
      steps.
    weight_decay: L2 coefficient on kernels, as in the CLI (`--weight_decay`).
    seed: seeds the attacks' random starts (drawn from (seed, step), so a resumed fit repeats them).
    **kwargs: passed to `keras.Model` (e.g. `name`).

  Raises:
    layer_support.UnsupportedModelError: a layer the objective cannot train through (named).
    TypeError: `model` is not a Keras 2 model.
  """

  def __init__(self, model, objective, *, num_classes=None, steps_per_epoch=None, weight_decay=0.0, seed=0, **kwargs):
    require_keras2_model(model)
    kwargs.setdefault("name", f"robust_{model.name}")
    super().__init__(**kwargs)
    config = objective_config(objective, steps_per_epoch)
    num_classes = int(num_classes or model.output_shape[-1])
    layer_support.check_model(model, [config.name], num_classes)
    self.inner = model
    self.objective_config = config
    self.objective = objectives.make_objective(config, num_classes, seed=seed)
    self.weight_decay = weight_decay
    # The objective's schedule step (epsilon and kappa ramps), saved with the model by BackupAndRestore.
    self.schedule_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="schedule_step")
    self._last_step_finite = tf.Variable(True, trainable=False, name="last_step_finite")
    self._trackers = _Trackers()
    self._trainer = None

  def compile(self, optimizer="adam", metrics=None, **kwargs):
    """Keras' `compile`; the loss is the objective, so `loss=` is refused. `metrics` are computed by `evaluate`."""
    if kwargs.get("loss") is not None:
      raise ValueError(f"RobustModel's loss is its objective ({self.objective_config.name!r}); compile(loss=...) "
                       f"cannot replace it, got loss={kwargs['loss']!r}.")
    if not distribute.is_default(tf.distribute.get_strategy()):
      raise ValueError("RobustModel trains on one device, outside tf.distribute strategy scopes; the CLI's "
                       "--distribute trains under a strategy.")
    super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
    self._trainer = training.Trainer(self.inner, self.objective, self.optimizer, weight_decay=self.weight_decay,
                                     schedule_step=self.schedule_step)

  def call(self, inputs, training=None):  # pylint: disable=redefined-outer-name
    return self.inner(inputs, training=training)

  @property
  def metrics(self):
    return super().metrics + list(self._trackers.by_name.values())

  def train_step(self, data):
    x, y = _images_and_labels(data)
    metrics = dict(self._trainer.train_step(x, y))
    self._last_step_finite.assign(metrics.pop("finite") > 0)
    return self._trackers.record(metrics)

  def test_step(self, data):
    x, y = _images_and_labels(data)
    logits = self.inner(x, training=False)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.float32))
    logs = self._trackers.record({"loss": loss, "natural_acc": accuracy})
    if self.compiled_metrics is not None:
      self.compiled_metrics.update_state(y, logits)
      logs.update({metric.name: metric.result() for metric in self.compiled_metrics.metrics})
    return logs

  def fit(self, *args, callbacks=None, **kwargs):
    """Keras' `fit`, with tfmot's `UpdatePruningStep` put first if the model is wrapped and the caller did not pass
    one, and a stop with `training.NonFiniteLossError` after a non-finite step (whose update was skipped)."""
    if self._trainer is None:
      raise RuntimeError("Call compile(optimizer=...) before fit.")
    callbacks = list(callbacks or [])
    update = tfmot.sparsity.keras.UpdatePruningStep
    if pruning_wrapper.collect_prunable_layers(self.inner) and not any(isinstance(c, update) for c in callbacks):
      callbacks.insert(0, update())
    callbacks.append(_StopOnNonFiniteLoss(self._last_step_finite))
    return super().fit(*args, callbacks=callbacks, **kwargs)

  def stripped(self):
    """The trained model with its masks applied and the pruning wrappers removed: a plain Keras model sharing no
    variables with this one (save, evaluate or export it)."""
    return wrapping.strip(self.inner)
