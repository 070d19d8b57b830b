"""One library call for a whole run: pre-train -> prune -> fine-tune -> evaluate -> export -> report.

`run(config, output_dir)` is what the CLI calls; nothing here reads flags. The two rules of Sehwag et al. (2019) are
visible in the phases: pre-training and fine-tuning each take an objective from the same interface (set both to the
robust one for the method, or pre-train naturally for the paper's ablation), while pruning itself only looks at
weight magnitudes.

Every finished part (a phase, an evaluation, the export) is recorded in OUTPUT_DIR/progress.json with its results,
and its model is saved; a phase in progress is checkpointed. Rerunning the same command resumes where it stopped.

Under a `tf.distribute` strategy (`config.distribute`) the training phases run on every replica and worker; models
are made in the strategy's scope for training, and copied to a single device after each phase for evaluation,
saving and export. Only the chief writes OUTPUT_DIR; the other workers of a multi-worker run train in a private
temporary directory (deleted at the end) and skip evaluation, export and the report.
"""

import dataclasses
import functools
import json
import os
import zlib

from absl import logging
import numpy as np

from tfrobprune import config as config_lib
from tfrobprune.data import datasets
from tfrobprune.data import subsets
from tfrobprune.deploy import export
from tfrobprune.deploy import macs
from tfrobprune.deploy import speed
from tfrobprune.evaluate import evaluation
from tfrobprune.evaluate import gradient_masking
from tfrobprune.keras_compat import keras, tf
from tfrobprune import model_files
from tfrobprune import models
from tfrobprune.prune import channel_groups
from tfrobprune.prune import channels
from tfrobprune.prune import drivers
from tfrobprune.prune import magnitude
from tfrobprune.prune import pruning_schedules
from tfrobprune.prune import scores
from tfrobprune.prune import stats
from tfrobprune.prune import surgery
from tfrobprune.prune import wrapping
from tfrobprune import report as report_lib
from tfrobprune.robust import layer_support
from tfrobprune.robust import objectives
from tfrobprune.train import checkpointing
from tfrobprune.train import distribute
from tfrobprune.train import overfit_monitor
from tfrobprune.train import timing
from tfrobprune.train import training


# Training images the full-integer TFLite converter calibrates activations on.
_REPRESENTATIVE_IMAGES = 500
# Interleaved rounds of the dense-vs-pruned latency measurement (`speed.compare_models`) after the export.
_SPEED_ROUNDS = 20


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a run behaves, as opposed to what it computes (none of these change the results).

  Attributes:
    progress: None, or a progress-bar factory for the training loop (see `training.train`; the CLI passes
      `console.EpochProgressBars()`).
    checkpoint_every_steps: save a checkpoint every N optimizer steps (0: at epoch ends only).
    keep_checkpoints: checkpoints kept per phase.
    overwrite: discard an earlier run in the output directory instead of resuming it.
    should_stop: polled after every step; True checkpoints the phase and stops (SIGINT/SIGTERM handling).
    log: a function taking one line of progress text (absl's `logging.info` by default; the CLI prints).
    strategy: the `tf.distribute.Strategy` to train under, of the kind `config.distribute` names (the CLI makes it
      with `distribute.make_strategy` before TensorFlow starts); None makes that strategy in `run`.
    eval_progress: None, or a progress-bar factory for the evaluation (see `evaluation.evaluate_model`; the CLI
      passes `console.EvaluationProgressBars()`).
  """
  progress: object = None
  checkpoint_every_steps: int = 200
  keep_checkpoints: int = 3
  overwrite: bool = False
  should_stop: object = None
  log: object = logging.info
  strategy: object = None
  eval_progress: object = None


@dataclasses.dataclass
class _RunContext:
  """What every part of one run shares."""
  config: object
  options: RunOptions
  output_dir: str
  dataset: datasets.ArrayDataset
  validation: tuple
  progress: checkpointing.RunProgress
  summary_writer: object
  strategy: object = None

  def __post_init__(self):
    self.timer = timing.RunTimer(self.progress)  # wall seconds per part, kept across resumes

  def log(self, line):
    self.options.log(line)

  def path(self, *parts):
    return os.path.join(self.output_dir, *parts)


def prepare_output_dir(output_dir):
  """Creates `output_dir` and checks that it is writable, with an error naming it otherwise."""
  try:
    os.makedirs(output_dir, exist_ok=True)
    probe = os.path.join(output_dir, ".write-test")
    with open(probe, "w") as handle:
      handle.write("ok")
    os.remove(probe)
  except OSError as error:
    raise OSError(f"Output directory {output_dir!r} is not writable: {error.strerror or error}.") from error


def set_seed(seed, deterministic):
  """Seeds Python, NumPy and TensorFlow; optionally turns on TensorFlow's deterministic ops."""
  keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()


def _load_data(config, supplied=None):
  """(dataset, validation, labels of the whole training split if a subset of it is used, else None).

  `supplied`: the `ArrayDataset` the Python API hands over (dataset `config_lib.API_DATASET`), used as loaded.
  """
  cfg = config.data
  if supplied is None and cfg.dataset == config_lib.API_DATASET:
    raise ValueError(f"This run's data (dataset {cfg.dataset!r}) was handed to tfrobprune.robust_prune; resume or "
                     "re-export it there, with the same data.")
  if supplied is not None and cfg.dataset != config_lib.API_DATASET:
    raise ValueError(f"Data was handed over, but the config names dataset {cfg.dataset!r}; it must name "
                     f"{config_lib.API_DATASET!r}.")
  dataset = supplied
  if dataset is None:
    dataset = datasets.load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size,
                                    synthetic_examples=cfg.synthetic_examples, synthetic_shape=cfg.synthetic_shape,
                                    seed=config.seed, streaming=True)
  train_split_labels = None
  if cfg.max_train_examples and cfg.max_train_examples < len(dataset.y_train):
    train_split_labels = dataset.y_train
    index = subsets.stratified_subset(dataset.y_train, cfg.max_train_examples, config.seed)
    dataset = dataclasses.replace(dataset, x_train=dataset.x_train[index], y_train=dataset.y_train[index])
  return (*datasets.split_validation(dataset, cfg.validation_fraction, config.seed), train_split_labels)


