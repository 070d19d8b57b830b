"""Tests of examples/: each script's `run` on small synthetic data (the residual model through the API with
exports, then served; the same model through `model.fit`)."""

import os
import sys

from absl.testing import absltest
import numpy as np

# What the examples use, imported here too so that the test depends on it.
from tfrobprune.api import robust_prune  # noqa: F401
from tfrobprune.api import fit  # noqa: F401
from tfrobprune.api import settings  # noqa: F401
from tfrobprune import config  # noqa: F401
from tfrobprune.data import datasets  # noqa: F401
from tfrobprune.deploy.serving import server  # noqa: F401
from tfrobprune.keras_compat import tf
from tfrobprune import model_files
from tfrobprune import pipeline  # noqa: F401
from tfrobprune.prune import stats
from tfrobprune.train import keras_fit  # noqa: F401

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "examples"))
import export_and_serve  # noqa: E402
import fit_robust_pruning  # noqa: E402
import robust_prune_residual  # noqa: E402

_SMALL = dict(train_examples=256, test_examples=64, image_shape=(8, 8, 1))


class ExamplesTest(tf.test.TestCase):

  def testResidualModelThroughTheApi_ReachesTheTargetWithExports_WhichAreServed(self):
    output_dir = self.create_tempdir().full_path
    pruned, report = robust_prune_residual.run(output_dir, epochs=1, **_SMALL)
    self.assertAllClose(report["pruned"]["sparsity"], 0.9, atol=0.01)
    self.assertIn("add", [layer.name.split("_")[0] for layer in pruned.layers])
    self.assertIn("saved_model", report["artifacts"])
    served, local = export_and_serve.run(output_dir, examples=8)
    self.assertLen(served, 8)
    self.assertAllEqual(served, local)

  def testSameModelThroughFit_SavesTheSparseModel(self):
    output_dir = self.create_tempdir().full_path
    sparse, logs = fit_robust_pruning.run(output_dir, epochs=2, batch_size=32, **_SMALL)
    self.assertAllClose(stats.parameter_counts(sparse)["sparsity"], 0.9, atol=0.01)
    self.assertBetween(logs["natural_acc"], 0.0, 1.0)
    saved = model_files.load_model_file(os.path.join(output_dir, "pruned.keras"))
    x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
    self.assertAllClose(saved(x), sparse(x), atol=1e-6)


if __name__ == "__main__":
  absltest.main()
