"""Robust accuracy against MACs over a sweep of channel sparsities: the table and plot of docs/structured_pruning.md.

    # One run per channel sparsity (the first pre-trains; the others start from its dense model), then the plot:
    python3 tools/channel_sweep.py --flagfile_of_runs=configs/fmnist_pgd_channels.cfg \\
        --channel_sparsities=0.3,0.5,0.7 --output_root=runs/channel_sweep --plot=docs/channel_sweep.png \\
        --train_flags="--finetune_epochs=2"
    # Only the table and plot, from finished runs:
    python3 tools/channel_sweep.py --runs=runs/channel_sweep/cs0.3,runs/channel_sweep/cs0.5 --plot=docs/x.png

Run it with the project's Python (bin/_bootstrap.sh sets it up); runs that finished earlier are resumed, not
redone (`tfrobprune train` resumes a run in the same --output_dir). The table is printed as Markdown; its
dense row is the first run's dense model (the others start from it when trained here).
"""

import io
import json
import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from tfrobprune import report as report_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_FLAGFILE = flags.DEFINE_string("flagfile_of_runs", None, "The runs' flagfile (e.g. configs/fmnist_pgd_channels.cfg).")
_SPARSITIES = flags.DEFINE_list("channel_sparsities", [], "Channel sparsities to train, one run each.")
_OUTPUT_ROOT = flags.DEFINE_string("output_root", "runs/channel_sweep", "The runs go to OUTPUT_ROOT/cs<sparsity>.")
_TRAIN_FLAGS = flags.DEFINE_string("train_flags", "", "More `tfrobprune train` flags for every run (one string).")
_RUNS = flags.DEFINE_list("runs", [], "Finished run directories to plot (instead of, or besides, training).")
_PLOT = flags.DEFINE_string("plot", "docs/channel_sweep.png", "Where to write the plot (PNG).")


def _train(sparsity, dense_checkpoint):
  """Trains (or resumes) the run of one channel sparsity; returns its directory."""
  output_dir = os.path.join(_OUTPUT_ROOT.value, f"cs{float(sparsity):g}")
  command = [sys.executable, "-m", "tfrobprune.cli", "train", f"--flagfile={_FLAGFILE.value}",
             f"--channel_sparsity={sparsity}", f"--output_dir={output_dir}", "--noprogress",
             *shlex.split(_TRAIN_FLAGS.value)]
  if dense_checkpoint:
    command.append(f"--dense_checkpoint={dense_checkpoint}")
  print("$", " ".join(command), f"> {output_dir}.log", flush=True)
  env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  os.makedirs(_OUTPUT_ROOT.value, exist_ok=True)
  with open(f"{output_dir}.log", "a") as log:
    subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
  return output_dir


def _train_all():
  """Trains every sparsity; the runs after the first reuse its dense model (pre-training skipped)."""
  runs, dense_checkpoint = [], None
  for sparsity in _SPARSITIES.value:
    runs.append(_train(sparsity, dense_checkpoint))
    dense_checkpoint = dense_checkpoint or os.path.join(runs[0], "models", "dense.keras")
  return runs


def _row(run_dir):
  with open(os.path.join(run_dir, "report.json")) as handle:
    report = json.load(handle)
  speed = report.get("speed", {})
  speedups = {key: speed[key]["dense"] / speed[key]["pruned"] for key, _ in report_lib.SPEED_ROWS if key in speed}
  return {"run": run_dir, "channel_sparsity": report["config"].get("channel_sparsity"), "dense": report["dense"],
          "pruned": report["pruned"], "speedups": speedups}


def _percent(value):
  return "-" if value is None else f"{100 * value:.2f}%"


def format_table(rows):
  """Markdown: one row per run, its MACs, the MACs saved, accuracies and speedups (dense / pruned)."""
  lines = ["| channel sparsity | MACs | MACs saved | benign | PGD | TFLite b1 speedup | SavedModel b128 speedup |",
           "|---|---|---|---|---|---|---|"]
  dense = rows[0]["dense"]
  lines.append(f"| 0 (dense) | {dense['macs']:,} | 0% | {_percent(dense.get('benign_acc'))} | "
               f"{_percent(dense.get('pgd_acc'))} | 1.00x | 1.00x |")
  for row in rows:
    pruned, speedups = row["pruned"], row["speedups"]
    cells = [f"{row['channel_sparsity']:g}", f"{pruned['macs']:,}", _percent(1 - pruned["macs"] / dense["macs"]),
             _percent(pruned.get("benign_acc")), _percent(pruned.get("pgd_acc"))]
    cells += [f"{speedups[key]:.2f}x" if key in speedups else "-" for key, _ in report_lib.SPEED_ROWS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(rows, path):
  """Benign and PGD accuracy against MACs per example (log scale), the dense model as the rightmost point."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  dense = rows[0]["dense"]
  figure, axes = pyplot.subplots(figsize=(6, 4))
  for key, label, marker in (("pgd_acc", "PGD (robust)", "o"), ("benign_acc", "benign", "s")):
    points = sorted([(row["pruned"]["macs"], row["pruned"][key], f"{row['channel_sparsity']:g}") for row in rows] +
                    [(dense["macs"], dense[key], "dense")])
    axes.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
    for macs, accuracy, text in points:
      axes.annotate(text, (macs, accuracy), textcoords="offset points", xytext=(4, -10), fontsize=8)
  axes.set(xscale="log", xlabel="MACs per example (log scale)", ylabel="accuracy",
           title="accuracy vs MACs over channel sparsities")
  ticks = sorted({row["pruned"]["macs"] for row in rows} | {dense["macs"]})
  axes.set_xticks(ticks, [f"{macs / 1e3:,.0f}k" for macs in ticks])  # the runs' MACs, not powers of ten
  axes.xaxis.set_minor_formatter(ticker.NullFormatter())
  axes.grid(True, which="both", alpha=0.3)
  axes.legend()
  buffer = io.BytesIO()
  figure.tight_layout()
  figure.savefig(buffer, format="png", dpi=100)
  pyplot.close(figure)
  report_lib.atomic_write(path, buffer.getvalue(), mode="wb")


def main(argv):
  del argv
  if _SPARSITIES.value and not _FLAGFILE.value:
    raise app.UsageError("--channel_sparsities needs --flagfile_of_runs (the runs' flagfile).")
  runs = list(_RUNS.value) + (_train_all() if _SPARSITIES.value else [])
  if not runs:
    raise app.UsageError("Give --runs (finished runs) or --channel_sparsities with --flagfile_of_runs.")
  rows = sorted((_row(run) for run in runs), key=lambda row: row["channel_sparsity"] or 0.0)
  print(format_table(rows))
  plot(rows, _PLOT.value)
  print(f"Wrote {_PLOT.value}")


if __name__ == "__main__":
  app.run(main)
