"""Tests for tfrobprune.model_files: `--model=PATH`, a saved model of one's own, loaded safely and run through the
pipeline (recorded in the report, resumable) and the CLI (a missing path is a one-line error naming it)."""

import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np

from tfrobprune import cli
from tfrobprune import config as config_lib
from tfrobprune.evaluate import evaluation
from tfrobprune.keras_compat import keras, tf
from tfrobprune import model_files
from tfrobprune import pipeline
from tfrobprune.prune import pruning_config
from tfrobprune.robust import objectives
from tfrobprune.train import training

layers = keras.layers
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_QUIET = pipeline.RunOptions(progress=None, log=lambda line: None)


@keras.utils.register_keras_serializable("model_files_test")
class Halve(layers.Layer):
  """A layer class of one's own (registered, so safe mode loads it)."""

  def call(self, inputs):
    return 0.5 * inputs


def _residual_model(shape=(8, 8, 1), classes=10):
  inputs = keras.Input(shape)
  x = layers.ReLU()(layers.Conv2D(4, 3, padding="same", name="conv1")(Halve(name="halve")(inputs)))
  x = layers.ReLU()(layers.Add(name="add")([x, layers.Conv2D(4, 3, padding="same", name="conv2")(x)]))
  return keras.Model(inputs, layers.Dense(classes, name="logits")(layers.Flatten()(x)), name="mine")


def _lambda_model():
  inputs = keras.Input((4,))
  return keras.Model(inputs, layers.Dense(2)(layers.Lambda(lambda t: t * 2)(inputs)))


def _saved(model, path, **kwargs):
  model.save(path, **kwargs)
  return path


def _config(model_path, **overrides):
  pgd = objectives.ObjectiveConfig(name="pgd", eps=0.05, pgd_steps=2)
  values = dict(
      data=config_lib.DataConfig(dataset="synthetic", synthetic_examples=(256, 64), synthetic_shape=(8, 8, 1)),
      model=model_path, pretrain=training.TrainConfig(epochs=1, batch_size=32),
      pretrain_objective=pgd, finetune=training.TrainConfig(epochs=2, batch_size=32), finetune_objective=pgd,
      pruning=pruning_config.PruningConfig(target_sparsity=0.7, frequency=2), sparsities=(0.7,),
      evaluation=evaluation.EvalConfig(eps=0.05, pgd_steps=2, pgd_restarts=1, max_examples=32), export=False)
  values.update(overrides)
  return config_lib.RunConfig(**values)


class ModelSpecTest(absltest.TestCase):

  def testZooNamesAndPathsAreTold(self):
    self.assertFalse(model_files.is_model_path("cnn_small"))
    for spec in ("mine.keras", "models/mine", "/tmp/saved"):
      self.assertTrue(model_files.is_model_path(spec), spec)
    with self.assertRaisesRegex(ValueError, "model must be one of mlp.*or the path of a saved Keras model.*'cnn_smal'"):
      config_lib.RunConfig(model="cnn_smal")
    self.assertEqual(config_lib.RunConfig(model="runs/my model.keras").model, "runs/my model.keras")

  def testModelNameIsAPlainDirectoryName(self):
    self.assertEqual(model_files.model_name("cnn_small"), "cnn_small")
    self.assertEqual(model_files.model_name("/tmp/x/my model.keras"), "my_model")
    self.assertEqual(model_files.model_name("/tmp/x/saved_model_dir/"), "saved_model_dir")
    self.assertEqual(model_files.model_name("/tmp/.keras"), "model")


