"""Tests for tfrobprune.robust.bound_steps: each linear step's maps against its dense matrix."""

from absl.testing import parameterized
import numpy as np

from bounds_test_utils import randomize
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import bound_registry
from tfrobprune.robust.intervals import IntervalBounds

layers = keras.layers


def _linear_matrix(apply, input_shape):
  """The dense matrix [outputs, inputs] of a linear map `apply`, column by column from the unit vectors."""
  size = int(np.prod(input_shape))
  basis = tf.reshape(tf.eye(size), (size,) + tuple(input_shape))
  return tf.reshape(apply(basis), [size, -1]).numpy().T


def _linear_step(make_layer, input_shape, seed):
  """A randomised one-step linear layer, its `bound_steps.Affine` step and the dense matrix of the step's linear map."""
  keras.utils.set_random_seed(seed)
  layer = make_layer()
  randomize(keras.Sequential([keras.Input(input_shape), layer]), seed)
  (step,) = bound_registry.layer_steps(layer)
  return layer, step, _linear_matrix(step.linear.apply, input_shape)


# Layers that are one linear step (no bias where they would have one), with their input shapes.
_LINEAR_LAYERS = (
    ("dense", lambda: layers.Dense(3, use_bias=False), (4,)),
    ("dense_rank3", lambda: layers.Dense(3, use_bias=False), (2, 4)),
    ("conv_same_stride2_odd", lambda: layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False), (5, 5, 2)),
    ("conv_same_stride2_even", lambda: layers.Conv2D(2, 4, strides=2, padding="same", use_bias=False), (6, 6, 2)),
    ("conv_valid_stride2_odd", lambda: layers.Conv2D(2, 2, strides=2, padding="valid", use_bias=False), (5, 5, 1)),
    ("conv_dilated", lambda: layers.Conv2D(2, 2, dilation_rate=2, padding="same", use_bias=False), (5, 5, 2)),
    ("avg_pool_same", lambda: layers.AveragePooling2D(2, padding="same"), (5, 5, 2)),
    ("global_avg_pool", layers.GlobalAveragePooling2D, (3, 3, 2)),
    ("flatten", layers.Flatten, (2, 3, 2)),
    ("batch_norm", layers.BatchNormalization, (2, 2, 3)),
    ("standardize", lambda: models.Standardize([.1, .2], [.5, 2.]), (2, 2, 2)),
)


class LinearStepTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(*_LINEAR_LAYERS)
  def testLinearStepTranspose_MatchesDenseMatrix(self, make_layer, input_shape):
    layer, step, matrix = _linear_step(make_layer, input_shape, seed=2)
    output_shape = layer.compute_output_shape((1,) + input_shape)[1:]
    lam = np.random.default_rng(2).normal(size=(2, 3) + tuple(output_shape)).astype(np.float32)
    transposed = step.linear.transpose(tf.constant(lam), list(input_shape)).numpy()
    self.assertAllClose(transposed.reshape(2, 3, -1), lam.reshape(2, 3, -1) @ matrix, atol=1e-5)
    self.assertAllClose(_linear_matrix(step.linear.apply_abs, input_shape), np.abs(matrix), atol=1e-6)

  @parameterized.named_parameters(*_LINEAR_LAYERS)
  def testAffineStepInterval_IsCenterPlusMinusAbsMatrixTimesRadius(self, make_layer, input_shape):
    # The steps skip center and radius (halved weights, or [A l, A u] for non-negative maps); the box must still be
    # exactly c' = A c + b, r' = |A| r.
    layer, step, matrix = _linear_step(make_layer, input_shape, seed=3)
    bias = 0. if step.bias is None else np.broadcast_to(step.bias, layer.compute_output_shape((1,) + input_shape)[1:])
    rng = np.random.default_rng(3)
    lower = rng.normal(size=(2,) + input_shape).astype(np.float32)
    upper = lower + rng.uniform(0., 1., lower.shape).astype(np.float32)
    box = step.interval(IntervalBounds(lower, upper))
    center, radius = ((upper + lower) / 2).reshape(2, -1), ((upper - lower) / 2).reshape(2, -1)
    expected_center = center @ matrix.T + np.ravel(bias)
    self.assertAllClose(box.lower.numpy().reshape(2, -1), expected_center - radius @ np.abs(matrix).T, atol=1e-5)
    self.assertAllClose(box.upper.numpy().reshape(2, -1), expected_center + radius @ np.abs(matrix).T, atol=1e-5)


if __name__ == "__main__":
  tf.test.main()
