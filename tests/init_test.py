"""Tests for tfrobprune/__init__.py: the public names resolve on first use, and importing the package alone does not
import TensorFlow (the CLI sets TensorFlow's log level first)."""

import os
import subprocess
import sys

from absl.testing import absltest

import tfrobprune
# The modules behind the lazy names, imported here so the test depends on them (Bazel deps come from imports).
from tfrobprune.api import bounds  # noqa: F401
from tfrobprune.api import fit  # noqa: F401
from tfrobprune.api import robust_prune  # noqa: F401
from tfrobprune.api import settings  # noqa: F401
from tfrobprune import model_files  # noqa: F401
from tfrobprune.train import keras_fit  # noqa: F401

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackageTest(absltest.TestCase):

  def testImportingThePackage_DoesNotImportTensorflow(self):
    code = "import sys, tfrobprune; print(sorted(m for m in ('tensorflow', 'tf_keras') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=_ROOT,
                            env=dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stdout.strip(), "[]")

  def testPublicNames_ResolveToTheirImplementations(self):
    self.assertIs(tfrobprune.robust_prune, robust_prune.robust_prune)
    self.assertIs(tfrobprune.Objective, settings.Objective)
    self.assertIs(tfrobprune.Pruning, settings.Pruning)
    self.assertIs(tfrobprune.RobustModel, keras_fit.RobustModel)
    self.assertIs(tfrobprune.prune_for_fit, fit.prune_for_fit)
    self.assertIs(tfrobprune.bounds.register_layer, bounds.register_layer)
    self.assertIs(tfrobprune.load_model, model_files.load_model_file)
    self.assertTrue(tfrobprune.keras.__version__.startswith("2."))
    from tfrobprune import bounds as public_bounds  # pylint: disable=g-import-not-at-top
    self.assertIs(public_bounds, bounds)
    for name in tfrobprune.__all__:
      self.assertIsNotNone(getattr(tfrobprune, name), name)
    self.assertContainsSubset(tfrobprune.__all__, dir(tfrobprune))

  def testUnknownName_RaisesAttributeError(self):
    with self.assertRaisesRegex(AttributeError, "no attribute 'prune_everything'"):
      tfrobprune.prune_everything  # pylint: disable=pointless-statement


if __name__ == "__main__":
  absltest.main()
