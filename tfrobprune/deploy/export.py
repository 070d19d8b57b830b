"""Export: a TF Serving SavedModel and LiteRT (TFLite) flatbuffers, each proved by loading it and re-measuring it.

`export_all` writes every artifact, loads each back in the runtime a user would use (the SavedModel by
`tf.saved_model.load` in a fresh Python process, each flatbuffer by LiteRT's `Interpreter`), re-evaluates it on the
same test and adversarial examples as the Keras model and writes the manifest. One concept per module beside this
one: `saved_model` (the signature, TF Serving's layout), `tflite` (the conversion variants), `pqat`
(pruning-preserving quantization-aware training), `tflite_runner` (LiteRT, with the XNNPACK fallback),
`saved_model_verification` (the fresh process), `artifact_verification` and `metrics` (re-measuring), `manifest`.

Layout written by `export_all(model, output_dir, ...)`
------------------------------------------------------
    output_dir/export/
      saved_model/<model_name>/<version>/   TF Serving layout; versions are integers 1, 2, ...
      tflite/<variant>.tflite              one flatbuffer per variant (`tflite.TFLITE_VARIANTS`; dense_float32,
                                           pqat_int8)
      manifest.json                        sizes raw and gzipped, sha256, sparsity, quantization, source run,
                                           the runtime setting each artifact needed, the re-measured accuracy and
                                           each flatbuffer's own robust accuracy (Square on its interpreter)

Besides the variants of `tflite`: 'dense_float32', the float32 variant of the dense (unpruned) model, the size
baseline; 'pqat_int8' (`pqat`), when asked for.
"""

import os

from tfrobprune.deploy import artifact_verification
from tfrobprune.deploy import checks
from tfrobprune.deploy import manifest
from tfrobprune.deploy import pqat
from tfrobprune.deploy import tflite
from tfrobprune.robust import square

DENSE_BASELINE = "dense_float32"
SAVED_MODEL = "saved_model"


