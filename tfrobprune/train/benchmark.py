"""Performance figures of the robust training and evaluation steps, measured in one process and one run.

Robust training costs about k+1 forward/backward passes per PGD-k step by nature; these figures show what the
toolchain adds to that, or saves: the attack iterations compute input gradients only (no weight gradients, no
optimizer work), and the whole step is one compiled `tf.function`. The naive baseline is the same PGD-k step written
eagerly (cleverhans called eagerly on the plain model, then an eager training step); the compiled attack also
takes its image gradient through the first convolution by `input_gradients`' polyphase forward convolution.

Every timing is the median over `repeats` timed runs of `steps` steps each, after a warm-up that includes tracing,
on fixed random inputs (a step's cost does not depend on the pixel values). The steps behind the ratios are timed
interleaved: each round runs every one of them once, so that the drift of a shared VM (other tenants, clock
changes) hits numerator and denominator alike, and each ratio is the median
of its per-round ratios.
"""

import dataclasses
import math
import platform
import resource
import statistics
import subprocess
import sys
import time

from absl import logging
import numpy as np
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tfrobprune.evaluate import autoattack_benchmark
from tfrobprune.evaluate import evaluation
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import input_gradients
from tfrobprune.robust import objectives
from tfrobprune.train import training


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """What to measure.

  Attributes:
    model: main model of the figures.
    batch_size: examples per step.
    pgd_steps: k of the PGD-k training step.
    eps: attack / bound radius.
    steps: steps per timed run.
    repeats: timed runs, i.e. interleaved rounds for the main figures (medians are reported).
    min_seconds: shortest timed run: a step that is faster runs more than `steps` times
      (windows of a few tens of milliseconds made per-round ratios swing widely on shared VMs).
    extra_models: further models measured for the model-size table.
    batch_sizes: batch sizes of the batch-size table (natural and PGD training on `model`).
    input_shape: image shape of the synthetic inputs.
    num_classes: number of classes.
    autoattack: None, or the `autoattack_benchmark.AutoAttackBenchConfig` of the `autoattack_s_per_1k` figure.
  """
  model: str = "cnn_small"
  batch_size: int = 128
  pgd_steps: int = 10
  eps: float = 0.1
  steps: int = 10
  repeats: int = 5
  min_seconds: float = 0.5
  extra_models: tuple[str, ...] = ("cnn_medium",)
  batch_sizes: tuple[int, ...] = (32, 64, 128, 256)
  input_shape: tuple[int, int, int] = (28, 28, 1)
  num_classes: int = 10
  autoattack: object = None

  def __post_init__(self):
    for name in ("batch_size", "pgd_steps", "steps", "repeats"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if not self.min_seconds >= 0:
      raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds}.")
    unknown = [m for m in (self.model,) + tuple(self.extra_models) if m not in models.MODEL_NAMES]
    if unknown:
      raise ValueError(f"unknown model(s) {unknown}; choose from {models.MODEL_NAMES}.")


def _inputs(config, batch_size):
  rng = np.random.default_rng(0)
  x = tf.constant(rng.random((batch_size,) + tuple(config.input_shape), dtype=np.float32))
  y = tf.constant(rng.integers(0, config.num_classes, batch_size), dtype=tf.int64)
  return x, y


