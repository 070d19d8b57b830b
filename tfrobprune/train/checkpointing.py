"""Checkpoints and run progress, so that a killed run resumes where it stopped and loses no finished work.

Two layers:
- `PhaseCheckpointer`: `tf.train.CheckpointManager` checkpoints of one training phase (model with its pruning
  masks and step, optimizer, schedule step, epoch and step within the epoch, and the running metric sums), every N
  steps and at each epoch end, keeping the last K. TensorFlow writes checkpoint data to temporary files and renames
  them, and updates the `checkpoint` index last, so a kill never leaves a half-written "latest". If the latest
  checkpoint is corrupt anyway (a disk error), restoring falls back to the previous good one.
- `RunProgress`: `progress.json` in the output directory (written atomically): the run's configuration and the
  results of every finished phase and evaluation. A rerun with the same output directory skips what is finished,
  resumes the phase in progress, and refuses to mix in a run whose configuration differs.

Data order, attack starts and evaluation attacks are all functions of (seed, epoch, step), so a resumed run in
deterministic mode reproduces the uninterrupted run bit for bit.
"""

import json
import os
import shutil

from absl import logging

from tfrobprune import config as config_lib
from tfrobprune.keras_compat import tf
from tfrobprune import report

PROGRESS_FILE = "progress.json"
# Fields that may differ between a run and its resumption (they do not change any result).
RESUMABLE_DIFFERENCES = ("export",)


class ConfigMismatchError(ValueError):
  """The output directory holds a run with a different configuration."""


class PhaseCheckpointer:
  """Periodic, rotating checkpoints of one training phase.

  Args:
    directory: the phase's checkpoint directory.
    trainer: the `training.Trainer` whose model, optimizer and schedule step are saved.
    every_steps: save every this many optimizer steps (0: only at epoch ends).
    max_to_keep: how many checkpoints to keep.
  """

  def __init__(self, directory, trainer, every_steps=0, max_to_keep=3):
    if every_steps < 0:
      raise ValueError(f"every_steps must be >= 0, got {every_steps}.")
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
    self.every_steps = every_steps
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.loop_state = tf.Variable("{}", dtype=tf.string, trainable=False)
    self.checkpoint = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer,
                                          schedule_step=trainer.schedule_step, epoch=self.epoch,
                                          step_in_epoch=self.step_in_epoch, loop_state=self.loop_state)
    self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)

  def save(self, epoch, step_in_epoch, loop_state):
    """Saves the phase at (epoch, step_in_epoch), with `loop_state` (JSON-able) for the loop's own bookkeeping."""
    self.epoch.assign(epoch)
    self.step_in_epoch.assign(step_in_epoch)
    self.loop_state.assign(json.dumps(loop_state))
    return self.manager.save(checkpoint_number=int(self.checkpoint.save_counter) + 1)

  def restore_latest(self):
    """Restores the newest readable checkpoint.

    Returns:
      (epoch, step_in_epoch, loop_state) of the restored checkpoint, or None if there is none.
    """
    for path in reversed(self.manager.checkpoints):
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
      except (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError, OSError) as error:
        logging.warning("Checkpoint %s is unreadable (%s); trying the previous one.", path, error)
        continue
      return int(self.epoch.numpy()), int(self.step_in_epoch.numpy()), json.loads(self.loop_state.numpy())
    return None


class RunProgress:
  """The finished parts of a run, persisted in OUTPUT_DIR/progress.json.

  Args:
    output_dir: the run's output directory.
    config: the run's `RunConfig`.
    overwrite: discard an existing run in `output_dir` instead of resuming it.

  Raises:
    ConfigMismatchError: `output_dir` holds a run whose configuration differs (and `overwrite` is False).
  """

  def __init__(self, output_dir, config, overwrite=False):
    self.output_dir = output_dir
    self.path = os.path.join(output_dir, PROGRESS_FILE)
    self.config_dict = json.loads(config.to_json())  # as it reads back from progress.json (lists, not tuples)
    self.state = {"config": self.config_dict, "completed": {}, "records": {}}
    self.resumed = False
    if os.path.exists(self.path):
      if overwrite:
        clear_run(output_dir)
      else:
        self._load_existing()
    self._write()

  def _load_existing(self):
    try:
      with open(self.path) as handle:
        previous = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
      raise ConfigMismatchError(f"{self.path} is unreadable ({error}); pass --overwrite to start afresh.") from error
    differing = [name for name in config_lib.differing_fields(previous.get("config", {}), self.config_dict)
                 if name not in RESUMABLE_DIFFERENCES]
    if differing:
      raise ConfigMismatchError(
          f"{self.output_dir} holds a run with different settings ({', '.join(differing)}); use another "
          "--output_dir, or --overwrite to discard it.")
    self.state["completed"] = previous.get("completed", {})
    self.state["records"] = previous.get("records", {})
    self.resumed = True

  def get(self, name):
    """The recorded result of part `name`, or None if it has not finished."""
    return self.state["completed"].get(name)

  def complete(self, name, result):
    """Records that part `name` finished with `result` (JSON-able)."""
    self.state["completed"][name] = result
    self._write()

  def record(self, name):
    """A value kept with `keep` (bookkeeping that is not a finished part, e.g. `timing`'s seconds), or None."""
    return self.state["records"].get(name)

  def keep(self, name, value):
    """Keeps `value` (JSON-able) under `name` across resumes."""
    self.state["records"][name] = value
    self._write()

  def _write(self):
    report.atomic_write(self.path, json.dumps(self.state, indent=2, sort_keys=True) + "\n")


def clear_run(output_dir):
  """Removes what a previous run left in `output_dir` (progress, checkpoints, models, reports, logs)."""
  for name in (PROGRESS_FILE, "report.json", "report.md"):
    path = os.path.join(output_dir, name)
    if os.path.exists(path):
      os.remove(path)
  for name in ("checkpoints", "models", "tensorboard", "export"):
    shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