def export_all(model, output_dir, *, model_name, x_test, y_test, x_adv, keras_predictions, representative_images,
               source_run, sparsity, variants=tflite.TFLITE_VARIANTS, dense_model=None, pqat_data=None,
               pqat_epochs=1, square_eps=None, square_norm="linf",
               square_examples=artifact_verification.DEFAULT_SQUARE_EXAMPLES, square_queries=square.STANDARD_QUERIES,
               square_seed=0):
  """Exports the SavedModel and every TFLite variant, loads each back, re-measures it and writes the manifest.

  Every artifact is evaluated on the examples the Keras model was evaluated on: benign accuracy on
  (x_test, y_test) and transfer PGD accuracy on x_adv, the adversarial examples found against the Keras model (so
  an artifact's transfer_pgd_acc is that of those fixed examples, which is what the Keras pgd_acc counts; it is
  not the artifact's own robustness). Each flatbuffer is also attacked directly: Square against its LiteRT
  interpreter on the first `square_examples` test examples (`square_acc`). The SavedModel is loaded in a fresh
  process; each flatbuffer with LiteRT (`tflite_runner.TFLiteRunner`, one thread).

  Args:
    model: the stripped, pruned Keras 2 model.
    output_dir: the run directory; artifacts go to output_dir/export (see the module docstring).
    model_name: TF Serving's model name (the SavedModel's directory name).
    x_test: float32 [N, H, W, C] test images in [0, 1].
    y_test: int64 [N] labels.
    x_adv: float32 [N, H, W, C] adversarial versions of x_test (same labels).
    keras_predictions: int64 [N] the Keras model's classes on x_test ('agreement' compares with these).
    representative_images: training images in [0, 1] to calibrate the int8 variants with quantized activations.
    source_run: JSON-compatible facts about the run that produced the model (config, sparsity report, ...), copied
      into the manifest.
    sparsity: the model's sparsity (fraction of zero kernel weights), copied into the manifest.
    variants: the TFLite variants to write (`tflite.TFLITE_VARIANTS` by default).
    dense_model: the dense (unpruned) Keras model, if available: exported as 'dense_float32' so the other sizes
      have a baseline. Its agreement and logit difference are against the dense Keras model itself; its
      transfer_pgd_acc is on x_adv, i.e. on examples found against the pruned model; its square_acc is its own.
    pqat_data: (training images, labels), if given: also fine-tune with pruning-preserving QAT (`pqat.export_pqat`)
      and export the result as 'pqat_int8'; its agreement is against the model before QAT.
    pqat_epochs: QAT fine-tuning epochs.
    square_eps: radius of the Square attack on each flatbuffer (the Keras evaluation's eps); None: no attack.
    square_norm: 'linf' or 'l2'.
    square_examples: attack the first N test examples (0: no attack).
    square_queries: Square's iterations per example.
    square_seed: seeds Square (the same search for every flatbuffer).

  Returns:
    {artifact name: figures} for report['artifacts'], artifacts 'saved_model', each variant, 'pqat_int8' and
    'dense_float32' (the last two when asked for);
    figures are 'bytes', 'gzip_bytes', 'benign_acc', 'transfer_pgd_acc', 'agreement' (fraction of x_test
    predictions equal to keras_predictions), 'adversarial_agreement' (the same on x_adv), all four with tied top
    logits splitting the credit (`metrics.tie_aware_accuracy`), 'benign_ties' and 'pgd_ties' (fractions of x_test
    and x_adv whose top logit is shared by several classes), 'max_abs_logit_diff' (vs the Keras logits on x_test),
    'runtime', for each flatbuffer when attacked 'square_acc', 'square_ties', 'square_examples', 'square_queries'
    (mean per example) and 'square_seconds' (`artifact_verification.attack_with_square`) and, with a dense
    baseline, 'size_ratio_vs_dense_float' (dense float32 TFLite bytes / the artifact's bytes: 10 means ten times
    smaller).

  Raises:
    ValueError: for inconsistent inputs, an unknown variant, or a wrapped model.
    RuntimeError: if the SavedModel fails to load in the fresh process.
  """
  shape = checks.check_exportable(model)
  variants = tflite.check_variants(variants)
  data = {"x_test": checks.check_images("x_test", x_test, shape)}
  data["y_test"] = checks.check_labels("y_test", y_test, len(data["x_test"]))
  data["x_adv"] = checks.check_images("x_adv", x_adv, shape)
  if len(data["x_adv"]) != len(data["x_test"]):
    raise ValueError(f"x_adv must hold one adversarial image per test image ({len(data['x_test'])}), got "
                     f"{len(data['x_adv'])}.")
  reference = artifact_verification.keras_reference(
      model, data, checks.check_labels("keras_predictions", keras_predictions, len(data["x_test"])))
  attack = None if square_eps is None else artifact_verification.SquareSettings(
      square_eps, square_norm, square_examples, square_queries, square_seed)
  export_dir = os.path.join(output_dir, "export")
  tflite_dir = os.path.join(export_dir, "tflite")
  os.makedirs(tflite_dir, exist_ok=True)

  artifacts, details = {}, {}
  artifacts[SAVED_MODEL], details[SAVED_MODEL] = artifact_verification.verified_saved_model(
      model, os.path.join(export_dir, "saved_model"), model_name, data, reference)
  for variant in variants:
    info = tflite.export_tflite(model, os.path.join(tflite_dir, f"{variant}.tflite"), variant, representative_images)
    artifacts[variant], details[variant] = artifact_verification.verified_tflite(info, data, reference, attack)
  if pqat_data is not None:
    x_train, y_train = pqat_data
    info = pqat.export_pqat(model, x_train, y_train, os.path.join(tflite_dir, f"{pqat.PQAT_VARIANT}.tflite"),
                            pqat_epochs)
    artifacts[pqat.PQAT_VARIANT], details[pqat.PQAT_VARIANT] = artifact_verification.verified_tflite(
        info, data, reference, attack)
  if dense_model is not None:
    if checks.check_exportable(dense_model) != shape:
      raise ValueError(f"dense_model takes images of shape {dense_model.input_shape}, the model {model.input_shape}.")
    info = tflite.export_tflite(dense_model, os.path.join(tflite_dir, f"{DENSE_BASELINE}.tflite"), "float32")
    artifacts[DENSE_BASELINE], details[DENSE_BASELINE] = artifact_verification.verified_tflite(
        info, data, artifact_verification.keras_reference(dense_model, data), attack)
    for figures in artifacts.values():
      figures["size_ratio_vs_dense_float"] = artifacts[DENSE_BASELINE]["bytes"] / figures["bytes"]

  manifest.write_manifest(export_dir, model_name, artifacts, details, data, reference, source_run, sparsity, attack)
  return artifacts
