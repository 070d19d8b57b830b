"""Shared helpers of the bound tests (intervals, bound steps and registry, propagation, margins, CROWN-IBP,
verification): small random models of every supported kind, data, and sampling inside a box."""

import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models

layers = keras.layers
NUM_CLASSES = 10
TOLERANCE = 1e-5


def randomize(model, seed):
  """Random biases and BatchNorm statistics (negative gammas included), so no layer is trivially centred."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    layer = getattr(layer, "layer", layer)
    if isinstance(layer, (layers.Dense, layers.Conv2D)) and layer.use_bias:
      layer.bias.assign(rng.normal(0., .1, layer.bias.shape))
    if isinstance(layer, layers.BatchNormalization):
      shape = layer.gamma.shape
      layer.set_weights([rng.normal(0., 1., shape), rng.normal(0., .2, shape), rng.normal(0., .2, shape),
                         rng.uniform(.5, 2., shape)])
  return model


def _conv_pool_model():
  """Every IBP-only layer: Standardize, strided Conv2D, BN, tanh, max/avg pooling, Dropout, Reshape, sigmoid."""
  return keras.Sequential([
      keras.Input((10, 10, 2)),
      models.Standardize([.3, .6], [.2, .5]),
      layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
      layers.BatchNormalization(),
      layers.Activation("tanh"),
      layers.MaxPooling2D(2, strides=1),
      layers.AveragePooling2D(2),
      layers.Dropout(.5),
      layers.Flatten(),
      layers.Dense(6, activation="sigmoid"),
      layers.Reshape((2, 3)),
      layers.Flatten(),
      layers.Dense(NUM_CLASSES),
  ], name="conv_pool")


def _crown_chain_model():
  """A chain CROWN-IBP relaxes: valid and dilated convs, BN, ReLU layers and activations, average pools."""
  return keras.Sequential([
      keras.Input((9, 9, 2)),
      models.Standardize([.5, .4], [.3, .2]),
      layers.Conv2D(4, 3, strides=2, padding="valid"),
      layers.BatchNormalization(),
      layers.ReLU(),
      layers.Conv2D(3, 2, padding="same", dilation_rate=2, activation="relu"),
      layers.AveragePooling2D(2, padding="same"),
      layers.GlobalAveragePooling2D(),
      layers.Dense(8, activation="relu"),
      layers.Dense(NUM_CLASSES),
  ], name="crown_chain")


def _residual_model():
  """A functional model with a residual Add and global average pooling."""
  inputs = keras.Input((6, 6, 2))
  trunk = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(4, 3, padding="same")(inputs)))
  branch = layers.Conv2D(4, 3, padding="same", activation="relu")(trunk)
  merged = layers.ReLU()(layers.Add(name="residual_add")([trunk, branch]))
  outputs = layers.Dense(NUM_CLASSES)(layers.GlobalAveragePooling2D()(merged))
  return keras.Model(inputs, outputs, name="residual")


_MODELS = {
    "mlp": lambda: models.build_model("mlp", (8, 8, 1), NUM_CLASSES, mean=.4, std=.3, seed=0),
    "cnn_small": lambda: models.build_model("cnn_small", (12, 12, 1), NUM_CLASSES, mean=.4, std=.3, seed=0),
    "conv_pool": _conv_pool_model,
    "crown_chain": _crown_chain_model,
    "residual": _residual_model,
}


CROWN_MODELS = ("mlp", "cnn_small", "crown_chain")


def make_model(name, seed=0):
  keras.utils.set_random_seed(seed)
  return randomize(_MODELS[name](), seed)


def make_data(model, batch, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0., 1., (batch,) + tuple(model.input_shape[1:])).astype(np.float32)
  return x, rng.integers(0, NUM_CLASSES, batch).astype(np.int64)


def sample_box(box, num_samples, seed=0):
  """`num_samples` points per example, half uniform in the box, half random corners: [batch, samples, ...]."""
  rng = np.random.default_rng(seed)
  lower, upper = box.lower.numpy()[:, None], box.upper.numpy()[:, None]
  shape = (lower.shape[0], num_samples) + lower.shape[2:]
  fractions = rng.uniform(0., 1., shape)
  fractions[:, num_samples // 2:] = rng.integers(0, 2, fractions[:, num_samples // 2:].shape)
  return (lower + fractions * (upper - lower)).astype(np.float32)


def apply_per_example(model, points):
  """Runs [batch, samples, ...] points through the model: [batch, samples, outputs...]."""
  outputs = model(points.reshape((-1,) + points.shape[2:]), training=False).numpy()
  return outputs.reshape(points.shape[:2] + outputs.shape[1:])


def assert_weight_gradients_finite(test, model, loss_of_eps, in_tf_function):
  """`loss_of_eps(eps)`, a scalar bound-based loss, has a finite gradient for every trainable weight of `model` at
  eps 0 (where bounds collapse onto a point and divisions by interval widths could blow up) and at eps 0.05."""

  def gradients(eps):
    with tf.GradientTape() as tape:
      loss = loss_of_eps(eps)
    return tape.gradient(loss, model.trainable_weights)

  for eps in (0., .05):
    results = (tf.function(gradients) if in_tf_function else gradients)(tf.constant(eps))
    test.assertNotIn(None, results)
    for gradient in results:
      test.assertAllEqual(tf.math.is_finite(gradient), tf.ones_like(gradient, tf.bool))


def assert_traces_once_as_eps_and_beta_ramp(test, bound_fn, x, y):
  """`bound_fn(x, y, eps, beta)` compiled once serves a ramp of eps and beta (tensors, not retraced constants)."""
  compiled = tf.function(bound_fn)
  for step in range(3):
    compiled(tf.constant(x), tf.constant(y), tf.constant(.01 * step), tf.constant(1. - step / 2.))
  test.assertEqual(compiled.experimental_get_tracing_count(), 1)
