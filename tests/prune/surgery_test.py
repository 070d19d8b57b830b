"""Tests of tfrobprune.prune.surgery: the shrunken model computes what the channel-masked model computes, on every
zoo model, keeps the logits, saves and loads, bounds soundly and trains with every robust objective."""

import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.prune import channel_groups
from tfrobprune.prune import channels
from tfrobprune.prune import surgery
from tfrobprune.prune import wrapping
from tfrobprune.robust import crown_ibp
from tfrobprune.robust import interval_propagation
from tfrobprune.robust import intervals
from tfrobprune.robust import objectives
from tfrobprune.train import training
from tests.prune import channel_test_utils

_SMALL_IMAGES = (12, 12, 1)


def _widths(model):
  return {layer.name: int(layer.kernel.shape[-1]) for layer in models.prunable_layers(model)}


def _assert_same_outputs(test, expected, actual):
  scale = max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)
  test.assertGreater(float(np.std(expected)), 0.0)


class ShrinkTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("mlp", "mlp", _SMALL_IMAGES, "layer"),
      ("cnn_small", "cnn_small", _SMALL_IMAGES, "layer"),
      ("cnn_small_global", "cnn_small", _SMALL_IMAGES, "global"),
      ("cnn_medium", "cnn_medium", _SMALL_IMAGES, "global"),
      ("dm_large", "dm_large", _SMALL_IMAGES, "layer"),
      ("vgg16", "vgg16", (32, 32, 3), "layer"),
      ("wrn_28_4", "wrn_28_4", (8, 8, 3), "global"),
  )
  def testShrunkenZooModel_ComputesWhatTheMaskedModelComputes(self, name, shape, scope):
    model = channel_test_utils.randomise(models.build_model(name, shape, 10, seed=0))
    masked, shrunken, groups, removed = channel_test_utils.masked_and_shrunken(model, 0.5, scope)
    x = channel_test_utils.images(shape)
    _assert_same_outputs(self, masked(x, training=False).numpy(), shrunken(x, training=False).numpy())
    if any(group.batch_norms for group in groups):  # batch statistics are per channel too
      _assert_same_outputs(self, masked(x, training=True).numpy(), shrunken(x, training=True).numpy())
    self.assertEqual(shrunken.output_shape, (None, 10))
    dense_widths, widths = _widths(model), _widths(shrunken)
    self.assertEqual(widths["logits"], 10)
    for group in groups:
      for producer in group.producers:
        self.assertEqual(widths[producer], dense_widths[producer] - len(removed[group.name]), producer)
    self.assertLess(shrunken.count_params(), 0.6 * model.count_params())

  @parameterized.parameters("layer", "global")
  def testShrunkenResidualModel_BatchNormAddAndFlattenOverPositions_ComputesWhatTheMaskedModelComputes(self, scope):
    model = channel_test_utils.randomise(channel_test_utils.residual_model())
    masked, shrunken, _, removed = channel_test_utils.masked_and_shrunken(model, 0.5, scope)
    self.assertTrue(removed["b"].size and removed["fc"].size, removed)  # the residual group and the Flatten's reader
    x = channel_test_utils.images((8, 8, 3))
    for training in (False, True):  # moving statistics, then batch statistics
      _assert_same_outputs(self, masked(x, training=training).numpy(), shrunken(x, training=training).numpy())

  def testShrunkenLayers_LoseTheRemovedInputsAndBatchNormParameters(self):
    model = channel_test_utils.randomise(channel_test_utils.residual_model())
    removed = {"a": [0, 5], "b": [2], "fc": [1, 2, 6]}
    shrunken = surgery.shrink(model, channel_groups.channel_groups(model), removed)
    kept_a, kept_b = [1, 2, 3, 4, 6, 7], [0, 1, 3, 4, 5]
    layer = shrunken.get_layer
    self.assertEqual(layer("a").filters, 6)
    np.testing.assert_array_equal(layer("bn_a").moving_mean.numpy(),
                                  model.get_layer("bn_a").moving_mean.numpy()[kept_a])
    for name in ("b", "s"):
      self.assertEqual(layer(name).filters, 5)
      np.testing.assert_array_equal(layer(name).kernel.numpy(),
                                    model.get_layer(name).kernel.numpy()[:, :, kept_a][..., kept_b])
      np.testing.assert_array_equal(layer(name).bias.numpy(), model.get_layer(name).bias.numpy()[kept_b])
    self.assertEqual([w.shape for w in layer("bn_m").get_weights()], [(5,)] * 4)
    rows = [p * 6 + c for p in range(16) for c in kept_b]  # flatten order: position-major, channel-minor
    kept_fc = [0, 3, 4, 5]
    np.testing.assert_array_equal(layer("fc").kernel.numpy(), model.get_layer("fc").kernel.numpy()[rows][:, kept_fc])
    np.testing.assert_array_equal(layer("logits").kernel.numpy(), model.get_layer("logits").kernel.numpy()[kept_fc])
    self.assertEqual(layer("logits").units, 4)

  def testGroupLosingEveryChannel_IsRefused(self):
    model = channel_test_utils.residual_model()
    groups = channel_groups.channel_groups(model)
    with self.assertRaisesRegex(ValueError, "'fc' would lose all its 7 channels"):
      surgery.shrink(model, groups, {"fc": np.arange(7)})

  def testIndexOutsideTheGroup_IsRefusedByMasksAndSurgeryAlike(self):
    model = channel_test_utils.residual_model()
    groups = channel_groups.channel_groups(model)
    for removed in ({"fc": [-1]}, {"fc": [7]}):
      with self.assertRaisesRegex(ValueError, r"'fc' has channels 0..6; cannot remove"):
        surgery.shrink(model, groups, removed)
      with self.assertRaisesRegex(ValueError, r"'fc' has channels 0..6; cannot remove"):
        channels.channel_masks(model, groups, removed)

  def testChannelSparsity_IsTheFractionOfOutputChannelsRemoved(self):
    model = models.build_model("cnn_small", _SMALL_IMAGES, 10, seed=0)
    _, shrunken, _, _ = channel_test_utils.masked_and_shrunken(model, 0.5)
    self.assertEqual(surgery.channel_sparsity(model, shrunken), {"conv1": 0.5, "conv2": 0.5, "fc1": 0.5,
                                                                  "logits": 0.0})

  def testShrunkenModel_SavesAndLoadsAsAFullKerasModel(self):
    model = channel_test_utils.randomise(models.build_model("cnn_small", _SMALL_IMAGES, 10, seed=0))
    _, shrunken, _, _ = channel_test_utils.masked_and_shrunken(model, 0.5)
    path = os.path.join(self.create_tempdir().full_path, "shrunken.keras")
    shrunken.save(path)
    loaded = keras.models.load_model(path, custom_objects={"Standardize": models.Standardize}, safe_mode=True,
                                     compile=False)
    self.assertEqual(_widths(loaded), _widths(shrunken))
    x = channel_test_utils.images(_SMALL_IMAGES)
    np.testing.assert_array_equal(loaded(x).numpy(), shrunken(x).numpy())

  def testWrappedModel_IsRefused(self):
    model = models.build_model("cnn_small", _SMALL_IMAGES, 10, seed=0)
    masked, _, groups, removed = channel_test_utils.masked_and_shrunken(model)
    wrapped = wrapping.fixed_mask_prune(masked, {"conv1": np.ones((4, 4, 1, 16))})
    with self.assertRaisesRegex(ValueError, "unwrapped model"):
      surgery.shrink(wrapped, groups, removed)


class RobustTrainingOfShrunkenModelsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    model = channel_test_utils.randomise(models.build_model("cnn_small", _SMALL_IMAGES, 10, seed=0))
    for layer in model.layers:  # smaller weights keep the random network's logits and bounds in a sane range
      if layer.weights:
        layer.set_weights([0.3 * weight for weight in layer.get_weights()])
    self.masked, self.shrunken, _, _ = channel_test_utils.masked_and_shrunken(model, 0.5)
    self.x = channel_test_utils.images(_SMALL_IMAGES, count=16)
    self.y = np.arange(16) % 10

  def testIntervalBoundsOfTheShrunkenModel_EqualTheMaskedModelsAndHoldEverySample(self):
    box = intervals.IntervalBounds.from_epsilon(self.x, 0.05)
    masked = interval_propagation.propagate_bounds(self.masked, box)
    shrunken = interval_propagation.propagate_bounds(self.shrunken, box)
    _assert_same_outputs(self, masked.lower.numpy(), shrunken.lower.numpy())
    _assert_same_outputs(self, masked.upper.numpy(), shrunken.upper.numpy())
    rng = np.random.default_rng(0)
    for _ in range(8):
      sample = rng.uniform(box.lower.numpy(), box.upper.numpy()).astype(np.float32)
      logits = self.shrunken(sample).numpy()
      self.assertTrue(np.all(logits >= shrunken.lower.numpy() - 1e-5))
      self.assertTrue(np.all(logits <= shrunken.upper.numpy() + 1e-5))

  def testCrownIbpMarginsOfTheShrunkenModel_EqualTheMaskedModels(self):
    masked = crown_ibp.crown_ibp_margin_bounds(self.masked, self.x, self.y, 0.05, 10).numpy()
    shrunken = crown_ibp.crown_ibp_margin_bounds(self.shrunken, self.x, self.y, 0.05, 10).numpy()
    _assert_same_outputs(self, masked, shrunken)

  @parameterized.parameters("pgd", "trades", "ibp", "crown_ibp")
  def testRobustObjective_TrainsTheShrunkenModelWithTheMaskedModelsLoss(self, name):
    config = objectives.ObjectiveConfig(name=name, eps=0.05, pgd_steps=3, crown_beta_final=1.0)
    objective = objectives.make_objective(config, 10, seed=0)
    step = tf.constant(10 ** 6, tf.int64)  # past any ramp
    masked_loss, _ = objective(self.masked, self.x, self.y, step)
    shrunken_loss, _ = objective(self.shrunken, self.x, self.y, step)
    np.testing.assert_allclose(float(shrunken_loss), float(masked_loss), rtol=1e-3)
    before = [weight.numpy() for weight in self.shrunken.trainable_weights]
    trainer = training.Trainer(self.shrunken, objective, keras.optimizers.Adam(1e-2))
    metrics = trainer.train_step(tf.constant(self.x), tf.constant(self.y))
    self.assertEqual(float(metrics["finite"]), 1.0)
    self.assertTrue(any(np.any(b != a.numpy()) for b, a in zip(before, self.shrunken.trainable_weights)))


if __name__ == "__main__":
  absltest.main()
