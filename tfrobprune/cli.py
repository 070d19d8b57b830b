"""The `tfrobprune` command line: flags -> `RunConfig` -> one library call.

    tfrobprune train --flagfile=configs/fmnist_pgd_s90.cfg --output_dir=runs/pgd90

Commands:
  train          the whole pipeline (resumes a run in the same --output_dir)
  export         re-export a finished run: `tfrobprune export --run_dir=RUN`
  evaluate       re-evaluate a finished run's models (RUN/evaluation.json): `tfrobprune evaluate --run_dir=RUN
                 --eval_attack=pgd,autoattack [--eval_examples=N] [--artifacts]`
  serve          serve RUN/export/saved_model over TF Serving's gRPC and REST APIs (development server)
  bench-tflite   latency and size of each TFLite artifact: `tfrobprune bench-tflite --export_dir=RUN/export`;
                 with --run_dir=RUN (or an export inside a run), also the dense-vs-pruned MACs and latency
 Flags are validated where they are defined (bounds, enums, validators);
combinations are validated by the config dataclasses, whose errors are reported as one line naming the value.
Nothing below `main` reads FLAGS.
"""

import json
import os
import signal
import sys

from tfrobprune import console

# Before anything else imports TensorFlow: its C++ log level is read once, at import.
console.quiet_tensorflow(sys.argv)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from tfrobprune import config as config_lib  # noqa: E402
from tfrobprune.data import datasets  # noqa: E402
from tfrobprune.deploy import tflite_bench  # noqa: E402
from tfrobprune.evaluate import evaluation  # noqa: E402
from tfrobprune import model_files  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune import pipeline  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402
from tfrobprune.prune import scores as scores_lib  # noqa: E402
from tfrobprune import report as report_lib  # noqa: E402
from tfrobprune import rerun  # noqa: E402
from tfrobprune.robust import objectives  # noqa: E402
from tfrobprune.train import checkpointing  # noqa: E402
from tfrobprune.train import distribute  # noqa: E402
from tfrobprune.train import overfit_monitor  # noqa: E402
from tfrobprune.train import training  # noqa: E402


# Run.
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for report.json, report.md, logs, checkpoints.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (data order, initialisation, attacks).", lower_bound=0)
_DETERMINISTIC = flags.DEFINE_boolean("deterministic", False, "TensorFlow op determinism: bit-identical reruns.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show per-epoch progress bars.")
_EXPORT = flags.DEFINE_boolean("export", True, "Export the pruned model (SavedModel, TFLite) at the end.")
_ARTIFACT_SQUARE_EXAMPLES = flags.DEFINE_integer(
    "artifact_square_examples", 1000, "Attack each exported TFLite file with Square through its own LiteRT "
    "interpreter on the first N evaluation examples (square_acc; 0: not attacked).", lower_bound=0)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Discard an earlier run in --output_dir instead of resuming.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every_steps", 200, "Checkpoint every N steps (0: epoch ends).",
                                         lower_bound=0)
_KEEP_CHECKPOINTS = flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept per phase.", lower_bound=1)
_DISTRIBUTE = flags.DEFINE_enum("distribute", "default", distribute.STRATEGY_NAMES,
                                "tf.distribute strategy of training: default (one device), mirrored (local GPUs, or "
                                "the logical CPUs of --logical_cpus), multi_worker (configured by TF_CONFIG).")
_LOGICAL_CPUS = flags.DEFINE_integer("logical_cpus", 0, "Split the CPU into N logical devices (N >= 2) before "
                                     "TensorFlow starts: replicas for --distribute=mirrored without GPUs.",
                                     lower_bound=0)
# Data.
_DATASET = flags.DEFINE_enum("dataset", "fashion_mnist", datasets.DATASET_NAMES, "Dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder (default: the dataset's standard location); for "
                                "tfrecord also a glob with {split}, e.g. /data/{split}-*.tfrecord.")
