"""Tests for tfrobprune.api.run_inputs: the fingerprint follows the model's weights and the data, and a directory
refuses a run on other inputs unless told to overwrite."""

import os

from absl.testing import absltest
import numpy as np

from tfrobprune.api import run_inputs
from tfrobprune.data import array_dataset
from tfrobprune.keras_compat import keras
from tfrobprune import models
from tfrobprune.train import checkpointing


def _dataset(shift=0.0):
  rng = np.random.default_rng(0)
  x = np.clip(rng.uniform(0, 1, (20, 4, 4, 1)) + shift, 0, 1).astype(np.float32)
  return array_dataset.ArrayDataset("api", x[:16], np.arange(16) % 2, x[16:], np.arange(4) % 2, ("a", "b"))


class RunInputsTest(absltest.TestCase):

  def testFingerprint_IsStableAndFollowsWeightsAndData(self):
    model, data = models.build_model("mlp", (4, 4, 1), 2, seed=0), _dataset()
    digest = run_inputs.fingerprint(model, data)
    self.assertEqual(run_inputs.fingerprint(models.build_model("mlp", (4, 4, 1), 2, seed=0), _dataset()), digest)
    self.assertNotEqual(run_inputs.fingerprint(models.build_model("mlp", (4, 4, 1), 2, seed=1), data), digest)
    self.assertNotEqual(run_inputs.fingerprint(model, _dataset(shift=0.01)), digest)

  def testFingerprint_FollowsTheArchitectureNotTheLayerNames(self):
    def model(activation, name):
      built = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3),
                                keras.layers.Dense(2, activation=activation, name=name)])
      built.set_weights([np.full(w.shape, 0.1, np.float32) for w in built.get_weights()])
      return built
    data = _dataset()
    digest = run_inputs.fingerprint(model("relu", "head"), data)
    self.assertEqual(run_inputs.fingerprint(model("relu", "other_name"), data), digest)
    self.assertNotEqual(run_inputs.fingerprint(model("tanh", "head"), data), digest)  # same weights, other function

  def testOtherInputs_AreRefusedOnceTheRunStarted_UnlessOverwriting(self):
    directory = self.create_tempdir().full_path
    run_inputs.check_and_record(directory, "a" * 64)
    run_inputs.check_and_record(directory, "c" * 64)  # no run started (a call that failed its checks): free
    run_inputs.check_and_record(directory, "a" * 64)
    with open(os.path.join(directory, checkpointing.PROGRESS_FILE), "w") as handle:
      handle.write("{}")
    run_inputs.check_and_record(directory, "a" * 64)  # the same inputs resume
    with self.assertRaisesRegex(ValueError, "holds a run of another model or other data.*overwrite=True"):
      run_inputs.check_and_record(directory, "b" * 64)
    run_inputs.check_and_record(directory, "b" * 64, overwrite=True)
    with open(os.path.join(directory, run_inputs.FILE_NAME)) as handle:
      self.assertEqual(handle.read().strip(), "b" * 64)


if __name__ == "__main__":
  absltest.main()
