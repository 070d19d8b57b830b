"""Tests for tfrobprune.prune.magnitude: prune_model's wrapping, and the sparsities a custom loop reaches with it."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

import prune_test_utils  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import global_allocation  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402
from tfrobprune.prune import stats  # noqa: E402


class PruneModelTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(("LayerScope", "layer"), ("GlobalScope", "global"))
  def testBeforeTraining_OutputsEqualDenseModel_AndSharesNoVariables(self, scope):
    dense = prune_test_utils.cnn_small()
    pruned = magnitude.prune_model(dense, pruning_config.PruningConfig(0.8, scope=scope, exclude_layers=("conv1",)))
    x = np.random.default_rng(1).random((4,) + prune_test_utils.IMAGE_SHAPE).astype(np.float32)
    self.assertAllClose(pruned(x, training=False), dense(x, training=False), atol=1e-6)
    wrappers = prune_test_utils.wrappers(pruned)
    self.assertEqual(sorted(wrappers), ["conv2", "fc1", "logits"])
    wrappers["fc1"].layer.kernel.assign_add(tf.ones_like(wrappers["fc1"].layer.kernel))
    self.assertNotAllClose(pruned(x, training=False), dense(x, training=False))

  def testRejectsUnknownExcludedLayer(self):
    with self.assertRaisesRegex(ValueError, "conv9"):
      magnitude.prune_model(prune_test_utils.cnn_small(), pruning_config.PruningConfig(0.5, exclude_layers=("conv9",)))

  def testRejectsWrappedModel(self):
    pruned = magnitude.prune_model(prune_test_utils.cnn_small(), pruning_config.PruningConfig(0.5))
    with self.assertRaisesRegex(ValueError, "strip"):
      magnitude.prune_model(pruned, pruning_config.PruningConfig(0.5))


class CustomLoopPruningTest(tf.test.TestCase):

  def testLayerScope_ReachesTargetInEveryLayer(self):
    config = pruning_config.PruningConfig(0.7, begin_step=0, end_step=20, frequency=10)
    model = magnitude.prune_model(prune_test_utils.cnn_small(), config)
    loop = prune_test_utils.Loop(model).run(11)
    mid = stats.layer_sparsity(model)
    loop.run(13).end_epoch()
    loop.driver.finalize()
    for name, sparsity in stats.layer_sparsity(model).items():
      self.assertAllClose(mid[name], 0.7 * (1 - 0.5**3), atol=0.01)  # the polynomial schedule at step 10 of 20
      self.assertAllClose(sparsity, 0.7, atol=0.01, msg=name)

  def testGlobalScope_ReachesOverallTarget_WithUnequalLayerTargets(self):
    dense = prune_test_utils.cnn_small()
    expected = global_allocation.global_magnitude_targets(dense, 0.8)
    model = magnitude.prune_model(dense, pruning_config.PruningConfig(0.8, scope="global", end_step=10, frequency=5))
    prune_test_utils.Loop(model).run(12).end_epoch()
    layers = stats.layer_sparsity(model)
    self.assertAllClose(stats.parameter_counts(model)["sparsity"], 0.8, atol=0.01)
    self.assertAllClose(layers, expected, atol=0.01)
    self.assertGreater(max(layers.values()) - min(layers.values()), 0.05)

  def testExcludedLayers_StayDenseAndUnwrapped(self):
    config = pruning_config.PruningConfig(0.5, schedule="constant", exclude_layers=("conv1", "logits"))
    model = magnitude.prune_model(prune_test_utils.cnn_small(), config)
    prune_test_utils.Loop(model).run(3).end_epoch()
    self.assertEqual(sorted(prune_test_utils.wrappers(model)), ["conv2", "fc1"])
    self.assertAllClose(stats.layer_sparsity(model), {"conv1": 0.0, "conv2": 0.5, "fc1": 0.5, "logits": 0.0},
                        atol=0.01)

  def testConstantSchedule_PrunesOnceAtBeginStep(self):
    config = pruning_config.PruningConfig(0.6, schedule="constant", begin_step=3)
    model = magnitude.prune_model(prune_test_utils.cnn_small(), config)
    loop = prune_test_utils.Loop(model).run(3)
    self.assertEqual(set(stats.layer_sparsity(model).values()), {0.0})
    loop.run(1)
    pruned_masks = prune_test_utils.masks(model)
    self.assertAllClose(list(stats.layer_sparsity(model).values()), [0.6] * 4, atol=0.01)
    loop.run(6)
    self.assertAllClose(prune_test_utils.masks(model), pruned_masks)


if __name__ == "__main__":
  tf.test.main()
