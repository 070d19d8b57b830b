"""Tests for tfrobprune.evaluate.gradient_masking: the checks pass on a normally trained model and fail on the same
model behind `tf.stop_gradient` (identical predictions, no usable gradient), and on a broken polyphase gradient."""

from unittest import mock

from absl.testing import absltest
import numpy as np

import eval_test_utils as utils
from tfrobprune.evaluate import autoattack
from tfrobprune.evaluate import gradient_masking
from tfrobprune.keras_compat import keras
from tfrobprune.keras_compat import tf
from tfrobprune.robust import input_gradients

_BUDGET = autoattack.Budget(nb_iter=10, num_targets=2, n_queries=300)
_EPS = 0.2  # the naturally trained model loses nearly everything to the gradient attacks, little to Square


def _result(fooled_by, stage_names):
  """An ensemble result on len(fooled_by) clean-correct examples (only the fields the Square check reads)."""
  count = len(fooled_by)
  return autoattack.AutoAttackResult(stage_names=tuple(stage_names), correct=np.ones(count, bool),
                                     fooled_by=np.asarray(fooled_by), x_adv=None, attacked=[count] * len(stage_names),
                                     seconds=[0.0] * len(stage_names), budget=_BUDGET, version="custom")


class GradientMaskingTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = utils.trained_model(objective="natural", epochs=2)
    cls.masked = utils.stop_gradient_copy(cls.model)
    cls.x, cls.y = utils.test_examples(60)

  def _checks(self, model):
    result = autoattack.run_autoattack(model, self.x, self.y, _EPS, utils.NUM_CLASSES, budget=_BUDGET, batch_size=60)
    return gradient_masking.run_checks(model, self.x, self.y, utils.NUM_CLASSES, result, budget=_BUDGET,
                                       batch_size=60, sample_size=60), result

  def testNormalModelPassesEveryCheck(self):
    checks, _ = self._checks(self.model)
    self.assertTrue(checks["passed"], checks)
    self.assertEqual(checks["examples"], 60)
    self.assertEqual(checks["large_eps"]["eps"], 0.5)
    self.assertLessEqual(checks["large_eps"]["robust_acc"], gradient_masking.LARGE_EPS_MAX_ACC)
    square = checks["square_vs_whitebox"]
    self.assertEqual(square["examples"], 60)
    self.assertEqual(square["square_broke"], 0)
    self.assertEqual(square["after_square_acc"], square["whitebox_acc"])
    self.assertEqual(checks["gradient"]["polyphase_layers"], 1)  # cnn_small's strided 1-channel conv1
    self.assertLess(checks["gradient"]["max_relative_error"], 1e-4)
    self.assertEqual(gradient_masking.warnings(checks, "dense"), [])

  def testSameModelBehindStopGradientFailsEveryCheck(self):
    checks, result = self._checks(self.masked)
    np.testing.assert_array_equal(result.correct, np.argmax(self.model(self.x), axis=1) == self.y)  # same model
    self.assertFalse(checks["passed"])
    for name in gradient_masking.CHECKS:
      self.assertFalse(checks[name]["passed"], name)
    self.assertEqual(checks["gradient"]["zero_gradient_fraction"], 1.0)
    warnings = gradient_masking.warnings(checks, "s0.9")
    self.assertLen(warnings, 3)
    for warning, phrase in zip(warnings, ("APGD-CE at eps 0.5", "Square (no gradients) broke", "input gradient")):
      self.assertIn("s0.9", warning)
      self.assertIn(phrase, warning)
    self.assertEqual(gradient_masking.report_warnings({"dense": {"masking_checks": checks}, "s0.9": {}}),
                     gradient_masking.warnings(checks, "dense"))

  def testSquareCheckIsAutoAttacksCheckSquareSrOnTheEnsemblesResult(self):
    # 1,000 examples, 700 left robust by the white-box attacks; AutoAttack's threshold is 0.2% of all examples.
    for square_broke, passed in ((2, True), (3, False)):
      fooled_by = np.full(1000, -1)
      fooled_by[700:] = 0  # APGD-CE
      fooled_by[:square_broke] = 3  # Square, which ran last
      check = gradient_masking.check_square_vs_whitebox(_result(fooled_by, autoattack.VERSIONS["standard"]))
      self.assertEqual((check["square_broke"], check["passed"]), (square_broke, passed))
      self.assertAlmostEqual(check["whitebox_acc"], 0.7)
      self.assertAlmostEqual(check["after_square_acc"], (700 - square_broke) / 1000)

  def testSquareCheckNeedsSquareAfterTheWhiteBoxAttacks(self):
    fooled_by = np.full(10, -1)
    for names in (("apgd-ce", "apgd-t"), ("square",), ("apgd-ce", "square", "fab-t")):
      self.assertIsNone(gradient_masking.check_square_vs_whitebox(_result(fooled_by, names)), names)

  def testSaturatedSoftmaxIsNotAZeroGradient(self):
    # A very confident linear model: cross-entropy's input gradient underflows to exactly 0 in float32, but the
    # model's gradient is not blocked, so the check must not report it.
    model = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.layers[-1].set_weights([np.array([[100., -100.]] * 4, np.float32), np.zeros(2, np.float32)])
    x, y = np.ones((4, 2, 2, 1), np.float32), np.zeros(4, np.int64)
    cross_entropy = gradient_masking._cross_entropy_gradient(lambda z: model(z, training=False), tf.constant(x),
                                                             tf.constant(y))
    self.assertAllEqual(cross_entropy, np.zeros_like(x))  # the premise: saturated
    check = gradient_masking.check_gradients(model, x, y)
    self.assertEqual(check["zero_gradient_fraction"], 0.0)
    self.assertTrue(check["passed"])

  def testWrongPolyphaseFirstLayerGradientFailsTheGradientCheck(self):
    exact = input_gradients.conv2d_input_gradient
    with mock.patch.object(input_gradients, "conv2d_input_gradient",
                           lambda *args: 1.5 * exact(*args)):
      check = gradient_masking.check_gradients(self.model, self.x[:20], self.y[:20])
    self.assertFalse(check["passed"])
    self.assertGreater(check["relative_errors"]["polyphase"], 0.01)
    self.assertEqual(check["zero_gradient_fraction"], 0.0)
    self.assertTrue(gradient_masking.check_gradients(self.model, self.x[:20], self.y[:20])["passed"])


if __name__ == "__main__":
  absltest.main()