def _class_histograms(ctx, train_split_labels):
  """Examples per class of every part of the data the run used, and warnings where a subset misrepresents its
  split (a missing class, or class frequencies far from the split's)."""
  dataset, config = ctx.dataset, ctx.config
  histogram = functools.partial(subsets.class_histogram, num_classes=dataset.num_classes)
  _, evaluated = evaluation.evaluation_examples(dataset.x_test, dataset.y_test, config.evaluation, config.seed)
  histograms = {"train": histogram(dataset.y_train), "validation": histogram(ctx.validation[1]),
                "test": histogram(dataset.y_test), "evaluated": histogram(evaluated)}
  warnings = subsets.histogram_warnings("evaluated test examples", histograms["evaluated"], histograms["test"])
  if train_split_labels is not None:
    histograms["train_split"] = histogram(train_split_labels)
    subset = histogram(np.concatenate([dataset.y_train, ctx.validation[1]]))  # before validation was held out
    warnings += subsets.histogram_warnings("training subset", subset, histograms["train_split"])
  return histograms, warnings


def _resolved_config(ctx):
  """The run's config with the values it resolved from the data: the pruning schedule's steps (the flags give a
  frequency and a target; the steps follow from the fine-tuning length), and each phase's schedule lengths."""
  config = ctx.config
  pretrain_steps, finetune_steps = (_steps_per_epoch(ctx, config.pretrain), _steps_per_epoch(ctx, config.finetune))
  pruning = _round_pruning_config(config.pruning, config.pruning.target_sparsity, _prune_ramp_steps(ctx))
  resolved = dataclasses.replace(config, pruning=dataclasses.replace(
      config.pruning, begin_step=pruning.begin_step, end_step=pruning.end_step, frequency=pruning.frequency))
  schedules = {phase: {"steps_per_epoch": steps, "steps": train.epochs * steps, "lr_schedule": train.lr_schedule,
                       "lr_warmup_steps": int(train.warmup_epochs * steps),
                       "eps_warmup_steps": objective.eps_warmup_steps, "eps_ramp_steps": objective.eps_ramp_steps}
               for phase, train, objective, steps in (
                   ("pretrain", config.pretrain, config.pretrain_objective, pretrain_steps),
                   ("finetune", config.finetune, config.finetune_objective, finetune_steps))}
  schedules["pruning"] = {"begin_step": pruning.begin_step, "end_step": pruning.end_step,
                          "frequency": pruning.frequency}
  return resolved.to_dict(), schedules


def _epoch_seed(seed, phase, epoch):
  """A data-order seed that depends only on (run seed, phase, epoch): resumed epochs see the same batches."""
  return zlib.crc32(f"{seed}/{phase}/{epoch}".encode())


def _dataset_fn(ctx, batch_size, phase):
  def dataset_for_epoch(epoch):
    return datasets.make_tf_dataset(ctx.dataset.x_train, ctx.dataset.y_train, batch_size, shuffle=True,
                                seed=_epoch_seed(ctx.config.seed, phase, epoch), augment=ctx.config.data.augment,
                                drop_remainder=True)
  return dataset_for_epoch


def _validation_fn(model, validation, batch_size):
  """Per-epoch benign validation accuracy (cheap; the full robust evaluation runs once per model)."""
  x_val, y_val = validation
  if len(x_val) == 0:
    return None
  predict = tf.function(lambda x: tf.argmax(model(x, training=False), axis=1))

  def epoch_end(epoch, metrics):
    del epoch, metrics
    correct = sum(int(tf.reduce_sum(tf.cast(predict(x) == y, tf.int32)))
                  for x, y in datasets.make_tf_dataset(x_val, y_val, batch_size))
    return {"val_acc": correct / len(x_val)}

  return epoch_end


