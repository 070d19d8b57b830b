"""Tests for tfrobprune.robust.square: the Square attack's properties, through Keras and through LiteRT."""

import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.deploy import tflite
from tfrobprune.deploy import tflite_runner
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import square

_SHAPE = (10, 10, 1)
_CLASSES = 4


def _images(count, seed):
  """Four fixed random templates under strong noise (a model with small margins), a few pixels clipped at 0 or 1."""
  templates = np.random.default_rng(7).random((_CLASSES,) + _SHAPE)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, _CLASSES, count)
  images = 0.5 + 0.35 * (templates[labels] - 0.5) + 0.7 * (rng.random((count,) + _SHAPE) - 0.5)
  return np.clip(images, 0, 1).astype(np.float32), labels.astype(np.int64)


def _trained_model():
  x, y = _images(512, seed=0)
  keras.utils.set_random_seed(0)  # fit's shuffling: the same model in every process
  model = models.build_model("cnn_small", _SHAPE, _CLASSES, mean=0.5, std=0.3, seed=0)
  model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=4, batch_size=64, verbose=0)
  return model


def _stop_gradient_model(model):
  """The same logits behind `tf.stop_gradient`: every input gradient is zero."""
  inputs = keras.Input(_SHAPE)
  return keras.Model(inputs, keras.layers.Lambda(tf.stop_gradient)(model(inputs)))


class SquareTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = _trained_model()
    cls.logits_fn = staticmethod(square.keras_logits_fn(cls.model, batch_size=64))
    cls.x, cls.y = _images(96, seed=1)
    cls.clean_robust = square.margins(cls.logits_fn(cls.x), cls.y) >= 0
    cls.tempdir = tempfile.mkdtemp(prefix="square_test-")
    cls.tflite_path = os.path.join(cls.tempdir, "float32.tflite")
    tflite.export_tflite(cls.model, cls.tflite_path, "float32")

  def _attack(self, logits_fn=None, eps=0.1, **kwargs):
    kwargs = dict(dict(n_queries=200, seed=3), **kwargs)
    return square.square_attack(logits_fn or self.logits_fn, self.x, self.y, eps, **kwargs)

  def testFixture_ModelIsAccurate(self):
    self.assertGreater(self.clean_robust.mean(), 0.9)

  @parameterized.named_parameters(("Linf", "linf", 0.1, np.inf), ("L2", "l2", 0.8, 2))
  def testSquare_NeverLeavesBallOrUnitBox(self, norm, eps, order):
    x_adv, _ = self._attack(eps=eps, norm=norm)
    self.assertEqual(x_adv.dtype, np.float32)
    self.assertAllInRange(x_adv, 0.0, 1.0)
    distances = np.linalg.norm((x_adv - self.x).reshape(len(self.x), -1), ord=order, axis=1)
    self.assertLessEqual(distances.max(), eps * (1 + 1e-5))
    self.assertGreater(distances.max(), 0.5 * eps)  # it did move

  @parameterized.named_parameters(("Linf", "linf"), ("L2", "l2"))
  def testSquare_EpsZero_ChangesNothing(self, norm):
    x_adv, robust, queries = self._attack(eps=0.0, norm=norm, return_queries=True)
    self.assertAllEqual(x_adv, self.x)
    self.assertAllEqual(robust, self.clean_robust)
    self.assertAllEqual(queries, np.zeros(len(self.x)))

  @parameterized.named_parameters(("Linf", "linf", 0.1), ("L2", "l2", 1.0))
  def testSquare_LowersAccuracyOfTrainedModel(self, norm, eps):
    _, robust = self._attack(eps=eps, norm=norm, n_queries=300)
    self.assertLess(robust.mean(), self.clean_robust.mean() - 0.3)

  def testSquare_RobustEqualsRerunningTheModel(self):
    x_adv, robust = self._attack()
    logits = self.model(x_adv, training=False).numpy()
    self.assertAllEqual(robust, np.argmax(logits, axis=1) == self.y)
    self.assertTrue(robust.any() and not robust.all())  # both outcomes occur

  def testSquare_SameSeedSameResult_OtherSeedOtherPoints(self):
    first, again, other = self._attack(), self._attack(), self._attack(seed=4)
    self.assertAllEqual(first[0], again[0])
    self.assertAllEqual(first[1], again[1])
    self.assertNotAllEqual(first[0], other[0])

  def testSquare_ResultDoesNotDependOnBatching(self):
    x_adv, robust = self._attack(square.keras_logits_fn(self.model, batch_size=7))
    expected_adv, expected_robust = self._attack()
    self.assertAllEqual(robust, expected_robust)
    self.assertAllClose(x_adv, expected_adv, atol=1e-6)

  def testSquare_WorksThroughAStopGradientModel(self):
    blocked = _stop_gradient_model(self.model)
    x = tf.constant(self.x[:4])
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(blocked(x, training=False))
    gradient = tape.gradient(loss, x)
    self.assertTrue(gradient is None or not np.any(gradient.numpy()))
    _, robust = self._attack(square.keras_logits_fn(blocked))
    self.assertAllEqual(robust, self._attack()[1])
    self.assertLess(robust.mean(), self.clean_robust.mean() - 0.3)

  def testSquare_ThroughLiteRT_BreaksTheSameExamplesAsKeras(self):
    _, keras_robust = self._attack()
    _, path_robust = self._attack(square.tflite_logits_fn(self.tflite_path, batch_size=32))
    self.assertAllEqual(path_robust, keras_robust)
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    given = litert.Interpreter(model_path=self.tflite_path)
    x_adv, given_robust = self._attack(square.tflite_logits_fn(given, batch_size=16))
    self.assertAllEqual(given_robust, keras_robust)
    rerun, _ = tflite_runner.run_tflite(self.tflite_path, x_adv)
    self.assertAllEqual(given_robust, square.margins(rerun, self.y) >= 0)

  def testSquare_ProgressReportsQueriesAndRobustFraction(self):
    calls = []
    _, robust = self._attack(n_queries=600, progress=lambda *args: calls.append(args))
    self.assertEqual([done for done, _, _ in calls], [250, 500, 600])
    self.assertTrue(all(total == 600 for _, total, _ in calls))
    fractions = [fraction for _, _, fraction in calls]
    self.assertEqual(fractions, sorted(fractions, reverse=True))
    self.assertEqual(fractions[-1], robust.mean())

  def testSquare_CountsQueriesOnlyOfExamplesStillRobust(self):
    wrong = (self.y + 1) % _CLASSES
    labels = np.concatenate([wrong[:5], self.y[5:]])  # the first five start misclassified
    x_adv, robust, queries = square.square_attack(self.logits_fn, self.x, labels, 0.1, n_queries=200, seed=3,
                                                  return_queries=True)
    self.assertAllEqual(queries[:5], np.zeros(5))  # never searched, left as they were
    self.assertAllEqual(x_adv[:5], self.x[:5])
    self.assertFalse(robust[:5].any())
    self.assertAllEqual(queries[robust], np.full(robust.sum(), 201))  # the start and every iteration
    searched = self.clean_robust[5:]  # the others the model gets wrong unattacked: never queried either
    self.assertAllEqual(queries[5:][~searched], np.zeros((~searched).sum()))
    fooled = ~robust[5:] & searched
    self.assertTrue(fooled.any())
    self.assertAllInRange(queries[5:][fooled], 1, 201)

  def testSquare_ATieIsNotASuccess(self):
    tied = lambda images: np.zeros((len(images), _CLASSES), np.float32)
    x_adv, robust, queries = square.square_attack(tied, self.x[:5], self.y[:5], 0.1, n_queries=20,
                                                  return_queries=True)
    self.assertAllEqual(robust, np.ones(5, bool))
    self.assertAllEqual(queries, np.full(5, 21))
    self.assertAllInRange(x_adv - self.x[:5], -0.1 - 1e-6, 0.1 + 1e-6)

  def testSquareLinf_EveryQueryChangesThePoint(self):
    queried = []

    def tied_and_recorded(images):  # every change keeps the margin (0), so every proposal is kept
      queried.append(np.array(images))
      return np.zeros((len(images), _CLASSES), np.float32)

    square.square_attack(tied_and_recorded, self.x[:4], self.y[:4], 0.1, n_queries=300, seed=3)
    steps = np.stack(queried[:301])  # the start, then one proposal per iteration (the final re-check excluded)
    unchanged = np.all(np.abs(np.diff(steps, axis=0)) < 1e-7, axis=(2, 3, 4))
    self.assertFalse(unchanged.any(), f"{unchanged.sum()} of {unchanged.size} queries repeated the last point")

  def testSquareFraction_FollowsTheScheduleAndItsRescaling(self):
    fractions = [square._square_fraction(i, 5000, 0.8, False) for i in (0, 10, 11, 50, 51, 4001, 6001, 9000)]
    self.assertAllClose(fractions, [0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 128, 0.8 / 256, 0.8 / 512])
    self.assertAlmostEqual(square._square_fraction(250, 500, 0.8, True), 0.8 / 128)  # 250/500 of 10,000

  def testCentreWeightedPattern_IsSymmetricUnitAndPeaksInTheCentre(self):
    pattern = square._centre_weighted(5, 5)
    self.assertAlmostEqual(float(np.sum(pattern ** 2)), 1.0, places=6)
    self.assertAllClose(pattern, pattern.T)
    self.assertAllClose(pattern, pattern[::-1, ::-1])
    self.assertEqual(np.argmax(pattern), 12)

  @parameterized.named_parameters(
      ("NegativeEps", dict(eps=-0.1), "eps"),
      ("Norm", dict(norm="l1"), "norm"),
      ("Queries", dict(n_queries=2.5), "n_queries"),
      ("PInit", dict(p_init=0.0), "p_init"),
  )
  def testSquare_BadArguments_Raise(self, kwargs, name):
    with self.assertRaisesRegex(ValueError, name):
      self._attack(**kwargs)

  def testSquare_BadImagesOrLabels_Raise(self):
    with self.assertRaisesRegex(ValueError, r"\[0, 1\]"):
      square.square_attack(self.logits_fn, self.x * 2, self.y, 0.1)
    with self.assertRaisesRegex(ValueError, "one label per image"):
      square.square_attack(self.logits_fn, self.x, self.y[:3], 0.1)

  def testSquare_NoExamples_ReturnsEmpty(self):
    x_adv, robust = square.square_attack(self.logits_fn, self.x[:0], self.y[:0], 0.1)
    self.assertEqual((x_adv.shape, robust.shape), ((0,) + _SHAPE, (0,)))


if __name__ == "__main__":
  absltest.main()
