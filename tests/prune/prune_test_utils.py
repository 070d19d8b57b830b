"""Helpers shared by the tests of `tfrobprune.prune`: small models, wrapper state, a custom loop that drives pruning."""

import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune.models import build_model
from tfrobprune.prune import drivers

IMAGE_SHAPE = (12, 12, 1)


def cnn_small():
  """The zoo's cnn_small on 12x12x1 images with 10 classes (conv1, conv2, fc1, logits), seeded."""
  return build_model("cnn_small", IMAGE_SHAPE, 10, seed=0)


def dense_model(units, input_dim, use_bias=True, batch_norm=False):
  """Input(input_dim) -> Dense(units[0], name='d0') -> Dense(units[1], name='d1') ... (-> BatchNorm)."""
  inputs = keras.Input((input_dim,))
  x = inputs
  for index, width in enumerate(units):
    x = keras.layers.Dense(width, use_bias=use_bias, name=f"d{index}")(x)
  if batch_norm:
    x = keras.layers.BatchNormalization(name="bn")(x)
  return keras.Model(inputs, x)


def wrappers(model):
  """{wrapped layer name: its pruning wrapper}."""
  return {layer.layer.name: layer for layer in model.layers if hasattr(layer, "pruning_vars")}


def pruning_steps(model):
  """{wrapped layer name: the wrapper's tfmot `pruning_step`}."""
  return {name: int(wrapper.pruning_step.numpy()) for name, wrapper in wrappers(model).items()}


def masks(model):
  """{wrapped layer name: the wrapper's current mask}."""
  return {name: wrapper.pruning_vars[0][1].numpy() for name, wrapper in wrappers(model).items()}


class Loop:
  """A custom training loop like tfrobprune's: compiled step, driver calls in Python, attack-like inference passes."""

  def __init__(self, model, inference_calls=0, training_calls=1, log_dir=None, driver=None):
    self.model = model
    self.driver = driver or drivers.PruningStepDriver(model, log_dir)
    self.inference_calls = inference_calls
    self.step_log = []  # pruning_step of each wrapper right after each optimizer step
    shape = model.input_shape[1:]
    rng = np.random.default_rng(0)
    self.x = tf.constant(rng.random((16,) + shape, np.float32))
    self.y = tf.constant(rng.integers(0, model.output_shape[-1], 16))
    optimizer = keras.optimizers.Adam(1e-2)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
      with tf.GradientTape() as tape:
        loss = tf.add_n([loss_fn(y, model(x, training=True)) for _ in range(training_calls)])
      grads = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))

    self.train_step = train_step
    self.driver.on_train_begin()

  def run(self, steps):
    for step_in_epoch in range(steps):
      self.driver.on_step_begin(step_in_epoch)
      for _ in range(self.inference_calls):
        self.model(self.x, training=False)
      self.train_step(self.x, self.y)
      self.step_log.append(pruning_steps(self.model))
    return self

  def end_epoch(self):
    self.driver.on_epoch_end(0)
    return self
