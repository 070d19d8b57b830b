"""Re-evaluating a finished run (`tfrobprune evaluate`): its models, and its exported TFLite files, attacked again.

A run's evaluation settings are fixed when it trains; a reviewer may want a stronger attack (AutoAttack) or more
examples afterwards, without retraining. `evaluate_run` loads the run's dense model and the pruned model of each
sparsity as the run saved them (`pipeline.finished_run`), evaluates them with the run's recorded evaluation settings
overridden by the given ones, on the examples the run's seed picks (`evaluation.evaluation_examples`: the first N
of a class-stratified subset), and writes RUN/evaluation.json atomically, with the same per-model fields as the
report. With `artifacts`, each exported TFLite file is attacked directly by Square through the LiteRT interpreter
(`square_acc`): the white-box figures of the Keras model say nothing certain about a quantized file.
"""

import dataclasses
import glob
import json
import os

from absl import logging

from tfrobprune.deploy import artifact_verification
from tfrobprune.evaluate import evaluation
from tfrobprune.evaluate import gradient_masking
from tfrobprune.evaluate import robustness_tables
from tfrobprune import pipeline
from tfrobprune import report as report_lib

EVALUATION_FILE = "evaluation.json"


def evaluate_run(run_dir, overrides=None, artifacts=False, progress=None, log=logging.info):
  """Re-evaluates the finished run in `run_dir`; writes and returns RUN/evaluation.json's record.

  Args:
    run_dir: the output directory of a finished run (it has report.json and models/).
    overrides: `EvalConfig` fields replacing the run's recorded ones, e.g. {'attacks': ('pgd', 'autoattack'),
      'max_examples': 1000}.
    artifacts: also attack RUN/export/tflite/*.tflite with Square (`attack_artifacts`).
    progress: None, or an evaluation progress-bar factory (`evaluation.evaluate_model`).
    log: a function taking one line of progress text.

  Returns:
    {'run_dir', 'evaluation' (the settings used), 'seed', 'dataset', 'dense', 'pruned', 'sweep', 'ratios',
    'warnings'[, 'artifacts']}: the report's layout for the models.

  Raises:
    ValueError: `run_dir` holds no finished run, a file of it is missing or corrupt, or an override is invalid.
  """
  config, dataset, paths = pipeline.finished_run(run_dir)
  try:
    eval_config = dataclasses.replace(config.evaluation, **(overrides or {}))
  except TypeError as error:
    raise ValueError(f"unknown evaluation setting in {sorted(overrides)}: {error}") from error
  results = {}
  for name, path in paths.items():
    model = pipeline.load_model(path)
    results[name] = evaluation.evaluate_model(model, dataset.x_test, dataset.y_test, eval_config, dataset.num_classes,
                                              seed=config.seed, progress=progress, name=name)
    results[name].update(pipeline.model_statistics(model))
    log(f"[evaluate {name}] " + ", ".join(f"{k} {v:.4f}" for k, v in results[name].items() if k.endswith("_acc")))
  sweep = [dict(results[f"s{sparsity:g}"], target_sparsity=sparsity) for sparsity in config.sparsities]
  x, y = evaluation.evaluation_examples(dataset.x_test, dataset.y_test, eval_config, config.seed)
  record = {"run_dir": os.path.abspath(run_dir), "evaluation": eval_config.to_dict(), "seed": config.seed,
            "dataset": {"name": dataset.name, "test": len(dataset.x_test), "evaluated": len(y)},
            "dense": results["dense"], "pruned": sweep[-1], "sweep": sweep,
            "ratios": report_lib.ratios(results["dense"], sweep[-1]),
            "warnings": gradient_masking.report_warnings(results)}
  if artifacts:
    record["artifacts"] = attack_artifacts(os.path.join(run_dir, "export", "tflite"), x, y, eval_config,
                                           seed=config.seed, log=log)
  report_lib.atomic_write(os.path.join(run_dir, EVALUATION_FILE), json.dumps(record, indent=2, sort_keys=True) + "\n")
  return record


def attack_artifacts(tflite_dir, x, y, eval_config, seed=0, log=logging.info):
  """Square against each TFLite file of `tflite_dir`, run by the LiteRT interpreter itself, on all of (x, y)
  (`artifact_verification.attack_with_square`, the export's own check).

  Returns:
    {artifact name: {'square_acc', 'square_ties', 'square_examples', 'square_queries', 'square_seconds'}}.

  Raises:
    ValueError: `tflite_dir` holds no .tflite file.
  """
  paths = sorted(glob.glob(os.path.join(tflite_dir, "*.tflite")))
  if not paths:
    raise ValueError(f"--artifacts: {tflite_dir!r} holds no .tflite file; export the run first "
                     "(`tfrobprune export --run_dir=RUN`).")
  settings = artifact_verification.SquareSettings(eps=eval_config.eps, norm=eval_config.norm, examples=len(y),
                                                  seed=seed)
  rows = {}
  for path in paths:
    name = os.path.basename(path)[:-len(".tflite")]
    rows[name] = artifact_verification.attack_with_square(path, x, y, settings)
    log(f"[evaluate {name}] square_acc {rows[name]['square_acc']:.4f} ({rows[name]['square_seconds']} s)")
  return rows


def summary(record):
  """evaluation.json's record as Markdown: accuracies per model, the AutoAttack tables, warnings, artifacts."""
  models = {"dense": record["dense"], **{f"s{row['target_sparsity']:g}": row for row in record["sweep"]}}
  metrics = [(key, name) for key, name in report_lib.METRICS if key in record["dense"]]
  lines = [f"Re-evaluation of {record['run_dir']} on {record['dataset']['evaluated']} test examples "
           f"(eps {record['evaluation']['eps']}, {record['evaluation']['norm']}): "
           f"{os.path.join(record['run_dir'], EVALUATION_FILE)}", ""]
  lines += [f"> **Warning:** {warning}" for warning in record["warnings"]] + ([""] if record["warnings"] else [])
  lines += ["| model | " + " | ".join(name for _, name in metrics) + " |", "|---|" + "---|" * len(metrics)]
  lines += [f"| {name} | " + " | ".join(_percent(row.get(key)) for key, _ in metrics) + " |"
            for name, row in models.items()]
  lines.append("| ratio (pruned / dense) | " + " | ".join(
      "-" if record["ratios"].get(name) is None else f"{record['ratios'][name]:.3f}" for _, name in metrics) + " |")
  lines += robustness_tables.markdown_lines(models)
  if record.get("artifacts"):
    lines += ["", "## Deployed files attacked by Square", "", "| artifact | square_acc | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {_percent(row['square_acc'])} | {row['square_seconds']} |"
              for name, row in record["artifacts"].items()]
  return "\n".join(lines) + "\n"


def _percent(value):
  return "-" if value is None else f"{100 * value:.2f}%"
