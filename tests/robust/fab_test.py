"""Tests for tfrobprune.robust.fab: the box-constrained projection by hand and against an oracle, FAB-T's minimal
perturbations of a linear model, and the properties every attack must have on a trained one."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

import attack_test_utils as utils
from tfrobprune.keras_compat import tf
from tfrobprune.robust import attacks
from tfrobprune.robust import fab

_EPS = {"linf": 0.1, "l2": 1.5}


def _project(points, w, b, norm):
  steps = fab.project_to_hyperplane_in_box(tf.constant(points, tf.float32), tf.constant(w, tf.float32),
                                           tf.constant(b, tf.float32), 0.0, 1.0, norm=norm)
  return steps.numpy()


def _bisection_oracle(point, w, b, norm):
  """The optimal step by bisection on lambda in float64 (move_i = min(lambda * rate_i, room_i) towards the corner)."""
  gap = float(w @ point - b)
  w = w * np.sign(gap)
  room = np.where(w == 0, 0.0, np.abs(np.where(w < 0, 1.0, 0.0) - point))
  rate = np.ones_like(w) if norm == "linf" else np.abs(w)
  reach = lambda lam: np.sum(np.abs(w) * np.minimum(lam * rate, room))  # noqa: E731
  low, high = 0.0, 1e6
  for _ in range(200):
    middle = 0.5 * (low + high)
    low, high = (middle, high) if reach(middle) < abs(gap) else (low, middle)
  return -np.sign(w) * np.minimum(high * rate, room)


class ProjectionTest(tf.test.TestCase, parameterized.TestCase):

  def testLinf_HandNumbers(self):
    # w.p must fall by 0.5 (rooms 0.5, 0.5): lambda 0.25. Then by 0.4 with rooms 0.1, 0.5: the first clips at 0.1.
    steps = _project([[0.5, 0.5], [0.1, 0.5]], [[1.0, 1.0], [1.0, 1.0]], [0.5, 0.2], "linf")
    self.assertAllClose(steps, [[-0.25, -0.25], [-0.1, -0.3]])

  def testL2_HandNumbers(self):
    # Unclipped the L2 step is -lambda * w: w = (1, 2), w.p = 1.5 must reach 0.5, so lambda = 1 / 5.
    self.assertAllClose(_project([[0.5, 0.5]], [[1.0, 2.0]], [0.5], "l2"), [[-0.2, -0.4]])

  @parameterized.parameters("linf", "l2")
  def testRisesTowardsAHyperplaneAbove(self, norm):
    self.assertAllClose(_project([[0.5, 0.5]], [[1.0, 1.0]], [1.5], norm), [[0.25, 0.25]])

  @parameterized.parameters("linf", "l2")
  def testUnreachableHyperplane_StepsToTheBoxCorner(self, norm):
    self.assertAllClose(_project([[0.5, 0.2, 0.3]], [[1.0, -1.0, 0.0]], [-2.0], norm), [[-0.5, 0.8, 0.0]])

  @parameterized.parameters("linf", "l2")
  def testMatchesABisectionOracle_AndLandsOnTheHyperplaneInsideTheBox(self, norm):
    rng = np.random.default_rng(3)
    points = rng.random((64, 30))
    w = rng.normal(size=(64, 30)) * (rng.random((64, 30)) < 0.7)
    b = np.sum(w * points, axis=1) + rng.normal(scale=1.0, size=64)
    steps = _project(points, w, b, norm)
    oracle = np.stack([_bisection_oracle(points[i], w[i], b[i], norm) for i in range(64)])
    self.assertAllClose(steps, oracle, atol=2e-5)
    reachable = np.sum(np.abs(w) * np.where(w * np.sign(np.sum(w * points, 1) - b)[:, None] < 0, 1 - points,
                                            points), axis=1) >= np.abs(np.sum(w * points, 1) - b)
    self.assertGreater(reachable.mean(), 0.5)
    self.assertAllClose(np.sum(w * (points + steps), axis=1)[reachable], b[reachable], atol=1e-4)
    self.assertAllInRange(points + steps, -1e-6, 1 + 1e-6)


class FabOnLinearModelTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(("linf", 1), ("l2", 2))
  def testFindsTheClosestAdversarialPoint_WithinTheOvershoot(self, norm, dual):
    # Two classes, logits differ by m(x) = (w1 - w0).x + c: the closest point with m = 0 is |m(x)| / ||w1 - w0||_dual
    # away (pixels in [0.3, 0.7] so the box never binds). FAB lands within its overshoot of that distance.
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(16, 2))
    x = rng.uniform(0.3, 0.7, (32, 16)).astype(np.float32)
    model = utils.linear_model(kernel, [0.0, 0.5 * np.sum(kernel[:, 0] - kernel[:, 1])])  # margin 0 at x = 0.5
    y = utils.predictions(model, x.reshape(32, 4, 4, 1))
    direction = kernel[:, 1] - kernel[:, 0]
    closest = np.abs((x - 0.5) @ direction) / np.linalg.norm(direction, ord=dual)
    keep = closest < 0.25
    attack = tf.function(lambda x, y: fab.fab_targeted(attacks.inference_fn(model), x, y, 0.3, nb_iter=20,
                                                       num_targets=1, norm=norm))
    x_adv, robust = attack(x.reshape(32, 4, 4, 1)[keep], y[keep])
    distances = utils.perturbation_norms(x_adv.numpy(), x.reshape(32, 4, 4, 1)[keep], norm)
    self.assertFalse(np.any(robust.numpy()))
    self.assertAllGreaterEqual(distances - closest[keep] * (1 - 1e-4), 0.0)
    self.assertAllLessEqual(distances - closest[keep] * fab.ETA, 1e-5)


@absltest.skipUnless(utils.HAS_FASHION_MNIST, utils.SKIP_REASON)
class FabOnTrainedModelTest(utils.TrainedFashionMnistFixture, tf.test.TestCase, parameterized.TestCase):
  """FAB-T on a cnn_small fit to Fashion-MNIST, compiled once per norm and budget with eps a tensor."""

  def _attack(self, norm="linf", eps=None, nb_iter=50):
    if (norm, nb_iter) not in self._compiled:
      self._compiled[norm, nb_iter] = tf.function(lambda x, y, e: fab.fab_targeted(self.model_fn, x, y, e, nb_iter,
                                                                                    norm=norm))
    eps = _EPS[norm] if eps is None else eps
    x_adv, robust = self._compiled[norm, nb_iter](self.x, self.y, tf.constant(eps))
    return x_adv.numpy(), robust.numpy()

  @parameterized.parameters("linf", "l2")
  def testNeverLeavesTheBallOrThePixelRange_AndLowersAccuracy(self, norm):
    x_adv, robust = self._attack(norm)
    self.assertLessEqual(utils.perturbation_norms(x_adv, self.x, norm).max(), _EPS[norm] * (1 + 1e-5))
    self.assertAllInRange(x_adv, 0.0, 1.0)
    self.assertLess(robust.mean(), 0.25)
    self.assertLess(robust.mean(), self.clean_correct.mean() - 0.5)

  def testZeroEpsilon_ChangesNothing(self):
    x_adv, robust = self._attack(eps=0.0, nb_iter=5)
    self.assertAllEqual(x_adv, self.x)
    self.assertAllEqual(robust, self.clean_correct)

  def testRobust_IsTheModelRerunOnTheReturnedPoints(self):
    x_adv, robust = self._attack(eps=0.03, nb_iter=5)
    self.assertAllEqual(robust, utils.predictions(self.model, x_adv) == self.y)
    self.assertBetween(robust.mean(), 0.1, 0.9)
    self.assertAllEqual(x_adv[robust], self.x[robust])  # FAB keeps nothing outside the ball: x where it failed

  def testModelWithoutGradient_RunsAndStaysInTheBall(self):
    x_adv, robust = tf.function(lambda x, y: fab.fab_targeted(utils.stop_gradient_fn(self.model), x, y, 0.1,
                                                              nb_iter=5))(self.x, self.y)
    self.assertLessEqual(utils.perturbation_norms(x_adv.numpy(), self.x, "linf").max(), 0.1 * (1 + 1e-5))
    self.assertAllEqual(robust, utils.predictions(self.model, x_adv.numpy()) == self.y)

  def testCompilesOnceForTwoBatchesOfTheSameShape(self):
    attack = tf.function(lambda x, y, s: fab.fab_targeted(self.model_fn, x, y, 0.1, nb_iter=3, num_targets=2,
                                                          restarts=2, seed=s))
    attack(self.x[:100], self.y[:100], utils.seed(0, 1))
    attack(self.x[100:200], self.y[100:200], utils.seed(0, 2))
    self.assertEqual(attack.experimental_get_tracing_count(), 1)


class ArgumentTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(kwargs=dict(norm="l1"), match="norm must be one of"),
      dict(kwargs=dict(num_targets=4), match="num_targets must be below the number of classes"),
      dict(kwargs=dict(nb_iter=0), match="nb_iter must be an integer >= 1"),
  )
  def testRejectsBadArguments(self, kwargs, match):
    model_fn = attacks.inference_fn(utils.linear_model(np.eye(16, 4), np.zeros(4)))
    with self.assertRaisesRegex(ValueError, match):
      fab.fab_targeted(model_fn, np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int64), 0.1, **kwargs)


if __name__ == "__main__":
  absltest.main()
