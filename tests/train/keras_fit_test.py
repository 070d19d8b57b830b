"""Tests for tfrobprune.train.keras_fit: robust training and pruning through `model.fit`, with Keras' callbacks."""

import glob
import os

from absl.testing import absltest
import numpy as np

from tfrobprune.api import fit
from tfrobprune.api import settings
from tfrobprune.keras_compat import keras, tf
from tfrobprune.prune import stats
from tfrobprune.robust import layer_support
from tfrobprune.robust import objectives
from tfrobprune.train import keras_fit
from tfrobprune.train import training
import tensorflow_model_optimization as tfmot  # noqa: I100  (after keras_compat)
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

layers = keras.layers
_STEPS_PER_EPOCH = 8
_PGD = settings.Objective("pgd", eps=0.05, pgd_steps=2)


def _residual_model(seed=0):
  """6x6x1 images -> conv -> residual block (conv + Add) -> 3 logits."""
  init = keras.initializers.GlorotUniform(seed=seed)
  inputs = keras.Input((6, 6, 1))
  x = layers.Conv2D(8, 3, padding="same", kernel_initializer=init, name="conv1")(inputs)
  x = layers.ReLU(name="relu1")(x)
  y = layers.Conv2D(8, 3, padding="same", kernel_initializer=init, name="conv2")(x)
  x = layers.ReLU(name="relu2")(layers.Add(name="add")([x, y]))
  outputs = layers.Dense(3, kernel_initializer=init, name="logits")(layers.Flatten(name="flatten")(x))
  return keras.Model(inputs, outputs, name="residual")


