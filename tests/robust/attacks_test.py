"""Tests for tfrobprune.robust.attacks: the properties every attack must have (cleverhans' checklist)."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import attacks


def _trained_model():
  """A small MLP fit on two linearly separable classes of 4x4 images (margin small enough to attack)."""
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 512)
  x = np.clip(0.5 + (y[:, None] - 0.5) * 0.2 + rng.normal(0, 0.05, (512, 16)), 0, 1).astype(np.float32)
  model = models.build_model("mlp", (4, 4, 1), 2, seed=0)
  model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x.reshape(-1, 4, 4, 1), y, epochs=5, verbose=0)
  return model, x.reshape(-1, 4, 4, 1)[:128], y[:128].astype(np.int64)


def _start_dependent_problem():
  """64 images of label 0 that PGD fools from about a quarter of its random starts, independently per start.

  Logits (1, 100 * relu(x[0] - 0.55)) with x[0] = 0.5: the gradient is zero unless the start puts x[0] above 0.55
  (probability 1/4 at eps 0.1), and from there the attack climbs past 0.56, where class 1 wins.
  """
  model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1),
                            keras.layers.ReLU(), keras.layers.Dense(2)])
  model.layers[1].set_weights([np.eye(16, 1, dtype=np.float32), np.array([-0.55], np.float32)])
  model.layers[3].set_weights([np.array([[0.0, 100.0]], np.float32), np.array([1.0, 0.0], np.float32)])
  x = np.random.default_rng(0).random((64, 4, 4, 1)).astype(np.float32)
  x[:, 0, 0, 0] = 0.5
  return attacks.inference_fn(model), x, np.zeros(64, np.int64)


def _seeded_restarts(model_fn, x, y, restarts, seed=(7, 0)):
  """(x_adv, robust) as numpy arrays of PGD-5 at eps 0.1 with `restarts` starts from `seed`."""
  x_adv, robust = attacks.pgd_with_restarts(model_fn, x, y, 0.1, 0.02, 5, restarts=restarts,
                                            seed=tf.constant(seed, tf.int64))
  return x_adv.numpy(), robust.numpy()


def _unrolled_pgd(model_fn, x, y, eps, eps_iter, nb_iter, seed):
  """The attack as it was before the graph loop: nb_iter Python-unrolled cleverhans steps (the reference)."""
  from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method  # pylint: disable=g-import-not-at-top
  from cleverhans.tf2.utils import clip_eta  # pylint: disable=g-import-not-at-top
  eta = attacks.random_start(tf.shape(x), "linf", eps, seed)
  x_adv = tf.clip_by_value(x + clip_eta(eta, np.inf, eps), 0.0, 1.0)
  for _ in range(nb_iter):
    x_adv = fast_gradient_method(model_fn, x_adv, eps_iter, np.inf, clip_min=0.0, clip_max=1.0, y=y,
                                 loss_fn=tf.nn.sparse_softmax_cross_entropy_with_logits)
    x_adv = tf.clip_by_value(x + clip_eta(x_adv - x, np.inf, eps), 0.0, 1.0)
  return x_adv


def _unrolled_restarts(model_fn, x, y, eps, eps_iter, nb_iter, restarts, seed):
  """`pgd_with_restarts` as it was before the graph loop (restarts unrolled too)."""
  x_adv, robust = x, tf.equal(tf.argmax(model_fn(x), axis=1), y)
  for restart in range(restarts):
    candidate = _unrolled_pgd(model_fn, x, y, eps, eps_iter, nb_iter, seed + tf.constant([0, restart], tf.int64))
    fooled = tf.not_equal(tf.argmax(model_fn(candidate), axis=1), y)
    x_adv = tf.where(tf.reshape(tf.logical_and(robust, fooled), [-1, 1, 1, 1]), candidate, x_adv)
    robust = tf.logical_and(robust, tf.logical_not(fooled))
  return x_adv, robust


class AttackTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.x, cls.y = _trained_model()
    cls.model_fn = staticmethod(attacks.inference_fn(cls.model))

  def _predictions(self, x):
    return np.argmax(self.model(x, training=False), axis=1)

  def _accuracy(self, x):
    return float(np.mean(self._predictions(x) == self.y))

  def testModelIsAccurateOnCleanData(self):
    self.assertGreater(self._accuracy(self.x), 0.95)

  @parameterized.parameters("linf", "l2")
  def testZeroEpsilonReturnsTheInput(self, norm):
    x_adv = attacks.pgd(self.model_fn, self.x, self.y, 0.0, 0.0, 5, norm=norm)
    self.assertAllClose(x_adv, self.x)
    self.assertAllClose(attacks.fgsm(self.model_fn, self.x, self.y, 0.0, norm=norm), self.x)

  def testLinfPgdStaysInTheBallAndPixelRange(self):
    x_adv = attacks.pgd(self.model_fn, self.x, self.y, 0.3, 0.05, 10).numpy()
    self.assertLessEqual(np.max(np.abs(x_adv - self.x)), 0.3 + 1e-6)
    self.assertGreaterEqual(x_adv.min(), 0.0)
    self.assertLessEqual(x_adv.max(), 1.0)

  def testLinfPgdFollowsCleverhansIterates(self):
    # Without a random start both are deterministic: the same iterates as cleverhans' own PGD.
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent  # pylint: disable=g-import-not-at-top
    ours = attacks.pgd(self.model_fn, self.x, self.y, 0.15, 0.04, 7, rand_init=False)
    theirs = projected_gradient_descent(self.model_fn, self.x, 0.15, 0.04, 7, np.inf, clip_min=0.0, clip_max=1.0,
                                        y=self.y, rand_init=False, sanity_checks=False)
    self.assertAllClose(ours, theirs, atol=1e-6, rtol=0)
    self.assertGreater(float(np.mean(np.abs(ours - self.x) > 0.1)), 0.1)  # the attack moved far from x

  @parameterized.parameters(False, True)
  def testGraphLoop_GivesTheUnrolledIteratesForTheSameSeed(self, compiled):
    seed = tf.constant([3, 11], tf.int64)
    run = (lambda fn: tf.function(fn)()) if compiled else (lambda fn: fn())
    ours = run(lambda: attacks.pgd(self.model_fn, self.x, self.y, 0.15, 0.04, 7, seed=seed))
    reference = run(lambda: _unrolled_pgd(self.model_fn, self.x, self.y, 0.15, 0.04, 7, seed))
    self.assertAllClose(ours, reference, atol=1e-6, rtol=0)
    self.assertGreater(float(np.mean(np.abs(ours - self.x) > 0.1)), 0.1)  # the attack moved far from x
    x_adv, robust = run(lambda: attacks.pgd_with_restarts(self.model_fn, self.x, self.y, 0.15, 0.04, 5, restarts=3,
                                                          seed=seed))
    reference_adv, reference_robust = run(lambda: _unrolled_restarts(self.model_fn, self.x, self.y, 0.15, 0.04, 5,
                                                                     3, seed))
    self.assertAllEqual(robust, reference_robust)
    self.assertAllClose(x_adv, reference_adv, atol=1e-6, rtol=0)

  def testGraphLoop_CompiledGraphDoesNotGrowWithIterations(self):
    def graph_size(nb_iter):
      fn = tf.function(lambda x, y: attacks.pgd(self.model_fn, x, y, 0.1, 0.02, nb_iter))
      return len(fn.get_concrete_function(self.x, self.y).graph.as_graph_def().node)
    self.assertEqual(graph_size(5), graph_size(50))

  def testL2PgdStaysInTheBall(self):
    x_adv = attacks.pgd(self.model_fn, self.x, self.y, 0.5, 0.1, 10, norm="l2").numpy()
    norms = np.sqrt(np.sum((x_adv - self.x) ** 2, axis=(1, 2, 3)))
    self.assertLessEqual(norms.max(), 0.5 + 1e-5)

  def testPgdLowersAccuracyMoreThanFgsmAndNoise(self):
    pgd_acc = self._accuracy(attacks.pgd(self.model_fn, self.x, self.y, 0.15, 0.03, 20))
    fgsm_acc = self._accuracy(attacks.fgsm(self.model_fn, self.x, self.y, 0.15))
    noise = np.clip(self.x + np.random.default_rng(1).choice([-0.15, 0.15], self.x.shape), 0, 1).astype(np.float32)
    self.assertLess(pgd_acc, 0.5)
    self.assertLessEqual(pgd_acc, fgsm_acc)
    self.assertLess(pgd_acc, self._accuracy(noise))

  def testSeededRestarts_AreExactlyTheUnionOfTheSeededSingleStarts(self):
    model_fn, x, y = _start_dependent_problem()
    _, robust = _seeded_restarts(model_fn, x, y, 6)
    fooled_by = [np.argmax(model_fn(attacks.pgd(model_fn, x, y, 0.1, 0.02, 5, seed=tf.constant([7, r], tf.int64))),
                           axis=1) != y for r in range(6)]
    self.assertAllEqual(robust, ~np.any(fooled_by, axis=0))
    # Each start fools about a quarter of the examples, and different ones: the comparison has something to find.
    self.assertBetween(np.mean(fooled_by[0]), 0.1, 0.4)
    self.assertLess(robust.sum(), np.sum(~fooled_by[0]) - 10)
    self.assertAllEqual(_seeded_restarts(model_fn, x, y, 6)[1], robust)  # the same seed, the same verdicts

  def testMoreRestartsNeverMakeAnExampleRobustAgain(self):
    model_fn, x, y = _start_dependent_problem()
    one, three, six = (_seeded_restarts(model_fn, x, y, restarts)[1] for restarts in (1, 3, 6))
    # Restarts 0..k-1 are shared (seed + [0, r]), so each robust set contains the next one.
    self.assertFalse(np.any(three & ~one))
    self.assertFalse(np.any(six & ~three))
    self.assertLess(six.sum(), three.sum())  # and the extra starts fool examples the first ones missed
    self.assertLess(three.sum(), one.sum())

  def testRestartAdversarialExamples_AreMisclassifiedExactlyWhereNotRobust(self):
    x_adv, robust = _seeded_restarts(self.model_fn, self.x, self.y, 3)
    self.assertBetween(robust.mean(), 0.05, 0.95)
    self.assertAllEqual(self._predictions(x_adv) == self.y, robust)
    self.assertAllEqual(x_adv[robust], self.x[robust])  # examples no start fooled keep their input
    self.assertLessEqual(np.max(np.abs(x_adv - self.x)), 0.1 + 1e-6)

  def testRestarts_AttackOnlyTheExamplesStillRobust(self):
    model_fn, x, y = _start_dependent_problem()
    y = y.copy()
    y[:8] = 1  # eight examples the model gets wrong unattacked: never attacked
    images_seen = tf.Variable(0)  # counted in the graph too (cleverhans compiles its gradient step)

    def counting_model_fn(images):
      images_seen.assign_add(tf.shape(images)[0])
      return model_fn(images)

    _, robust = attacks.pgd_with_restarts(counting_model_fn, x, y, 0.1, 0.02, 5, restarts=3,
                                          seed=tf.constant([7, 0], tf.int64))
    robust_before = [64 - 8] + [int(np.sum(_seeded_restarts(model_fn, x, y, r)[1])) for r in (1, 2)]
    # The clean check on all 64, then per restart 5 gradient steps and one re-check on the examples robust before it.
    self.assertEqual(int(images_seen.numpy()), 64 + 6 * sum(robust_before))
    self.assertLess(robust_before[2], robust_before[0])
    self.assertAllEqual(robust, _seeded_restarts(model_fn, x, y, 3)[1])

  def testRestarts_NoExampleLeftToAttack_SkipsTheAttack(self):
    _, robust = attacks.pgd_with_restarts(self.model_fn, self.x, 1 - self.y, 0.1, 0.02, 5, restarts=2)
    self.assertFalse(np.any(robust))

  def testTensorEpsilonInsideTfFunctionTracesOnce(self):
    fn = tf.function(lambda x, y, eps: attacks.pgd(self.model_fn, x, y, eps, eps / 4, 3))
    a = fn(self.x, self.y, tf.constant(0.1))
    b = fn(self.x, self.y, tf.constant(0.02))
    self.assertEqual(fn.experimental_get_tracing_count(), 1)
    self.assertLessEqual(float(tf.reduce_max(tf.abs(a - self.x))), 0.1 + 1e-6)
    self.assertLessEqual(float(tf.reduce_max(tf.abs(b - self.x))), 0.02 + 1e-6)

  def testAttackUsesInferenceModeSoBatchNormStatisticsStayPut(self):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    attacks.pgd(attacks.inference_fn(model), self.x, self.y, 0.1, 0.05, 3)
    for old, new in zip(before, model.non_trainable_variables):
      self.assertAllEqual(old, new)

  def testRequiresTrueLabels(self):
    with self.assertRaisesRegex(ValueError, "true labels"):
      attacks.pgd(self.model_fn, self.x, None, 0.1, 0.01, 2)

  @parameterized.parameters(
      dict(eps=-0.1, eps_iter=0.01, nb_iter=1, match="eps must be >= 0"),
      dict(eps=0.1, eps_iter=0.2, nb_iter=1, match="must not exceed eps"),
      dict(eps=0.1, eps_iter=0.01, nb_iter=0, match="nb_iter"),
  )
  def testRejectsBadBudgets(self, eps, eps_iter, nb_iter, match):
    with self.assertRaisesRegex(ValueError, match):
      attacks.pgd(self.model_fn, self.x, self.y, eps, eps_iter, nb_iter)

  def testRejectsUnknownNorm(self):
    with self.assertRaisesRegex(ValueError, "norm must be one of"):
      attacks.pgd(self.model_fn, self.x, self.y, 0.1, 0.01, 1, norm="l1")


if __name__ == "__main__":
  absltest.main()
