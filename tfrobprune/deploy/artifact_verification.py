"""Each artifact loaded back in its runtime and re-measured on the examples the Keras model was measured on.

Nothing is assumed to work because a converter returned: the SavedModel is loaded in a fresh Python process
(`saved_model_verification`), each flatbuffer in LiteRT (`tflite_runner`, one thread). Each artifact yields
(report figures, manifest details); the figures score its outputs against the labels and against the Keras
model's outputs, tied top logits splitting the credit (`metrics.tie_aware_accuracy`).

Two robust accuracies per flatbuffer: `transfer_pgd_acc`, on the adversarial examples found against the Keras model
(a transfer attack: it says how the file does on those points, not how robust the file is), and `square_acc`, the
Square attack (`robust.square`) run against the LiteRT interpreter itself: a quantized file has its own decision
boundary, which only an attack on the file can probe.
"""

import dataclasses
import os
import time

from absl import logging
import numpy as np

from tfrobprune.deploy import artifact_files
from tfrobprune.deploy import metrics
from tfrobprune.deploy import saved_model
from tfrobprune.deploy import saved_model_verification
from tfrobprune.deploy import tflite_runner
from tfrobprune.robust import square

_BATCH = 128  # images per Keras call and, at most, per LiteRT invoke
DEFAULT_SQUARE_EXAMPLES = 1000
# Images per LiteRT invoke under Square: the still-robust examples shrink to a few, and each invoke is padded to this.
_SQUARE_BATCH = 32


@dataclasses.dataclass(frozen=True)
class SquareSettings:
  """Square against each flatbuffer on the first `examples` test examples (0: not run).

  Attributes:
    eps: radius of the attack's ball (pixel scale), the Keras evaluation's.
    norm: 'linf' or 'l2'.
    examples: the first N test examples attacked (0: none).
    queries: iterations per example (AutoAttack's standard 5000).
    seed: seeds the search; the same for every artifact, so float files retrace the Keras model's search.
  """
  eps: float
  norm: str = "linf"
  examples: int = DEFAULT_SQUARE_EXAMPLES
  queries: int = square.STANDARD_QUERIES
  seed: int = 0

  def __post_init__(self):
    if not 0 <= self.eps <= 1:
      raise ValueError(f"square eps must be in [0, 1], got {self.eps}.")
    if self.norm not in square.NORMS:
      raise ValueError(f"square norm must be one of {', '.join(square.NORMS)}, got {self.norm!r}.")
    if self.examples < 0 or self.queries < 0:
      raise ValueError(f"artifact_square_examples and square queries must be >= 0, got {self.examples}, "
                       f"{self.queries}.")


def _keras_logits(model, images):
  return np.concatenate([model(images[start:start + _BATCH], training=False).numpy()
                         for start in range(0, len(images), _BATCH)] or [np.zeros((0, model.output_shape[-1]))])


def _figures(logits, adversarial_logits, reference, data):
  """Accuracies and agreement of an artifact's outputs with its Keras model on the same examples (ties split)."""
  return {
      "benign_acc": metrics.tie_aware_accuracy(logits, data["y_test"]),
      "transfer_pgd_acc": metrics.tie_aware_accuracy(adversarial_logits, data["y_test"]),
      "agreement": metrics.tie_aware_accuracy(logits, reference["predictions"]),
      "adversarial_agreement": metrics.tie_aware_accuracy(adversarial_logits, reference["adversarial_predictions"]),
      "benign_ties": metrics.tie_fraction(logits),
      "pgd_ties": metrics.tie_fraction(adversarial_logits),
      "max_abs_logit_diff": float(np.max(np.abs(logits - reference["logits"]))) if len(logits) else 0.0,
  }


def keras_reference(model, data, predictions=None):
  """What an artifact is compared with: the Keras model's logits on x_test and its classes on x_test and x_adv."""
  logits = _keras_logits(model, data["x_test"])
  return {
      "logits": logits,
      "predictions": np.argmax(logits, axis=1) if predictions is None else predictions,
      "adversarial_predictions": np.argmax(_keras_logits(model, data["x_adv"]), axis=1),
  }