def _cpu_model():
  """The CPU's model name (from /proc/cpuinfo on Linux), since the figures depend on it."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()



def _interleaved_ms_per_step(step_fns, config):
  """Times `step_fns` ({name: blocking step function}) in `config.repeats` interleaved rounds.

  Returns:
    ({name: median ms per step}, [{name: ms per step} of each round]).
  """
  counts = {}
  for name, step_fn in step_fns.items():
    step_fn()
    started = time.perf_counter()
    step_fn()
    counts[name] = max(config.steps, math.ceil(config.min_seconds / max(time.perf_counter() - started, 1e-6)))
  rounds = []
  for _ in range(config.repeats):
    timings = {}
    for name, step_fn in step_fns.items():
      started = time.perf_counter()
      for _ in range(counts[name]):
        step_fn()
      timings[name] = (time.perf_counter() - started) * 1000.0 / counts[name]
    rounds.append(timings)
  return {name: statistics.median(timings[name] for timings in rounds) for name in step_fns}, rounds


def _median_ratio(rounds, numerator, denominator, scale=1.0):
  """The median over the rounds of `numerator / (scale * denominator)`, both timed in the same round."""
  return statistics.median(timings[numerator] / (scale * timings[denominator]) for timings in rounds)


def _median_ms_per_step(step_fn, config):
  """Median wall time (ms) of one call of `step_fn`, which must block until its work is done."""
  medians, _ = _interleaved_ms_per_step({"step": step_fn}, config)
  return medians["step"]


def _model(config, name):
  return models.build_model(name, config.input_shape, config.num_classes, seed=0)


def _compiled_train_step(config, model_name, objective_config, batch_size):
  """A blocking call of the compiled training step of `model_name` with `objective_config`."""
  model = _model(config, model_name)
  objective = objectives.make_objective(objective_config, config.num_classes)
  trainer = training.Trainer(model, objective, keras.optimizers.Adam(1e-3))
  x, y = _inputs(config, batch_size)
  return lambda: float(trainer.train_step(x, y)["loss"])


def _compiled_train_step_ms(config, model_name, objective_config, batch_size):
  return _median_ms_per_step(_compiled_train_step(config, model_name, objective_config, batch_size), config)


def _objective(config, name):
  """The objective of a figure: an objective's name, or 'crown_ibp_fused' (CROWN-IBP with `crown_ibp_bound`
  'fused', `crown_ibp_fused`), each with the methods' default step sizes."""
  if name == "natural":
    return objectives.ObjectiveConfig(name="natural")
  if name == "crown_ibp_fused":
    return objectives.ObjectiveConfig(name="crown_ibp", eps=config.eps, crown_ibp_bound="fused")
  return objectives.ObjectiveConfig(name=name, eps=config.eps, pgd_steps=config.pgd_steps)


def _eager_pgd_step(config):
  """The naive baseline: cleverhans' PGD called eagerly, then an eager training step."""
  model = _model(config, config.model)
  optimizer = keras.optimizers.Adam(1e-3)
  x, y = _inputs(config, config.batch_size)
  model_fn = lambda z: model(z, training=False)  # the naive call: TensorFlow's own input gradients
  step_size = min(config.eps, 2.5 * config.eps / config.pgd_steps)

  def step():
    x_adv = projected_gradient_descent(model_fn, x, config.eps, step_size, config.pgd_steps, np.inf, clip_min=0.0,
                                       clip_max=1.0, y=y, rand_init=True, sanity_checks=False)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x_adv, training=True)))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    return float(loss)

  return step


def _eval_step(config, kind):
  model = _model(config, config.model)
  eval_config = evaluation.EvalConfig(eps=config.eps, pgd_steps=config.pgd_steps, pgd_restarts=1, fgsm=False)
  compiled = evaluation._CompiledEval(model, eval_config, config.num_classes, seed=0)  # pylint: disable=protected-access
  x, y = _inputs(config, config.batch_size)
  if kind == "benign":
    return lambda: compiled.benign(x, y).numpy()
  index = tf.constant(0, tf.int64)
  return lambda: compiled.pgd(x, y, index)[1].numpy()


