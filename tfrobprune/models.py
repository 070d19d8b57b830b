"""The model zoo: Keras 2 models that tfmot can prune and interval bounds can pass through.

Every model takes raw pixels in [0, 1] (so epsilon keeps its meaning), standardises them in its first layer
(`Standardize`), and returns logits. Activations are separate `ReLU` layers so that bound propagation sees each
pre-activation; only Dense and Conv2D carry weights that pruning touches.
"""

import numpy as np

from tfrobprune.keras_compat import keras, tf

layers = keras.layers


@keras.utils.register_keras_serializable(package="tfrobprune")
class Standardize(layers.Layer):
  """Per-channel `(x - mean) / std`, a fixed (non-trainable) affine map at the model's input."""

  def __init__(self, mean, std, **kwargs):
    super().__init__(**kwargs)
    self.mean_values = [float(v) for v in np.ravel(mean)]
    self.std_values = [float(v) for v in np.ravel(std)]
    if len(self.mean_values) != len(self.std_values):
      raise ValueError(f"mean has {len(self.mean_values)} channels but std has {len(self.std_values)}.")
    if min(self.std_values) <= 0:
      raise ValueError(f"std must be positive, got {self.std_values}.")
    self.mean = tf.constant(self.mean_values, dtype=tf.float32)
    self.std = tf.constant(self.std_values, dtype=tf.float32)

  def call(self, inputs):
    return (inputs - self.mean) / self.std

  def get_config(self):
    config = super().get_config()
    config.update(mean=self.mean_values, std=self.std_values)
    return config


class KernelInitialisers:
  """The kernel initialiser of each Dense/Conv2D a builder makes, in order: Keras' Glorot-uniform.

  With a seed, every kernel gets its own seeded initialiser, its seed drawn from a local generator, so two builds
  with one seed are identical and the build neither reads nor resets global random state (Python, NumPy or
  TensorFlow's); without one, Keras draws as usual.
  """

  def __init__(self, seed=None):
    self._rng = None if seed is None else np.random.default_rng(seed)

  def __call__(self):
    if self._rng is None:
      return "glorot_uniform"
    return keras.initializers.GlorotUniform(seed=int(self._rng.integers(2**31 - 1)))


def _conv(init, filters, kernel, stride=1, name=None):
  return layers.Conv2D(filters, kernel, strides=stride, padding="same", kernel_initializer=init(), name=name)


def _dense(init, units, name):
  return layers.Dense(units, kernel_initializer=init(), name=name)


def _conv_relu_stack(init, specs):
  """[(filters, kernel, stride), ...] -> [Conv2D, ReLU, Conv2D, ReLU, ...]."""
  stack = []
  for index, (filters, kernel, stride) in enumerate(specs):
    stack += [_conv(init, filters, kernel, stride, name=f"conv{index + 1}"),
              layers.ReLU(name=f"relu_conv{index + 1}")]
  return stack


def _dense_relu_stack(init, units_list):
  stack = []
  for index, units in enumerate(units_list):
    stack += [_dense(init, units, f"fc{index + 1}"), layers.ReLU(name=f"relu_fc{index + 1}")]
  return stack


def _sequential(name, input_shape, num_classes, mean, std, body, init):
  return keras.Sequential(
      [keras.Input(shape=input_shape, name="images"), Standardize(mean, std, name="standardize")] + body +
      [_dense(init, num_classes, "logits")],
      name=name)


def mlp(input_shape, num_classes, mean, std, init):
  """Two hidden layers of 512 units."""
  return _sequential("mlp", input_shape, num_classes, mean, std,
                     [layers.Flatten(name="flatten")] + _dense_relu_stack(init, [512, 512]), init)


def cnn_small(input_shape, num_classes, mean, std, init):
  """Wong & Kolter's small network: conv16 4x4/2, conv32 4x4/2, fc100."""
  return _sequential("cnn_small", input_shape, num_classes, mean, std,
                     _conv_relu_stack(init, [(16, 4, 2), (32, 4, 2)]) + [layers.Flatten(name="flatten")] +
                     _dense_relu_stack(init, [100]), init)


def cnn_medium(input_shape, num_classes, mean, std, init):
  """conv32 3x3, conv32 4x4/2, conv64 3x3, conv64 4x4/2, fc512, fc512."""
  return _sequential("cnn_medium", input_shape, num_classes, mean, std,
                     _conv_relu_stack(init, [(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)]) +
                     [layers.Flatten(name="flatten")] + _dense_relu_stack(init, [512, 512]), init)


