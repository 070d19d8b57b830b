"""Tests for tfrobprune.prune.drivers: pruning steps follow optimizer steps; masks chosen at the schedule's turns."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

import prune_test_utils  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import drivers  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402
from tfrobprune.prune import pruning_schedules  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402
from tfrobprune.robust import objectives  # noqa: E402
from tfrobprune.train import training  # noqa: E402


def _batches(epoch, steps=4, batch=16):
  """`steps` batches of random 12x12x1 images with 10 labels, different in each epoch."""
  rng = np.random.default_rng(epoch)
  x = rng.random((steps * batch,) + prune_test_utils.IMAGE_SHAPE, np.float32)
  y = rng.integers(0, 10, steps * batch)
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)


class PruningStepDriverTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("FiveInferencePassesPerStep", 5, 1),
      ("TwoTrainingPassesPerStep", 0, 2),
  )
  def testPruningStep_FollowsOptimizerSteps(self, inference_calls, training_calls):
    config = pruning_config.PruningConfig(0.5, end_step=100, frequency=100)
    model = magnitude.prune_model(prune_test_utils.cnn_small(), config)
    loop = prune_test_utils.Loop(model, inference_calls=inference_calls, training_calls=training_calls).run(4)
    for step, steps in enumerate(loop.step_log):
      self.assertEqual(set(steps.values()), {step + training_calls})
    loop.end_epoch()
    self.assertEqual(set(prune_test_utils.pruning_steps(model).values()), {4})
    self.assertEqual(loop.driver.step, 4)

  def testDriver_RaisesWhenAStepMakesNoTrainingPass(self):
    model = magnitude.prune_model(prune_test_utils.cnn_small(), pruning_config.PruningConfig(0.5))
    driver = drivers.PruningStepDriver(model)
    with self.assertRaisesRegex(RuntimeError, "on_train_begin"):
      driver.on_step_begin(0)
    driver.on_train_begin()
    driver.on_step_begin(0)
    model(np.zeros((1,) + prune_test_utils.IMAGE_SHAPE, np.float32))  # inference only
    with self.assertRaisesRegex(RuntimeError, "training=True"):
      driver.on_step_begin(1)

  def testDriver_WritesSummariesToLogDir(self):
    log_dir = self.create_tempdir().full_path
    model = magnitude.prune_model(prune_test_utils.cnn_small(), pruning_config.PruningConfig(0.5, schedule="constant"))
    prune_test_utils.Loop(model, log_dir=log_dir).run(1).end_epoch()
    self.assertTrue(any(name.startswith("events") for name in os.listdir(log_dir)))


class DriverWithTheRealTrainerTest(tf.test.TestCase, parameterized.TestCase):
  """`training.train` with a robust objective: attack passes must not count, each optimizer step must."""

  @parameterized.named_parameters(("Pgd", "pgd"), ("Trades", "trades"))
  def testPruningStepEqualsOptimizerIterationsAfterEachEpoch_AndTheScheduleIsFollowed(self, objective_name):
    config = pruning_config.PruningConfig(0.75, schedule="polynomial", begin_step=0, end_step=8, frequency=2)
    model = magnitude.prune_model(prune_test_utils.cnn_small(), config)
    objective = objectives.make_objective(objectives.ObjectiveConfig(name=objective_name, eps=0.1, pgd_steps=3), 10)
    trainer = training.Trainer(model, objective,
                               training.make_optimizer(training.TrainConfig(epochs=3, learning_rate=1e-3), 4))
    driver = drivers.PruningStepDriver(model)
    seen = []

    def epoch_end(epoch, metrics):
      del epoch, metrics
      seen.append((int(trainer.optimizer.iterations.numpy()), prune_test_utils.pruning_steps(model),
                   {name: float(np.mean(mask == 0)) for name, mask in prune_test_utils.masks(model).items()}))

    training.train(trainer, _batches, 3, pruning_driver=driver, epoch_end_fn=epoch_end)
    schedule = pruning_schedules.sparsity_schedule(config)
    # 4 steps per epoch; masks update at steps 0, 2, 4, 6, 8, so after epochs 1 and 2 at steps 2 and 6.
    expected_sparsity = [float(schedule(k + 1)[1]) for k in (2, 6, 8)]
    self.assertEqual([iterations for iterations, _, _ in seen], [4, 8, 12])
    for (iterations, steps, sparsities), sparsity in zip(seen, expected_sparsity):
      self.assertEqual(set(steps.values()), {iterations})
      for name, actual in sparsities.items():
        self.assertAlmostEqual(actual, sparsity, delta=0.01, msg=f"{name} after {iterations} steps")
    self.assertLess(expected_sparsity[0], expected_sparsity[1] - 0.1)  # the ramp is seen mid-way
    self.assertAlmostEqual(expected_sparsity[-1], 0.75, places=5)
    driver.finalize()
    stripped = wrapping.strip(model)
    self.assertEqual(set(prune_test_utils.masks(model)), {"conv1", "conv2", "fc1", "logits"})
    for name in prune_test_utils.masks(model):
      kernel = stripped.get_layer(name).kernel.numpy()
      self.assertAlmostEqual(float(np.mean(kernel == 0)), 0.75, delta=0.01, msg=name)


class ScheduledMaskDriverTest(tf.test.TestCase):
  """Masks chosen by the caller at the schedule's turns (gradual pruning by a criterion other than magnitude)."""

  def _chooser(self, calls):
    """Prunes the *largest* weights (anything but magnitude), recording each call."""

    def choose_masks(model, sparsity, step):
      calls.append(dict(step=step, sparsity=sparsity, wrapped=any(hasattr(layer, "pruning_vars")
                                                                  for layer in model.layers),
                        kernels={name: model.get_layer(name).kernel.numpy() for name in ("conv2", "fc1")}))
      masks = {}
      for name in ("conv2", "fc1"):
        magnitudes = np.abs(model.get_layer(name).kernel.numpy()).ravel()
        mask = np.ones(magnitudes.size, np.float32)
        mask[np.argsort(-magnitudes, kind="stable")[:int(round(sparsity * magnitudes.size))]] = 0
        masks[name] = mask.reshape(model.get_layer(name).kernel.shape)
      calls[-1]["masks"] = masks
      return masks

    return choose_masks

  def _wrapped(self):
    dense = prune_test_utils.cnn_small()
    ones = {name: np.ones(dense.get_layer(name).kernel.shape, np.float32) for name in ("conv2", "fc1")}
    return wrapping.fixed_mask_prune(dense, ones)

  def testChoosesMasksAtTheScheduleTurns_AndTrainsUnderThem(self):
    model, calls = self._wrapped(), []
    config = pruning_config.PruningConfig(target_sparsity=0.8, schedule="polynomial", begin_step=0, end_step=8,
                                          frequency=2)
    schedule = pruning_schedules.sparsity_schedule(config)
    driver = drivers.ScheduledMaskDriver(model, schedule, self._chooser(calls))
    prune_test_utils.Loop(model, driver=driver).run(12)
    driver.finalize()
    # Step 0's turn has sparsity 0 and is skipped; tfmot's schedule answers for step k at k + 1.
    self.assertEqual([call["step"] for call in calls], [2, 4, 6, 8])
    self.assertAllClose([call["sparsity"] for call in calls], [float(schedule(k + 1)[1]) for k in (2, 4, 6, 8)])
    self.assertAlmostEqual(calls[-1]["sparsity"], 0.8, places=5)
    self.assertFalse(any(call["wrapped"] for call in calls))
    # Each choice sees the weights as training left them: the previous turn's zeros applied, the rest moved on.
    for before, after in zip(calls, calls[1:]):
      for name in ("conv2", "fc1"):
        kept = before["masks"][name] == 1
        self.assertAllEqual(after["kernels"][name][~kept], np.zeros(np.sum(~kept)))
        self.assertNotAllClose(after["kernels"][name][kept], before["kernels"][name][kept])
    for name in ("conv2", "fc1"):
      self.assertAllEqual(prune_test_utils.masks(model)[name], calls[-1]["masks"][name])
      pruned = calls[-1]["masks"][name] == 0
      self.assertAllEqual(model.get_layer(f"prune_low_magnitude_{name}").layer.kernel.numpy()[pruned],
                          np.zeros(np.sum(pruned)))

  def testRejectsMasksForOtherLayers_NamingThem(self):
    model = self._wrapped()
    config = pruning_config.PruningConfig(target_sparsity=0.5, schedule="constant", begin_step=1)
    driver = drivers.ScheduledMaskDriver(model, pruning_schedules.sparsity_schedule(config),
                                         lambda stripped, sparsity, step: {"fc1": np.ones((288, 100))})
    with self.assertRaisesRegex(ValueError, "conv2"):
      prune_test_utils.Loop(model, driver=driver).run(3)


if __name__ == "__main__":
  tf.test.main()
