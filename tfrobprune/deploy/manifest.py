"""manifest.json: what an export holds and how each artifact was proved (sizes, checksums, re-measured figures).

Written last by `export.export_all`, beside saved_model/ and tflite/: the model name, the source run, the sparsity,
the TensorFlow and LiteRT versions, the Keras model's own accuracies, the settings of the Square attack on each
flatbuffer and, per artifact, its details (path, sha256, quantization, sparse encoding, ...) merged with its figures
(`transfer_pgd_acc`, `square_acc`, ...).
"""

import dataclasses
import datetime
import json
import os

import numpy as np

from tfrobprune.deploy import artifact_files
from tfrobprune.deploy import metrics
from tfrobprune.keras_compat import tf


def write_manifest(export_dir, model_name, artifacts, details, data, reference, source_run, sparsity,
                   square_settings=None):
  """Writes export_dir/manifest.json atomically: the export's facts and {artifact: details merged with figures}.

  `square_settings` (an `artifact_verification.SquareSettings`, or None when the files were not attacked) is
  recorded as 'square_attack'.
  """
  manifest = {
      "model_name": model_name,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "sparsity": sparsity,
      "source_run": source_run,
      "tensorflow": tf.__version__,
      "litert": _litert_version(),
      "examples": {"benign": len(data["x_test"]), "adversarial": len(data["x_adv"])},
      "square_attack": None if square_settings is None else dataclasses.asdict(square_settings),
      "keras": {"benign_acc": metrics.accuracy(reference["predictions"], data["y_test"]),
                "pgd_acc": metrics.accuracy(reference["adversarial_predictions"], data["y_test"])},
      "artifacts": {name: {**details[name], **artifacts[name]} for name in artifacts},
  }
  content = json.dumps(manifest, indent=2, default=_json)
  artifact_files.write_artifact(os.path.join(export_dir, "manifest.json"), content)


def _litert_version():
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version("ai-edge-litert")
  except Exception:  # pylint: disable=broad-except
    return None


def _json(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serializable")