_IMAGE_SIZE = flags.DEFINE_list("image_size", None, "HEIGHT,WIDTH that image_folder and tfrecord images are decoded "
                                 "to (default: the first training image's size; others are resized, bilinear).")
_VALIDATION_FRACTION = flags.DEFINE_float("validation_fraction", 0.0, "Part of the training set held out.",
                                          lower_bound=0.0, upper_bound=0.9)
_AUGMENT = flags.DEFINE_boolean("augment", False, "Random crop + horizontal flip (CIFAR-like data).")
_MAX_TRAIN_EXAMPLES = flags.DEFINE_integer("max_train_examples", 0, "Train on N examples (0: all), a "
                                           "class-stratified subset chosen by --seed.", lower_bound=0)
_SYNTHETIC_EXAMPLES = flags.DEFINE_list("synthetic_examples", ["1024", "256"], "TRAIN,TEST sizes (synthetic data).")
_SYNTHETIC_SHAPE = flags.DEFINE_list("synthetic_shape", ["28", "28", "1"], "H,W,C of synthetic images.")
# Model.
_MODEL = flags.DEFINE_string("model", "cnn_small", f"Model: a zoo architecture ({', '.join(models.MODEL_NAMES)}) or "
                             "the path of a saved Keras model of one's own (.keras file or SavedModel folder).")
_DENSE_CHECKPOINT = flags.DEFINE_string("dense_checkpoint", None, "Start from these dense weights; skip pre-training.")
# Objectives.
_OBJECTIVE = flags.DEFINE_enum("objective", "pgd", objectives.OBJECTIVE_NAMES, "Objective of both phases.")
_PRETRAIN_OBJECTIVE = flags.DEFINE_enum("pretrain_objective", None, objectives.OBJECTIVE_NAMES,
                                        "Pre-training objective (default: --objective).")
_FINETUNE_OBJECTIVE = flags.DEFINE_enum("finetune_objective", None, objectives.OBJECTIVE_NAMES,
                                        "Fine-tuning objective (default: --objective).")
_EPS = flags.DEFINE_float("eps", 0.1, "Training epsilon (pixels in [0, 1]).", lower_bound=0.0, upper_bound=1.0)
_NORM = flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat model norm.")
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", 10, "PGD steps in training.", lower_bound=1)
_PGD_STEP_SIZE = flags.DEFINE_float("pgd_step_size", 0.0, "PGD step size in training (0: 2.5 eps / steps).",
                                    lower_bound=0.0)
_ROBUST_WEIGHT = flags.DEFINE_float("robust_weight", 1.0, "w in (1-w) natural + w robust (IBP: 1 - final kappa).",
                                    lower_bound=0.0, upper_bound=1.0)
_TRADES_BETA = flags.DEFINE_float("trades_beta", 6.0, "TRADES beta.", lower_bound=0.0)
_EPS_WARMUP_EPOCHS = flags.DEFINE_float("eps_warmup_epochs", 0.0, "Pre-training epochs at eps 0.", lower_bound=0.0)
_EPS_RAMP_EPOCHS = flags.DEFINE_float("eps_ramp_epochs", 0.0, "Pre-training epochs over which eps ramps up.",
                                      lower_bound=0.0)
_EPS_RAMP_SHAPE = flags.DEFINE_enum("eps_ramp_shape", "linear", ["linear", "smoothed"], "Shape of the eps ramp.")
_CROWN_BETA_FINAL = flags.DEFINE_float("crown_beta_final", 0.0, "CROWN-IBP beta at the end of the ramp.",
                                       lower_bound=0.0, upper_bound=1.0)
_CROWN_IBP_BOUND = flags.DEFINE_enum("crown_ibp_bound", "margins", objectives.CROWN_IBP_BOUNDS,
                                     "crown_ibp trains on: margins (per-class CROWN-IBP bounds) or fused (one bound "
                                     "of the loss itself: one backward bound pass instead of one per class).")
_NFGSM_NOISE = flags.DEFINE_float("nfgsm_noise", 2.0, "N-FGSM: noise U[-k eps, k eps] before its step; this is k.",
                                  lower_bound=0.0)
