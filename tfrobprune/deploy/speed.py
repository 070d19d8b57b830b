"""Latency of the dense and the pruned model in the runtimes they are deployed to, timed in interleaved rounds.

Two figures per model, each the median over rounds of the milliseconds one call takes:

    tflite_batch1_ms        the float32 TFLite flatbuffer in LiteRT, XNNPACK delegate, 1 thread, one image per
                            `invoke` (a phone or a board answering one request; only `invoke` is timed)
    savedmodel_batch128_ms  the SavedModel's `serving_default` signature loaded in this process
                            (`tf.saved_model.load`), 128 images per call, TensorFlow's default CPU threads (a server
                            answering batched requests; the signature's input checks and softmax are included)

Machine speed drifts while a benchmark runs (other processes, frequency scaling), and timing one model after the
other would book the drift as a difference between them. So both models are loaded at once and timed in rounds:
each round times a few calls of each model, in an order that reverses every round (dense, pruned, then pruned,
dense), and the median over rounds discards the rounds an interruption spoiled. Calls per round are calibrated so a
round lasts at least `min_round_seconds` (timer resolution and call overhead stay small beside it).

`compare_models` times the files an export wrote (`export.export_all`: tflite/float32.tflite and
tflite/dense_float32.tflite, the newest version under saved_model/<model_name>/) and writes whatever is missing (the
dense model has no exported SavedModel) to a temporary directory, deleted afterwards.
"""

import functools
import math
import os
import tempfile
import time

import numpy as np

from tfrobprune.deploy import export
from tfrobprune.deploy import saved_model
from tfrobprune.deploy import tflite
from tfrobprune.deploy import tflite_runner
from tfrobprune.keras_compat import tf

TFLITE_BATCH1 = "tflite_batch1_ms"
SAVEDMODEL_BATCH128 = "savedmodel_batch128_ms"
MODELS = ("dense", "pruned")

_SAVEDMODEL_BATCH = 128
_TFLITE_VARIANT = "float32"
_WARMUP_CALLS = 3
_MAX_CALLS_PER_ROUND = 10000


def _check_positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
  return int(value)


def _calibrated_calls(calls, min_round_seconds, clock):
  """Calls per round so that a round of the slowest function lasts at least `min_round_seconds`."""
  slowest = 0.0
  for call in calls.values():
    started = clock()
    call()
    slowest = max(slowest, clock() - started)
  if slowest <= 0:
    return _MAX_CALLS_PER_ROUND
  return max(1, min(_MAX_CALLS_PER_ROUND, math.ceil(min_round_seconds / slowest)))


def interleaved_medians(calls, rounds, calls_per_round=None, min_round_seconds=0.02, clock=time.perf_counter):
  """Median milliseconds per call of each function, timed in interleaved rounds of alternating order.

  Args:
    calls: {name: function of no arguments}, the things to time (e.g. {'dense': ..., 'pruned': ...}).
    rounds: rounds; each times `calls_per_round` consecutive calls of every function, the order of the functions
      reversed every other round.
    calls_per_round: calls per function and round; None calibrates it after the warm-up (see the module docstring).
    min_round_seconds: the shortest round the calibration aims for.
    clock: a function returning seconds (`time.perf_counter`; tests inject their own).

  Returns:
    ({name: median ms per call}, calls_per_round).

  Raises:
    ValueError: for no functions or a non-positive round or call count.
  """
  rounds = _check_positive_int("rounds", rounds)
  if not calls:
    raise ValueError("calls must name at least one function to time.")
  for call in calls.values():
    for _ in range(_WARMUP_CALLS):
      call()
  if calls_per_round is None:
    calls_per_round = _calibrated_calls(calls, min_round_seconds, clock)
  calls_per_round = _check_positive_int("calls_per_round", calls_per_round)
  names, times = list(calls), {name: [] for name in calls}
  for index in range(rounds):
    for name in (names if index % 2 == 0 else names[::-1]):
      call, started = calls[name], clock()
      for _ in range(calls_per_round):
        call()
      times[name].append((clock() - started) / calls_per_round)
  return {name: 1e3 * float(np.median(values)) for name, values in times.items()}, calls_per_round


def _serving_signature(directory):
  """(the loaded SavedModel, its serving signature): the object must stay alive while the signature is called."""
  loaded = tf.saved_model.load(directory)
  return loaded, loaded.signatures[saved_model.SIGNATURE_KEY]


