"""One library call for a whole run: pre-train -> prune -> fine-tune -> evaluate -> (export) -> report.

`run(config, output_dir)` is what the CLI calls; nothing here reads flags. The two rules of Sehwag et al. (2019) are
visible in the phases: pre-training and fine-tuning each take an objective from the same interface (set both to the
robust one for the method, or pre-train naturally for the paper's ablation), while pruning itself only looks at
weight magnitudes.
"""

import dataclasses
import json
import os
import time

from tfrobprune import data
from tfrobprune import evaluation
from tfrobprune import models
from tfrobprune import objectives
from tfrobprune import pruning
from tfrobprune import report as report_lib
from tfrobprune import training
from tfrobprune.keras_compat import keras, tf


@dataclasses.dataclass
class _RunContext:
  """What every phase of one run shares."""
  config: object
  output_dir: str
  dataset: object
  train_data: tf.data.Dataset
  validation: tuple
  summary_writer: object
  progress: bool
  log: object


def prepare_output_dir(output_dir):
  """Creates `output_dir` and checks that it is writable, with an error naming it otherwise."""
  try:
    os.makedirs(output_dir, exist_ok=True)
    probe = os.path.join(output_dir, ".write-test")
    with open(probe, "w") as handle:
      handle.write("ok")
    os.remove(probe)
  except OSError as error:
    raise OSError(f"Output directory {output_dir!r} is not writable: {error.strerror}.") from error


def set_seed(seed, deterministic):
  """Seeds Python, NumPy and TensorFlow; optionally turns on TensorFlow's deterministic ops."""
  keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()


def _load_data(config):
  cfg = config.data
  dataset = data.load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size,
                              synthetic_examples=cfg.synthetic_examples, synthetic_shape=cfg.synthetic_shape,
                              seed=config.seed)
  if cfg.max_train_examples:
    dataset = dataclasses.replace(dataset, x_train=dataset.x_train[:cfg.max_train_examples],
                                  y_train=dataset.y_train[:cfg.max_train_examples])
  return data.split_validation(dataset, cfg.validation_fraction, config.seed)


def _train_dataset(dataset, config, batch_size):
  return data.make_tf_dataset(dataset.x_train, dataset.y_train, batch_size, shuffle=True, seed=config.seed,
                              augment=config.data.augment, drop_remainder=True)


def _validation_fn(model, validation, batch_size):
  """Per-epoch benign validation accuracy (cheap; the full robust evaluation runs once per phase)."""
  x_val, y_val = validation
  if len(x_val) == 0:
    return None
  predict = tf.function(lambda x: tf.argmax(model(x, training=False), axis=1))

  def epoch_end(epoch, metrics):
    del epoch, metrics
    correct = sum(int(tf.reduce_sum(tf.cast(predict(x) == y, tf.int32)))
                  for x, y in data.make_tf_dataset(x_val, y_val, batch_size))
    return {"val_acc": correct / len(x_val)}

  return epoch_end


def _run_phase(ctx, model, train_config, objective_config, phase, pruning_driver=None):
  """Trains `model` for one phase with its own optimizer; returns the per-epoch history."""
  dataset = _train_dataset(ctx.dataset, ctx.config, train_config.batch_size)
  if int(dataset.cardinality()) < 1:
    raise ValueError(f"The training set ({len(ctx.dataset.x_train)} examples) is smaller than one batch "
                     f"({train_config.batch_size}); lower the batch size.")
  objective = objectives.make_objective(objective_config, ctx.dataset.num_classes)
  optimizer = training.make_optimizer(train_config, int(dataset.cardinality()))
  trainer = training.Trainer(model, objective, optimizer, weight_decay=train_config.weight_decay)
  ctx.log(f"[{phase}] {train_config.epochs} epochs, objective {objective_config.name}")
  return training.train(trainer, dataset, train_config.epochs, pruning_driver=pruning_driver,
                        summary_writer=ctx.summary_writer, progress=ctx.progress, phase=phase,
                        epoch_end_fn=_validation_fn(model, ctx.validation, train_config.batch_size))


def _save_weights(model, directory):
  """Saves model weights into `directory` atomically (written beside it, then renamed)."""
  tmp = directory + ".tmp"
  if os.path.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  model.save_weights(os.path.join(tmp, "weights"))
  if os.path.exists(directory):
    tf.io.gfile.rmtree(directory)
  os.replace(tmp, directory)
  return os.path.join(directory, "weights")


def _dense_model(ctx):
  """Builds the dense model and pre-trains it, or restores it from `config.dense_checkpoint`."""
  config, dataset = ctx.config, ctx.dataset
  model = models.build_model(config.model, dataset.input_shape, dataset.num_classes, dataset.mean, dataset.std,
                             seed=config.seed)
  if config.dense_checkpoint:
    ctx.log(f"Restoring the dense model from {config.dense_checkpoint}; pre-training skipped.")
    try:
      model.load_weights(config.dense_checkpoint).expect_partial()
    except (tf.errors.NotFoundError, ValueError) as error:
      raise ValueError(f"Cannot restore dense checkpoint {config.dense_checkpoint!r} into {config.model}: "
                       f"{error}") from error
    return model, []
  history = _run_phase(ctx, model, config.pretrain, config.pretrain_objective, "pretrain")
  path = _save_weights(model, os.path.join(ctx.output_dir, "checkpoints", "dense"))
  ctx.log(f"Dense checkpoint: {path}")
  return model, history


