"""bin/bench: the performance figures of the performance issue, measured in one process, printed and saved as JSON.

    bin/bench --output=bench.json [--model=cnn_small --batch_size=128 --pgd_steps=10]
    bin/bench --autoattack_model=runs/pgd90/models/dense.keras   # AutoAttack on the reference's dense model

Also a Bazel py_binary (//:bench).
"""

import json
import os
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfrobprune import console  # pylint: disable=g-import-not-at-top,wrong-import-position

console.quiet_tensorflow(sys.argv)  # before TensorFlow's import; --verbosity=1 shows its log lines

from tfrobprune.evaluate import autoattack_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfrobprune import report  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfrobprune.train import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

_OUTPUT = flags.DEFINE_string("output", "bench.json", "Where to write the figures (JSON).")
_MODEL = flags.DEFINE_string("model", "cnn_small", "Main model.")
_EXTRA_MODELS = flags.DEFINE_list("extra_models", ["cnn_medium"], "Models of the model-size table.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "64", "128", "256"], "Batch sizes of the batch-size table.")
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", 10, "k of PGD-k.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed run.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs (interleaved rounds); medians are reported.", lower_bound=1)
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 0.5, "Shortest timed run (s); faster steps repeat more often.",
                                  lower_bound=0.0)
_RSS_FLAGFILE = flags.DEFINE_string("rss_flagfile", "configs/smoke_synthetic.cfg",
                                    "Training run whose peak RSS is measured ('' to skip).")
_AUTOATTACK_EXAMPLES = flags.DEFINE_integer("autoattack_examples", 1000, "Test examples of the autoattack_s_per_1k "
                                            "figure (0 skips it).", lower_bound=0)
_AUTOATTACK_MODEL = flags.DEFINE_string("autoattack_model", "", "Saved model (.keras) the AutoAttack figure attacks, "
                                        "e.g. RUN/models/dense.keras of a reference run ('': PGD-train a cnn_small "
                                        "on Fashion-MNIST for --autoattack_train_epochs).")
_AUTOATTACK_TRAIN_EPOCHS = flags.DEFINE_integer("autoattack_train_epochs", 2, "PGD epochs of that model.",
                                                lower_bound=1)


def main(argv):
  del argv
  config = benchmark.BenchConfig(model=_MODEL.value, batch_size=_BATCH_SIZE.value, pgd_steps=_PGD_STEPS.value,
                                 steps=_STEPS.value, repeats=_REPEATS.value, min_seconds=_MIN_SECONDS.value,
                                 extra_models=tuple(_EXTRA_MODELS.value),
                                 batch_sizes=tuple(int(b) for b in _BATCH_SIZES.value),
                                 autoattack=autoattack_benchmark.AutoAttackBenchConfig(
                                     examples=_AUTOATTACK_EXAMPLES.value, model_path=_AUTOATTACK_MODEL.value,
                                     train_epochs=_AUTOATTACK_TRAIN_EPOCHS.value, pgd_steps=_PGD_STEPS.value)
                                 if _AUTOATTACK_EXAMPLES.value else None)
  figures = benchmark.run_benchmark(config, log=print)
  if _RSS_FLAGFILE.value:
    with tempfile.TemporaryDirectory() as output_dir:
      figures["peak_rss"] = benchmark.peak_rss_of_run(_RSS_FLAGFILE.value, output_dir, ("--noexport",))
  print(benchmark.format_table(figures))
  report.atomic_write(os.path.abspath(_OUTPUT.value), json.dumps(figures, indent=2, sort_keys=True) + "\n")
  print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
