"""`robust_prune`: a model and data of one's own through the whole pipeline, from Python.

It is the CLI's run with `--model=PATH`: the caller's model is saved into the output directory (`<model name>.keras`),
the settings become the `RunConfig` the matching flags would give (`settings.run_config`), and `pipeline.run` does
the rest with the caller's data handed over. So the API and the CLI pre-train, prune, fine-tune, evaluate, export,
report and resume alike; rerunning the same call with the same output directory resumes it, and a rerun on
another model or other data is refused (`run_inputs`).
"""

import contextlib
import os
import tempfile

from absl import logging

from tfrobprune.api import run_inputs
from tfrobprune.api import settings
from tfrobprune.api import user_data
from tfrobprune.keras_compat import require_keras2_model
from tfrobprune import model_files
from tfrobprune import pipeline
from tfrobprune.robust import interval_propagation

__all__ = ["robust_prune", "input_model_path"]


def input_model_path(output_dir, model):
  """Where the caller's model is saved: OUTPUT_DIR/<model name>.keras, outside models/ (which `overwrite` clears);
  the name is also the export's (TF Serving's model name)."""
  return os.path.join(output_dir, model_files.model_name(f"./{model.name}.keras") + ".keras")


@contextlib.contextmanager
def _run_directory(output_dir):
  if output_dir is not None:
    yield output_dir
    return
  with tempfile.TemporaryDirectory(prefix="tfrobprune-") as directory:
    yield directory


def robust_prune(model, train_data, test_data, *, objective=settings.DEFAULT_OBJECTIVE, pruning=settings.Pruning(),
                 training=settings.Training(), evaluation=settings.Evaluation(), pretrain_objective=None,
                 output_dir=None, export=True, seed=0, deterministic=False, overwrite=False, log=None, progress=None):
  """Robustly pre-trains, prunes and fine-tunes `model` (Sehwag et al., 2019), then evaluates and exports it.

  ```python
  pruned, report = tfrobprune.robust_prune(
      model, (x_train, y_train), (x_test, y_test),
      objective=tfrobprune.Objective("pgd", eps=0.1), pruning=tfrobprune.Pruning(sparsity=0.9),
      training=tfrobprune.Training(pretrain_epochs=10, finetune_epochs=5), output_dir="runs/mine")
  print(report["pruned"]["pgd_acc"], report["pruned"]["sparsity"])
  ```

  Args:
    model: a built `tf_keras` Sequential or functional model (branches and residual adds are fine) from images in
      [0, 1] to logits, one input and one output; its weights are where pre-training starts. Custom layer classes
      must be registered with `keras.utils.register_keras_serializable` (the run saves and reloads models) and,
      for the bound objectives, have a bound rule (`tfrobprune.bounds.register_layer`). The model is not changed.
    train_data: `(images, labels)` arrays or a finite `tf.data.Dataset` of `(image, label)` (elements or batches;
      it is read once). Images float in [0, 1] (or uint8), labels class indices.
    test_data: the same for the test split (evaluation, export checks).
    objective: an `Objective` for pre-training and fine-tuning (fine-tuning without the epsilon ramp, as the CLI);
      by default the CLI's, PGD at eps 0.1.
    pruning: a `Pruning`.
    training: a `Training` (`pretrain_epochs=0` prunes the model's weights as given).
    evaluation: an `Evaluation` (or an `evaluation.EvalConfig`, used as is).
    pretrain_objective: another `Objective` for pre-training only, or None.
    output_dir: where the report, models, checkpoints and exports go (the CLI's --output_dir); None runs in a
      temporary directory that is removed afterwards, without exports.
    export: write the SavedModel and TFLite artifacts (into output_dir/export).
    seed: seeds data order, attacks and evaluation subsets.
    deterministic: TensorFlow op determinism (bit-identical reruns; slower).
    overwrite: discard an earlier run in `output_dir` instead of resuming it.
    log: a function taking one line of progress text (default: absl logging).
    progress: None, or a progress-bar factory (see `training.train`).

  Returns:
    (the last pruned model, stripped: a plain Keras model with the sparse weights; the report dict, as written to
    output_dir/report.json).

  Raises:
    ValueError: bad settings or data, a layer the objective cannot train through (named), a model that does not
      fit the data or has several inputs or outputs, or an output directory holding a run with other settings, or
      of another model or other data (`overwrite` discards it).
    TypeError: `model` is not a Keras 2 model.
  """
  require_keras2_model(model)
  interval_propagation.check_single_input_output(model)
  dataset = user_data.array_dataset_of(train_data, test_data, int(model.output_shape[-1]))
  with _run_directory(output_dir) as directory:
    pipeline.prepare_output_dir(directory)
    run_inputs.check_and_record(directory, run_inputs.fingerprint(model, dataset), overwrite=overwrite)
    model_path = pipeline.save_model(model, input_model_path(directory, model))
    config = settings.run_config(
        model_path, objective=objective, pruning=pruning, training_settings=training,
        evaluation_settings=evaluation, pretrain_objective=pretrain_objective, seed=seed,
        deterministic=deterministic, export=export and output_dir is not None)
    options = pipeline.RunOptions(progress=progress, log=log or logging.info, overwrite=overwrite)
    report = pipeline.run(config, directory, options, dataset=dataset)
    return pipeline.load_model(pipeline.final_model_path(directory, config)), report
