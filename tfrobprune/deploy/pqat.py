"""Pruning-preserving quantization-aware training (PQAT) and the TFLite variant it yields, 'pqat_int8'.

Fine-tuning with tfmot's Default8BitPrunePreserveQuantizeScheme fake-quantizes weights and activations to int8
while keeping every pruned weight at zero; the result is converted to int8 + EXPERIMENTAL_SPARSITY. Optional in an
export (`export.export_all(pqat_data=...)`).
"""

import numpy as np

from tfrobprune.deploy import checks
from tfrobprune.deploy import tflite
from tfrobprune.keras_compat import keras, tf

# After keras_compat, which makes tfmot bind to Keras 2.
import tensorflow_model_optimization as tfmot  # noqa: E402

PQAT_VARIANT = "pqat_int8"


class _OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
  """Quantizes only a layer's output: for `Standardize`, whose output feeds the first quantized convolution.

  tfmot's default registry has no entry for custom layers and refuses to quantize the input of an annotated layer
  whose producer it does not know.
  """

  def get_weights_and_quantizers(self, layer):
    return []

  def get_activations_and_quantizers(self, layer):
    return []

  def set_quantize_weights(self, layer, quantize_weights):
    pass

  def set_quantize_activations(self, layer, quantize_activations):
    pass

  def get_output_quantizers(self, layer):
    return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                                       narrow_range=False)]

  def get_config(self):
    return {}


def _is_plain_relu(layer):
  config = layer.get_config()
  return (isinstance(layer, keras.layers.ReLU) and config.get("max_value") is None and
          not config.get("negative_slope") and not config.get("threshold"))


def _fused_layer_configs(model):
  """(class, config, weights) per layer, with each Conv2D/Dense -> ReLU pair fused into activation='relu'.

  tfmot 0.8.1's `LayerReLUQuantize` transform gives a Conv2D or Dense followed by a separate ReLU layer a
  NoOpQuantizeConfig: its kernel would get no fake quantization and no pruning-preserving mask, so PQAT would
  silently train the pruned zeros back. With the ReLU inside the layer, the default Conv/Dense configs apply.
  """
  if not isinstance(model, keras.Sequential):
    raise ValueError(f"export_pqat needs a Sequential model (the zoo's mlp, cnn_small, cnn_medium, dm_large); "
                     f"{model.name!r} is a {type(model).__name__}.")
  fused, layers = [], list(model.layers)
  for index, layer in enumerate(layers):
    if fused and fused[-1][0] == "skip":
      fused.pop()
      continue
    config = layer.get_config()
    following = layers[index + 1] if index + 1 < len(layers) else None
    if (isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and config.get("activation") == "linear" and
        following is not None and _is_plain_relu(following)):
      fused.append((type(layer), dict(config, activation="relu"), layer.get_weights()))
      fused.append(("skip", None, None))
    else:
      fused.append((type(layer), config, layer.get_weights()))
  return [entry for entry in fused if entry[0] != "skip"]


def _annotated_copy(model):
  """A copy of `model` with ReLUs fused and every layer annotated for quantization (weights copied)."""
  shape = checks.check_exportable(model)
  annotate = tfmot.quantization.keras.quantize_annotate_layer
  layers, weights = [], []
  for layer_class, config, layer_weights in _fused_layer_configs(model):
    layer = layer_class.from_config(config)
    custom = not layer_class.__module__.startswith(("tf_keras", "keras"))
    layers.append(annotate(layer, quantize_config=_OutputQuantizeConfig() if custom else None))
    weights.append((layer, layer_weights))
  annotated = keras.Sequential([keras.Input(shape=shape, name="images")] + layers, name=f"{model.name}_pqat")
  for layer, layer_weights in weights:
    layer.set_weights(layer_weights)
  return annotated


def _zero_masks(model):
  """{layer name: kernel == 0} of every kernel variable ('<layer>/kernel:0', also inside quantization wrappers)."""
  return {weight.name[:-len("/kernel:0")]: weight.numpy() == 0
          for weight in model.weights if weight.name.endswith("/kernel:0")}


def pqat_model(model, x, y, epochs=1, batch_size=64, learning_rate=1e-4):
  """Pruning-preserving quantization-aware fine-tuning (tfmot's Default8BitPrunePreserveQuantizeScheme).

  Fake-quantizes weights and activations to int8 while a mask keeps every pruned weight at zero, and fine-tunes
  with a plain Keras `fit` on the natural cross-entropy (not adversarially: this recovers quantization error, it
  does not re-train robustness; check pgd_acc on the exported model).

  Args:
    model: a stripped, pruned Sequential Keras 2 model from [0, 1] images to logits.
    x: float32 training images in [0, 1].
    y: int64 labels.
    epochs: fine-tuning epochs.
    batch_size: fine-tuning batch size.
    learning_rate: Adam's learning rate (small: the model is already trained).

  Returns:
    (the quantization-aware Keras model, {kernel name: fraction of its zeros kept zero}).
  """
  annotated = _annotated_copy(model)
  with tfmot.quantization.keras.quantize_scope({"_OutputQuantizeConfig": _OutputQuantizeConfig}):
    quantized = tfmot.quantization.keras.quantize_apply(
        annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
  before = _zero_masks(model)
  quantized.compile(keras.optimizers.Adam(learning_rate),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  quantized.fit(np.asarray(x, np.float32), np.asarray(y, np.int64), epochs=epochs, batch_size=batch_size, verbose=0)
  after = _zero_masks(quantized)
  kept = {name: float(np.mean(after[name][zeros])) if zeros.any() else 1.0
          for name, zeros in before.items() if name in after}
  return quantized, kept


def export_pqat(model, x, y, path, epochs=1):
  """Fine-tunes `model` with pruning-preserving QAT (`pqat_model`) and writes it as the 'pqat_int8' TFLite variant.

  The flatbuffer is int8 (weights and activations, ranges learned during QAT; float32 input and output) and
  sparse-encoded (EXPERIMENTAL_SPARSITY), like 'int8_sparse' but trained for quantization instead of calibrated.

  Args:
    model: a stripped, pruned Sequential Keras 2 model.
    x: float32 training images in [0, 1].
    y: int64 labels.
    path: the .tflite file to write (atomically).
    epochs: fine-tuning epochs.

  Returns:
    The `tflite.export_tflite` fields ('path', 'bytes', 'gzip_bytes', 'sha256', 'variant' 'pqat_int8', 'quantization',
    'sparse_encoding') plus 'zeros_kept' ({kernel: fraction of pruned weights still zero after fine-tuning}) and
    'model' (the quantization-aware Keras model, for comparison; not JSON).

  Raises:
    ValueError: for a model that is not Sequential, still wrapped, or has no fixed input shape.
  """
  quantized, kept = pqat_model(model, x, y, epochs)
  converter = tf.lite.TFLiteConverter.from_keras_model(quantized)
  converter.optimizations = [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
  record = tflite.write_flatbuffer(
      path, converter.convert(), PQAT_VARIANT,
      "quantization-aware int8 weights and activations (pruning-preserving), float32 input/output")
  return dict(record, zeros_kept=kept, model=quantized)