def _steps_per_epoch(ctx, train_config):
  steps = len(ctx.dataset.x_train) // train_config.batch_size
  if steps < 1:
    raise ValueError(f"The training set ({len(ctx.dataset.x_train)} examples) is smaller than one batch "
                     f"({train_config.batch_size}); lower --batch_size.")
  return steps


def _run_phase(ctx, model, train_config, objective_config, phase, pruning_driver=None):
  """Trains `model` for one phase (own optimizer, checkpoints under checkpoints/<phase>); returns its history.

  `model` must have been made in `ctx.strategy`'s scope.
  """
  steps = _steps_per_epoch(ctx, train_config)
  objective = objectives.make_objective(objective_config, ctx.dataset.num_classes, seed=ctx.config.seed)
  with ctx.strategy.scope():
    trainer = training.Trainer(model, objective, training.make_optimizer(train_config, steps),
                               weight_decay=train_config.weight_decay, strategy=ctx.strategy)
  checkpointer = checkpointing.PhaseCheckpointer(ctx.path("checkpoints", phase), trainer,
                                                 every_steps=ctx.options.checkpoint_every_steps,
                                                 max_to_keep=ctx.options.keep_checkpoints)
  ctx.log(f"[{phase}] {train_config.epochs} epochs x {steps} steps, objective {objective_config.name}")
  monitor = overfit_monitor.make_monitor(
      ctx.config.overfit, objective_config, trainer, lambda: _held_out(ctx), ctx.dataset.num_classes,
      ctx.config.seed, phase, log=ctx.log,
      best_weights_path=None if pruning_driver else ctx.path("checkpoints", phase, "best_weights.npz"))
  with ctx.timer.part(phase, training=True):
    return training.train(trainer, _dataset_fn(ctx, train_config.batch_size, phase), train_config.epochs,
                          pruning_driver=pruning_driver, summary_writer=ctx.summary_writer,
                          progress=ctx.options.progress, phase=phase, checkpointer=checkpointer,
                          should_stop=ctx.options.should_stop, on_resume=monitor.resume if monitor else None,
                          epoch_end_fn=overfit_monitor.with_monitor(
                              _validation_fn(model, ctx.validation, train_config.batch_size), monitor))


def _held_out(ctx):
  """The examples the overfitting monitor attacks after each epoch (`overfit_monitor.held_out_examples`)."""
  return overfit_monitor.held_out_examples(ctx.validation, ctx.dataset.x_train, ctx.dataset.y_train,
                                           ctx.config.overfit.examples, ctx.config.seed)


def _model_path(ctx, name):
  return ctx.path("models", f"{name}.keras")


def save_model(model, path):
  """Saves a Keras model (`.keras` format) atomically: written beside `path`, then renamed."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
  model.save(tmp)
  os.replace(tmp, path)
  return path


def load_model(path):
  """Loads a model saved by `save_model` with Keras' safe mode (no arbitrary code from the file)."""
  try:
    return keras.models.load_model(path, custom_objects={"Standardize": models.Standardize}, safe_mode=True,
                                   compile=False)
  except (OSError, ValueError) as error:
    raise ValueError(f"Cannot load model {path!r}: {error}") from error


def _new_dense_model(ctx):
  cfg, dataset = ctx.config, ctx.dataset
  if model_files.is_model_path(cfg.model):  # a model of one's own, its weights as saved
    model = model_files.load_model_file(cfg.model)
    model_files.check_fits_data(model, dataset.input_shape, dataset.num_classes, cfg.model)
    return model
  return models.build_model(cfg.model, dataset.input_shape, dataset.num_classes, dataset.mean, dataset.std,
                            seed=cfg.seed)


def _dense_model(ctx):
  """The dense model: restored (a finished phase or `dense_checkpoint`) or pre-trained; with its history."""
  config = ctx.config
  finished = ctx.progress.get("pretrain")
  if finished is not None:
    ctx.log("[pretrain] finished earlier; loading the dense model.")
    return load_model(_model_path(ctx, "dense")), finished["history"]
  history = []
  if config.dense_checkpoint:
    ctx.log(f"Restoring the dense model from {config.dense_checkpoint}; pre-training skipped.")
    model = _new_dense_model(ctx)
    _restore_weights(model, config.dense_checkpoint)
  else:
    with ctx.strategy.scope():
      model = _new_dense_model(ctx)
    history = _run_phase(ctx, model, config.pretrain, config.pretrain_objective, "pretrain")
    model = distribute.single_device_copy(model, ctx.strategy)
  save_model(model, _model_path(ctx, "dense"))
  ctx.progress.complete("pretrain", {"history": history})
  return model, history


