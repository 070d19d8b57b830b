"""What a `robust_prune` run was started on, so that rerunning it on another model or other data cannot resume it.

A rerun with the same output directory resumes (the CLI's behaviour). The run's config names the caller's model by
its file in the output directory and the data only as 'api', so a rerun with an edited model or other arrays would
otherwise compare equal, overwrite the model file, and return the earlier run's models and report as its own. The
fingerprint is a SHA-256 of the model's architecture and weights and of the data's arrays, kept beside the run.
"""

import hashlib
import json
import os

import numpy as np

from tfrobprune import report
from tfrobprune.train import checkpointing

FILE_NAME = "run_inputs.sha256"


def _architecture(model):
  """Each layer's class and configuration without its name (Keras numbers unnamed layers per process)."""
  return json.dumps([[type(layer).__name__, {key: value for key, value in layer.get_config().items() if key != "name"}]
                     for layer in model.layers], sort_keys=True, default=str)


def fingerprint(model, dataset):
  """SHA-256 hex digest of `model` (its layers' classes and configurations, every weight) and `dataset` (its four
  arrays and their shapes)."""
  digest = hashlib.sha256(_architecture(model).encode())
  arrays = list(model.get_weights()) + [dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test]
  for array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def check_and_record(output_dir, digest, overwrite=False):
  """Raises a ValueError if `output_dir` holds a run started on other inputs (unless `overwrite`); records `digest`.

  Only a started run (its `progress.json`) counts: a fingerprint left by a call that failed before its run began
  (say, on a layer the objective cannot train through) does not hold the directory. A run from before fingerprints
  takes this one.
  """
  path = os.path.join(output_dir, FILE_NAME)
  started = os.path.exists(os.path.join(output_dir, checkpointing.PROGRESS_FILE))
  if started and not overwrite and os.path.exists(path):
    with open(path) as handle:
      recorded = handle.read().strip()
    if recorded != digest:
      raise ValueError(f"{output_dir} holds a run of another model or other data ({FILE_NAME} differs); use another "
                       "output_dir, or overwrite=True to discard that run.")
  report.atomic_write(path, digest + "\n")
