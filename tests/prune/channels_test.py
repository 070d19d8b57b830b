"""Tests of tfrobprune.prune.channels: group scores, which channels go, their masks, and gradual channel pruning."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras
from tfrobprune import models
from tfrobprune.prune import channel_groups
from tfrobprune.prune import channels
from tfrobprune.prune import drivers
from tfrobprune.prune import pruning_config
from tfrobprune.prune import pruning_schedules
from tfrobprune.prune import wrapping
from tests.prune import channel_test_utils
from tests.prune import prune_test_utils

layers = keras.layers


def _dense_bn_model():
  """Input(2) -> Dense 'fc' (3) -> BatchNorm 'bn' -> Dense 'logits' (2), with hand-set fc kernel and bn scale."""
  inputs = keras.Input((2,))
  x = layers.BatchNormalization(name="bn")(layers.Dense(3, name="fc")(inputs))
  model = keras.Model(inputs, layers.Dense(2, name="logits")(x))
  model.get_layer("fc").kernel.assign([[1.0, -2.0, 0.5], [-1.0, 2.0, 0.0]])
  model.get_layer("bn").gamma.assign([2.0, -0.5, 1.0])
  return model


class GroupScoresTest(parameterized.TestCase):

  def testScores_AreTheFilterNormTimesTheBatchNormScale(self):
    model = _dense_bn_model()
    groups = channel_groups.channel_groups(model)
    l1 = channels.group_scores(model, groups, "l1")["fc"]
    l2 = channels.group_scores(model, groups, "l2")["fc"]
    np.testing.assert_allclose(l1, [2.0 * 2.0, 4.0 * 0.5, 0.5 * 1.0])
    np.testing.assert_allclose(l2, [np.sqrt(2.0) * 2.0, np.sqrt(8.0) * 0.5, 0.5 * 1.0])

  def testResidualGroupScore_IsTheMeanOverItsProducers(self):
    model = channel_test_utils.randomise(channel_test_utils.residual_model())
    group = channel_groups.channel_groups(model)[1]
    b, s = (model.get_layer(name).kernel.numpy() for name in ("b", "s"))
    gamma = np.abs(model.get_layer("bn_m").gamma.numpy())
    norms = [np.abs(kernel).reshape(-1, 6).sum(axis=0) for kernel in (b, s)]
    np.testing.assert_allclose(channels.group_scores(model, [group], "l1")["b"], (norms[0] + norms[1]) / 2 * gamma,
                               rtol=1e-6)

  def testUnknownNorm_IsRejected(self):
    with self.assertRaisesRegex(ValueError, "norm"):
      channels.group_scores(_dense_bn_model(), [], "l3")


class ChannelsToRemoveTest(parameterized.TestCase):

  def testLayerScope_RemovesTheRoundedFractionOfEachGroupLowestFirst(self):
    scores = {"a": np.array([5.0, 1.0, 3.0, 2.0]), "b": np.array([1.0, 0.5, 2.0, 4.0, 3.0, 9.0, 8.0, 7.0])}
    removed = channels.channels_to_remove(scores, 0.5, "layer")
    self.assertEqual(list(removed["a"]), [1, 3])
    self.assertEqual(list(removed["b"]), [0, 1, 2, 4])

  def testHalfChannelCounts_RoundUpWhateverTheParity(self):
    removed = channels.channels_to_remove({"five": np.arange(5.0), "seven": np.arange(7.0)}, 0.5, "layer")
    self.assertEqual((len(removed["five"]), len(removed["seven"])), (3, 4))

  def testEveryGroupKeepsAChannel(self):
    removed = channels.channels_to_remove({"a": np.ones(2), "b": np.arange(1.0, 5.0)}, 0.9, "layer")
    self.assertEqual((len(removed["a"]), len(removed["b"])), (1, 3))
    removed = channels.channels_to_remove({"a": np.full(2, 1e-3), "b": np.arange(1.0, 9.0)}, 0.8, "global")
    self.assertLen(removed["a"], 1)
    self.assertEqual(len(removed["a"]) + len(removed["b"]), 8)  # round(0.8 * 10)

  def testGlobalScope_ComparesGroupsRelativeToTheirOwnScale(self):
    pattern = np.array([1.0, 4.0, 2.0, 8.0])
    removed = channels.channels_to_remove({"small": pattern, "large": 1000 * pattern[::-1]}, 0.5, "global")
    self.assertEqual(list(removed["small"]), [0, 2])
    self.assertEqual(list(removed["large"]), [1, 3])

  def testGlobalScope_NormalisesByTheChannelsStillPresent(self):
    # Group a lost two channels at an earlier turn (score 0); its two left score 1, at its present channels' mean.
    # Counting the removed ones would halve a's mean and rank its channels above b's 1.5.
    scores = {"a": np.array([0.0, 0.0, 1.0, 1.0]), "b": np.array([0.5, 1.5, 1.5, 0.5])}
    removed = channels.channels_to_remove(scores, 5 / 8, "global")
    self.assertEqual(list(removed["a"]), [0, 1, 2])
    self.assertEqual(list(removed["b"]), [0, 3])

  def testGlobalScope_RemovesTheFractionOfAllChannels(self):
    rng = np.random.default_rng(0)
    scores = {"a": rng.random(16), "b": rng.random(32) * 5, "c": rng.random(100)}
    removed = channels.channels_to_remove(scores, 0.6, "global")
    self.assertEqual(sum(len(indices) for indices in removed.values()), round(0.6 * 148))

  @parameterized.parameters(-0.1, 1.0)
  def testSparsityOutsideTheUnitInterval_IsRejected(self, sparsity):
    with self.assertRaisesRegex(ValueError, "sparsity"):
      channels.channels_to_remove({"a": np.ones(3)}, sparsity)


class ChannelMasksTest(absltest.TestCase):

  def testMasks_ZeroProducerColumnsAndConsumerRowsAtEveryPosition(self):
    model = models.build_model("cnn_small", prune_test_utils.IMAGE_SHAPE, 10, seed=0)
    groups = channel_groups.channel_groups(model)
    masks = channels.channel_masks(model, groups, {"conv2": np.array([1, 30]), "fc1": np.array([7])})
    self.assertEqual(sorted(masks), ["conv1", "conv2", "fc1", "logits"])
    self.assertTrue(np.all(masks["conv1"] == 1))
    self.assertTrue(np.all(masks["conv2"][..., [1, 30]] == 0))
    self.assertEqual(np.mean(masks["conv2"] == 0), 2 / 32)
    fc1_rows_removed = np.flatnonzero(np.all(masks["fc1"] == 0, axis=1))
    self.assertEqual(list(fc1_rows_removed), [p * 32 + c for p in range(9) for c in (1, 30)])
    self.assertTrue(np.all(masks["fc1"][:, 7] == 0))
    self.assertEqual(list(np.flatnonzero(np.all(masks["logits"] == 0, axis=1))), [7])
    self.assertEqual(np.mean(masks["logits"] == 0), 1 / 100)

  def testRemovedChannels_AreReadBackFromTheWrappersMasks(self):
    model = channel_test_utils.residual_model()
    groups = channel_groups.channel_groups(model)
    removed = {"a": np.array([0, 5]), "b": np.array([2]), "fc": np.array([1, 2, 6])}
    wrapped = wrapping.fixed_mask_prune(model, channels.channel_masks(model, groups, removed))
    read = channels.removed_channels(wrapped, groups)
    self.assertEqual({name: list(indices) for name, indices in read.items()},
                     {name: list(indices) for name, indices in removed.items()})

  def testWrap_NeedsAGroupAndStartsWithNothingRemoved(self):
    model = channel_test_utils.residual_model()
    groups = channel_groups.channel_groups(model)
    wrapped = channels.wrap(model, groups)
    self.assertEqual(sorted(prune_test_utils.wrappers(wrapped)), ["a", "b", "fc", "logits", "s"])
    self.assertTrue(all(np.all(mask == 1) for mask in prune_test_utils.masks(wrapped).values()))
    with self.assertRaisesRegex(ValueError, "no channel group"):
      channels.wrap(model, [])


class GradualChannelPruningTest(absltest.TestCase):

  def testScheduledDriver_RemovesWholeChannelsUpToTheTargetAndKeepsThemRemoved(self):
    model = models.build_model("cnn_small", prune_test_utils.IMAGE_SHAPE, 10, seed=0)
    groups = channel_groups.channel_groups(model)
    wrapped = channels.wrap(model, groups)
    config = pruning_config.PruningConfig(0.5, schedule="polynomial", begin_step=0, end_step=4, frequency=2)
    driver = drivers.ScheduledMaskDriver(wrapped, pruning_schedules.sparsity_schedule(config),
                                         channels.mask_chooser(groups, "l1", "layer"))
    loop = prune_test_utils.Loop(wrapped, driver=driver)
    history = []
    for _ in range(6):
      loop.run(1)
      history.append(channels.removed_channels(wrapped, groups))
    for earlier, later in zip(history, history[1:]):
      for name in earlier:
        self.assertContainsSubset(set(earlier[name]), set(later[name]), name)
    final = history[-1]
    self.assertEqual({name: len(indices) for name, indices in final.items()}, {"conv1": 8, "conv2": 16, "fc1": 50})
    self.assertLess(sum(len(indices) for indices in history[0].values()), 74)
    driver.finalize()
    stripped = wrapping.strip(wrapped)
    kernel = stripped.get_layer("conv2").kernel.numpy()
    self.assertTrue(np.all(kernel[..., final["conv2"]] == 0))
    self.assertTrue(np.all(kernel[:, :, final["conv1"], :] == 0))
    self.assertEqual(np.count_nonzero(np.abs(kernel).sum(axis=(0, 1, 2))), 16)


if __name__ == "__main__":
  absltest.main()