class LoadModelFileTest(tf.test.TestCase):

  def testKerasFileAndSavedModelFolder_LoadTheSameModel(self):
    model = _residual_model()
    x = np.random.default_rng(0).random((3, 8, 8, 1), np.float32)
    folder = self.create_tempdir().full_path
    for path, kwargs in ((os.path.join(folder, "mine.keras"), {}),
                         (os.path.join(folder, "saved"), {"save_format": "tf"})):
      with self.subTest(path=path):
        loaded = model_files.load_model_file(_saved(model, path, **kwargs))
        self.assertIsInstance(loaded.get_layer("halve"), Halve)
        self.assertAllClose(loaded(x), model(x), atol=1e-6)

  def testMissingCorruptAndNonModelPaths_AreNamed(self):
    folder = self.create_tempdir().full_path
    corrupt = os.path.join(folder, "corrupt.keras")
    with open(corrupt, "wb") as handle:
      handle.write(b"not a zip archive")
    truncated = os.path.join(folder, "truncated.keras")
    with open(_saved(_residual_model(), os.path.join(folder, "whole.keras")), "rb") as source:
      data = source.read()
    with open(truncated, "wb") as handle:
      handle.write(data[:len(data) // 2])
    cases = [(os.path.join(folder, "missing.keras"), "does not exist"), (corrupt, "not a .keras archive"),
             (truncated, "Cannot load the model"), (self.create_tempdir().full_path, "must be a SavedModel")]
    for path, reason in cases:
      with self.subTest(path=path):
        with self.assertRaisesRegex(ValueError, f"{path!r}.*{reason}|{reason}.*{path!r}|{path!r}: {reason}"):
          model_files.load_model_file(path)

  def testPythonLambdas_AreRefusedInBothFormats(self):
    folder = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, "lambda.*safe_mode"):
      model_files.load_model_file(_saved(_lambda_model(), os.path.join(folder, "lambda.keras")))
    with self.assertRaisesRegex(ValueError, "'lambda(_[0-9]+)?' \\(Lambda\\) could not be rebuilt from its config"):
      model_files.load_model_file(_saved(_lambda_model(), os.path.join(folder, "lambda"), save_format="tf"))

  def testModelThatDoesNotFitTheData_IsNamed(self):
    model = _residual_model()
    with self.assertRaisesRegex(ValueError, "'mine.keras' takes inputs of shape \\(8, 8, 1\\).*\\(28, 28, 1\\)"):
      model_files.check_fits_data(model, (28, 28, 1), 10, "mine.keras")
    with self.assertRaisesRegex(ValueError, "one logit per class \\(3,\\)"):
      model_files.check_fits_data(model, (8, 8, 1), 3, "mine.keras")

  def testModelRescalingBy1Over255_IsWarnedAbout(self):
    inputs = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(2)(keras.layers.Flatten()(inputs))
    rescaled = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(
        keras.layers.Rescaling(1 / 255)(inputs))))
    with self.assertLogs(level="WARNING") as logs:
      model_files.check_fits_data(rescaled, (4, 4, 1), 2, "bytes.keras")
    self.assertIn("'bytes.keras' starts with Rescaling(1/255)", "\n".join(logs.output))
    with self.assertNoLogs(level="WARNING"):
      model_files.check_fits_data(keras.Model(inputs, dense), (4, 4, 1), 2, "plain.keras")


class PipelineWithModelPathTest(tf.test.TestCase):

  def testRunStartsFromTheSavedModelRecordsItsPathAndResumes(self):
    path = _saved(_residual_model(), os.path.join(self.create_tempdir().full_path, "mine.keras"))
    output_dir = self.create_tempdir().full_path
    report = pipeline.run(_config(path), output_dir, _QUIET)
    self.assertEqual(report["config"]["model"], path)
    self.assertAllClose(report["pruned"]["sparsity"], 0.7, atol=0.01)
    pruned = pipeline.load_model(pipeline.final_model_path(output_dir, _config(path)))
    self.assertEqual([type(layer).__name__ for layer in pruned.layers],
                     [type(layer).__name__ for layer in _residual_model().layers])
    lines = []
    again = pipeline.run(_config(path), output_dir, pipeline.RunOptions(log=lines.append))
    self.assertEqual(again["pruned"], report["pruned"])
    self.assertTrue(any(line.startswith("Resuming") for line in lines), lines)

  def testZeroPretrainingEpochs_KeepTheSavedWeightsAsTheDenseModel(self):
    model = _residual_model()
    path = _saved(model, os.path.join(self.create_tempdir().full_path, "mine.keras"))
    output_dir = self.create_tempdir().full_path
    pipeline.run(_config(path, pretrain=training.TrainConfig(epochs=0, batch_size=32)), output_dir, _QUIET)
    dense = pipeline.load_model(os.path.join(output_dir, "models", "dense.keras"))
    for saved, kept in zip(model.get_weights(), dense.get_weights()):
      self.assertAllEqual(saved, kept)

  def testMissingPathOrAModelOfTheWrongShape_FailsBeforeTraining(self):
    folder = self.create_tempdir().full_path
    wrong = _saved(_residual_model(classes=3), os.path.join(folder, "three_classes.keras"))
    for path, pattern in ((os.path.join(folder, "gone.keras"), "gone.keras' does not exist"),
                          (wrong, "one logit per class \\(10,\\)")):
      with self.subTest(path=path):
        output_dir = self.create_tempdir().full_path
        with self.assertRaisesRegex(ValueError, pattern):
          pipeline.run(_config(path), output_dir, _QUIET)
        self.assertFalse(os.path.exists(os.path.join(output_dir, "models")))


class CliModelPathTest(absltest.TestCase):

  @flagsaver.flagsaver(model="runs/mine.keras")
  def testModelFlagTakesAPath(self):
    self.assertEqual(cli.config_from_flags().model, "runs/mine.keras")

  def testMissingPath_IsAOneLineErrorNamingIt(self):
    output_dir = self.create_tempdir().full_path
    missing = os.path.join(output_dir, "nothing_here.keras")
    result = subprocess.run(
        [sys.executable, "-m", "tfrobprune.cli", "train", f"--model={missing}", "--dataset=synthetic",
         "--synthetic_examples=64,16", "--synthetic_shape=8,8,1", "--batch_size=16", "--noprogress", "--noexport",
         f"--output_dir={output_dir}"],
        capture_output=True, text=True, cwd=_ROOT, timeout=300,
        env=dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn("Traceback", result.stderr)
    self.assertIn(f"tfrobprune: error: Model {missing!r} does not exist", result.stderr)


if __name__ == "__main__":
  absltest.main()