def peak_rss_of_run(flagfile, output_dir, extra_flags=()):
  """Runs `tfrobprune train` in a child process and returns its peak resident memory in MiB (Linux ru_maxrss)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  command = [sys.executable, "-m", "tfrobprune.cli", "train", f"--flagfile={flagfile}", f"--output_dir={output_dir}",
             "--noprogress", "--overwrite", *extra_flags]
  started = time.perf_counter()
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  seconds = time.perf_counter() - started
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return {"peak_rss_mib": round(max(peak, before) / 1024.0, 1), "seconds": round(seconds, 1), "flagfile": flagfile}


def run_benchmark(config=BenchConfig(), log=logging.info):
  """Measures every figure of the performance issue; returns them as a flat dict (see `format_table`)."""
  figures = {"model": config.model, "batch_size": config.batch_size, "pgd_steps": config.pgd_steps,
             "threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
             "cpu": _cpu_model(), "onednn": input_gradients.onednn_enabled()}
  step_fns = {f"{kind}_step_ms": _compiled_train_step(config, config.model, _objective(config, kind),
                                                      config.batch_size)
              for kind in ("natural", "pgd", "trades", "ibp", "crown_ibp", "crown_ibp_fused", "nfgsm")}
  step_fns.update(eager_pgd_step_ms=_eager_pgd_step(config), benign_eval_step_ms=_eval_step(config, "benign"),
                  pgd_eval_step_ms=_eval_step(config, "pgd"))
  medians, rounds = _interleaved_ms_per_step(step_fns, config)
  for name, value in medians.items():
    figures[name] = round(value, 3)
    log(f"{name}: {figures[name]:.2f} ms")
  k = config.pgd_steps
  figures["pgd_over_k_plus_1_natural"] = round(_median_ratio(rounds, "pgd_step_ms", "natural_step_ms", k + 1), 3)
  figures["ibp_over_natural"] = round(_median_ratio(rounds, "ibp_step_ms", "natural_step_ms"), 3)
  figures["crown_ibp_over_natural"] = round(_median_ratio(rounds, "crown_ibp_step_ms", "natural_step_ms"), 3)
  figures["crown_ibp_fused_over_natural"] = round(_median_ratio(rounds, "crown_ibp_fused_step_ms", "natural_step_ms"),
                                                  3)
  figures["nfgsm_over_natural"] = round(_median_ratio(rounds, "nfgsm_step_ms", "natural_step_ms"), 3)
  figures["nfgsm_over_pgd"] = round(_median_ratio(rounds, "nfgsm_step_ms", "pgd_step_ms"), 3)
  figures["eager_over_compiled"] = round(_median_ratio(rounds, "eager_pgd_step_ms", "pgd_step_ms"), 3)
  figures["rounds"] = [{name: round(value, 3) for name, value in timings.items()} for timings in rounds]
  figures["images_per_second"] = {
      name[:-len("_step_ms")]: round(config.batch_size * 1000.0 / figures[name], 1)
      for name in figures if isinstance(name, str) and name.endswith("_step_ms")}
  figures["by_batch_size"] = {
      str(batch): {kind: round(_compiled_train_step_ms(config, config.model, _objective(config, kind), batch), 3)
                   for kind in ("natural", "pgd")} for batch in config.batch_sizes}
  figures["by_model"] = {
      name: {kind: round(_compiled_train_step_ms(config, name, _objective(config, kind), config.batch_size), 3)
             for kind in ("natural", "pgd")} for name in (config.model,) + tuple(config.extra_models)}
  if config.autoattack is not None:
    figures.update(autoattack_benchmark.measure(config.autoattack, log=log))
  return figures


def format_table(figures):
  """The figures as a Markdown table, ratios first."""
  lines = ["| figure | value |", "|---|---|"]
  for key in ("cpu", "onednn"):
    if key in figures:
      lines.append(f"| {key} | {figures[key]} |")
  for key in ("pgd_over_k_plus_1_natural", "ibp_over_natural", "crown_ibp_over_natural", "crown_ibp_fused_over_natural",
              "nfgsm_over_natural", "nfgsm_over_pgd", "eager_over_compiled", "natural_step_ms", "pgd_step_ms",
              "nfgsm_step_ms", "trades_step_ms", "ibp_step_ms", "crown_ibp_step_ms", "crown_ibp_fused_step_ms",
              "eager_pgd_step_ms", "benign_eval_step_ms", "pgd_eval_step_ms"):
    if key in figures:
      lines.append(f"| {key} | {figures[key]} |")
  for key, value in figures.get("images_per_second", {}).items():
    lines.append(f"| images/s {key} | {value} |")
  if figures.get("by_batch_size"):
    lines += ["", "| batch size | natural ms/step | PGD ms/step |", "|---|---|---|"]
    lines += [f"| {batch} | {row['natural']} | {row['pgd']} |" for batch, row in figures["by_batch_size"].items()]
  if figures.get("by_model"):
    lines += ["", "| model | natural ms/step | PGD ms/step |", "|---|---|---|"]
    lines += [f"| {name} | {row['natural']} | {row['pgd']} |" for name, row in figures["by_model"].items()]
  if "autoattack_s_per_1k" in figures:
    lines += ["", f"Standard AutoAttack on {figures['autoattack_examples']} test examples of "
              f"{figures['autoattack_model']}: {figures['autoattack_s_per_1k']} s per 1,000 examples (robust accuracy "
              f"{figures['autoattack_acc']:.4f}, clean {figures['autoattack_clean_acc']:.4f}).", "",
              "| attack | examples | robust after | s per 1,000 |", "|---|---|---|---|"]
    lines += [f"| {row['attack']} | {row['examples']} | {row['robust_acc']:.4f} | {row['s_per_1k']} |"
              for row in figures["autoattack_stages"]]
  if "peak_rss" in figures:
    rss = figures["peak_rss"]
    lines += ["", f"Peak RSS of `tfrobprune train --flagfile={rss['flagfile']}`: {rss['peak_rss_mib']} MiB "
              f"({rss['seconds']} s)."]
  return "\n".join(lines) + "\n"
