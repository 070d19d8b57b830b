"""Tests for tfrobprune.robust.input_gradients: the polyphase input gradient equals TensorFlow's, and attacks use it."""

import itertools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.prune import wrapping
from tfrobprune.robust import attacks
from tfrobprune.robust import input_gradients

# (input size, kernel, stride, padding, input channels, output channels): strides 1-3, even and odd sizes and
# kernels, sizes not divisible by the stride, kernels smaller than, equal to and larger than the stride.
_CASES = [(size, kernel, stride, padding, c_in, c_out)
          for (size, kernel, stride), padding, (c_in, c_out) in itertools.product(
              [(28, 4, 2), (28, 3, 1), (15, 3, 2), (15, 5, 3), (7, 2, 3), (9, 1, 2), (8, 5, 1)], ["SAME", "VALID"],
              [(1, 16), (3, 5)])]


def _reference_gradients(x, kernel, stride, padding, dy):
  with tf.GradientTape() as tape:
    tape.watch([x, kernel])
    y = tf.nn.conv2d(x, kernel, stride, padding)
  return tape.gradient(y, [x, kernel], output_gradients=dy)


def _random_case(size, kernel_size, stride, padding, c_in, c_out, seed=0):
  rng = np.random.default_rng(seed)
  x = tf.constant(rng.normal(size=(3, size, size + 1, c_in)), tf.float32)
  kernel = tf.constant(rng.normal(size=(kernel_size, kernel_size, c_in, c_out)), tf.float32)
  dy = tf.constant(rng.normal(size=tf.nn.conv2d(x, kernel, stride, padding).shape), tf.float32)
  return x, kernel, dy


def _ops_in_gradient_graph(model_fn, x, y):
  """Op types of the traced graph of d loss / d x through `model_fn`."""

  @tf.function
  def gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x)))
    return tape.gradient(loss, x)

  return [op.type for op in gradient.get_concrete_function(x).graph.get_operations()]


class PolyphaseGradientTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(*_CASES)
  def testInputGradientEqualsTensorflows(self, size, kernel_size, stride, padding, c_in, c_out):
    x, kernel, dy = _random_case(size, kernel_size, stride, padding, c_in, c_out)
    expected, _ = _reference_gradients(x, kernel, stride, padding, dy)
    got = input_gradients.conv2d_input_gradient(dy, kernel, x.shape[1:3], stride, padding)
    self.assertEqual(got.shape, x.shape)
    self.assertAllClose(got, expected, atol=1e-4, rtol=1e-5)

  @parameterized.parameters((28, 4, 2, "SAME", 1, 16), (15, 5, 3, "VALID", 3, 5))
  def testCustomGradientOpMatchesConv2dInValueAndBothGradients(self, size, kernel_size, stride, padding, c_in, c_out):
    x, kernel, dy = _random_case(size, kernel_size, stride, padding, c_in, c_out, seed=1)
    expected_dx, expected_dkernel = _reference_gradients(x, kernel, stride, padding, dy)
    with tf.GradientTape() as tape:
      tape.watch([x, kernel])
      y = input_gradients.conv2d(x, kernel, stride, padding)
    dx, dkernel = tape.gradient(y, [x, kernel], output_gradients=dy)
    self.assertAllClose(y, tf.nn.conv2d(x, kernel, stride, padding))
    self.assertAllClose(dx, expected_dx, atol=1e-4, rtol=1e-5)
    self.assertAllClose(dkernel, expected_dkernel, atol=1e-4, rtol=1e-5)


class ModelIntegrationTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.model = models.build_model("cnn_small", (28, 28, 1), 10, seed=0)
    rng = np.random.default_rng(0)
    self.x = tf.constant(rng.uniform(size=(8, 28, 28, 1)), tf.float32)
    self.y = tf.constant(rng.integers(0, 10, 8), tf.int64)

  def testOnlyTheImageFacingConvolutionIsEligible(self):
    self.assertEqual([layer.name for layer in input_gradients.eligible_layers(self.model)], ["conv1"])
    wrapped = wrapping.fixed_mask_prune(self.model, {"conv1": np.ones((4, 4, 1, 16), np.float32)})
    self.assertEqual([layer.name for layer in input_gradients.eligible_layers(wrapped)], ["conv1"])

  def testWhereItPaysOff_AttackGradientHasOneBackpropInputFewerAndTheSameValue(self):
    plain = _ops_in_gradient_graph(lambda x: self.model(x, training=False), self.x, self.y)
    with mock.patch.object(input_gradients, "pays_off", return_value=True):
      model_fn = attacks.inference_fn(self.model)
    polyphase = _ops_in_gradient_graph(model_fn, self.x, self.y)
    self.assertEqual(plain.count("Conv2DBackpropInput"), 2)
    self.assertEqual(polyphase.count("Conv2DBackpropInput"), 1)

    def input_gradient(model_fn):
      with tf.GradientTape() as tape:
        tape.watch(self.x)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(self.y, model_fn(self.x)))
      return tape.gradient(loss, self.x)

    self.assertAllClose(input_gradient(model_fn), input_gradient(lambda x: self.model(x, training=False)),
                        atol=1e-6, rtol=1e-4)

  def testWhereItDoesNotPayOff_AttackKeepsTensorflowsGradient(self):
    with mock.patch.object(input_gradients, "pays_off", return_value=False):
      model_fn = attacks.inference_fn(self.model)
    self.assertEqual(_ops_in_gradient_graph(model_fn, self.x, self.y).count("Conv2DBackpropInput"), 2)

  def testTheBlockLeavesNoTraceOnTheLayers(self):
    layers = input_gradients.eligible_layers(self.model)
    with input_gradients.polyphase_input_gradients(layers):
      self.assertIn("convolution_op", vars(layers[0]))
    self.assertNotIn("convolution_op", vars(layers[0]))
    plain = _ops_in_gradient_graph(lambda x: self.model(x, training=False), self.x, self.y)
    self.assertEqual(plain.count("Conv2DBackpropInput"), 2)

  def testWideDilatedOrUnstridedConvolutionsKeepTensorflowsKernel(self):
    wide = keras.Sequential([keras.Input((8, 8, input_gradients.MAX_INPUT_CHANNELS + 1)),
                             keras.layers.Conv2D(4, 3, strides=2, padding="same")])
    narrow = keras.Sequential([keras.Input((8, 8, input_gradients.MAX_INPUT_CHANNELS)),
                               keras.layers.Conv2D(4, 3, strides=2, padding="same", dilation_rate=1)])
    dilated = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, dilation_rate=2)])
    unstrided = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same")])
    self.assertEmpty(input_gradients.eligible_layers(wide))
    self.assertLen(input_gradients.eligible_layers(narrow), 1)
    self.assertEmpty(input_gradients.eligible_layers(dilated))
    self.assertEmpty(input_gradients.eligible_layers(unstrided))


if __name__ == "__main__":
  absltest.main()