def measure_speed(files, input_shape, rounds=20, min_round_seconds=0.02, clock=time.perf_counter, seed=0):
  """Times the float32 TFLite files (batch 1) and the SavedModels (batch 128) of several models, interleaved.

  Args:
    files: {model name: {'tflite': float32 .tflite path, 'saved_model': SavedModel directory}}, e.g. for 'dense'
      and 'pruned'; all models take images of `input_shape`.
    input_shape: (H, W, C) of one image.
    rounds: interleaved rounds per runtime (`interleaved_medians`).
    min_round_seconds: the shortest round (calls per round are calibrated to it).
    clock: a function returning seconds.
    seed: seeds the random [0, 1) input images (latency does not depend on the pixels).

  Returns:
    {'tflite_batch1_ms': {name: ms}, 'savedmodel_batch128_ms': {name: ms}, 'tflite_runtime': {name: 'xnnpack' or
    'builtin_no_delegates' (when XNNPACK could not prepare the file)}, 'rounds': rounds}.

  Raises:
    ValueError: for no models, a missing file, or a non-positive round count.
  """
  if not files:
    raise ValueError("files must name at least one model to time.")
  for name, paths in files.items():
    for kind in ("tflite", "saved_model"):
      if not paths.get(kind) or not os.path.exists(paths[kind]):
        raise ValueError(f"No {kind} file for model {name!r}: {paths.get(kind)!r}.")
  images = np.random.default_rng(seed).random((_SAVEDMODEL_BATCH, *input_shape), dtype=np.float32)
  runners = {name: tflite_runner.TFLiteRunner(paths["tflite"], num_threads=1, batch=1)
             for name, paths in files.items()}
  for runner in runners.values():
    runner.set_input(images[:1])
  tflite_ms, _ = interleaved_medians({name: runner.interpreter.invoke for name, runner in runners.items()},
                                     rounds, min_round_seconds=min_round_seconds, clock=clock)
  loaded = {name: _serving_signature(paths["saved_model"]) for name, paths in files.items()}
  batch = tf.constant(images)
  saved_ms, _ = interleaved_medians(
      {name: functools.partial(signature, **{saved_model.INPUT_NAME: batch}) for name, (_, signature) in
       loaded.items()}, rounds, min_round_seconds=min_round_seconds, clock=clock)
  return {TFLITE_BATCH1: tflite_ms, SAVEDMODEL_BATCH128: saved_ms,
          "tflite_runtime": {name: runner.runtime for name, runner in runners.items()}, "rounds": rounds}


def _newest_version(base_dir):
  """The newest integer version directory under `base_dir` (TF Serving's layout), or None."""
  if not os.path.isdir(base_dir):
    return None
  versions = [int(name) for name in os.listdir(base_dir) if name.isascii() and name.isdigit()]
  return os.path.join(base_dir, str(max(versions))) if versions else None


def exported_files(export_dir, model_name):
  """The files of `export.export_all`'s layout that `measure_speed` times, None where the export has none.

  Returns:
    {'dense': {'tflite': export_dir/tflite/dense_float32.tflite, 'saved_model': None}, 'pruned': {'tflite':
    export_dir/tflite/float32.tflite, 'saved_model': the newest version of export_dir/saved_model/<model_name>}},
    each path None if missing (export_all writes no dense SavedModel).
  """
  def existing(path):
    return path if path and os.path.exists(path) else None

  tflite_dir = os.path.join(export_dir, "tflite")
  return {
      "dense": {"tflite": existing(os.path.join(tflite_dir, f"{export.DENSE_BASELINE}.tflite")), "saved_model": None},
      "pruned": {"tflite": existing(os.path.join(tflite_dir, f"{_TFLITE_VARIANT}.tflite")),
                 "saved_model": _newest_version(os.path.join(export_dir, export.SAVED_MODEL, model_name))},
  }


def _write_missing(paths, model, directory, name):
  """`paths` with each missing file written from `model` into `directory` (float32 TFLite, SavedModel)."""
  paths = dict(paths)
  if not paths.get("tflite"):
    paths["tflite"] = tflite.export_tflite(model, os.path.join(directory, f"{name}.tflite"), _TFLITE_VARIANT)["path"]
  if not paths.get("saved_model"):
    paths["saved_model"] = saved_model.export_saved_model(model, directory, f"{name}_saved_model")
  return paths


def compare_models(dense_model, pruned_model, export_dir=None, model_name=None, rounds=20, min_round_seconds=0.02,
                   clock=time.perf_counter):
  """The speed table of a dense and a pruned Keras model: `measure_speed` on their exported files.

  Args:
    dense_model: the dense (unpruned) Keras model.
    pruned_model: the pruned model (after structured pruning, the physically smaller one), same input shape.
    export_dir: the directory `export.export_all` wrote (output_dir/export), whose files are timed; None, or files
      it lacks, are written from the Keras models into a temporary directory first.
    model_name: the SavedModel's model name in `export_dir` (required with `export_dir`).
    rounds: interleaved rounds per runtime.
    min_round_seconds: the shortest round.
    clock: a function returning seconds.

  Returns:
    `measure_speed`'s dict for the models 'dense' and 'pruned'.

  Raises:
    ValueError: for models of different input shapes, or `export_dir` without `model_name`.
  """
  shape = tuple(dense_model.input_shape[1:])
  if tuple(pruned_model.input_shape[1:]) != shape:
    raise ValueError(f"dense_model takes images of shape {dense_model.input_shape}, pruned_model "
                     f"{pruned_model.input_shape}.")
  if export_dir and not model_name:
    raise ValueError(f"model_name is required with export_dir={export_dir!r} (the SavedModel's directory name).")
  files = exported_files(export_dir, model_name) if export_dir else {name: {} for name in MODELS}
  with tempfile.TemporaryDirectory(prefix="tfrobprune-speed-") as directory:
    files = {name: _write_missing(files[name], model, directory, name)
             for name, model in (("dense", dense_model), ("pruned", pruned_model))}
    return measure_speed(files, shape, rounds=rounds, min_round_seconds=min_round_seconds, clock=clock)