_GRADALIGN_WEIGHT = flags.DEFINE_float("gradalign_weight", 0.0, "GradAlign penalty weight of the nfgsm / fgsm_rs "
                                       "/ fgsm objectives (0: none).", lower_bound=0.0)
_ON_OVERFIT = flags.DEFINE_enum("on_overfit", "warn", overfit_monitor.ACTIONS,
                                "Single-step phases: on a sharp drop of PGD accuracy on held-out examples after an "
                                "epoch (catastrophic overfitting): warn (report it), stop (end the phase), or "
                                "fallback (PGD for the rest of the phase).")
_OVERFIT_EXAMPLES = flags.DEFINE_integer("overfit_examples", 512, "Held-out examples the overfitting check attacks "
                                         "with PGD after each single-step epoch (0: no check).", lower_bound=0)
# Optimisation.
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Examples per step.", lower_bound=1)
_PRETRAIN_EPOCHS = flags.DEFINE_integer("pretrain_epochs", 10, "Dense pre-training epochs.", lower_bound=0)
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 5, "Fine-tuning epochs per pruning round.", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Pre-training peak learning rate.", lower_bound=1e-8)
_FINETUNE_LEARNING_RATE = flags.DEFINE_float("finetune_learning_rate", 5e-4, "Fine-tuning peak learning rate.",
                                             lower_bound=1e-8)
_LR_SCHEDULE = flags.DEFINE_enum("lr_schedule", "cosine", ["constant", "cosine", "step"], "Learning-rate decay.")
_WARMUP_EPOCHS = flags.DEFINE_float("warmup_epochs", 0.0, "Learning-rate warm-up epochs.", lower_bound=0.0)
_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"], "Optimizer.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.0, "L2 penalty on kernels.", lower_bound=0.0)
# Pruning.
_SPARSITY = flags.DEFINE_list("sparsity", ["0.9"], "Target sparsity, or a comma-separated sweep (0.5,0.9,0.99).")
_PRUNE_SCHEDULE = flags.DEFINE_enum("prune_schedule", "polynomial", ["constant", "polynomial"],
                                    "One-shot (constant) or gradual (polynomial) pruning.")
_PRUNE_SCOPE = flags.DEFINE_enum("prune_scope", "layer", ["layer", "global"],
                                 "Per-layer or global ranking (of weight magnitudes, or channel norms).")
_PRUNE_ROUNDS = flags.DEFINE_integer("prune_rounds", 1, "Prune/fine-tune rounds to the target.", lower_bound=1)
_PRUNE_END_FRACTION = flags.DEFINE_float("prune_end_fraction", 0.5, "Part of fine-tuning over which sparsity ramps.",
                                         lower_bound=0.01, upper_bound=1.0)
_PRUNE_FREQUENCY = flags.DEFINE_integer("prune_frequency", 100, "Steps between mask updates.", lower_bound=1)
_PRUNE_EXCLUDE = flags.DEFINE_list("prune_exclude", [], "Layer names kept dense (e.g. conv1,logits).")
_PRUNE_M_BY_N = flags.DEFINE_string("prune_m_by_n", None, "Structured M:N sparsity, e.g. 2:4.")
_PRUNE_CRITERION = flags.DEFINE_enum("prune_criterion", "magnitude", ["magnitude", "scores"],
                                     "Which weights to prune: by magnitude, or by scores learned with the robust "
                                     "objective (HYDRA).")
_SCORE_EPOCHS = flags.DEFINE_integer("score_epochs", 1, "Epochs of score optimisation (--prune_criterion=scores).",
                                     lower_bound=0)
_SCORE_LEARNING_RATE = flags.DEFINE_float("score_learning_rate", 0.1, "Learning rate of the scores (SGD).",
                                          lower_bound=1e-8)