def _batches(n=_STEPS_PER_EPOCH * 32, seed=0):
  """Three classes told apart by brightness, in batches of 32."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  x = np.clip(rng.normal(0.2 + 0.3 * y[:, None, None, None], 0.1, (n, 6, 6, 1)), 0, 1).astype(np.float32)
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)


def _robust(epochs, sparsity=0.8, objective=_PGD, seed=0):
  pruned = fit.prune_for_fit(_residual_model(seed), settings.Pruning(sparsity=sparsity, frequency=2),
                             steps=epochs * _STEPS_PER_EPOCH)
  robust = keras_fit.RobustModel(pruned, objective)
  robust.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[keras.metrics.SparseCategoricalAccuracy("acc")])
  return robust


def _pruning_steps(model):
  return {int(wrapper.pruning_step.numpy()) for wrapper in pruning_wrapper.collect_prunable_layers(model)}


class _StopAtEpoch(keras.callbacks.Callback):
  """Raises at the start of epoch `epoch` (0-based), as a killed process would stop."""

  def __init__(self, epoch):
    super().__init__()
    self.epoch = epoch

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == self.epoch:
      raise RuntimeError("interrupted")


class RobustModelFitTest(tf.test.TestCase):

  def testFit_PruningStepFollowsOptimizerSteps_ReachesTargetSparsity_CallbacksWrite(self):
    robust = _robust(epochs=3)
    log_dir = self.create_tempdir().full_path
    history = robust.fit(_batches(), epochs=3, verbose=0, callbacks=[
        keras.callbacks.TensorBoard(os.path.join(log_dir, "tb")),
        tfmot.sparsity.keras.PruningSummaries(os.path.join(log_dir, "pruning"))])
    self.assertEqual(int(robust.optimizer.iterations.numpy()), 3 * _STEPS_PER_EPOCH)
    self.assertEqual(_pruning_steps(robust.inner), {3 * _STEPS_PER_EPOCH})
    self.assertEqual(int(robust.schedule_step.numpy()), 3 * _STEPS_PER_EPOCH)
    self.assertSameElements(history.history, ["loss", "robust_loss", "robust_acc", "eps"])
    self.assertLess(history.history["loss"][-1], history.history["loss"][0])
    stripped = robust.stripped()
    self.assertAllClose(stats.parameter_counts(stripped)["sparsity"], 0.8, atol=0.01)
    self.assertFalse(any(isinstance(layer, pruning_wrapper.PruneLowMagnitude) for layer in stripped.layers))
    self.assertNotEmpty(glob.glob(os.path.join(log_dir, "tb", "train", "events.*")))
    self.assertNotEmpty(glob.glob(os.path.join(log_dir, "pruning", "metrics", "events.*")))
    logs = robust.evaluate(_batches(seed=1), verbose=0, return_dict=True)
    self.assertSameElements(logs, ["loss", "natural_acc", "acc"])
    self.assertAllClose(logs["natural_acc"], logs["acc"])
    self.assertGreater(logs["natural_acc"], 0.5)
    predictions = robust.predict(_batches(seed=1), verbose=0)
    self.assertAllClose(predictions, stripped.predict(_batches(seed=1), verbose=0), atol=1e-5)

  def testBackupAndRestore_InterruptedFitResumesWithPruningInStep(self):
    backup = keras.callbacks.BackupAndRestore(self.create_tempdir().full_path)
    with self.assertRaisesRegex(RuntimeError, "interrupted"):
      _robust(epochs=3).fit(_batches(), epochs=3, verbose=0, callbacks=[backup, _StopAtEpoch(2)])
    resumed = _robust(epochs=3)  # a new process: the same model built again
    history = resumed.fit(_batches(), epochs=3, verbose=0, callbacks=[backup])
    self.assertLen(history.epoch, 1)  # epochs 1 and 2 came from the backup
    self.assertEqual(int(resumed.optimizer.iterations.numpy()), 3 * _STEPS_PER_EPOCH)
    self.assertEqual(_pruning_steps(resumed.inner), {3 * _STEPS_PER_EPOCH})
    self.assertAllClose(stats.parameter_counts(resumed.stripped())["sparsity"], 0.8, atol=0.01)

  def testEarlyStopping_StopsBeforeTheLastEpoch(self):
    robust = _robust(epochs=5, objective=settings.Objective("natural"))
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=0)
    history = robust.fit(_batches(), epochs=5, verbose=0, callbacks=[stop])
    self.assertLen(history.epoch, 2)
    self.assertEqual(_pruning_steps(robust.inner), {2 * _STEPS_PER_EPOCH})

  def testNonFiniteLoss_StopsFitWithoutTouchingTheWeights(self):
    robust = _robust(epochs=1, objective=settings.Objective("natural"))
    before = [w.numpy().copy() for w in robust.inner.trainable_weights]
    bad = _batches().map(lambda x, y: (x * np.nan, y))
    with self.assertRaisesRegex(training.NonFiniteLossError, "not finite"):
      robust.fit(bad, epochs=1, verbose=0)
    self.assertEqual(int(robust.optimizer.iterations.numpy()), 0)
    for old, new in zip(before, robust.inner.trainable_weights):
      self.assertAllEqual(old, new)


class RobustModelArgumentsTest(tf.test.TestCase):

  def testCompileWithALoss_IsRefusedNamingTheObjective(self):
    robust = keras_fit.RobustModel(_residual_model(), objectives.ObjectiveConfig(name="natural"))
    with self.assertRaisesRegex(ValueError, "loss is its objective \\('natural'\\)"):
      robust.compile(optimizer="adam", loss="mse")

  def testEpochRampWithoutStepsPerEpoch_NamesTheMissingArgument(self):
    with self.assertRaisesRegex(ValueError, "steps_per_epoch"):
      keras_fit.RobustModel(_residual_model(), settings.Objective("pgd", eps=0.1, eps_ramp_epochs=1))
    robust = keras_fit.RobustModel(_residual_model(), settings.Objective("pgd", eps=0.1, eps_ramp_epochs=1.5),
                                   steps_per_epoch=8)
    self.assertEqual(robust.objective_config.eps_ramp_steps, 12)

  def testIbpOnAnUnsupportedLayer_RaisesNamingTheLayer(self):
    inputs = keras.Input((6, 6, 1))
    x = layers.LayerNormalization(name="norm")(layers.Flatten()(inputs))
    model = keras.Model(inputs, layers.Dense(3)(x))
    with self.assertRaisesRegex(layer_support.UnsupportedModelError, "'norm' \\(LayerNormalization\\)"):
      keras_fit.RobustModel(model, settings.Objective("ibp", eps=0.1))
    keras_fit.RobustModel(model, settings.Objective("trades", eps=0.1))  # attacks need gradients only

  def testPruneForFit_RefusesSweepsAndRounds(self):
    with self.assertRaisesRegex(ValueError, "one target in one round"):
      fit.prune_for_fit(_residual_model(), settings.Pruning(sparsity=(0.5, 0.9)), steps=10)
    with self.assertRaisesRegex(ValueError, "one target in one round"):
      fit.prune_for_fit(_residual_model(), settings.Pruning(rounds=2), steps=10)


if __name__ == "__main__":
  absltest.main()
