"""What the APGD and FAB tests share: a cnn_small trained briefly on Fashion-MNIST, and hand-set linear models."""

import functools
import os

import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.data import datasets
from tfrobprune.robust import attacks

HAS_FASHION_MNIST = os.path.isdir(datasets.DEFAULT_FASHION_MNIST_DIR)
SKIP_REASON = "dataset-fashion-mnist is not installed"


@functools.lru_cache(maxsize=None)
def trained_fashion_mnist(train_examples=4000, test_examples=200, epochs=3):
  """(model_fn, model, x_test, y_test): a cnn_small fit (naturally) on the first Fashion-MNIST training images."""
  data = datasets.load_dataset("fashion_mnist")
  keras.utils.set_random_seed(0)
  model = models.build_model("cnn_small", (28, 28, 1), 10, mean=0.29, std=0.35, seed=0)
  model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(data.x_train[:train_examples], data.y_train[:train_examples], epochs=epochs, batch_size=128, verbose=0)
  x, y = data.x_test[:test_examples], data.y_test[:test_examples].astype(np.int64)
  return attacks.inference_fn(model), model, x, y


def stop_gradient_fn(model):
  """Logits of `model` behind `tf.stop_gradient`: the same predictions, no input gradient (None in TensorFlow)."""
  return lambda x: tf.stop_gradient(model(x, training=False))


class TrainedFashionMnistFixture:
  """A test-case mixin: `model`, `model_fn`, `x`, `y` (`trained_fashion_mnist`, built once per process),
  `clean_correct`, and `_compiled`, a per-class cache of compiled attacks."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model_fn, cls.model, cls.x, cls.y = trained_fashion_mnist()
    cls.model_fn = staticmethod(model_fn)
    cls.clean_correct = predictions(cls.model, cls.x) == cls.y
    cls._compiled = {}


def linear_model(kernel, bias, input_shape=(4, 4, 1)):
  """A Keras model computing logits = flatten(x) @ kernel + bias with the given weights."""
  model = keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(kernel.shape[1])])
  model.layers[-1].set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])
  return model


def predictions(model, x):
  return np.argmax(model(x, training=False), axis=1)


def perturbation_norms(x_adv, x, norm):
  delta = (np.asarray(x_adv) - np.asarray(x)).reshape(len(x), -1)
  return np.abs(delta).max(axis=1) if norm == "linf" else np.sqrt(np.sum(delta ** 2, axis=1))


def seed(*values):
  return tf.constant(values, tf.int64)
