"""Tests for tfrobprune.prune.wrapping: fixed masks kept through training; strip gives a sparse, unshared copy."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

import prune_test_utils  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402
from tfrobprune.prune import stats  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402


class StripTest(tf.test.TestCase):

  def testStrip_AfterFinalize_MatchesWrappedModel_WhileRawVariablesAreDense(self):
    model = magnitude.prune_model(prune_test_utils.cnn_small(), pruning_config.PruningConfig(0.7, schedule="constant"))
    loop = prune_test_utils.Loop(model).run(3)
    raw_kernel = prune_test_utils.wrappers(model)["fc1"].layer.kernel.numpy()
    self.assertLess(np.mean(raw_kernel == 0), 0.5)  # the last optimizer update moved most pruned entries
    loop.driver.finalize()
    stripped = wrapping.strip(model)
    self.assertFalse(any(hasattr(layer, "pruning_vars") for layer in stripped.layers))
    self.assertAllClose(stripped(loop.x, training=False), model(loop.x, training=False), atol=1e-5)
    self.assertAllClose(stats.layer_sparsity(stripped), {name: 0.7 for name in prune_test_utils.wrappers(model)},
                        atol=0.01)
    loop.run(1)  # training the wrapped model further leaves the stripped copy alone
    self.assertAllClose(stats.layer_sparsity(stripped), {name: 0.7 for name in prune_test_utils.wrappers(model)},
                        atol=0.01)


class FixedMaskPruneTest(tf.test.TestCase):

  def testKeepsExactlyTheGivenMasksThroughTraining(self):
    dense = prune_test_utils.cnn_small()
    rng = np.random.default_rng(2)
    masks = {name: (rng.random(dense.get_layer(name).kernel.shape) > 0.6).astype(np.float32)
             for name in ("conv2", "fc1")}
    model = wrapping.fixed_mask_prune(dense, masks)
    self.assertEqual(sorted(prune_test_utils.wrappers(model)), ["conv2", "fc1"])
    loop = prune_test_utils.Loop(model).run(12)
    loop.driver.finalize()
    for name, mask in masks.items():
      self.assertAllEqual(prune_test_utils.masks(model)[name], mask)
      self.assertAllEqual(model.get_layer(f"prune_low_magnitude_{name}").layer.kernel.numpy() != 0, mask == 1)
    self.assertEqual(stats.layer_sparsity(model)["conv1"], 0.0)

  def testRejectsMaskOfWrongShape_NamingLayer(self):
    with self.assertRaisesRegex(ValueError, "'fc1'"):
      wrapping.fixed_mask_prune(prune_test_utils.cnn_small(), {"fc1": np.ones((3, 3))})


if __name__ == "__main__":
  tf.test.main()
