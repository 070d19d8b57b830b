"""What the deploy tests share: learnable synthetic images and a small cnn_small, trained and pruned for real."""

import numpy as np

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.prune import drivers
from tfrobprune.prune import magnitude
from tfrobprune.prune import pruning_config
from tfrobprune.prune import wrapping

SHAPE = (12, 12, 1)
CLASSES = 10
MODEL_NAME = "cnn_small"


def synthetic(count, shape=SHAPE, seed=0):
  """Ten fixed random templates plus noise: learnable with a margin, pixels in [0, 1]."""
  templates = np.random.default_rng(123).random((CLASSES,) + shape, np.float32)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, CLASSES, count)
  images = 0.7 * templates[labels] + 0.3 * rng.random((count,) + shape, np.float32)
  return images.astype(np.float32), labels.astype(np.int64)


def fine_tune_pruned(dense_model, x, y, sparsity, steps):
  """Prunes with tfmot for real: prune_model, a custom loop driven by PruningStepDriver, then strip."""
  pruned = magnitude.prune_model(dense_model, pruning_config.PruningConfig(sparsity, schedule="constant"))
  driver = drivers.PruningStepDriver(pruned)
  optimizer = keras.optimizers.Adam(3e-3)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def train_step(xb, yb):
    with tf.GradientTape() as tape:
      loss = loss_fn(yb, pruned(xb, training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, pruned.trainable_variables), pruned.trainable_variables))

  driver.on_train_begin()
  for step in range(steps):
    driver.on_step_begin(step)
    start = (64 * step) % (len(x) - 64)
    train_step(x[start:start + 64], y[start:start + 64])
  driver.on_epoch_end(0)
  driver.finalize()
  return wrapping.strip(pruned)


def trained_dense_model(x, y):
  model = models.build_model(MODEL_NAME, SHAPE, CLASSES, mean=0.5, std=0.3, seed=0)
  model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=3, batch_size=64, verbose=0)
  return model


def magnitude_masks(model, sparsity):
  masks = {}
  for layer in models.prunable_layers(model):
    kernel = np.abs(layer.kernel.numpy())
    masks[layer.name] = (kernel > np.quantile(kernel, sparsity)).astype(np.float32)
  return masks


def pruned_fixture():
  """What the deploy tests export: (x_train, y_train, x_test, y_test, dense model, 80%-pruned stripped model)."""
  x_train, y_train = synthetic(512, seed=0)
  x_test, y_test = synthetic(96, seed=1)
  dense = trained_dense_model(x_train, y_train)
  return x_train, y_train, x_test, y_test, dense, fine_tune_pruned(dense, x_train, y_train, 0.8, steps=16)


def narrower_copy(model, fraction):
  """A freshly initialised copy of a Sequential zoo model with `fraction` of the filters or units of each Conv2D and
  Dense but the logits: the shape of model that channel pruning's surgery makes."""
  config = model.get_config()
  for layer in config["layers"]:
    layer_config = layer["config"]
    if layer["class_name"] in ("Conv2D", "Dense") and layer_config["name"] != "logits":
      key = "filters" if "filters" in layer_config else "units"
      layer_config[key] = max(1, round(layer_config[key] * fraction))
  return keras.Sequential.from_config(config, custom_objects={"Standardize": models.Standardize})
