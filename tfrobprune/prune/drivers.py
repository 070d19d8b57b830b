"""Drive tfmot's pruning step counter from a custom training loop: `PruningStepDriver`, `ScheduledMaskDriver`.

How tfmot 0.8.1 prunes (read from `pruning_wrapper.py`, `pruning_impl.py`, `pruning_callbacks.py`)
---------------------------------------------------------------------------------------------------
A wrapper holds, per kernel, a `mask` (ones at first) and a `threshold`, plus one int64 `pruning_step` that
starts at -1. Each call of the wrapper does, in this order:

1. `training=True` only: `pruning_step += 1`.
2. `training=True` only: assert `pruning_step >= 1` (tfmot's "requires the UpdatePruningStep callback" error),
   then, if `schedule(pruning_step)` says "prune now" (step in [begin_step, end_step] and
   `(step - begin_step) % frequency == 0`), recompute mask and threshold from |kernel| at the schedule's sparsity
   for that step. m:n masks ignore the schedule: they are computed once, when `pruning_step == 1`.
3. every call, `training=False` included: `kernel.assign(kernel * mask)`.
4. the wrapped layer's own call, which reads the masked kernel.

What follows from this:
- `pruning_step` counts training-mode forward passes, not optimizer steps. Attack and evaluation passes must call
  the model with `training=False` (a bare `model(x)` is also inference in TF2); a loop that makes two
  training-mode passes per step (TRADES with BatchNorm) advances it twice, and one that makes none never prunes.
- `UpdatePruningStep` in 0.8.1 has only `on_train_begin` (-1 -> 0) and `on_epoch_end` (step 3 for every
  wrapper); there is no per-batch hook any more. `PruningSummaries` reads `model.optimizer.iterations`, so it fails
  on a model that a custom loop trains without `compile`.
- The mask chosen at step k already masks the forward pass of step k, but gradients are not masked, so the
  weights must be re-masked before they are read (`wrapping`).

The drivers below count optimizer steps instead (the step convention of `pruning_schedules`).
"""

import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune.prune import wrapping

# After keras_compat, which makes tfmot bind to Keras 2.
import tensorflow_model_optimization as tfmot
# `collect_prunable_layers` is not exported by tfmot's public API.
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper


class PruningStepDriver:
  """Drives tfmot's pruning step counter from a custom training loop (what `fit` does with `UpdatePruningStep`).

  Call it around the loop like Keras callbacks, outside any `tf.function`:

  ```python
  driver = PruningStepDriver(model, log_dir)   # once per model
  driver.on_train_begin()                      # before the first training-mode call
  for epoch in range(epochs):
    for step_in_epoch, (x, y) in enumerate(batches):
      driver.on_step_begin(step_in_epoch)      # before the step's forward passes
      x_adv = attack(lambda z: model(z, training=False), x, y)   # any number of inference passes
      train_step(x_adv, y)                     # model(x_adv, training=True), gradient, optimizer update
    driver.on_epoch_end(epoch)                 # re-applies the masks
  driver.finalize()                            # masks applied: evaluate, strip, export
  ```

  The driver counts optimizer steps itself and sets every wrapper's `pruning_step` to that count at each step's
  start, so the schedule follows optimizer steps, not forward passes: inference passes do not count, and a step
  with several training-mode passes (TRADES with BatchNorm) has its first pass see step k and the others k + 1,
  ... (at worst a mask update one step early), reset at the next step. It raises if a step made no training-mode
  pass, since the masks would then never update. A second driver on the same model (another fine-tuning run)
  continues from the model's `pruning_step`.

  Attributes:
    step: optimizer steps driven so far (None before `on_train_begin`).
  """

  def __init__(self, model, log_dir=None):
    """Args:
      model: a model from `magnitude.prune_model` or `wrapping.fixed_mask_prune` (a model without wrappers makes
        this a no-op).
      log_dir: if set, each `on_epoch_end` writes every wrapper's mask sparsity and threshold there as TensorBoard
        scalars '<layer>/sparsity' and '<layer>/threshold' at the current step. (tfmot's `PruningSummaries`
        needs a compiled model's optimizer, which a custom loop need not have.)
    """
    self.model = model
    self.step = None
    self._wrappers = pruning_wrapper.collect_prunable_layers(model)
    self._callback = tfmot.sparsity.keras.UpdatePruningStep()
    self._callback.set_model(model)
    self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None

  def on_train_begin(self):
    """Sets fresh wrappers' `pruning_step` from -1 to 0 and starts counting from the model's current step."""
    self._callback.on_train_begin()
    self.step = int(self._wrappers[0].pruning_step.numpy()) if self._wrappers else 0

  def on_step_begin(self, step_in_epoch):
    """Call before each optimizer step's forward passes.

    Args:
      step_in_epoch: the step's index within the epoch (passed on to the callback as Keras' batch index).

    Raises:
      RuntimeError: before `on_train_begin`, or if the previous step made no training-mode forward pass.
    """
    self._check_previous_step()
    self._set_pruning_step(self.step)
    self.step += 1
    self._callback.on_train_batch_begin(step_in_epoch)

  def on_epoch_end(self, epoch):
    """Re-applies the masks (the weights are dense after the last optimizer update) and writes the summaries."""
    self._check_previous_step()
    self._set_pruning_step(self.step)
    self._callback.on_epoch_end(epoch)
    self._write_summaries()

  def finalize(self):
    """Makes the weights sparse (kernel * mask) for evaluation, stripping or export; safe to call repeatedly."""
    if self.step is not None:
      self._set_pruning_step(self.step)
    wrapping.apply_masks(self.model)

  def _check_previous_step(self):
    if self.step is None:
      raise RuntimeError("Call PruningStepDriver.on_train_begin() before the first step.")
    if self._wrappers and self._wrappers[0].pruning_step.numpy() < self.step:
      raise RuntimeError(
          f"Optimizer step {self.step - 1} made no training-mode forward pass: pruning masks only update in "
          "model(x, training=True); call it once per optimizer step (and training=False for attacks).")

  def _set_pruning_step(self, value):
    keras.backend.batch_set_value([(wrapper.pruning_step, value) for wrapper in self._wrappers])

  def _write_summaries(self):
    if self._writer is None:
      return
    with self._writer.as_default(step=self.step):
      for wrapper in self._wrappers:
        _, mask, threshold = wrapper.pruning_vars[0]
        tf.summary.scalar(f"{wrapper.layer.name}/sparsity", 1.0 - tf.reduce_mean(mask))
        tf.summary.scalar(f"{wrapper.layer.name}/threshold", threshold)
    self._writer.flush()


