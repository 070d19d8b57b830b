"""Helpers shared by the channel-pruning tests: small models with BatchNorm and a residual Add, random weights, and
a model channel-pruned by masks next to its shrunken copy."""

import numpy as np

from tfrobprune.keras_compat import keras
from tfrobprune.prune import channel_groups
from tfrobprune.prune import channels
from tfrobprune.prune import surgery
from tfrobprune.prune import wrapping

layers = keras.layers


def residual_model(input_shape=(8, 8, 3), classes=4):
  """conv 'a' (8) -> bn_a -> relu -> [conv 'b' (6) 3x3, conv 's' (6) 1x1] -> add -> bn_m -> relu -> pool -> flatten
  -> 'fc' (7) -> relu -> 'logits': one residual group {b, s} read through a Flatten (4 x 4 positions)."""
  inputs = keras.Input(input_shape, name="images")
  a = layers.Conv2D(8, 3, padding="same", name="a")(inputs)
  a = layers.ReLU(name="relu_a")(layers.BatchNormalization(name="bn_a")(a))
  merged = layers.Add(name="add")([layers.Conv2D(6, 3, padding="same", name="b")(a),
                                   layers.Conv2D(6, 1, name="s")(a)])
  merged = layers.ReLU(name="relu_m")(layers.BatchNormalization(name="bn_m")(merged))
  x = layers.Flatten(name="flatten")(layers.MaxPooling2D(2, name="pool")(merged))
  x = layers.ReLU(name="relu_fc")(layers.Dense(7, name="fc")(x))
  return keras.Model(inputs, layers.Dense(classes, name="logits")(x), name="residual")


def randomise(model, seed=0):
  """Sets every weight at random, biases and BatchNorm statistics included (so removed channels output non-zero
  constants that the masks must cut off), and returns the model."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, layers.BatchNormalization):
      gamma, beta, mean, variance = layer.get_weights()
      values = [rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.5, beta.shape), rng.normal(0, 0.5, mean.shape),
                rng.uniform(0.5, 2.0, variance.shape)]
    elif layer.weights:
      values = [rng.normal(0, 0.3, weight.shape) for weight in layer.get_weights()]
    else:
      continue
    layer.set_weights([value.astype(np.float32) for value in values])
  return model


def masked_and_shrunken(model, sparsity=0.5, scope="layer", norm="l2", exclude_layers=()):
  """(stripped masked model, shrunken model, groups, removed) for channel pruning `model` at `sparsity`."""
  groups = channel_groups.channel_groups(model, exclude_layers)
  removed = channels.channels_to_remove(channels.group_scores(model, groups, norm), sparsity, scope)
  masked = wrapping.strip(wrapping.fixed_mask_prune(model, channels.channel_masks(model, groups, removed)))
  return masked, surgery.shrink(masked, groups, removed), groups, removed


def images(shape, count=8, seed=1):
  return np.random.default_rng(seed).random((count,) + tuple(shape), dtype=np.float32)
