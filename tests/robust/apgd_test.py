"""Tests for tfrobprune.robust.apgd: the published schedule and losses, and the properties every attack must have."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

import attack_test_utils as utils
from tfrobprune.keras_compat import tf
from tfrobprune.robust import apgd
from tfrobprune.robust import attacks

_EPS = {"linf": 0.1, "l2": 1.5}


class ScheduleAndLossTest(tf.test.TestCase):

  def testCheckpointWindows_FollowThePublishedSchedule(self):
    windows = apgd.checkpoint_windows(100)
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99: windows shrink by 0.03 down to 0.06.
    self.assertEqual([i for i, w in enumerate(windows) if w], [21, 40, 56, 69, 79, 86, 92, 98])
    self.assertEqual([w for w in windows if w], [22, 19, 16, 13, 10, 7, 6, 6])
    self.assertEqual(apgd.checkpoint_windows(3), [1, 1, 1])

  def testDlrLoss_HandNumbers(self):
    logits = tf.constant([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    # Correct (y=0): -(3 - 2) / (3 - 1); wrong (y=1): -(1 - 3) / (3 - 1).
    self.assertAllClose(apgd.dlr_loss(logits, tf.constant([0, 1], tf.int64)), [-0.5, 1.0])

  def testDlrLoss_IgnoresShiftAndScaleOfTheLogits(self):
    logits = tf.random.stateless_normal([8, 10], [1, 2])
    y = tf.range(8, dtype=tf.int64)
    self.assertAllClose(apgd.dlr_loss(logits, y), apgd.dlr_loss(7.0 * logits - 3.0, y), atol=1e-5)

  def testTargetedDlrLoss_HandNumbers(self):
    logits = tf.constant([[4.0, 1.0, 2.0, 0.0]])
    # -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2) with y=0, t=2.
    loss = apgd.targeted_dlr_loss(logits, tf.constant([0], tf.int64), tf.constant([2], tf.int64))
    self.assertAllClose(loss, [-2.0 / 3.5])

  def testRankedTargets_AreTheClassesRankedSecondOnwards(self):
    logits = tf.constant([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    self.assertAllEqual(apgd.ranked_targets(logits, 2), [[3, 2], [1, 2]])

  def testL2Projection_StaysInBothSets(self):
    x = tf.random.stateless_uniform([6, 3, 3, 1], [3, 4])
    far = x + 3.0 * tf.random.stateless_normal([6, 3, 3, 1], [5, 6])
    projected = apgd.project(far, x, 0.5, "l2", 0.0, 1.0).numpy()
    self.assertLessEqual(utils.perturbation_norms(projected, x, "l2").max(), 0.5 + 1e-5)
    self.assertAllInRange(projected, 0.0, 1.0)


@absltest.skipUnless(utils.HAS_FASHION_MNIST, utils.SKIP_REASON)
class ApgdOnTrainedModelTest(utils.TrainedFashionMnistFixture, tf.test.TestCase, parameterized.TestCase):
  """APGD-CE, APGD-DLR and APGD-T on a cnn_small fit to Fashion-MNIST; each compiled once per setting."""

  def _attack(self, kind, norm="linf", eps=None, nb_iter=50, seed=(1, 2)):
    """(x_adv, robust) as numpy arrays; one compiled function per (kind, norm, nb_iter), eps a tensor."""
    key = (kind, norm, nb_iter)
    if key not in self._compiled:
      if kind == "targeted":
        fn = lambda x, y, e, s: apgd.apgd_targeted(self.model_fn, x, y, e, nb_iter, norm=norm, seed=s)  # noqa: E731
      else:
        fn = lambda x, y, e, s: apgd.apgd(self.model_fn, x, y, e, nb_iter, norm=norm, loss=kind, seed=s)  # noqa: E731
      self._compiled[key] = tf.function(fn)
    eps = _EPS[norm] if eps is None else eps
    x_adv, robust = self._compiled[key](self.x, self.y, tf.constant(eps), utils.seed(*seed))
    return x_adv.numpy(), robust.numpy()

  @parameterized.parameters(("ce", "linf"), ("dlr", "linf"), ("targeted", "linf"), ("ce", "l2"), ("targeted", "l2"))
  def testNeverLeavesTheBallOrThePixelRange_AndLowersAccuracy(self, kind, norm):
    x_adv, robust = self._attack(kind, norm)
    self.assertLessEqual(utils.perturbation_norms(x_adv, self.x, norm).max(), _EPS[norm] * (1 + 1e-5))
    self.assertAllInRange(x_adv, 0.0, 1.0)
    self.assertGreater(self.clean_correct.mean(), 0.7)
    self.assertLess(robust.mean(), 0.2)
    self.assertLess(robust.mean(), self.clean_correct.mean() - 0.5)

  @parameterized.parameters(("ce", "linf"), ("dlr", "linf"), ("targeted", "linf"), ("ce", "l2"))
  def testZeroEpsilon_ChangesNothing(self, kind, norm):
    x_adv, robust = self._attack(kind, norm, eps=0.0, nb_iter=5)
    self.assertAllEqual(x_adv, self.x)
    self.assertAllEqual(robust, self.clean_correct)

  @parameterized.parameters("ce", "targeted")
  def testRobust_IsTheModelRerunOnTheReturnedPoints(self, kind):
    x_adv, robust = self._attack(kind, eps=0.03, nb_iter=5)
    self.assertAllEqual(robust, utils.predictions(self.model, x_adv) == self.y)
    self.assertBetween(robust.mean(), 0.1, 0.9)  # both verdicts occur
    self.assertFalse(np.any(robust & ~self.clean_correct))

  @parameterized.parameters("ce", "targeted")
  def testModelWithoutGradient_RunsAndStaysInTheBall(self, kind):
    attack = apgd.apgd_targeted if kind == "targeted" else apgd.apgd
    x_adv, robust = tf.function(lambda x, y: attack(utils.stop_gradient_fn(self.model), x, y, 0.1, nb_iter=5,
                                                    seed=utils.seed(1, 2)))(self.x, self.y)
    self.assertLessEqual(utils.perturbation_norms(x_adv.numpy(), self.x, "linf").max(), 0.1 * (1 + 1e-5))
    self.assertAllEqual(robust, utils.predictions(self.model, x_adv.numpy()) == self.y)

  def testApgdCe_IsAtLeastAsStrongAsPgd_WithTheSameBudget(self):
    eps, steps = 0.05, 50  # an eps at which both attacks leave part of the examples robust
    pgd = tf.function(lambda x, y: attacks.pgd_with_restarts(self.model_fn, x, y, eps, 2.5 * eps / steps, steps,
                                                              seed=utils.seed(1, 2)))
    _, pgd_robust = pgd(self.x, self.y)
    _, apgd_robust = self._attack("ce", eps=eps, nb_iter=steps)
    self.assertLessEqual(apgd_robust.sum(), pgd_robust.numpy().sum())

  def testSameSeed_SameVerdicts_AndAnExtraRestartNeverMakesAnExampleRobustAgain(self):
    compiled = {restarts: tf.function(lambda x, y, r=restarts: apgd.apgd(
        self.model_fn, x, y, 0.03, nb_iter=10, restarts=r, seed=utils.seed(4, 5))) for restarts in (1, 3)}
    one, again, three = (compiled[r](self.x, self.y)[1].numpy() for r in (1, 1, 3))
    self.assertAllEqual(one, again)
    self.assertFalse(np.any(three & ~one))  # run 0 is shared; later runs only attack what it left robust

  def testCompilesOnceForTwoBatchesOfTheSameShape(self):
    attack = tf.function(lambda x, y, s: apgd.apgd(self.model_fn, x, y, 0.1, nb_iter=5, seed=s))
    first = attack(self.x[:100], self.y[:100], utils.seed(0, 1))
    second = attack(self.x[100:200], self.y[100:200], utils.seed(0, 2))
    self.assertEqual(attack.experimental_get_tracing_count(), 1)
    self.assertEqual(first[0].shape, second[0].shape)


class ApgdTargetedTest(tf.test.TestCase):

  def testReachesTheRankTwoClass_WhereTheRankThreeClassIsAsReachable(self):
    # logit_c = 20 * x[c] (pixel c) for 5 classes; pixel y = 0.6, the rank-2 class 0.52, the rank-3 class 0.5.
    # At eps 0.1 either could overtake y; the targeted attack must end in the rank-2 class.
    model = utils.linear_model(20.0 * np.eye(16, 5), np.zeros(5))
    rng = np.random.default_rng(0)
    x = np.full((40, 16), 0.1, np.float32)
    y = rng.integers(0, 5, 40)
    second = (y + 1 + rng.integers(0, 2, 40)) % 5
    third = np.where(second == (y + 1) % 5, (y + 2) % 5, (y + 1) % 5)
    x[np.arange(40), y], x[np.arange(40), second], x[np.arange(40), third] = 0.6, 0.52, 0.5
    x = x.reshape(40, 4, 4, 1)
    attack = tf.function(lambda x, y: apgd.apgd_targeted(attacks.inference_fn(model), x, y, 0.1, nb_iter=20,
                                                         num_targets=1, seed=utils.seed(0, 0)))
    x_adv, robust = attack(x, y.astype(np.int64))
    self.assertFalse(np.any(robust.numpy()))
    self.assertAllEqual(utils.predictions(model, x_adv.numpy()), second)


class ArgumentTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model_fn = staticmethod(attacks.inference_fn(utils.linear_model(np.eye(16, 4), np.zeros(4))))
    cls.x, cls.y = np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int64)

  @parameterized.parameters(
      dict(kwargs=dict(eps=-0.1), match="eps must be >= 0"),
      dict(kwargs=dict(nb_iter=0), match="nb_iter must be an integer >= 1"),
      dict(kwargs=dict(restarts=1.5), match="restarts must be an integer >= 1"),
      dict(kwargs=dict(norm="l1"), match="norm must be one of"),
      dict(kwargs=dict(loss="hinge"), match="loss must be one of"),
      dict(kwargs=dict(rho=0.0), match="rho must be in"),
      dict(kwargs=dict(clip_min=1.0, clip_max=0.0), match="clip_min must be below clip_max"),
  )
  def testApgd_RejectsBadArguments(self, kwargs, match):
    kwargs = dict(dict(eps=0.1), **kwargs)
    with self.assertRaisesRegex(ValueError, match):
      apgd.apgd(self.model_fn, self.x, self.y, **kwargs)

  def testApgdTargeted_RejectsAsManyTargetsAsClasses(self):
    with self.assertRaisesRegex(ValueError, "num_targets must be below the number of classes"):
      apgd.apgd_targeted(self.model_fn, self.x, self.y, 0.1, num_targets=4)

  def testApgdTargeted_NeedsFourClasses(self):
    three = attacks.inference_fn(utils.linear_model(np.eye(16, 3), np.zeros(3)))
    with self.assertRaisesRegex(ValueError, "at least 4 classes"):
      apgd.apgd_targeted(three, self.x, self.y, 0.1, num_targets=1)


if __name__ == "__main__":
  absltest.main()