class ScheduledMaskDriver(PruningStepDriver):
  """A `PruningStepDriver` whose masks are chosen by the caller at a schedule's pruning turns: gradual pruning by
  any criterion.

  tfmot's wrappers can only recompute masks from |kernel|. Here the model comes from `wrapping.fixed_mask_prune`
  (its own schedules never fire) and, at the start of every optimizer step at which `schedule` prunes, the driver
  calls `choose_masks(stripped, sparsity, step)` with a stripped copy of the model as it is (masks applied) and
  writes the masks it returns into the wrappers (kernel * mask at once). Steps between turns train under fixed
  masks, so the kept weights adapt before the next turn, as in tfmot's gradual magnitude pruning.

  Args:
    model: a model from `wrapping.fixed_mask_prune`.
    schedule: a tfmot `PruningSchedule` in tfmot's step count (`pruning_schedules.sparsity_schedule`); turns with
      sparsity 0 are skipped.
    choose_masks: `choose_masks(model, sparsity, step)` returns {wrapped layer name: 0/1 mask shaped like its
      kernel}; a weight it keeps after an earlier turn pruned it stays at zero until training moves it.
    log_dir: as for `PruningStepDriver`.
  """

  def __init__(self, model, schedule, choose_masks, log_dir=None):
    super().__init__(model, log_dir)
    self._schedule = schedule
    self._choose_masks = choose_masks

  def on_step_begin(self, step_in_epoch):
    self._check_previous_step()
    due, sparsity = self._schedule(self.step + 1)
    if bool(due) and float(sparsity) > 0:
      stripped = wrapping.strip(self.model)
      self._set_masks(stripped, self._choose_masks(stripped, float(sparsity), self.step))
    super().on_step_begin(step_in_epoch)

  def _set_masks(self, stripped, masks):
    wrapped_names = {wrapper.layer.name for wrapper in self._wrappers}
    if set(masks) != wrapped_names:
      raise ValueError(f"choose_masks returned masks for {sorted(masks)}, but the wrapped layers are "
                       f"{sorted(wrapped_names)}.")
    wrapping.check_masks(stripped, masks)  # shapes and 0/1 values, as for `fixed_mask_prune`
    for wrapper in self._wrappers:
      wrapper.pruning_vars[0][1].assign(np.asarray(masks[wrapper.layer.name], np.float32))
    wrapping.apply_masks(self.model)
