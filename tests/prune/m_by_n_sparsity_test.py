"""Tests for tfrobprune.prune.m_by_n_sparsity: 2:4 masks on Dense and Conv2D, layers that cannot take them."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

import prune_test_utils  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402


class MByNTest(tf.test.TestCase):

  def _zeros_per_group(self, kernel, n):
    """Zeros in each run of n consecutive input-channel weights (kernel axis -2) of each output."""
    shape = kernel.shape
    grouped = kernel.reshape(shape[:-2] + (shape[-2] // n, n, shape[-1]))
    return np.sum(grouped == 0, axis=-2)

  def testDense_TwoOfEveryFourInputWeightsZero(self):
    model = magnitude.prune_model(prune_test_utils.dense_model([8, 3], 8),
                                  pruning_config.PruningConfig(0.5, m_by_n=(2, 4)))
    prune_test_utils.Loop(model).run(2)
    wrapping.apply_masks(model)
    for name in ("d0", "d1"):
      kernel = model.get_layer(f"prune_low_magnitude_{name}").layer.kernel.numpy()
      self.assertEqual(set(self._zeros_per_group(kernel, 4).ravel()), {2}, msg=name)

  def testConv2D_TwoOfEveryFourInputChannelsZero(self):
    config = pruning_config.PruningConfig(0.5, m_by_n=(2, 4), exclude_layers=("conv1",))
    model = magnitude.prune_model(prune_test_utils.cnn_small(), config)
    prune_test_utils.Loop(model).run(1)
    wrapping.apply_masks(model)
    kernel = prune_test_utils.wrappers(model)["conv2"].layer.kernel.numpy()  # (4, 4, 16, 32)
    self.assertEqual(set(self._zeros_per_group(kernel, 4).ravel()), {2})

  def testRaisesNamingLayer_WhoseInputChannelsAreNotAMultipleOfN(self):
    with self.assertRaisesRegex(ValueError, "'conv1'.*1 input channels"):
      magnitude.prune_model(prune_test_utils.cnn_small(), pruning_config.PruningConfig(0.5, m_by_n=(2, 4)))
    with self.assertRaisesRegex(ValueError, "'d1'.*6 input channels"):
      magnitude.prune_model(prune_test_utils.dense_model([6, 3], 8), pruning_config.PruningConfig(0.5, m_by_n=(2, 4)))


if __name__ == "__main__":
  tf.test.main()
