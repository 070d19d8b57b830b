"""Latency and size of exported TFLite artifacts under LiteRT, the runtime a phone or board would use.

`bench_tflite(export_dir, images)` times every .tflite file of an export (`export.export_all` writes them to
export_dir/tflite/) one image per `invoke`, after a warm-up, at each thread count, and compares its size with the
dense float32 baseline (dense_float32.tflite) when the export has one. Each artifact runs under the setting
`tflite_runner.TFLiteRunner` chooses: LiteRT's default XNNPACK delegate, or the builtin kernels when XNNPACK cannot
prepare the model (sparse int8), and the table says which, since that choice dominates the latency.

Only `interpreter.invoke()` is timed: setting the input tensor is outside the measurement.
"""

import json
import os
import time

import numpy as np

from tfrobprune.deploy import export
from tfrobprune.deploy import pqat
from tfrobprune.deploy import tflite
from tfrobprune.deploy import tflite_runner
from tfrobprune import report as report_lib

_WARMUP_INVOKES = 5


def _check_positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
  return int(value)


def find_tflite_files(export_dir):
  """{artifact name: path} of the .tflite files in export_dir/tflite (or in export_dir itself), baseline first.

  Raises:
    ValueError: if there is none.
  """
  directory = os.path.join(export_dir, "tflite")
  if not os.path.isdir(directory):
    directory = export_dir
  names = sorted(name[:-len(".tflite")] for name in os.listdir(directory)
                 if name.endswith(".tflite") and not name.startswith(".")) if os.path.isdir(directory) else []
  if not names:
    raise ValueError(f"No .tflite files in {export_dir!r} or its tflite/ directory; pass the export directory that "
                     "export_all wrote (output_dir/export).")
  order = (export.DENSE_BASELINE,) + tflite.TFLITE_VARIANTS + (pqat.PQAT_VARIANT,)
  names.sort(key=lambda name: (order.index(name) if name in order else len(order), name))
  return {name: os.path.join(directory, f"{name}.tflite") for name in names}


def input_shape(export_dir):
  """The (H, W, C) image shape of the first TFLite artifact in `export_dir` (for making benchmark inputs)."""
  path = next(iter(find_tflite_files(export_dir).values()))
  runner = tflite_runner.TFLiteRunner(path, num_threads=1, batch=1)
  return tuple(int(d) for d in runner.interpreter.get_input_details()[0]["shape"][1:])


def median_latency_ms(path, images, runs, num_threads):
  """(median ms, 90th percentile ms, runtime setting) of `runs` single-image invokes after a warm-up."""
  runner = tflite_runner.TFLiteRunner(path, num_threads=num_threads, batch=1)
  images = np.asarray(images, np.float32)
  for index in range(_WARMUP_INVOKES):
    runner.set_input(images[index % len(images)][None])
    runner.interpreter.invoke()
  times = []
  for index in range(runs):
    runner.set_input(images[index % len(images)][None])
    started = time.perf_counter()
    runner.interpreter.invoke()
    times.append(time.perf_counter() - started)
  return 1e3 * float(np.median(times)), 1e3 * float(np.percentile(times, 90)), runner.runtime


def bench_tflite(export_dir, images, runs=50, threads=(1, 2), output_path=None):
  """Times each TFLite artifact of an export and compares its size with the dense float32 baseline.

  Args:
    export_dir: the directory `export.export_all` wrote (output_dir/export), or a directory of .tflite files.
    images: float32 [N, H, W, C] images in [0, 1]; invokes cycle through them, one image each.
    runs: timed invokes per artifact and thread count.
    threads: LiteRT thread counts to measure.
    output_path: if set, the results are also written there as JSON (atomically).

  Returns:
    {'export_dir', 'runs', 'threads', 'baseline' (the baseline artifact name or None), 'artifacts': {name:
    {'bytes', 'size_ratio_vs_dense_float' (baseline bytes / bytes, None without a baseline), 'median_ms' and
    'p90_ms' ({str(threads): ms}), 'runtime' ({str(threads): 'xnnpack' | 'builtin_no_delegates'})}}}.

  Raises:
    ValueError: for no .tflite files, no images, or a non-positive run or thread count.
  """
  runs = _check_positive_int("runs", runs)
  threads = [_check_positive_int("threads", count) for count in threads]
  if not threads:
    raise ValueError("threads must name at least one thread count, e.g. (1, 2).")
  if len(images) == 0:
    raise ValueError("images must hold at least one image to invoke the models with.")
  files = find_tflite_files(export_dir)
  baseline = export.DENSE_BASELINE if export.DENSE_BASELINE in files else None
  baseline_bytes = os.path.getsize(files[baseline]) if baseline else None
  artifacts = {}
  for name, path in files.items():
    size = os.path.getsize(path)
    figures = {"bytes": size, "size_ratio_vs_dense_float": baseline_bytes / size if baseline else None,
               "median_ms": {}, "p90_ms": {}, "runtime": {}}
    for count in threads:
      median, p90, runtime = median_latency_ms(path, images, runs, count)
      figures["median_ms"][str(count)], figures["p90_ms"][str(count)] = median, p90
      figures["runtime"][str(count)] = runtime
    artifacts[name] = figures
  results = {"export_dir": export_dir, "runs": runs, "threads": threads, "baseline": baseline,
             "artifacts": artifacts}
  if output_path:
    report_lib.atomic_write(output_path, json.dumps(results, indent=2))
  return results


def format_table(results):
  """A Markdown table of `bench_tflite`'s results: one row per artifact, one latency column per thread count."""
  threads = [str(count) for count in results["threads"]]
  header = (["artifact", "bytes", "x smaller than dense float", "runtime"] +
            [f"median ms ({count} thread{'s' if count != '1' else ''})" for count in threads])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, figures in results["artifacts"].items():
    ratio = figures["size_ratio_vs_dense_float"]
    runtimes = sorted(set(figures["runtime"].values()))
    row = [name, f"{figures['bytes']:,}", "-" if ratio is None else f"{ratio:.1f}x", "/".join(runtimes)]
    row += [f"{figures['median_ms'][count]:.3f}" for count in threads]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"
