"""Tests for tfrobprune.robust.intervals: the box's constructors, center/radius and affine image by hand."""

from tfrobprune.keras_compat import tf
from tfrobprune.robust.intervals import IntervalBounds


class IntervalBoundsTest(tf.test.TestCase):

  def testFromEpsilon_IntersectsBallWithPixelRange(self):
    box = IntervalBounds.from_epsilon([[.05, .5, .98]], .1)
    self.assertAllClose(box.lower, [[0., .4, .88]])
    self.assertAllClose(box.upper, [[.15, .6, 1.]])

  def testFromEpsilon_NoneClipsDoNotClip(self):
    box = IntervalBounds.from_epsilon([[0., 1.]], .5, clip_min=None, clip_max=None)
    self.assertAllClose(box.lower, [[-.5, .5]])
    self.assertAllClose(box.upper, [[.5, 1.5]])

  def testCenterAndRadius_RoundTrip(self):
    box = IntervalBounds.from_center_radius(tf.constant([[1., -2.]]), tf.constant([[.5, 3.]]))
    self.assertAllClose(box.lower, [[.5, -5.]])
    self.assertAllClose(box.center, [[1., -2.]])
    self.assertAllClose(box.radius, [[.5, 3.]])

  def testAffine_MapsCenterAndRadiusSeparately(self):
    kernel = tf.constant([[1., -2.], [3., 0.]])
    box = IntervalBounds([[0., -1.]], [[2., 1.]]).affine(lambda c: c @ kernel, lambda r: r @ tf.abs(kernel), [1., 1.])
    # c = [1, 0], r = [1, 1]: c' = [1, -2] + 1, r' = [4, 2].
    self.assertAllClose(box.lower, [[-2., -3.]])
    self.assertAllClose(box.upper, [[6., 1.]])

  def testMismatchedShapes_RaiseValueError(self):
    with self.assertRaisesRegex(ValueError, "shape"):
      IntervalBounds(tf.zeros([1, 2]), tf.zeros([1, 3]))


if __name__ == "__main__":
  tf.test.main()