def _round_pruning_config(base, target, ramp_steps):
  """The pruning config of one round: sparsity ramps from step 0 to the last multiple of the mask-update frequency
  within `ramp_steps`, so the last update lands exactly on the target (a short phase updates more often)."""
  frequency = max(1, min(base.frequency, ramp_steps))
  end_step = max(1, ramp_steps // frequency) * frequency
  return dataclasses.replace(base, target_sparsity=target, begin_step=0, end_step=end_step, frequency=frequency)


def _prune_and_finetune(ctx, dense_model, sparsity):
  """Prunes a copy of the dense model to `sparsity` in `prune_rounds` prune/fine-tune rounds; returns it stripped."""
  config = ctx.config
  steps = config.finetune.epochs * (len(ctx.dataset.x_train) // config.finetune.batch_size)
  current, history = dense_model, []
  for round_index, target in enumerate(pruning.iterative_targets(sparsity, config.prune_rounds)):
    prune_config = _round_pruning_config(config.pruning, target, int(config.prune_end_fraction * steps))
    wrapped = pruning.prune_model(current, prune_config)
    log_dir = os.path.join(ctx.output_dir, "tensorboard", f"pruning_s{sparsity:g}_r{round_index + 1}")
    driver = pruning.PruningStepDriver(wrapped, log_dir=log_dir)
    phase = f"finetune_s{sparsity:g}" + (f"_r{round_index + 1}" if config.prune_rounds > 1 else "")
    history += _run_phase(ctx, wrapped, config.finetune, config.finetune_objective, phase, pruning_driver=driver)
    driver.finalize()
    current = pruning.strip(wrapped)
  return current, history


def _model_summary(model):
  counts = pruning.parameter_counts(model)
  return {"params": counts["params"], "nonzero_params": counts["nonzero_params"], "sparsity": counts["sparsity"],
          "compression": counts["compression"], "layer_sparsity": pruning.layer_sparsity(model)}


def _evaluate(ctx, model, label):
  started = time.time()
  results = evaluation.evaluate_model(model, ctx.dataset.x_test, ctx.dataset.y_test, ctx.config.evaluation,
                                      ctx.dataset.num_classes)
  results.update(_model_summary(model))
  ctx.log(f"[evaluate {label}] " + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if k.endswith("_acc")) +
          f" ({time.time() - started:.0f} s)")
  return results


def run(config, output_dir, progress=True, log=print):
  """Runs the whole pipeline for `config` and writes the report into `output_dir`.

  Args:
    config: a `config.RunConfig`.
    output_dir: where report.json, report.md, plots, TensorBoard logs, checkpoints and exports go.
    progress: show per-epoch progress bars.
    log: a function taking one line of progress text.

  Returns:
    The report (the dict written to report.json).
  """
  started = time.time()
  prepare_output_dir(output_dir)
  set_seed(config.seed, config.deterministic)
  dataset, validation = _load_data(config)
  ctx = _RunContext(config, output_dir, dataset, None, validation,
                    tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard")), progress, log)
  log(f"Data: {dataset.name}, {len(dataset.x_train)} train / {len(validation[0])} validation / "
      f"{len(dataset.x_test)} test examples of shape {dataset.input_shape}, {dataset.num_classes} classes.")
  dense_model, pretrain_history = _dense_model(ctx)
  dense = _evaluate(ctx, dense_model, "dense")
  sweep, finetune_history, pruned_model = [], {}, None
  for sparsity in config.sparsities:
    pruned_model, finetune_history[f"{sparsity:g}"] = _prune_and_finetune(ctx, dense_model, sparsity)
    sweep.append(dict(_evaluate(ctx, pruned_model, f"sparsity {sparsity:g}"), target_sparsity=sparsity))
  report = {
      "config": config.to_dict(),
      "dataset": {"name": dataset.name, "train": len(dataset.x_train), "validation": len(validation[0]),
                  "test": len(dataset.x_test), "input_shape": list(dataset.input_shape),
                  "num_classes": dataset.num_classes},
      "dense": dense,
      "pruned": sweep[-1],
      "ratios": report_lib.ratios(dense, sweep[-1]),
      "sweep": sweep,
      "history": {"pretrain": pretrain_history, "finetune": finetune_history},
  }
  if config.export:
    report["artifacts"] = _export(ctx, pruned_model, report)
  report["seconds"] = round(time.time() - started, 1)
  report_lib.write_report(report, output_dir)
  log(f"Report: {os.path.join(output_dir, 'report.md')} ({report['seconds']:.0f} s)")
  return report


def _export(ctx, model, report):
  """Exports the pruned model when the export module is available; returns the artifacts section."""
  try:
    from tfrobprune import export  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  return export.export_all(model, ctx, report)
