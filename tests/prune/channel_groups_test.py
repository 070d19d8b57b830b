"""Tests of tfrobprune.prune.channel_groups: which layers a removed channel reaches, and what cannot be shrunk."""

from absl.testing import absltest
import numpy as np

from tfrobprune.keras_compat import keras
from tfrobprune import models
from tfrobprune.prune import channel_groups
from tfrobprune.prune import wrapping
from tests.prune import channel_test_utils

layers = keras.layers


def _by_name(groups):
  return {group.name: group for group in groups}


def _conv_then(layer, filters=4):
  """Input(6, 6, 2) -> Conv2D 'conv' (filters) -> `layer` -> Flatten -> Dense 'logits' (3)."""
  inputs = keras.Input((6, 6, 2))
  x = layer(layers.Conv2D(filters, 3, padding="same", name="conv")(inputs))
  return keras.Model(inputs, layers.Dense(3, name="logits")(layers.Flatten(name="flatten")(x)))


class ChannelGroupsTest(absltest.TestCase):

  def testCnnSmall_GroupsFollowTheFlattenAndTheLogitsKeepTheirUnits(self):
    groups = _by_name(channel_groups.channel_groups(models.build_model("cnn_small", (12, 12, 1), 10, seed=0)))
    self.assertEqual(list(groups), ["conv1", "conv2", "fc1"])
    self.assertEqual(groups["conv1"].consumers, (channel_groups.Consumer("conv2", 1),))
    # 12x12 -> 6x6 -> 3x3: fc1 reads conv2's 32 channels at 9 positions.
    self.assertEqual(groups["conv2"].consumers, (channel_groups.Consumer("fc1", 9),))
    self.assertEqual((groups["conv2"].channels, groups["fc1"].channels), (32, 100))
    self.assertEqual(groups["fc1"].consumers, (channel_groups.Consumer("logits", 1),))
    reasons = channel_groups.describe_unpruned(models.build_model("cnn_small", (12, 12, 1), 10, seed=0))
    self.assertEqual(reasons, {"logits": "it is the model output"})

  def testConsumerRows_AreChannelsAtEveryFlattenedPosition(self):
    consumer = channel_groups.Consumer("fc", positions=3)
    self.assertEqual(list(consumer.rows(4, [1, 3])), [1, 3, 5, 7, 9, 11])

  def testResidualAdd_JoinsItsProducersBatchNormsAndConsumersIntoOneGroup(self):
    groups = _by_name(channel_groups.channel_groups(channel_test_utils.residual_model()))
    self.assertEqual(list(groups), ["a", "b", "fc"])
    self.assertEqual(groups["a"].batch_norms, ("bn_a",))
    self.assertEqual({consumer.layer for consumer in groups["a"].consumers}, {"b", "s"})
    self.assertEqual(groups["b"].producers, ("b", "s"))
    self.assertEqual(groups["b"].batch_norms, ("bn_m",))
    self.assertEqual(groups["b"].consumers, (channel_groups.Consumer("fc", 16),))

  def testWideResNet_ResidualStagesAreOneGroupEach(self):
    model = models.build_model("wrn_28_4", (8, 8, 3), 10, seed=0)
    groups = channel_groups.channel_groups(model)
    stages = [group for group in groups if len(group.producers) > 1]
    self.assertLen(stages, 3)
    for stage, (width, next_stage) in zip(stages, ((64, "g2b1"), (128, "g3b1"), (256, None))):
      prefix = stage.name[:2]
      self.assertEqual(stage.producers, (f"{prefix}b1_conv2", f"{prefix}b1_shortcut") +
                       tuple(f"{prefix}b{block}_conv2" for block in (2, 3, 4)))
      self.assertEqual(stage.channels, width)
      consumers = {consumer.layer for consumer in stage.consumers}
      self.assertEqual(consumers, {f"{prefix}b{block}_conv1" for block in (2, 3, 4)} |
                       ({f"{next_stage}_conv1", f"{next_stage}_shortcut"} if next_stage else {"logits"}))
      self.assertIn(f"{next_stage}_bn1" if next_stage else "bn_final", stage.batch_norms)
    # Every Conv2D outside the stages is a group of its own; every layer but the logits is in exactly one group.
    producers = [name for group in groups for name in group.producers]
    self.assertCountEqual(producers, [layer.name for layer in models.prunable_layers(model)
                                      if layer.name != "logits"])

  def testUnknownConsumer_IsAnErrorNamingItUnlessItsProducerIsExcluded(self):
    reshaping = _conv_then(layers.Reshape((36, 4), name="odd_reshape"))
    with self.assertRaisesRegex(ValueError, r"'odd_reshape' \(a Reshape layer\).*\['conv'\].*--prune_exclude=conv"):
      channel_groups.channel_groups(reshaping)
    self.assertEqual(channel_groups.channel_groups(reshaping, exclude_layers=("conv",)), [])

  def testCustomLayerAfterAConv_IsAnErrorNamingIt(self):
    model = _conv_then(models.Standardize([0.0] * 4, [1.0] * 4, name="my_custom"))
    with self.assertRaisesRegex(ValueError, "'my_custom' \\(a Standardize layer\\)"):
      channel_groups.channel_groups(model)

  def testChannelMixingActivation_IsAnErrorNamingIt(self):
    with self.assertRaisesRegex(ValueError, "'mixing'.*not known to be elementwise .'softmax'"):
      channel_groups.channel_groups(_conv_then(layers.Activation("softmax", name="mixing")))

  def testCustomActivation_IsNotAssumedElementwise(self):
    # An L2 normalisation over the channels: every output channel depends on every input one.
    normalise = layers.Activation(lambda z: z / (1e-6 + keras.backend.sqrt(keras.backend.sum(z * z, axis=-1,
                                                                                            keepdims=True))),
                                  name="normalise")
    with self.assertRaisesRegex(ValueError, "'normalise'.*not known to be elementwise"):
      channel_groups.channel_groups(_conv_then(normalise))
    (group,) = channel_groups.channel_groups(_conv_then(layers.Activation("gelu", name="elementwise")))
    self.assertEqual(group.name, "conv")

  def testMergeThatBroadcastsChannels_IsAnErrorNamingIt(self):
    inputs = keras.Input((6, 6, 2))
    wide = layers.Conv2D(4, 3, padding="same", name="wide")(inputs)
    narrow = layers.Conv2D(1, 3, padding="same", name="narrow")(inputs)
    x = layers.Add(name="broadcast_add")([wide, narrow])
    model = keras.Model(inputs, layers.Dense(3, name="logits")(layers.Flatten()(x)))
    with self.assertRaisesRegex(ValueError, r"'broadcast_add' \(a merge that broadcasts channels\)"):
      channel_groups.channel_groups(model)

  def testChannelwiseLayersPassTheGroupOn(self):
    model = _conv_then(layers.Dropout(0.5, name="drop"))
    (group,) = channel_groups.channel_groups(model)
    self.assertEqual(group.consumers, (channel_groups.Consumer("logits", 36),))

  def testResidualWithTheModelInput_CannotBePruned(self):
    inputs = keras.Input((6, 6, 2))
    x = layers.Add(name="add")([inputs, layers.Conv2D(2, 3, padding="same", name="conv")(inputs)])
    x = layers.Conv2D(3, 3, name="conv2")(x)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(layers.Flatten()(x)))
    self.assertEqual([group.name for group in channel_groups.channel_groups(model)], ["conv2"])
    self.assertEqual(channel_groups.describe_unpruned(model)["conv"], "the model input")

  def testSharedLayersWrappedModelsAndUnknownExclusions_AreRefused(self):
    inputs = keras.Input((5,))
    shared = layers.Dense(5, name="shared")
    model = keras.Model(inputs, layers.Dense(2)(shared(shared(inputs))))
    with self.assertRaisesRegex(ValueError, r"more than once: \['shared'\]"):
      channel_groups.channel_groups(model)
    cnn = models.build_model("cnn_small", (12, 12, 1), 10, seed=0)
    wrapped = wrapping.fixed_mask_prune(cnn, {"conv1": np.ones(cnn.get_layer("conv1").kernel.shape)})
    with self.assertRaisesRegex(ValueError, "strip the pruning wrappers"):
      channel_groups.channel_groups(wrapped)
    with self.assertRaisesRegex(ValueError, r"exclude_layers names layers \['nope'\]"):
      channel_groups.channel_groups(cnn, exclude_layers=("nope",))

  def testExcludedLayer_KeepsItsChannels(self):
    model = models.build_model("cnn_small", (12, 12, 1), 10, seed=0)
    groups = channel_groups.channel_groups(model, exclude_layers=("conv1",))
    self.assertEqual([group.name for group in groups], ["conv2", "fc1"])
    self.assertIn("exclude_layers", channel_groups.describe_unpruned(model, ("conv1",))["conv1"])


if __name__ == "__main__":
  absltest.main()
