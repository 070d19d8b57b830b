"""Tests for tfrobprune.deploy.macs: multiply-accumulates per example, checked against hand counts."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import macs  # noqa: E402
from tfrobprune.keras_compat import keras, tf  # noqa: E402
from tfrobprune import models  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402

layers = keras.layers


def _sequential(shape, *body):
  return keras.Sequential([keras.Input(shape=shape), *body])


class CountMacsTest(tf.test.TestCase, parameterized.TestCase):

  def testConv2D3x3With4FiltersOn8x8x2Same_IsOutputPositionsTimesKernel(self):
    model = _sequential((8, 8, 2), layers.Conv2D(4, 3, padding="same"))
    self.assertEqual(macs.count_macs(model), 8 * 8 * 4 * 3 * 3 * 2)

  def testDense10To5_Is50(self):
    self.assertEqual(macs.count_macs(_sequential((10,), layers.Dense(5))), 50)

  @parameterized.named_parameters(
      ("strided_valid_conv", (9, 9, 3), layers.Conv2D(8, 3, strides=2), 4 * 4 * 8 * 3 * 3 * 3),
      ("grouped_conv", (6, 6, 4), layers.Conv2D(6, 1, groups=2), 6 * 6 * 6 * 1 * 1 * 2),
      ("depthwise", (6, 6, 3), layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), 6 * 6 * 3 * 2 * 9),
      ("separable", (6, 6, 3), layers.SeparableConv2D(5, 3, padding="same"), 6 * 6 * (3 * 9 + 3 * 5)),
      ("dense_on_a_sequence", (7, 4), layers.Dense(2), 7 * 4 * 2),
      ("conv1d", (10, 2), layers.Conv1D(3, 5), 6 * 3 * 5 * 2),
  )
  def testEachLayerKind_MatchesTheHandCount(self, shape, layer, expected):
    self.assertEqual(macs.count_macs(_sequential(shape, layer)), expected)

  def testElementwiseLayersCostNothing(self):
    inputs = keras.Input((8, 8, 2))
    x = layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(layers.Add()([x, inputs]))
    x = layers.GlobalAveragePooling2D()(layers.MaxPooling2D()(x))
    model = keras.Model(inputs, layers.Dense(3, name="head")(x))
    self.assertEqual(macs.layer_macs(model), {"conv": 8 * 8 * 2 * 9 * 2, "head": 2 * 3})

  def testCnnSmall_MatchesTheHandCount(self):
    model = models.build_model("cnn_small", (28, 28, 1), 10, seed=0)
    expected = {"conv1": 14 * 14 * 16 * 4 * 4 * 1, "conv2": 7 * 7 * 32 * 4 * 4 * 16, "fc1": 7 * 7 * 32 * 100,
                "logits": 100 * 10}
    self.assertEqual(macs.layer_macs(model), expected)
    self.assertEqual(macs.count_macs(model), sum(expected.values()))

  def testDmLarge_MatchesTheHandCount(self):
    model = models.build_model("dm_large", (28, 28, 1), 10, seed=0)
    expected = (28 * 28 * 64 * 9 * 1 + 28 * 28 * 64 * 9 * 64 + 14 * 14 * 128 * 9 * 64 + 2 * 14 * 14 * 128 * 9 * 128 +
                14 * 14 * 128 * 512 + 512 * 10)
    self.assertEqual(macs.count_macs(model), expected)

  def testResidualZooModel_CountsEveryConvAndDenseLayer(self):
    model = models.build_model("wrn_28_4", (32, 32, 3), 10, seed=0)
    counts = macs.layer_macs(model)
    self.assertEqual(list(counts), [layer.name for layer in models.prunable_layers(model)])
    self.assertEqual(counts["conv_stem"], 32 * 32 * 16 * 9 * 3)
    self.assertEqual(counts["g3b1_shortcut"], 8 * 8 * 256 * 1 * 128)

  def testNarrowerCopy_CostsAsTheRemovedChannelsPredict(self):
    dense = models.build_model("cnn_small", (28, 28, 1), 10, seed=0)
    narrow = deploy_test_utils.narrower_copy(dense, 0.5)
    full, half = macs.layer_macs(dense), macs.layer_macs(narrow)
    self.assertEqual(half["conv1"] * 2, full["conv1"])  # half the filters
    self.assertEqual(half["conv2"] * 4, full["conv2"])  # half the inputs and half the filters
    self.assertEqual(half["fc1"] * 4, full["fc1"])
    self.assertEqual(half["logits"] * 2, full["logits"])  # half the inputs, every class kept

  def testTfmotWrappedAndUnstructuredPrunedModels_CostAsMuchAsTheDenseModel(self):
    dense = models.build_model("cnn_small", (28, 28, 1), 10, seed=0)
    wrapped = magnitude.prune_model(dense, pruning_config.PruningConfig(0.9, schedule="constant"))
    self.assertTrue(any(isinstance(layer, layers.Wrapper) for layer in wrapped.layers))
    self.assertEqual(macs.layer_macs(wrapped), macs.layer_macs(dense))
    stripped = wrapping.strip(wrapping.fixed_mask_prune(dense, deploy_test_utils.magnitude_masks(dense, 0.9)))
    self.assertEqual(macs.count_macs(stripped), macs.count_macs(dense))  # zeros are still multiplied

  def testNestedModel_CountsItsLayers(self):
    inner = _sequential((10,), layers.Dense(5, name="inner_dense"))
    outer = _sequential((10,), inner, layers.Dense(2, name="outer_dense"))
    self.assertEqual(macs.layer_macs(outer), {"inner_dense": 50, "outer_dense": 10})

  def testUnsupportedWeightedLayer_RaisesNamingIt(self):
    model = _sequential((8, 8, 2), layers.Conv2DTranspose(3, 3, name="upsample"))
    with self.assertRaisesRegex(ValueError, "'upsample'.*Conv2DTranspose"):
      macs.count_macs(model)
    with self.assertRaisesRegex(ValueError, "'lookup'"):
      macs.count_macs(_sequential((4,), layers.Embedding(10, 3, name="lookup")))

  def testPReLU_CostsNothingLikeOtherActivations(self):
    model = _sequential((4, 4, 2), layers.Conv2D(3, 3, padding="same", name="conv"), layers.PReLU(name="prelu"))
    self.assertEqual(macs.layer_macs(model), {"conv": 16 * 9 * 2 * 3})

  def testSharedLayer_RaisesInsteadOfCountingOneCall(self):
    inputs = keras.Input((6,))
    shared = layers.Dense(6, name="shared")
    model = keras.Model(inputs, shared(shared(inputs)))
    with self.assertRaisesRegex(ValueError, "'shared' is called 2 times"):
      macs.count_macs(model)

  def testUnknownInputSize_RaisesNamingTheLayer(self):
    model = _sequential((None, None, 1), layers.Conv2D(2, 3, name="conv"))
    with self.assertRaisesRegex(ValueError, "fixed input size.*'conv'"):
      macs.count_macs(model)


if __name__ == "__main__":
  tf.test.main()