def dm_large(input_shape, num_classes, mean, std, init):
  """The large IBP model of Gowal et al.: conv64 3x3, conv64 3x3, conv128 3x3/2, conv128 3x3 x2, fc512."""
  return _sequential("dm_large", input_shape, num_classes, mean, std,
                     _conv_relu_stack(init, [(64, 3, 1), (64, 3, 1), (128, 3, 2), (128, 3, 1), (128, 3, 1)]) +
                     [layers.Flatten(name="flatten")] + _dense_relu_stack(init, [512]), init)


_VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(input_shape, num_classes, mean, std, init):
  """VGG16 for 32x32 inputs (conv3x3 + BatchNorm + ReLU blocks, max pooling, fc256 x2 as in HYDRA)."""
  body, conv_index = [], 0
  for item in _VGG16_PLAN:
    if item == "M":
      body.append(layers.MaxPooling2D(2, name=f"pool{len(body)}"))
      continue
    conv_index += 1
    body += [_conv(init, item, 3, name=f"conv{conv_index}"), layers.BatchNormalization(name=f"bn{conv_index}"),
             layers.ReLU(name=f"relu_conv{conv_index}")]
  body += [layers.Flatten(name="flatten")] + _dense_relu_stack(init, [256, 256])
  return _sequential("vgg16", input_shape, num_classes, mean, std, body, init)


def _wide_basic_block(init, x, filters, stride, name):
  """Pre-activation wide residual block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut."""
  out = layers.BatchNormalization(name=f"{name}_bn1")(x)
  out = layers.ReLU(name=f"{name}_relu1")(out)
  shortcut = x
  if stride != 1 or x.shape[-1] != filters:
    shortcut = _conv(init, filters, 1, stride, name=f"{name}_shortcut")(out)
  out = _conv(init, filters, 3, stride, name=f"{name}_conv1")(out)
  out = layers.BatchNormalization(name=f"{name}_bn2")(out)
  out = layers.ReLU(name=f"{name}_relu2")(out)
  out = _conv(init, filters, 3, 1, name=f"{name}_conv2")(out)
  return layers.Add(name=f"{name}_add")([out, shortcut])


def wrn_28_4(input_shape, num_classes, mean, std, init):
  """Wide ResNet 28-4 (Zagoruyko & Komodakis): 3 groups of 4 blocks, widths 64/128/256."""
  inputs = keras.Input(shape=input_shape, name="images")
  x = Standardize(mean, std, name="standardize")(inputs)
  x = _conv(init, 16, 3, name="conv_stem")(x)
  for group, (filters, stride) in enumerate(((64, 1), (128, 2), (256, 2))):
    for block in range(4):
      x = _wide_basic_block(init, x, filters, stride if block == 0 else 1, name=f"g{group + 1}b{block + 1}")
  x = layers.BatchNormalization(name="bn_final")(x)
  x = layers.ReLU(name="relu_final")(x)
  x = layers.GlobalAveragePooling2D(name="pool")(x)
  outputs = _dense(init, num_classes, "logits")(x)
  return keras.Model(inputs, outputs, name="wrn_28_4")


_BUILDERS = {
    "mlp": mlp,
    "cnn_small": cnn_small,
    "cnn_medium": cnn_medium,
    "dm_large": dm_large,
    "vgg16": vgg16,
    "wrn_28_4": wrn_28_4,
}
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name, input_shape, num_classes, mean=None, std=None, seed=None):
  """Builds a zoo model for a dataset.

  Args:
    name: one of `MODEL_NAMES`.
    input_shape: (height, width, channels) of the dataset's images.
    num_classes: number of logits.
    mean: per-channel mean of the training images (defaults to 0).
    std: per-channel standard deviation of the training images (defaults to 1).
    seed: if set, seeds every kernel initialiser (`KernelInitialisers`) so that two builds are identical; global
      random state is left alone either way.

  Returns:
    An uncompiled `tf_keras.Model` from [0, 1] images to logits.

  Raises:
    ValueError: for an unknown model name, a bad shape or class count, or a spatial size the model cannot take.
  """
  if name not in _BUILDERS:
    raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3 or min(input_shape) < 1:
    raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}.")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
  if name in ("vgg16",) and min(input_shape[:2]) < 32:
    raise ValueError(f"{name} needs images of at least 32x32 (five 2x2 poolings), got {input_shape[:2]}.")
  channels = input_shape[-1]
  mean = np.zeros(channels, np.float32) if mean is None else np.broadcast_to(np.asarray(mean, np.float32), (channels,))
  std = np.ones(channels, np.float32) if std is None else np.broadcast_to(np.asarray(std, np.float32), (channels,))
  return _BUILDERS[name](input_shape, num_classes, mean, std, KernelInitialisers(seed))


def prunable_layers(model):
  """The layers that carry a kernel magnitude pruning may zero (Dense and Conv2D), in call order."""
  return [layer for layer in model.layers if isinstance(layer, (layers.Dense, layers.Conv2D))]