_SCORE_BUDGETS = flags.DEFINE_enum("score_budgets", "learned", list(scores_lib.BUDGETS),
                                   "With --prune_scope=global: 'learned' ranks all layers' scores together; "
                                   "'magnitude' keeps global magnitude's count per layer and learns which weights.")
_SCORE_SCHEDULE = flags.DEFINE_enum("score_schedule", "oneshot", list(scores_lib.SCHEDULES),
                                    "'oneshot': learn one mask on the dense model, then fine-tune (HYDRA); "
                                    "'gradual': relearn the scores at each mask update of the pruning schedule "
                                    "(--prune_schedule, --prune_frequency) from the fine-tuned weights.")
_SCORE_UPDATE_STEPS = flags.DEFINE_integer("score_update_steps", 100,
                                           "Score steps per mask update with --score_schedule=gradual.", lower_bound=1)
_PRUNE_STRUCTURE = flags.DEFINE_enum("prune_structure", "unstructured", list(config_lib.PRUNE_STRUCTURES),
                                     "'unstructured': single weights; 'channels': whole Conv2D filters and Dense units "
                                     "(with the next layers' inputs), then a physically smaller model; --sparsity > 0 "
                                     "prunes its weights on top.")
_CHANNEL_SPARSITY = flags.DEFINE_float("channel_sparsity", 0.5, "Fraction of channels removed "
                                       "(--prune_structure=channels).", lower_bound=0.0, upper_bound=0.99)
_CHANNEL_NORM = flags.DEFINE_enum("channel_norm", "l2", ["l1", "l2"], "Filter norm ranking channels "
                                  "(times |gamma| of a BatchNorm after them).")
# Evaluation.
_EVAL_EPS = flags.DEFINE_float("eval_eps", None, "Evaluation epsilon (default: --eps).", lower_bound=0.0,
                               upper_bound=1.0)
_EVAL_PGD_STEPS = flags.DEFINE_integer("eval_pgd_steps", 50, "PGD steps in evaluation.", lower_bound=1)
_EVAL_PGD_RESTARTS = flags.DEFINE_integer("eval_pgd_restarts", 5, "PGD random restarts in evaluation.",
                                          lower_bound=1)
_EVAL_PGD_STEP_SIZE = flags.DEFINE_float("eval_pgd_step_size", 0.0, "PGD step size (0: 2.5 eps / steps).",
                                         lower_bound=0.0)
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 0, "Evaluate on N test examples (0: all), a "
                                      "class-stratified subset chosen by --seed.", lower_bound=0)
_EVAL_BATCH_SIZE = flags.DEFINE_integer("eval_batch_size", 500, "Evaluation batch size.", lower_bound=1)
_VERIFIED = flags.DEFINE_boolean("verified", None, "Report IBP/CROWN verified accuracy (default: on for IBP runs).")
_EVAL_ATTACK = flags.DEFINE_list("eval_attack", ["pgd"], "Robust accuracies to report, comma-separated: pgd (PGD with "
                                 "restarts), autoattack (the standard AutoAttack ensemble, with gradient-masking "
                                 "checks).")
_EVAL_AUTOATTACK_EXAMPLES = flags.DEFINE_integer("eval_autoattack_examples", 0, "Run AutoAttack on N of the "
                                                 "evaluated examples (0: all), a class-stratified subset.",
                                                 lower_bound=0)