def _restore_weights(model, path):
  if path.endswith(".keras"):
    source = load_model(path)
    if [w.shape for w in source.weights] != [w.shape for w in model.weights]:
      raise ValueError(f"Dense checkpoint {path!r} does not fit model {model.name}: different weight shapes.")
    model.set_weights(source.get_weights())
    return
  try:
    model.load_weights(path).expect_partial()
  except (tf.errors.OpError, ValueError) as error:
    raise ValueError(f"Cannot restore dense checkpoint {path!r} into {model.name}: {error}") from error


def _round_pruning_config(base, target, ramp_steps):
  """The pruning config of one round: sparsity ramps from step 0 to the last multiple of the mask-update frequency
  within `ramp_steps`, so the last update lands exactly on the target (a short phase updates more often)."""
  frequency = max(1, min(base.frequency, ramp_steps))
  end_step = max(1, ramp_steps // frequency) * frequency
  return dataclasses.replace(base, target_sparsity=target, begin_step=0, end_step=end_step, frequency=frequency)


def _prune_ramp_steps(ctx):
  """The fine-tuning steps over which each round's sparsity ramps up (`prune_end_fraction` of the round)."""
  steps = ctx.config.finetune.epochs * _steps_per_epoch(ctx, ctx.config.finetune)
  return int(ctx.config.prune_end_fraction * steps)


def _check_pruning_config(ctx):
  """Fails before any training if the pruning settings cannot apply to the model (e.g. 2:4 on a 1-channel conv),
  or a layer lacks what an objective needs (`layer_support`: a bound rule for IBP, say)."""
  layer_support.check_model(_new_dense_model(ctx), {ctx.config.pretrain_objective.name,
                                                    ctx.config.finetune_objective.name}, ctx.dataset.num_classes)
  for sparsity in ctx.config.sparsities:
    prune_config = _round_pruning_config(ctx.config.pruning, sparsity, _prune_ramp_steps(ctx))
    magnitude.prune_model(_new_dense_model(ctx), prune_config)
  if ctx.config.prune_structure == "channels":
    _channel_groups(ctx, _new_dense_model(ctx))


def _learned_masks(ctx, model, target, phase):
  """HYDRA's criterion: masks whose scores were optimised with the fine-tuning objective, weights frozen.

  Learned once per phase: the masks are saved beside the models, so a resumed phase loads them instead of learning
  them again before it restores its checkpoint.
  """
  path = ctx.path("models", f"{phase}_masks.npz")
  if os.path.exists(path):
    ctx.log(f"[scores_{phase}] masks learned earlier; loading {path}.")
    with np.load(path) as saved:
      return {name: saved[name] for name in saved.files}
  masks = _learn_masks(ctx, model, target, phase)
  _save_masks(masks, path)
  return masks


def _save_masks(masks, path):
  """Writes {layer name: mask} to `path` (.npz) atomically: a process killed while writing leaves no file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
  with open(tmp, "wb") as handle:
    np.savez(handle, **masks)
  os.replace(tmp, path)


def _learn_masks(ctx, model, target, phase):
  config = ctx.config
  score_config = dataclasses.replace(config.scores, batch_size=config.finetune.batch_size,
                                     scope=config.pruning.scope, exclude_layers=config.pruning.exclude_layers)
  objective = objectives.make_objective(config.finetune_objective, ctx.dataset.num_classes, seed=config.seed)
  ctx.log(f"[scores_{phase}] learning a {target:g}-sparse mask with objective {config.finetune_objective.name} "
          f"({score_config.epochs} epochs)")
  return scores.learn_masks(model, objective, _dataset_fn(ctx, score_config.batch_size, f"scores_{phase}"), target,
                            score_config, seed=config.seed, log=ctx.log)


def _gradual_score_masks(ctx, phase):
  """The `choose_masks` of `ScheduledMaskDriver` for scores learned at each mask update (schedule 'gradual')."""
  config = ctx.config
  score_config = dataclasses.replace(config.scores, epochs=1, batch_size=config.finetune.batch_size,
                                     scope=config.pruning.scope, exclude_layers=config.pruning.exclude_layers)
  objective = objectives.make_objective(config.finetune_objective, ctx.dataset.num_classes, seed=config.seed)

  def choose_masks(model, sparsity, step):
    batches = _dataset_fn(ctx, score_config.batch_size, f"scores_{phase}_step{step}")
    ctx.log(f"[scores_{phase}] step {step}: learning a {sparsity:.4f}-sparse mask "
            f"({score_config.update_steps} score steps)")
    return scores.learn_masks(model, objective, lambda epoch: batches(epoch).take(score_config.update_steps),
                              sparsity, score_config, seed=config.seed + step, log=ctx.log)

  return choose_masks


def _pruned_for_finetuning(ctx, model, target, phase, ramp_steps):
  """The wrapped model a fine-tuning round trains and the driver that prunes it, by the configured criterion."""
  config = ctx.config
  log_dir = ctx.path("tensorboard", f"pruning_{phase}")
  prune_config = _round_pruning_config(config.pruning, target, ramp_steps)
  if config.prune_criterion == "magnitude":
    with ctx.strategy.scope():
      wrapped = magnitude.prune_model(model, prune_config)
    return wrapped, drivers.PruningStepDriver(wrapped, log_dir=log_dir)
  if config.scores.schedule == "oneshot":
    wrapped = wrapping.fixed_mask_prune(model, _learned_masks(ctx, model, target, phase))
    return wrapped, drivers.PruningStepDriver(wrapped, log_dir=log_dir)
  dense_masks = {layer.name: np.ones(layer.kernel.shape, np.float32) for layer in models.prunable_layers(model)
                 if layer.name not in config.pruning.exclude_layers}
  wrapped = wrapping.fixed_mask_prune(model, dense_masks)
  return wrapped, drivers.ScheduledMaskDriver(wrapped, pruning_schedules.sparsity_schedule(prune_config),
                                              _gradual_score_masks(ctx, phase), log_dir=log_dir)


def _channel_groups(ctx, model):
  """The channel groups `prune_structure` 'channels' prunes (an error names a layer that cannot be shrunk)."""
  groups = channel_groups.channel_groups(model, ctx.config.pruning.exclude_layers)
  if not groups:
    raise ValueError(f"--prune_structure=channels: model {model.name!r} has no channel group to prune; kept whole: "
                     f"{channel_groups.describe_unpruned(model, ctx.config.pruning.exclude_layers)}.")
  return groups


def _channel_phase(config):
  return f"channels_c{config.channel_sparsity:g}"


def _channel_pruned(ctx, dense_model):
  """Channel pruning fine-tuned under masks, then the physically smaller model (`surgery.shrink`); one phase that
  every sparsity of the sweep starts from. Returns (shrunken model, history)."""
  config, phase = ctx.config, _channel_phase(ctx.config)
  finished = ctx.progress.get(phase)
  if finished is not None:
    ctx.log(f"[{phase}] finished earlier; loading its model.")
    return load_model(_model_path(ctx, phase)), finished["history"]
  groups = _channel_groups(ctx, dense_model)
  ctx.log(f"[{phase}] {len(groups)} channel groups; kept whole: "
          f"{channel_groups.describe_unpruned(dense_model, config.pruning.exclude_layers)}")
  prune_config = _round_pruning_config(config.pruning, config.channel_sparsity, _prune_ramp_steps(ctx))
  with ctx.strategy.scope():
    wrapped = channels.wrap(dense_model, groups)
  driver = drivers.ScheduledMaskDriver(wrapped, pruning_schedules.sparsity_schedule(prune_config),
                                       channels.mask_chooser(groups, config.channel_norm, config.pruning.scope),
                                       log_dir=ctx.path("tensorboard", f"pruning_{phase}"))
  history = _run_phase(ctx, wrapped, config.finetune, config.finetune_objective, phase, driver)
  driver.finalize()
  shrunken = surgery.shrink(wrapping.strip(wrapped), groups, channels.removed_channels(wrapped, groups))
  save_model(shrunken, _model_path(ctx, phase))
  ctx.progress.complete(phase, {"history": history})
  return shrunken, history


def _prune_and_finetune(ctx, dense_model, sparsity):
  """Prunes a copy of the dense model to `sparsity` in `prune_rounds` prune/fine-tune rounds; returns it stripped.

  With `prune_structure` 'channels' the rounds start from the channel-pruned, shrunken model (which sparsity 0
  returns as it is).
  """
  config = ctx.config
  current, history = dense_model, []
  if config.prune_structure == "channels":
    current, channel_history = _channel_pruned(ctx, dense_model)
    history = list(channel_history)  # a copy: the rounds below add to it
    if sparsity == 0:
      return current, history
  for round_index, target in enumerate(pruning_schedules.iterative_targets(sparsity, config.prune_rounds)):
    phase = f"finetune_s{sparsity:g}" + (f"_r{round_index + 1}" if config.prune_rounds > 1 else "")
    finished = ctx.progress.get(phase)
    if finished is not None:
      ctx.log(f"[{phase}] finished earlier; loading its model.")
      current, history = load_model(_model_path(ctx, phase)), history + finished["history"]
      continue
    with ctx.timer.part(phase.replace("finetune", "pruning", 1)):
      wrapped, driver = _pruned_for_finetuning(ctx, current, target, phase, _prune_ramp_steps(ctx))
    round_history = _run_phase(ctx, wrapped, config.finetune, config.finetune_objective, phase, driver)
    with ctx.strategy.scope():
      driver.finalize()
    current = distribute.strip_pruning(wrapped, ctx.strategy)
    save_model(current, _model_path(ctx, phase))
    ctx.progress.complete(phase, {"history": round_history})
    history += round_history
  return current, history


def _evaluate(ctx, model, name):
  """Evaluates `model` once (recorded in the progress file); returns (results, adversarial examples or None)."""
  finished = ctx.progress.get(f"evaluate_{name}")
  if finished is not None:
    return finished, None
  with ctx.timer.part(f"evaluate_{name}"):
    results, x_adv = evaluation.evaluate_model(model, ctx.dataset.x_test, ctx.dataset.y_test, ctx.config.evaluation,
                                               ctx.dataset.num_classes, return_adversarial=True,
                                               seed=ctx.config.seed, progress=ctx.options.eval_progress, name=name)
  results.update(model_statistics(model))
  ctx.log(f"[evaluate {name}] " + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if k.endswith("_acc")))
  ctx.progress.complete(f"evaluate_{name}", results)
  return results, x_adv


def model_statistics(model):
  """The size fields of a model's report entry: params, nonzero_params, sparsity, compression, layer_sparsity, macs.

  `macs` is left out, with a warning, for a model `macs.count_macs` cannot count (a user's model with, say, a
  transposed convolution): the figures of the evaluation that just finished stand without it.
  """
  counts = stats.parameter_counts(model)
  statistics = dict(params=counts["params"], nonzero_params=counts["nonzero_params"], sparsity=counts["sparsity"],
                    compression=counts["compression"], layer_sparsity=stats.layer_sparsity(model))
  try:
    statistics["macs"] = macs.count_macs(model)
  except ValueError as error:
    logging.warning("The report has no MAC count for model %r: %s", model.name, error)
  return statistics


def run(config, output_dir, options=RunOptions(), dataset=None):
  """Runs (or resumes) the whole pipeline for `config` and writes the report into `output_dir`.

  Args:
    config: a `config.RunConfig`.
    output_dir: where report.json, report.md, plots, TensorBoard logs, checkpoints, models and exports go.
    options: a `RunOptions`.
    dataset: the `ArrayDataset` of a run whose data the Python API hands over (`config.data.dataset` is
      `config_lib.API_DATASET`); None loads the dataset the config names.

  Returns:
    The report (the dict written to report.json); None on a multi-worker run's non-chief workers, which train
    only.

  Raises:
    checkpointing.ConfigMismatchError: `output_dir` holds a run with other settings (see `options.overwrite`).
    training.NonFiniteLossError, training.TrainingInterrupted: the run stopped; its checkpoints remain.
    ValueError: `options.strategy` is not of the kind `config.distribute` names, or the batch size does not split
      over its replicas.
  """
  strategy = options.strategy if options.strategy is not None else distribute.make_strategy(config.distribute)
  if distribute.strategy_name(strategy) != config.distribute:
    raise ValueError(f"The run's strategy is {distribute.strategy_name(strategy)!r} but its config says "
                     f"distribute={config.distribute!r}.")
  directory = distribute.worker_directory(strategy, output_dir)
  if directory != output_dir:
    options.log(f"This worker ({distribute.describe(strategy)['task']}) writes into {directory} (deleted at the "
                f"end); the chief writes {output_dir}.")
  try:
    return _run(config, directory, options, strategy, dataset)
  finally:
    distribute.remove_worker_directory(strategy, directory)


def _run(config, output_dir, options, strategy, supplied_dataset=None):
  prepare_output_dir(output_dir)
  set_seed(config.seed, config.deterministic)
  dataset, validation, train_split_labels = _load_data(config, supplied_dataset)
  config = config_lib.with_epochs_in_steps(config, len(dataset.x_train))  # the real size, not a guess
  progress = checkpointing.RunProgress(output_dir, config, overwrite=options.overwrite)
  ctx = _RunContext(config, options, output_dir, dataset, validation, progress,
                    tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard")), strategy)
  if progress.resumed:
    ctx.log(f"Resuming the run in {output_dir} (finished: {', '.join(progress.state['completed']) or 'nothing'}).")
  distribute.check_workers_agree(strategy, _resume_point(ctx), "the finished parts and checkpoints of the run")
  ctx.log(f"Data: {dataset.name}, {len(dataset.x_train)} train / {len(validation[0])} validation / "
          f"{len(dataset.x_test)} test examples of shape {dataset.input_shape}, {dataset.num_classes} classes.")
  if not distribute.is_default(strategy):
    described = distribute.describe(strategy)
    ctx.log(f"Strategy: {described['strategy']}, {described['replicas']} replicas on {described['workers']} "
            f"worker(s); this process is {'the chief' if distribute.is_chief(strategy) else described['task']}.")
  for train_config in (config.pretrain, config.finetune):
    distribute.check_global_batch(train_config.batch_size, strategy)
  _check_pruning_config(ctx)
  chief = distribute.is_chief(strategy)
  dense_model, pretrain_history = _dense_model(ctx)
  dense = _evaluate(ctx, dense_model, "dense")[0] if chief else None
  sweep, finetune_history = [], {}
  for sparsity in config.sparsities:
    pruned_model, finetune_history[f"{sparsity:g}"] = _prune_and_finetune(ctx, dense_model, sparsity)
    if chief:
      results, x_adv = _evaluate(ctx, pruned_model, f"s{sparsity:g}")
      sweep.append(dict(results, target_sparsity=sparsity))
      if config.prune_structure == "channels":
        sweep[-1].update(channel_sparsity=surgery.channel_sparsity(dense_model, pruned_model))
  if not chief:
    ctx.log("Training finished on this worker; the chief evaluates, exports and writes the report.")
    return None
  resolved_config, schedules = _resolved_config(ctx)
  class_histograms, data_warnings = _class_histograms(ctx, train_split_labels)
  report = {
      "config": resolved_config,
      "schedules": schedules,
      "distribute": distribute.describe(strategy),
      "dataset": {"name": dataset.name, "train": len(dataset.x_train), "validation": len(validation[0]),
                  "test": len(dataset.x_test), "input_shape": list(dataset.input_shape),
                  "num_classes": dataset.num_classes, "class_histograms": class_histograms},
      "warnings": data_warnings + gradient_masking.report_warnings(
          {"dense": dense, **{f"s{row['target_sparsity']:g}": row for row in sweep}}),
      "dense": dense,
      "pruned": sweep[-1],
      "ratios": report_lib.ratios(dense, sweep[-1]),
      "sweep": sweep,
      "history": {"pretrain": pretrain_history, "finetune": finetune_history},
      "overfitting": overfit_monitor.run_events(pretrain_history, finetune_history),
  }
  if config.export:
    with ctx.timer.part("export", done=ctx.progress.get("export") is not None):
      report["artifacts"] = _export(ctx, dense_model, pruned_model, x_adv)
    report["speed"] = _speed(ctx, dense_model, pruned_model)
  report["timing"] = ctx.timer.summary()
  report_lib.write_report(report, output_dir)
  ctx.log(f"Report: {os.path.join(output_dir, 'report.md')}")
  return report


def _resume_point(ctx):
  """A fingerprint of where the run resumes: its finished parts and the latest checkpoint of each phase."""
  checkpoints = {}
  for index in tf.io.gfile.glob(ctx.path("checkpoints", "*", "checkpoint")):
    with open(index) as handle:
      checkpoints[os.path.basename(os.path.dirname(index))] = handle.readline().strip()
  return zlib.crc32(json.dumps([sorted(ctx.progress.state["completed"]), checkpoints], sort_keys=True).encode())


def _export(ctx, dense_model, pruned_model, x_adv):
  """Exports the last pruned model and verifies every artifact (recorded, so a resumed run does not redo it)."""
  finished = ctx.progress.get("export")
  if finished is not None:
    return finished
  eval_config = ctx.config.evaluation
  x_test, y_test = evaluation.evaluation_examples(ctx.dataset.x_test, ctx.dataset.y_test, eval_config,
                                                  ctx.config.seed)
  if x_adv is None:  # evaluated in an earlier process: the same seed finds the same adversarial examples again
    pgd_only = dataclasses.replace(eval_config, attacks=("pgd",), fgsm=False, verified=False)  # no AutoAttack rerun
    _, x_adv = evaluation.evaluate_model(pruned_model, x_test, y_test, pgd_only, ctx.dataset.num_classes,
                                         return_adversarial=True, seed=ctx.config.seed)
  keras_predictions = np.argmax(pruned_model.predict(x_test, batch_size=eval_config.batch_size, verbose=0), axis=1)
  ctx.log("[export] SavedModel and TFLite artifacts, each loaded back and re-measured"
          + (f"; each TFLite file attacked by Square on {min(ctx.config.artifact_square_examples, len(y_test))} "
             "examples" if ctx.config.artifact_square_examples else ""))
  artifacts = export.export_all(
      pruned_model, ctx.output_dir, model_name=model_files.model_name(ctx.config.model), x_test=x_test, y_test=y_test,
      x_adv=x_adv, keras_predictions=keras_predictions,
      representative_images=np.asarray(ctx.dataset.x_train[:_REPRESENTATIVE_IMAGES]),
      source_run=os.path.abspath(ctx.output_dir), sparsity=ctx.config.sparsities[-1], dense_model=dense_model,
      square_eps=eval_config.eps, square_norm=eval_config.norm, square_examples=ctx.config.artifact_square_examples,
      square_seed=ctx.config.seed)
  ctx.progress.complete("export", artifacts)
  return artifacts


def _speed(ctx, dense_model, pruned_model):
  """Latency of the dense and the pruned model (`speed.compare_models` on the export), recorded like the export."""
  finished = ctx.progress.get("speed")
  if finished is not None:
    return finished
  ctx.log("[speed] dense vs pruned: TFLite batch 1 (XNNPACK, 1 thread) and SavedModel batch 128, interleaved rounds")
  result = speed.compare_models(dense_model, pruned_model, ctx.path("export"),
                                model_files.model_name(ctx.config.model), rounds=_SPEED_ROUNDS)
  ctx.progress.complete("speed", result)
  return result


def final_model_path(output_dir, config):
  """The path of the last pruned model (the one exported) of a finished run of `config` in `output_dir`."""
  return os.path.join(output_dir, "models", f"{_final_model_names(config)[1]}.keras")


def _final_model_names(config):
  """The names under models/ of a finished run's dense model and its last pruned model (the one exported)."""
  last_phase = f"finetune_s{config.sparsities[-1]:g}" + (f"_r{config.prune_rounds}" if config.prune_rounds > 1 else "")
  if config.prune_structure == "channels" and config.sparsities[-1] == 0:
    last_phase = _channel_phase(config)
  return "dense", last_phase


def finished_run(run_dir):
  """A finished run to re-evaluate (`rerun.evaluate_run`): (config, dataset, {report name: model path}).

  The names are the report's: 'dense', and 's<sparsity>' for each sparsity of the sweep.

  Raises:
    ValueError: `run_dir` holds no finished run, or its report.json is unreadable.
  """
  try:
    config = config_lib.RunConfig.from_dict(_finished_report(run_dir)["config"])
  except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
    raise ValueError(f"{run_dir!r}: report.json is corrupt or not a tfrobprune report ({error!r}).") from error
  paths = {"dense": os.path.join(run_dir, "models", "dense.keras")}
  for sparsity in config.sparsities:
    name = _final_model_names(dataclasses.replace(config, sparsities=(sparsity,)))[1]
    paths[f"s{sparsity:g}"] = os.path.join(run_dir, "models", f"{name}.keras")
  return config, _load_data(config)[0], paths


def _finished_report(run_dir):
  report_path = os.path.join(run_dir, "report.json")
  if not os.path.exists(report_path):
    raise ValueError(f"{run_dir!r} holds no finished run (no report.json); run `tfrobprune train` first.")
  with open(report_path) as handle:
    return json.load(handle)


def measure_existing_run(run_dir, rounds=_SPEED_ROUNDS):
  """The cost and speed of a finished run's dense and pruned model, measured again (`bench-tflite --run_dir`).

  Times the run's exported files where it has them (`speed.compare_models`); the report is not changed.

  Args:
    run_dir: the output directory of a finished run.
    rounds: interleaved rounds per runtime.

  Returns:
    {'dense': {'macs'}, 'pruned': {'macs'}, 'speed': `speed.compare_models`' dict}, the report's layout
    (`report.speed_table` formats it).

  Raises:
    ValueError: `run_dir` holds no finished run.
  """
  config = config_lib.RunConfig.from_dict(_finished_report(run_dir)["config"])
  dense, pruned = (load_model(os.path.join(run_dir, "models", f"{name}.keras"))
                   for name in _final_model_names(config))
  export_dir = os.path.join(run_dir, "export")
  return {"dense": {"macs": macs.count_macs(dense)}, "pruned": {"macs": macs.count_macs(pruned)},
          "speed": speed.compare_models(dense, pruned, export_dir if os.path.isdir(export_dir) else None,
                                        model_files.model_name(config.model), rounds=rounds)}


def export_existing_run(run_dir, options=RunOptions(), artifact_square_examples=None):
  """Re-exports a finished run (a new SavedModel version and fresh TFLite files), verifying every artifact.

  Args:
    run_dir: the output directory of a run whose fine-tuning has finished.
    options: a `RunOptions` (only `log` is used).
    artifact_square_examples: examples Square attacks in each TFLite file (0: none); None keeps the run's setting.

  Returns:
    The artifacts section (also written into the run's report.json).

  Raises:
    ValueError: `run_dir` holds no finished run.
  """
  report = _finished_report(run_dir)
  config = config_lib.RunConfig.from_dict(report["config"])
  if artifact_square_examples is not None:
    config = dataclasses.replace(config, artifact_square_examples=artifact_square_examples)
  dataset, validation, _ = _load_data(config)
  ctx = _RunContext(config, options, run_dir, dataset, validation, _NoProgress(), None)
  dense_name, pruned_name = _final_model_names(config)
  artifacts = _export(ctx, load_model(_model_path(ctx, dense_name)), load_model(_model_path(ctx, pruned_name)), None)
  report["artifacts"] = artifacts
  report_lib.write_report(report, run_dir)
  return artifacts


class _NoProgress:
  """A `RunProgress` stand-in that remembers nothing (re-exports always export)."""

  def get(self, name):
    del name

  def complete(self, name, result):
    del name, result

  def record(self, name):
    del name

  def keep(self, name, value):
    del name, value