def verified_tflite(info, data, reference, square_settings=None):
  """(report figures, manifest details) of a written flatbuffer, re-measured with LiteRT on one thread.

  With `square_settings` (and examples > 0), the figures add the Square attack on the interpreter itself
  (`attack_with_square`).
  """
  path = info["path"]
  runner = tflite_runner.TFLiteRunner(path, num_threads=1, batch=max(1, min(_BATCH, len(data["x_test"]))))
  figures = _figures(runner.predict(data["x_test"]), runner.predict(data["x_adv"]), reference, data)
  if square_settings is not None and square_settings.examples:
    figures.update(attack_with_square(path, data["x_test"], data["y_test"], square_settings))
  details = {"path": os.path.relpath(path, os.path.dirname(os.path.dirname(path))), "sha256": info["sha256"],
             "quantization": info["quantization"], "sparse_encoding": info["sparse_encoding"],
             "xnnpack_error": runner.xnnpack_error}
  if "zeros_kept" in info:
    details["zeros_kept"] = info["zeros_kept"]
  return {"bytes": info["bytes"], "gzip_bytes": info["gzip_bytes"], **figures, "runtime": runner.runtime}, details


def attack_with_square(path, x, y, settings):
  """Square run against a LiteRT flatbuffer on the first `settings.examples` of (x, y).

  The file runs in its own interpreter (`tflite_runner.TFLiteRunner`: XNNPACK, or the builtin kernels where XNNPACK
  cannot prepare it; one thread), `_SQUARE_BATCH` images per invoke.

  Args:
    path: the .tflite file.
    x: float32 [N, H, W, C] test images in [0, 1].
    y: int [N] labels.
    settings: a `SquareSettings`.

  Returns:
    {'square_acc': accuracy of the file on the points Square found, tied top logits splitting the credit as in the
    other figures; 'square_ties': the fraction of those points whose top logit is tied; 'square_examples';
    'square_queries': the mean queries spent per example; 'square_seconds'}.
  """
  x, y = x[:settings.examples], np.asarray(y[:settings.examples])
  runner = tflite_runner.TFLiteRunner(path, num_threads=1, batch=_SQUARE_BATCH)
  logits_fn = square.tflite_logits_fn(runner)
  started = time.perf_counter()
  x_adv, _, queries = square.square_attack(logits_fn, x, y, settings.eps, n_queries=settings.queries,
                                           norm=settings.norm, seed=settings.seed, return_queries=True)
  logits = logits_fn(x_adv)
  seconds = time.perf_counter() - started
  logging.info("Square on %s (%s): %d examples, %.1f s.", os.path.basename(path), runner.runtime, len(y), seconds)
  return {"square_acc": metrics.tie_aware_accuracy(logits, y), "square_ties": metrics.tie_fraction(logits),
          "square_examples": len(y), "square_queries": float(np.mean(queries)) if len(y) else 0.0,
          "square_seconds": round(seconds, 2)}


def verified_saved_model(model, base_dir, model_name, data, reference):
  """Writes the next SavedModel version under base_dir; (report figures, manifest details), measured in a child."""
  path = saved_model.export_saved_model(model, base_dir, model_name)
  verified = saved_model_verification.verify_saved_model_in_subprocess(
      path, data["x_test"], data["y_test"], data["x_adv"])
  figures = _figures(verified["logits"], verified["adversarial_logits"], reference, data)
  size, gzip_size = artifact_files.directory_sizes(path)
  export_dir = os.path.dirname(base_dir)
  return {"bytes": size, "gzip_bytes": gzip_size, **figures, "runtime": verified["runtime"]}, {
      "path": os.path.relpath(path, export_dir), "version": int(os.path.basename(path)),
      "sha256": artifact_files.sha256(os.path.join(path, "saved_model.pb")),
      "files": {name: artifact_files.sha256(os.path.join(path, name))
                for name in artifact_files.relative_files(path)},
      "quantization": "none (float32)", "signature": verified["signature"],
      "loaded_without_tfrobprune_models": verified["loaded_without_tfrobprune_models"],
  }