_ARTIFACTS = flags.DEFINE_boolean("artifacts", False, "evaluate: also attack RUN/export's TFLite files with Square.")
# export / serve / bench-tflite.
_RUN_DIR = flags.DEFINE_string("run_dir", None, "export, evaluate: the output directory of a finished run.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "serve: the SavedModel base (RUN/export/saved_model); "
                                  "bench-tflite: RUN/export or a folder of .tflite files.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "serve: the model name (a folder under --export_dir).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: address to bind (loopback by default).")
_GRPC_PORT = flags.DEFINE_integer("grpc_port", 8500, "serve: gRPC PredictionService port.", lower_bound=0,
                                  upper_bound=65535)
_REST_PORT = flags.DEFINE_integer("rest_port", 8501, "serve: REST port.", lower_bound=0, upper_bound=65535)
_MAX_BATCH = flags.DEFINE_integer("max_batch", 256, "serve: largest batch a request may carry.", lower_bound=1)
_REST_WORKERS = flags.DEFINE_integer("rest_workers", 16, "serve: REST connections served at once (a fixed pool of "
                                     "threads).", lower_bound=1)
_REST_QUEUE = flags.DEFINE_integer("rest_queue", 64, "serve: REST connections that may wait for a worker; more are "
                                   "answered 503.", lower_bound=1)
_REQUEST_TIMEOUT = flags.DEFINE_float("request_timeout", 30.0, "serve: seconds to read, parse and run one request "
                                      "(slower ones get 408/504, gRPC DEADLINE_EXCEEDED).", lower_bound=0.001)
_BENCH_RUNS = flags.DEFINE_integer("bench_runs", 200, "bench-tflite: timed invokes per artifact.", lower_bound=1)
_BENCH_OUTPUT = flags.DEFINE_string("bench_output", None, "bench-tflite: also write the figures to this JSON file.")
_BENCH_ROUNDS = flags.DEFINE_integer("bench_rounds", 20, "bench-tflite: interleaved rounds of the dense-vs-pruned "
                                     "latency table (with --run_dir, or an --export_dir inside a run).",
                                     lower_bound=1)


def _valid_sparsities(values):
  try:
    return all(0 <= float(v) < 1 for v in values)
  except ValueError:
    return False


flags.register_validator("model", lambda spec: spec in models.MODEL_NAMES or model_files.is_model_path(spec),
                         message=f"--model takes one of {', '.join(models.MODEL_NAMES)} or the path of a saved Keras "
                         "model (a .keras file or a SavedModel folder).")
flags.register_validator("sparsity", _valid_sparsities,
                         message="--sparsity takes comma-separated numbers in [0, 1), e.g. 0.9 or 0.5,0.9,0.99.")
flags.register_validator("eval_attack", lambda names: bool(names) and set(names) <= set(evaluation.ATTACKS)
                         and len(set(names)) == len(names),
                         message=f"--eval_attack takes distinct names from {','.join(evaluation.ATTACKS)}, "
                         "e.g. pgd,autoattack.")


def _floats(name, values):
  try:
    return tuple(float(v) for v in values)
  except ValueError as error:
    raise ValueError(f"--{name} takes comma-separated numbers, got {','.join(values)!r}.") from error


def _ints(name, values, count):
  try:
    result = tuple(int(v) for v in values)
  except ValueError as error:
    raise ValueError(f"--{name} takes {count} comma-separated integers, got {','.join(values)!r}.") from error
  if len(result) != count or min(result) < 1:
    raise ValueError(f"--{name} takes {count} positive integers, got {','.join(values)!r}.")
  return result


def _m_by_n(value):
  if not value:
    return None
  try:
    m, n = (int(v) for v in value.split(":"))
  except ValueError as error:
    raise ValueError(f"--prune_m_by_n takes M:N such as 2:4, got {value!r}.") from error
  return (m, n)


def config_from_flags():
  """Builds the `RunConfig` the flags describe (the only place that reads FLAGS)."""
  # In epochs: the pipeline turns them into steps once it knows the training set's size (`with_epochs_in_steps`).
  ramp = dict(eps_warmup_epochs=_EPS_WARMUP_EPOCHS.value, eps_ramp_epochs=_EPS_RAMP_EPOCHS.value,
              eps_ramp_shape=_EPS_RAMP_SHAPE.value)
  common = dict(eps=_EPS.value, norm=_NORM.value, pgd_steps=_PGD_STEPS.value, pgd_step_size=_PGD_STEP_SIZE.value,
                robust_weight=_ROBUST_WEIGHT.value, trades_beta=_TRADES_BETA.value,
                crown_beta_final=_CROWN_BETA_FINAL.value, nfgsm_noise=_NFGSM_NOISE.value,
                crown_ibp_bound=_CROWN_IBP_BOUND.value)

  def objective(name, with_ramp):
    if name == "natural":
      return objectives.ObjectiveConfig(name="natural")
    gradalign = _GRADALIGN_WEIGHT.value if name in objectives.SINGLE_STEP_OBJECTIVES else 0.0
    return objectives.ObjectiveConfig(name=name, gradalign_weight=gradalign, **common,
                                      **(ramp if with_ramp else {}))

  pretrain_name = _PRETRAIN_OBJECTIVE.value or _OBJECTIVE.value
  finetune_name = _FINETUNE_OBJECTIVE.value or _OBJECTIVE.value
  verified = _VERIFIED.value
  if verified is None:
    verified = "ibp" in (pretrain_name, finetune_name) or "crown_ibp" in (pretrain_name, finetune_name)
  train_common = dict(batch_size=_BATCH_SIZE.value, lr_schedule=_LR_SCHEDULE.value,
                      warmup_epochs=_WARMUP_EPOCHS.value, optimizer=_OPTIMIZER.value, weight_decay=_WEIGHT_DECAY.value)
  sparsities = _floats("sparsity", _SPARSITY.value)
  return config_lib.RunConfig(
      data=config_lib.DataConfig(
          dataset=_DATASET.value, data_dir=_DATA_DIR.value,
          image_size=_ints("image_size", _IMAGE_SIZE.value, 2) if _IMAGE_SIZE.value else None,
          validation_fraction=_VALIDATION_FRACTION.value, augment=_AUGMENT.value,
          synthetic_examples=_ints("synthetic_examples", _SYNTHETIC_EXAMPLES.value, 2),
          synthetic_shape=_ints("synthetic_shape", _SYNTHETIC_SHAPE.value, 3),
          max_train_examples=_MAX_TRAIN_EXAMPLES.value),
      model=_MODEL.value, seed=_SEED.value, deterministic=_DETERMINISTIC.value,
      pretrain=training.TrainConfig(epochs=_PRETRAIN_EPOCHS.value, learning_rate=_LEARNING_RATE.value, **train_common),
      pretrain_objective=objective(pretrain_name, with_ramp=True),
      finetune=training.TrainConfig(epochs=_FINETUNE_EPOCHS.value, learning_rate=_FINETUNE_LEARNING_RATE.value,
                                    **train_common),
      finetune_objective=objective(finetune_name, with_ramp=False),
      pruning=pruning_config.PruningConfig(
          target_sparsity=sparsities[-1], schedule=_PRUNE_SCHEDULE.value, frequency=_PRUNE_FREQUENCY.value,
          scope=_PRUNE_SCOPE.value, exclude_layers=tuple(_PRUNE_EXCLUDE.value), m_by_n=_m_by_n(_PRUNE_M_BY_N.value)),
      sparsities=sparsities, prune_rounds=_PRUNE_ROUNDS.value, prune_end_fraction=_PRUNE_END_FRACTION.value,
      evaluation=evaluation.EvalConfig(
          eps=_EVAL_EPS.value if _EVAL_EPS.value is not None else _EPS.value, norm=_NORM.value,
          pgd_steps=_EVAL_PGD_STEPS.value, pgd_restarts=_EVAL_PGD_RESTARTS.value,
          pgd_step_size=_EVAL_PGD_STEP_SIZE.value, verified=verified, batch_size=_EVAL_BATCH_SIZE.value,
          max_examples=_EVAL_EXAMPLES.value, attacks=tuple(_EVAL_ATTACK.value),
          autoattack_examples=_EVAL_AUTOATTACK_EXAMPLES.value),
      dense_checkpoint=_DENSE_CHECKPOINT.value, export=_EXPORT.value, distribute=_DISTRIBUTE.value,
      artifact_square_examples=_ARTIFACT_SQUARE_EXAMPLES.value,
      prune_criterion=_PRUNE_CRITERION.value,
      scores=scores_lib.ScoreConfig(epochs=_SCORE_EPOCHS.value, learning_rate=_SCORE_LEARNING_RATE.value,
                                    budgets=_SCORE_BUDGETS.value, schedule=_SCORE_SCHEDULE.value,
                                    update_steps=_SCORE_UPDATE_STEPS.value),
      prune_structure=_PRUNE_STRUCTURE.value, channel_sparsity=_CHANNEL_SPARSITY.value,
      channel_norm=_CHANNEL_NORM.value,
      overfit=overfit_monitor.OverfitConfig(action=_ON_OVERFIT.value, examples=_OVERFIT_EXAMPLES.value))


def _fail(message):
  print(f"tfrobprune: error: {message}", file=sys.stderr)
  return 2


class _StopRequest:
  """SIGINT/SIGTERM set a flag that the training loop polls after each step (then it checkpoints and stops)."""

  def __init__(self):
    self.signal_name = None

  def install(self):
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:  # a second signal: stop at once
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    print(f"\n{self.signal_name} received: finishing the current step and writing a checkpoint "
          "(send it again to stop at once).", file=sys.stderr, flush=True)

  def __call__(self):
    return self.signal_name is not None


def _train():
  if not _OUTPUT_DIR.value:
    return _fail("--output_dir is required for `train`.")
  try:  # first, before any TensorFlow op: logical CPUs and the multi-worker runtime configure TensorFlow's start
    strategy = distribute.make_strategy(_DISTRIBUTE.value, _LOGICAL_CPUS.value)
  except (ValueError, RuntimeError) as error:
    return _fail(str(error))
  stop = _StopRequest()
  stop.install()
  options = pipeline.RunOptions(progress=console.EpochProgressBars() if _PROGRESS.value else None, log=print,
                                checkpoint_every_steps=_CHECKPOINT_EVERY.value,
                                keep_checkpoints=_KEEP_CHECKPOINTS.value, overwrite=_OVERWRITE.value,
                                should_stop=stop, strategy=strategy,
                                eval_progress=console.EvaluationProgressBars() if _PROGRESS.value else None)
  try:
    report = pipeline.run(config_from_flags(), _OUTPUT_DIR.value, options)
  except training.TrainingInterrupted as error:
    print(f"tfrobprune: {error}", file=sys.stderr)
    return 130 if stop.signal_name == "SIGINT" else 143
  except (ValueError, datasets.DataError, OSError, training.NonFiniteLossError,
          checkpointing.ConfigMismatchError) as error:
    return _fail(str(error))
  if report is None:
    print("This worker has finished; the chief wrote the report.")
    return 0
  print()
  with open(os.path.join(_OUTPUT_DIR.value, "report.md")) as handle:
    print(handle.read())
  return 0


def _export():
  if not _RUN_DIR.value:
    return _fail("--run_dir is required for `export` (the output directory of a finished run).")
  try:
    square_examples = _ARTIFACT_SQUARE_EXAMPLES.value if _ARTIFACT_SQUARE_EXAMPLES.present else None
    artifacts = pipeline.export_existing_run(_RUN_DIR.value, artifact_square_examples=square_examples)
  except (ValueError, datasets.DataError, OSError) as error:
    return _fail(str(error))
  for name, row in artifacts.items():
    print(f"{name}: {row.get('bytes', 0):,} bytes, benign {row.get('benign_acc')}, agreement {row.get('agreement')}")
  return 0


# Evaluation flags `evaluate` takes over the run's recorded settings when given: flag -> EvalConfig field.
_EVAL_OVERRIDES = {"eval_attack": "attacks", "eval_examples": "max_examples", "eval_eps": "eps",
                   "eval_pgd_steps": "pgd_steps", "eval_pgd_restarts": "pgd_restarts",
                   "eval_pgd_step_size": "pgd_step_size", "eval_batch_size": "batch_size", "verified": "verified",
                   "eval_autoattack_examples": "autoattack_examples"}


def _evaluate():
  if not _RUN_DIR.value:
    return _fail("--run_dir is required for `evaluate` (the output directory of a finished run).")
  overrides = {field: tuple(flags.FLAGS[flag].value) if flag == "eval_attack" else flags.FLAGS[flag].value
               for flag, field in _EVAL_OVERRIDES.items() if flags.FLAGS[flag].present}
  try:
    record = rerun.evaluate_run(_RUN_DIR.value, overrides, artifacts=_ARTIFACTS.value, log=print,
                                progress=console.EvaluationProgressBars() if _PROGRESS.value else None)
  except (ValueError, datasets.DataError, OSError) as error:
    return _fail(str(error))
  print()
  print(rerun.summary(record))
  return 0


def _serve():
  if not _EXPORT_DIR.value or not _MODEL_NAME.value:
    return _fail("`serve` needs --export_dir (RUN/export/saved_model) and --model_name.")
  try:  # the serving extra (grpcio, tensorflow-serving-api) is needed by this command only
    from tfrobprune.deploy.serving import server  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    return _fail(f"`serve` needs the serving extra ({error.name} is not installed): "
                 "pip install 'tfrobprune[serve]'.")
  try:
    server.serve_forever(_EXPORT_DIR.value, _MODEL_NAME.value, host=_HOST.value, grpc_port=_GRPC_PORT.value,
                          rest_port=_REST_PORT.value, max_batch=_MAX_BATCH.value, rest_workers=_REST_WORKERS.value,
                          rest_queue=_REST_QUEUE.value, request_timeout=_REQUEST_TIMEOUT.value)
  except (ValueError, RuntimeError, OSError) as error:
    return _fail(str(error))
  return 0


def _bench_dirs():
  """(run dir or None, export dir or None) of `bench-tflite`: each found from the other when it holds one."""
  run_dir, export_dir = _RUN_DIR.value, _EXPORT_DIR.value
  if run_dir and not export_dir and os.path.isdir(os.path.join(run_dir, "export")):
    export_dir = os.path.join(run_dir, "export")
  parent = os.path.dirname(os.path.abspath(export_dir)) if export_dir else None
  if not run_dir and parent and all(os.path.exists(os.path.join(parent, *path))
                                    for path in (("report.json",), ("models", "dense.keras"))):
    run_dir = parent
  return run_dir, export_dir


def _bench_tflite():
  if not _EXPORT_DIR.value and not _RUN_DIR.value:
    return _fail("`bench-tflite` needs --run_dir (a finished run) or --export_dir (RUN/export or a folder of "
                 ".tflite files).")
  run_dir, export_dir = _bench_dirs()
  results, tables = {}, []
  try:
    if export_dir:
      shape = tflite_bench.input_shape(export_dir)
      images = np.random.default_rng(0).random((16,) + shape, dtype=np.float32)  # latency does not depend on pixels
      results = tflite_bench.bench_tflite(export_dir, images, runs=_BENCH_RUNS.value)
      tables.append(tflite_bench.format_table(results))
    if run_dir:
      results["cost_and_speed"] = pipeline.measure_existing_run(run_dir, rounds=_BENCH_ROUNDS.value)
      tables.append("Dense vs pruned model:\n\n" + report_lib.speed_table(results["cost_and_speed"]))
    if _BENCH_OUTPUT.value:
      report_lib.atomic_write(_BENCH_OUTPUT.value, json.dumps(results, indent=2))
  except (ValueError, OSError) as error:
    return _fail(str(error))
  print("\n".join(tables))
  return 0


def main(argv):
  commands = {"train": _train, "export": _export, "evaluate": _evaluate, "serve": _serve,
              "bench-tflite": _bench_tflite}
  if len(argv) < 2 or argv[1] not in commands:
    return _fail(f"usage: tfrobprune {{{'|'.join(commands)}}} [--flags]; got {' '.join(argv[1:]) or 'no command'}.")
  if len(argv) > 2:
    return _fail(f"unexpected arguments: {' '.join(argv[2:])}.")
  return commands[argv[1]]()


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
