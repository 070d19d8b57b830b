"""Small trained models shared by the evaluation tests: real training on real (synthetic) data, in seconds."""

import functools

import numpy as np

from tfrobprune.data import datasets
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import objectives
from tfrobprune.train import training

NUM_CLASSES = 10
SHAPE = (12, 12, 1)


@functools.lru_cache(maxsize=None)
def synthetic_data(train=1200, test=200, seed=0):
  """A 10-class synthetic dataset of 12x12 grey images (noisy class prototypes)."""
  return datasets.make_synthetic(train, test, SHAPE, NUM_CLASSES, seed)


def trained_model(name="cnn_small", objective="pgd", eps=0.1, epochs=3, seed=0):
  """`name` trained on `synthetic_data` with `objective` (PGD-3 at `eps`, or natural); returns the model."""
  data = synthetic_data()
  model = models.build_model(name, SHAPE, NUM_CLASSES, data.mean, data.std, seed=seed)
  config = (objectives.ObjectiveConfig(name="natural") if objective == "natural" else
            objectives.ObjectiveConfig(name=objective, eps=eps, pgd_steps=3))
  steps = len(data.x_train) // 50
  trainer = training.Trainer(model, objectives.make_objective(config, NUM_CLASSES, seed=seed),
                             training.make_optimizer(training.TrainConfig(epochs=epochs, learning_rate=3e-3), steps))
  batches = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)).batch(50, drop_remainder=True)
  training.train(trainer, lambda epoch: batches, epochs, progress=False)
  return model


def stop_gradient_copy(model):
  """`model` behind `tf.stop_gradient`: the same predictions, an input gradient of exactly zero (masked)."""
  inputs = keras.Input(model.input_shape[1:])
  blocked = keras.layers.Lambda(tf.stop_gradient, name="stop_gradient")(inputs)
  return keras.Model(inputs, model(blocked, training=False))


def test_examples(count=None):
  data = synthetic_data()
  x, y = data.x_test, np.asarray(data.y_test, np.int64)
  return (x, y) if count is None else (x[:count], y[:count])
