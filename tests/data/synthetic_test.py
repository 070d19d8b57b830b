"""Tests for tfrobprune.data.synthetic: shapes, balance, determinism in the seed, and that it can be learned."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.data import synthetic


class MakeSyntheticTest(parameterized.TestCase):

  def testMakeSyntheticHasRequestedShapesBalancedLabelsAndUnitRange(self):
    ds = synthetic.make_synthetic(40, 20, (8, 8, 3), 4, seed=1)
    self.assertEqual((ds.x_train.shape, ds.x_test.shape), ((40, 8, 8, 3), (20, 8, 8, 3)))
    np.testing.assert_array_equal(np.bincount(ds.y_train), [10] * 4)
    self.assertTrue(0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0)
    self.assertEqual(ds.class_names, ("class_0", "class_1", "class_2", "class_3"))

  def testMakeSyntheticIsDeterministicInSeed(self):
    a, b, c = (synthetic.make_synthetic(16, 8, (4, 4, 1), 3, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    self.assertFalse(np.array_equal(a.x_train, c.x_train))

  def testMakeSyntheticIsLearnableByNearestClassMean(self):
    ds = synthetic.make_synthetic(200, 100, (8, 8, 1), 10, seed=0)
    flat_train, flat_test = ds.x_train.reshape(200, -1), ds.x_test.reshape(100, -1)
    means = np.stack([flat_train[ds.y_train == k].mean(axis=0) for k in range(10)])
    predicted = np.argmin(((flat_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    self.assertGreater(np.mean(predicted == ds.y_test), 0.95)

  @parameterized.named_parameters(("_NoTrain", dict(num_train=0)), ("_OneClass", dict(num_classes=1)),
                                  ("_TwoDimShape", dict(image_shape=(4, 4))))
  def testMakeSyntheticRejectsBadArguments(self, override):
    kwargs = dict(num_train=4, num_test=2, image_shape=(4, 4, 1), num_classes=2, seed=0) | override
    with self.assertRaises(ValueError):
      synthetic.make_synthetic(**kwargs)



if __name__ == "__main__":
  absltest.main()
