"""Run reports: `report.json` (machine-readable), `report.md` (the dense-vs-pruned table) and PNG plots.

Every file is written atomically (temporary file in the same directory, then `os.replace`), so a reader never sees
half a report.
"""

import io
import json
import os
import tempfile

from tfrobprune.evaluate import robustness_tables
from tfrobprune.train import timing

METRICS = (("benign_acc", "benign"), ("fgsm_acc", "fgsm"), ("pgd_acc", "pgd"), ("autoattack_acc", "autoattack"),
           ("verified_acc", "verified"), ("verified_acc_crown", "verified_crown"))


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write(path, payload, mode="w"):
  """Writes `payload` (str or bytes) to `path` via a temporary file and a rename.

  Raises:
    OSError: with the path in the message when the directory is missing, read-only or full.
  """
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; a report is as readable as any other output
    with os.fdopen(fd, mode) as handle:
      handle.write(payload)
      handle.flush()
      os.fsync(handle.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def ratios(dense, pruned):
  """pruned / dense for each accuracy both have (None where the dense accuracy is 0)."""
  out = {}
  for key, name in METRICS:
    if key in dense and key in pruned:
      out[name] = pruned[key] / dense[key] if dense[key] else None
  return out


def _percent(value):
  return "-" if value is None else f"{100 * value:.2f}%"


def _ratio(value):
  return "-" if value is None else f"{value:.3f}"


def _warning_lines(warnings):
  return ([f"> **Warning:** {warning}" for warning in warnings] + [""]) if warnings else []


def markdown(report):
  """The report as a Markdown document: the dense-vs-pruned table, the sparsity sweep, per-layer sparsity."""
  dense, pruned, ratio = report["dense"], report["pruned"], report["ratios"]
  cfg = report["config"]
  lines = [
      f"# tfrobprune report: {cfg['model']} on {cfg['data']['dataset']}",
      "",
      f"Pre-training objective `{cfg['pretrain_objective']['name']}`, fine-tuning objective "
      f"`{cfg['finetune_objective']['name']}`, evaluation eps {cfg['evaluation']['eps']} "
      f"({cfg['evaluation']['norm']}, PGD-{cfg['evaluation']['pgd_steps']} x {cfg['evaluation']['pgd_restarts']} "
      f"restarts) on {dense['examples']} test examples.",
      "",
      *_warning_lines(report.get("warnings", [])),
      "| model | sparsity | params (nonzero / total) | compression | " +
      " | ".join(name for key, name in METRICS if key in dense) + " |",
      "|---|---|---|---|" + "---|" * sum(key in dense for key, _ in METRICS),
  ]
  for label, row in (("dense", dense), ("pruned", pruned)):
    lines.append(f"| {label} | {_percent(row.get('sparsity', 0.0))} | {row['nonzero_params']:,} / {row['params']:,} | "
                 f"{row.get('compression', 1.0):.1f}x | " +
                 " | ".join(_percent(row.get(key)) for key, _ in METRICS if key in dense) + " |")
  lines.append("| ratio (pruned / dense) | | | | " +
               " | ".join(_ratio(ratio.get(name)) for key, name in METRICS if key in dense) + " |")
  if len(report.get("sweep", [])) > 1:
    lines += ["", "## Sparsity sweep", "", "| sparsity | compression | " +
              " | ".join(name for key, name in METRICS if key in dense) + " |",
              "|---|---|" + "---|" * sum(key in dense for key, _ in METRICS)]
    for row in report["sweep"]:
      lines.append(f"| {_percent(row['sparsity'])} | {row['compression']:.1f}x | " +
                   " | ".join(_percent(row.get(key)) for key, _ in METRICS if key in dense) + " |")
  lines += robustness_tables.markdown_lines({"dense": dense, "pruned": pruned})
  lines += ["", "## Per-layer sparsity (pruned model)", "", "| layer | sparsity |", "|---|---|"]
  lines += [f"| {name} | {_percent(value)} |" for name, value in pruned.get("layer_sparsity", {}).items()]
  if pruned.get("channel_sparsity"):
    lines += ["", "## Channels removed (pruned model, `--prune_structure=channels`)", "",
              "| layer | channels removed |", "|---|---|"]
    lines += [f"| {name} | {_percent(value)} |" for name, value in pruned["channel_sparsity"].items()]
  if report.get("artifacts"):
    lines += ["", "## Deployment artifacts", "",
              "| artifact | bytes | benign | square (on the file) | transfer pgd (Keras adv.) | agreement | "
              "tied top logits (adv.) |",
              "|---|---|---|---|---|---|---|"]
    for name, row in report["artifacts"].items():  # runs exported before the rename recorded 'pgd_acc'
      lines.append(f"| {name} | {row.get('bytes', 0):,} | {_percent(row.get('benign_acc'))} | "
                   f"{_percent(row.get('square_acc'))} | {_percent(row.get('transfer_pgd_acc', row.get('pgd_acc')))} | "
                   f"{_percent(row.get('agreement'))} | {_percent(row.get('pgd_ties'))} |")
  if speed_table(report):
    lines += ["", "## Cost and speed (dense vs pruned)", "", speed_table(report).rstrip("\n")]
  lines += _overfitting_lines(report.get("overfitting"))
  lines += timing.markdown_lines(report.get("timing"))
  return "\n".join(lines) + "\n"


def _overfitting_lines(events):
  """The catastrophic-overfitting events of single-step phases (`train.overfit_monitor`), if any."""
  if not events:
    return []
  lines = ["", "## Catastrophic overfitting (sharp drops of held-out PGD accuracy)", "",
           "| phase | epoch | PGD accuracy | best before | FGSM accuracy | action |", "|---|---|---|---|---|---|"]
  for event in events:
    lines.append(f"| {event['phase']} | {event['epoch']} | {_percent(event['pgd_acc'])} | "
                 f"{_percent(event['best_before'])} | {_percent(event.get('fgsm_acc'))} | "
                 f"{_overfitting_action(event)} |")
  return lines


def _overfitting_action(event):
  if event.get("restored_best"):
    return "stopped, back to the best epoch's weights"
  if event.get("stopped"):
    return "stopped"
  return "PGD from here" if event.get("fallback") else "warned"


# report['speed'] keys -> row labels of `speed_table`.
SPEED_ROWS = (("tflite_batch1_ms", "TFLite float32, batch 1, XNNPACK 1 thread (ms)"),
              ("savedmodel_batch128_ms", "SavedModel serving_default, batch 128 (ms)"))


def _times(dense, pruned):
  return f"{dense / pruned:.2f}x" if pruned else "-"


def speed_table(report):
  """The dense-vs-pruned cost (MACs per example) and latency table in Markdown; '' if the report has neither.

  Reads report['dense']['macs'], report['pruned']['macs'] and report['speed'] (`speed.compare_models`' dict).
  """
  dense, pruned, speed = report.get("dense") or {}, report.get("pruned") or {}, report.get("speed") or {}
  rows = []
  if "macs" in dense and "macs" in pruned:
    rows.append(["MACs per example", f"{dense['macs']:,}", f"{pruned['macs']:,}",
                 _times(dense["macs"], pruned["macs"])])
  for key, label in SPEED_ROWS:
    if key in speed:
      times = speed[key]
      rows.append([label, f"{times['dense']:.3f}", f"{times['pruned']:.3f}", _times(times["dense"], times["pruned"])])
  if not rows:
    return ""
  lines = ["| | dense | pruned | dense / pruned |", "|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
  if speed:
    runtimes = ", ".join(f"{name} {runtime}" for name, runtime in speed.get("tflite_runtime", {}).items())
    lines += ["", f"Latencies are medians of {speed.get('rounds')} interleaved rounds in one process "
              f"(TFLite runtime: {runtimes or 'unknown'})."]
  return "\n".join(lines) + "\n"


def plot(report, output_dir):
  """Writes `sparsity_sweep.png` (accuracy vs sparsity, when several sparsities ran) and `layer_sparsity.png`.

  Returns:
    The list of written file names.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top  (plotting is optional and slow to import)
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  written = []
  sweep = report.get("sweep", [])
  if len(sweep) > 1:
    figure, axes = pyplot.subplots(figsize=(6, 4))
    sparsities = [row["sparsity"] for row in sweep]
    for key, name in METRICS:
      if key in sweep[0]:
        axes.plot(sparsities, [row[key] for row in sweep], marker="o", label=name)
        axes.axhline(report["dense"][key], linestyle=":", color=axes.lines[-1].get_color())
    axes.set(xlabel="sparsity", ylabel="accuracy", title="accuracy vs sparsity (dotted: dense)")
    axes.legend()
    written.append(_save_figure(figure, os.path.join(output_dir, "sparsity_sweep.png")))
  layers = report["pruned"].get("layer_sparsity", {})
  if layers:
    figure, axes = pyplot.subplots(figsize=(6, 0.4 * len(layers) + 1.5))
    axes.barh(list(layers), list(layers.values()))
    axes.set(xlim=(0, 1), xlabel="sparsity", title="per-layer sparsity of the pruned model")
    axes.invert_yaxis()
    written.append(_save_figure(figure, os.path.join(output_dir, "layer_sparsity.png")))
  pyplot.close("all")
  return [os.path.basename(path) for path in written]


def _save_figure(figure, path):
  buffer = io.BytesIO()
  figure.tight_layout()
  figure.savefig(buffer, format="png", dpi=100)
  atomic_write(path, buffer.getvalue(), mode="wb")
  return path


def write_report(report, output_dir, plots=True):
  """Writes report.json, report.md and (optionally) the plots into `output_dir`; returns the report."""
  if plots:
    report["plots"] = plot(report, output_dir)
  atomic_write(os.path.join(output_dir, "report.json"), json.dumps(report, indent=2, sort_keys=True) + "\n")
  atomic_write(os.path.join(output_dir, "report.md"), markdown(report))
  return report
