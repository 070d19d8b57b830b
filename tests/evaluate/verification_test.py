"""Tests for tfrobprune.evaluate.verification: verified accuracy between IBP's and clean accuracy, the IBP fallback
of CROWN-IBP, and argument checks."""

from absl.testing import parameterized
import numpy as np

from tests.robust.bounds_test_utils import NUM_CLASSES, make_data, make_model
from tfrobprune.evaluate import verification
from tfrobprune.keras_compat import tf


class VerifiedAccuracyTest(tf.test.TestCase, parameterized.TestCase):

  def _clean_accuracy(self, model, x, y):
    return np.mean(np.argmax(model(x, training=False), axis=1) == y)

  def _labelled_by_model(self, model, batch):
    """Data labelled mostly by the model itself, so that some examples verify."""
    x, y = make_data(model, batch)
    y[: batch * 3 // 4] = np.argmax(model(x[: batch * 3 // 4], training=False), axis=1)
    return x, y

  @parameterized.parameters(("mlp", 3e-4), ("crown_chain", .01))
  def testVerifiedAccuracy_AtMostCleanAndCrownIbpAtLeastIbp(self, name, eps):
    model = make_model(name)
    x, y = self._labelled_by_model(model, 16)
    clean = self._clean_accuracy(model, x, y)
    ibp = verification.verified_accuracy(model, x, y, eps, NUM_CLASSES, method="ibp", batch_size=5)
    crown_ibp = verification.verified_accuracy(model, x, y, eps, NUM_CLASSES, method="crown_ibp", batch_size=5)
    self.assertLessEqual(ibp, crown_ibp)
    self.assertLessEqual(crown_ibp, clean)
    self.assertGreater(crown_ibp, 0.)
    self.assertAlmostEqual(verification.verified_accuracy(model, x, y, 0., NUM_CLASSES, batch_size=5), clean)

  def testCrownIbpOnResidualModel_FallsBackToIbpFigure(self):
    model = make_model("residual")
    x, y = self._labelled_by_model(model, 8)
    self.assertEqual(verification.verified_accuracy(model, x, y, .001, NUM_CLASSES, method="crown_ibp"),
                     verification.verified_accuracy(model, x, y, .001, NUM_CLASSES, method="ibp"))

  def testBadArguments_RaiseValueError(self):
    model = make_model("mlp")
    x, y = make_data(model, 2)
    for kwargs, pattern in (({"method": "crown"}, "method"), ({"batch_size": 0}, "batch_size")):
      with self.assertRaisesRegex(ValueError, pattern):
        verification.verified_accuracy(model, x, y, .1, NUM_CLASSES, **kwargs)


if __name__ == "__main__":
  tf.test.main()
