"""Each artifact loaded back in its runtime and re-measured on the examples the Keras model was measured on.

Nothing is assumed to work because a converter returned: the SavedModel is loaded in a fresh Python process
(`saved_model_verification`), each flatbuffer in LiteRT (`tflite_runner`, one thread). Each artifact yields
(report figures, manifest details); the figures score its outputs against the labels and against the Keras
model's outputs, tied top logits splitting the credit (`metrics.tie_aware_accuracy`).
"""

import os

import numpy as np

from tfrobprune.deploy import artifact_files
from tfrobprune.deploy import metrics
from tfrobprune.deploy import saved_model
from tfrobprune.deploy import saved_model_verification
from tfrobprune.deploy import tflite_runner

_BATCH = 128  # images per Keras call and, at most, per LiteRT invoke


def _keras_logits(model, images):
  return np.concatenate([model(images[start:start + _BATCH], training=False).numpy()
                         for start in range(0, len(images), _BATCH)] or [np.zeros((0, model.output_shape[-1]))])


def _figures(logits, adversarial_logits, reference, data):
  """Accuracies and agreement of an artifact's outputs with its Keras model on the same examples (ties split)."""
  return {
      "benign_acc": metrics.tie_aware_accuracy(logits, data["y_test"]),
      "pgd_acc": metrics.tie_aware_accuracy(adversarial_logits, data["y_test"]),
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


def verified_tflite(info, data, reference):
  """(report figures, manifest details) of a written flatbuffer, re-measured with LiteRT on one thread."""
  path = info["path"]
  runner = tflite_runner.TFLiteRunner(path, num_threads=1, batch=max(1, min(_BATCH, len(data["x_test"]))))
  figures = _figures(runner.predict(data["x_test"]), runner.predict(data["x_adv"]), reference, data)
  details = {"path": os.path.relpath(path, os.path.dirname(os.path.dirname(path))), "sha256": info["sha256"],
             "quantization": info["quantization"], "sparse_encoding": info["sparse_encoding"],
             "xnnpack_error": runner.xnnpack_error}
  if "zeros_kept" in info:
    details["zeros_kept"] = info["zeros_kept"]
  return {"bytes": info["bytes"], "gzip_bytes": info["gzip_bytes"], **figures, "runtime": runner.runtime}, details


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
