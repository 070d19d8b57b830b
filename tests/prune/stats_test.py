"""Tests for tfrobprune.prune.stats: hand-counted parameters; dense, wrapped and stripped models count alike."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

import prune_test_utils  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune.prune import stats  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402


class ParameterCountsTest(tf.test.TestCase):

  def _model(self):
    """Dense 3 -> 4 (12 kernel + 4 bias, six kernel zeros) then BatchNorm (4 x 4): 32 parameters."""
    model = prune_test_utils.dense_model([4], 3, batch_norm=True)
    kernel = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    kernel[kernel % 2 == 0] = 0
    model.get_layer("d0").set_weights([kernel, np.array([1, 0, 2, 3], np.float32)])
    return model, kernel

  def testHandSizedDense_CountsKernelsBiasesAndBatchNorm(self):
    model, _ = self._model()
    expected = {"params": 32, "nonzero_params": 26, "prunable_params": 12, "prunable_nonzero": 6,
                "sparsity": 0.5, "compression": 32 / 26}
    self.assertAllClose(stats.parameter_counts(model), expected)
    self.assertEqual(stats.layer_sparsity(model), {"d0": 0.5})

  def testWrappedModel_CountsLikeItsStrippedModel(self):
    model, kernel = self._model()
    wrapped = wrapping.fixed_mask_prune(model, {"d0": (kernel != 0).astype(np.float32)})
    self.assertAllClose(stats.parameter_counts(wrapped), stats.parameter_counts(model))
    self.assertAllClose(stats.parameter_counts(wrapping.strip(wrapped)), stats.parameter_counts(model))
    self.assertEqual(stats.sparsity_report(wrapped)["layers"], {"d0": 0.5})


if __name__ == "__main__":
  tf.test.main()
