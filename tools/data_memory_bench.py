"""Peak memory of a short training run on a large image folder: streamed decoding against decoded float32 arrays.

    nice -n 5 ~/.cache/tfrobprune/venv/bin/python tools/data_memory_bench.py [--train_examples=50000]
        [--baseline_examples=1000] [--old_code=/tmp/tfrobprune-before] [--output=data_bench.json]

Writes `--train_examples` (and `--test_examples`) random-ish 32x32 RGB JPEGs of ten classes into a temporary folder,
and a second folder with only `--baseline_examples` training images; runs `tfrobprune train --dataset=image_folder`
on each with this checkout (and with `--old_code`, another checkout such as a `git archive` of an earlier commit, if
given), measures each run's peak resident memory (the child's `ru_maxrss`) and wall time, prints the figures as JSON
and deletes the images. The small folder shows what the process needs whatever the data; the difference is what the
data costs. The run is short on purpose (natural
objective, one pre-training and one fine-tuning epoch, a small PGD-1 evaluation, no export): memory, not accuracy,
is measured. Figures go to docs/performance.md ("Data").
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CLASSES = 10
_SIZE = 32


def write_images(root, split, count, seed):
  """`count` JPEGs in root/split/<class>/: a class colour, a random smooth gradient and noise (compress like photos)."""
  rng = np.random.default_rng(seed)
  for label in range(_CLASSES):
    os.makedirs(os.path.join(root, split, f"class{label}"), exist_ok=True)
  base = rng.uniform(40, 215, size=(_CLASSES, 3))
  ramp = np.linspace(-1.0, 1.0, _SIZE)
  for index in range(count):
    label = index % _CLASSES
    gradient = rng.uniform(-40, 40, 2)
    pixels = (base[label] + gradient[0] * ramp[:, None, None] + gradient[1] * ramp[None, :, None]
              + rng.normal(0, 12, (_SIZE, _SIZE, 3)))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image.save(os.path.join(root, split, f"class{label}", f"{index:06d}.jpg"), quality=90)


def folder_bytes(root):
  return sum(entry.stat().st_size for folder, _, files in os.walk(root)
             for entry in os.scandir(folder) if entry.is_file())


def measure(code_root, data_dir, output_dir, extra_flags=()):
  """Runs one training process from `code_root`; returns its peak RSS (bytes), wall seconds and exit status."""
  command = [sys.executable, "-m", "tfrobprune.cli", "train", "--dataset=image_folder", f"--data_dir={data_dir}",
             "--image_size=32,32", "--model=cnn_small", "--objective=natural", "--pretrain_epochs=1",
             "--finetune_epochs=1", "--sparsity=0.5", "--batch_size=128", "--eval_examples=500",
             "--eval_pgd_steps=1", "--eval_pgd_restarts=1", "--noexport", "--noprogress", "--seed=0",
             f"--output_dir={output_dir}", *extra_flags]
  env = dict(os.environ, PYTHONPATH=code_root, TF_CPP_MIN_LOG_LEVEL="2")
  start = time.perf_counter()
  with subprocess.Popen(command, cwd=code_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as child:
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
  result = {"peak_rss_bytes": usage.ru_maxrss * 1024, "wall_seconds": round(time.perf_counter() - start, 1),
            "exit_code": child.returncode}
  if child.returncode:
    result["stderr_tail"] = stderr.decode(errors="replace").strip().splitlines()[-5:]
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train_examples", type=int, default=50000)
  parser.add_argument("--test_examples", type=int, default=1000)
  parser.add_argument("--baseline_examples", type=int, default=1000)
  parser.add_argument("--old_code", default=None, help="another checkout to measure the same run with")
  parser.add_argument("--work_dir", default=None, help="where the images go (default: a new folder in /tmp)")
  parser.add_argument("--output", default=None, help="also write the figures to this JSON file")
  args = parser.parse_args()
  work_dir = tempfile.mkdtemp(prefix="tfrobprune-data-bench-", dir=args.work_dir)
  try:
    figures = {"test_examples": args.test_examples,
               "decoded_float32_test_bytes": args.test_examples * _SIZE * _SIZE * 3 * 4}
    codes = {"streamed": _ROOT}
    if args.old_code:
      codes["old_code"] = os.path.abspath(args.old_code)
    for name, count in (("baseline", args.baseline_examples), ("large", args.train_examples)):
      data_dir = os.path.join(work_dir, name)
      start = time.perf_counter()
      write_images(data_dir, "train", count, seed=0)
      write_images(data_dir, "test", args.test_examples, seed=1)
      figures[name] = {"train_examples": count, "jpeg_bytes": folder_bytes(data_dir),
                       "write_seconds": round(time.perf_counter() - start, 1),
                       "decoded_float32_train_bytes": count * _SIZE * _SIZE * 3 * 4}
      for code, root in codes.items():
        figures[name][code] = measure(root, data_dir, os.path.join(work_dir, f"run-{name}-{code}"))
      shutil.rmtree(data_dir)
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  text = json.dumps(figures, indent=2)
  print(text)
  if args.output:
    with open(args.output, "w") as handle:
      handle.write(text + "\n")


if __name__ == "__main__":
  main()
