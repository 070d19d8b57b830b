"""Proof that a SavedModel stands alone: loaded in a fresh Python process and measured through its signature.

The child process imports only this module and what it needs (not `tfrobprune.models`, where the `Standardize`
class lives), so a SavedModel that needed tfrobprune's Keras classes to load would fail here, not in TF Serving.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from tfrobprune.deploy import checks
from tfrobprune.deploy import metrics
from tfrobprune.deploy import saved_model
from tfrobprune.keras_compat import tf

_BATCH = 128  # images per call of the signature
_SUBPROCESS_TIMEOUT_S = 900
_CHILD_CODE = ("import sys; from tfrobprune.deploy import saved_model_verification; "
               "sys.exit(saved_model_verification._verify_main(sys.argv[1:]))")


def _describe_signature(function):
  """{'inputs': {name: [dtype, shape]}, 'outputs': {...}} of a concrete (signature) function."""
  _, inputs = function.structured_input_signature
  return {
      "inputs": {name: [spec.dtype.name, spec.shape.as_list()] for name, spec in sorted(inputs.items())},
      "outputs": {name: [spec.dtype.name, spec.shape.as_list()]
                  for name, spec in sorted(function.structured_outputs.items())},
  }


def _serve_in_batches(signature, images):
  outputs = [signature(**{saved_model.INPUT_NAME: tf.constant(images[start:start + _BATCH])})
             for start in range(0, len(images), _BATCH)]
  if not outputs:
    return np.zeros((0,), np.int64), np.zeros((0, signature.structured_outputs["logits"].shape[-1]), np.float32)
  return (np.concatenate([out["classes"].numpy() for out in outputs]),
          np.concatenate([out["logits"].numpy() for out in outputs]))


def _verify_main(argv):
  """The fresh process of `verify_saved_model_in_subprocess`: load, call the signature, write the predictions."""
  export_path, arrays_path, result_path = argv
  with np.load(arrays_path, allow_pickle=False) as arrays:
    images, adversarial = arrays["images"], arrays["adversarial"]
  signature = tf.saved_model.load(export_path).signatures[saved_model.SIGNATURE_KEY]
  classes, logits = _serve_in_batches(signature, images)
  adversarial_classes, adversarial_logits = _serve_in_batches(signature, adversarial)
  info = {
      "signature": _describe_signature(signature),
      "tensorflow": tf.__version__,
      # The Standardize layer's class lives in tfrobprune.models: not importing it shows the export is standalone.
      "loaded_without_tfrobprune_models": "tfrobprune.models" not in sys.modules,
  }
  np.savez(result_path, classes=classes, logits=logits, adversarial_classes=adversarial_classes,
           adversarial_logits=adversarial_logits, info=np.array(json.dumps(info)))
  return 0


def _package_root():
  """The directory holding the `tfrobprune` package (three levels above tfrobprune/deploy/<this file>)."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def verify_saved_model_in_subprocess(export_path, images, labels, adversarial=None):
  """Loads the SavedModel in a fresh Python process and measures it through its `serving_default` signature.

  The child process runs `sys.executable` with this package's root prepended to PYTHONPATH, imports only
  `tfrobprune.deploy.saved_model_verification` and what it imports (not `tfrobprune.models`, where the
  `Standardize` class lives), loads the export with `tf.saved_model.load` and calls the signature. Arrays travel
  through temporary .npz files (read with `allow_pickle=False`).

  Args:
    export_path: a version directory written by `saved_model.export_saved_model`.
    images: float32 [N, H, W, C] test images in [0, 1].
    labels: int64 [N] labels.
    adversarial: float32 [M, H, W, C] adversarial images for the same labels (M == N), or None.

  Returns:
    A dict with 'benign_acc', 'transfer_pgd_acc' (accuracy on `adversarial`, None without it), 'predictions' and
    'adversarial_predictions' (int64 classes from the signature), 'logits' and 'adversarial_logits', 'signature'
    (input and output dtypes and shapes), 'tensorflow' (the version that loaded it),
    'loaded_without_tfrobprune_models' and 'runtime'.

  Raises:
    RuntimeError: if the child process fails (its stderr is in the message).
  """
  images = np.asarray(images, np.float32)
  labels = checks.check_labels("labels", labels, len(images))
  adversarial = np.zeros((0,) + images.shape[1:], np.float32) if adversarial is None else np.asarray(
      adversarial, np.float32)
  if len(adversarial) not in (0, len(images)):
    raise ValueError(f"adversarial must have one image per label ({len(images)}), got {len(adversarial)}.")
  with tempfile.TemporaryDirectory(prefix="tfrobprune-verify-") as work:
    arrays_path, result_path = os.path.join(work, "arrays.npz"), os.path.join(work, "result.npz")
    np.savez(arrays_path, images=images, adversarial=adversarial)
    _run_child([_CHILD_CODE, os.path.abspath(export_path), arrays_path, result_path], export_path)
    with np.load(result_path, allow_pickle=False) as result:
      arrays = {key: result[key] for key in ("classes", "logits", "adversarial_classes", "adversarial_logits")}
      info = json.loads(str(result["info"]))
  return {
      "benign_acc": metrics.accuracy(arrays["classes"], labels),
      "transfer_pgd_acc": metrics.accuracy(arrays["adversarial_classes"], labels) if len(adversarial) else None,
      "predictions": arrays["classes"],
      "adversarial_predictions": arrays["adversarial_classes"],
      "logits": arrays["logits"],
      "adversarial_logits": arrays["adversarial_logits"],
      "runtime": f"tf.saved_model.load in a fresh process (TensorFlow {info['tensorflow']})",
      **info,
  }


def _run_child(args, export_path):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
  try:
    done = subprocess.run([sys.executable, "-c", *args], env=env, capture_output=True, text=True,
                          timeout=_SUBPROCESS_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as error:
    raise RuntimeError(f"Verifying the SavedModel {export_path} took over {_SUBPROCESS_TIMEOUT_S} s.") from error
  if done.returncode:
    raise RuntimeError(f"Loading the SavedModel {export_path} in a fresh process failed (exit {done.returncode}):\n"
                       f"{done.stderr[-4000:]}")
