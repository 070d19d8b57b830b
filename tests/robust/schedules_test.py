"""Tests for tfrobprune.robust.schedules: hand-checkable ramp values."""

from absl.testing import absltest
from absl.testing import parameterized

from tfrobprune.keras_compat import tf
from tfrobprune.robust import schedules


class RampTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters((0, 0.0), (10, 0.0), (15, 0.05), (20, 0.1), (100, 0.1))
  def testLinearRampAfterWarmup(self, step, expected):
    ramp = schedules.Ramp(0.0, 0.1, warmup_steps=10, ramp_steps=10)
    self.assertAllClose(ramp(step), expected)

  def testSmoothedRampIsContinuousMonotonicAndEndsAtFinal(self):
    ramp = schedules.Ramp(0.0, 1.0, warmup_steps=0, ramp_steps=100, shape="smoothed")
    values = [float(ramp(step)) for step in range(0, 101)]
    self.assertAllClose(values[0], 0.0)
    self.assertAllClose(values[-1], 1.0)
    self.assertTrue(all(b >= a for a, b in zip(values, values[1:])))
    self.assertLess(max(b - a for a, b in zip(values, values[1:])), 0.02)  # no jump at the joint
    self.assertLess(values[10], 0.1)  # slow start

  def testDecreasingRampForKappa(self):
    ramp = schedules.Ramp(1.0, 0.5, warmup_steps=0, ramp_steps=4)
    self.assertAllClose([float(ramp(s)) for s in range(6)], [1.0, 0.875, 0.75, 0.625, 0.5, 0.5])

  def testZeroLengthRampJumpsAfterWarmup(self):
    ramp = schedules.Ramp(0.0, 0.3, warmup_steps=5, ramp_steps=0)
    self.assertAllClose([float(ramp(4)), float(ramp(5))], [0.0, 0.3])

  def testConstant(self):
    self.assertAllClose(schedules.Ramp.constant(0.2)(123), 0.2)

  def testTracesOnceInsideTfFunction(self):
    ramp = schedules.Ramp(0.0, 1.0, ramp_steps=10)
    fn = tf.function(ramp.__call__)
    fn(tf.constant(1, tf.int64))
    fn(tf.constant(7, tf.int64))
    self.assertEqual(fn.experimental_get_tracing_count(), 1)

  @parameterized.parameters(dict(shape="cubic"), dict(warmup_steps=-1), dict(ramp_steps=-2))
  def testRejectsBadValues(self, **kwargs):
    with self.assertRaises(ValueError):
      schedules.Ramp(0.0, 1.0, **kwargs)

  def testRoundTripsThroughDict(self):
    ramp = schedules.Ramp(0.0, 0.1, 3, 4, "smoothed")
    self.assertEqual(schedules.Ramp.from_dict(ramp.to_dict()), ramp)


if __name__ == "__main__":
  absltest.main()
