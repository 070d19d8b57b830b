"""Encoded images (PNG, JPEG, GIF, BMP bytes) -> uint8 [H, W, C] tensors of one size, inside `tf.data` maps.

The streaming loaders keep a dataset encoded (file paths or TFRecord bytes) and decode each image here, in a parallel
`tf.data` map, so memory holds a few batches instead of the dataset. JPEGs are decoded with the accurate integer
IDCT and fancy chroma upsampling, which gives the same pixels as Pillow's default decoder (TensorFlow's own default,
the fast IDCT, differs by a few levels). An image of another size than the dataset's is resized with bilinear
interpolation, antialiased when shrinking (`tf.image.resize(..., antialias=True)`), and rounded back to uint8; its
aspect ratio is not kept.

`scan` decodes every image of a source once, when a dataset is opened, so that an unreadable image is reported with
its file before training starts instead of failing an epoch hours later.
"""

import numpy as np

from tfrobprune.data import errors
from tfrobprune.keras_compat import tf

__all__ = ["channels_for", "decode_error", "decode_native", "decode_uint8", "scan", "to_unit_float"]

# Images decoded per step of the scan (only their shapes are kept).
_SCAN_BATCH = 1024


def decode_native(encoded, channels=0):
  """uint8 [h, w, c] pixels of one encoded image; `channels` 0 keeps the file's own (1-4), else 1 or 3."""
  def jpeg():
    return tf.io.decode_jpeg(encoded, channels=channels, dct_method="INTEGER_ACCURATE")

  def other():
    return tf.io.decode_image(encoded, channels=channels, expand_animations=False)  # GIF: the first frame

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def decode_uint8(encoded, image_size, channels):
  """uint8 [H, W, C] pixels of one encoded image, resized to `image_size` (H, W) unless it already has that size.

  Args:
    encoded: a scalar string tensor holding a PNG, JPEG, GIF or BMP file.
    image_size: (height, width) of the result.
    channels: 1 (grayscale; alpha dropped) or 3 (RGB; alpha dropped, grayscale repeated).

  Returns:
    A uint8 tensor of static shape [H, W, C].
  """
  image = decode_native(encoded, channels)
  size = tf.constant(image_size, tf.int32)

  def resized():
    pixels = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)

  image = tf.cond(tf.reduce_all(tf.shape(image)[:2] == size), lambda: image, resized)
  return tf.ensure_shape(image, (*image_size, channels))


def to_unit_float(image):
  """uint8 pixels -> float32 in [0, 1] (the same values as `array_dataset.to_unit_float`)."""
  return tf.cast(image, tf.float32) / 255.0


def channels_for(native_channels):
  """The images decide the channels: 1 if every image is grayscale (1 or 2 channels with alpha), else 3 (RGB)."""
  return 1 if np.all(np.asarray(native_channels) <= 2) else 3


def scan(examples, count):
  """Decodes every image of `examples` once; returns their native shapes and which ones could not be decoded.

  Args:
    examples: a `tf.data.Dataset` of (int64 position in [0, count), encoded image string).
    count: how many positions there are.

  Returns:
    (int64 [count, 3] native (height, width, channels), 0 where the image failed; sorted positions of the images
    that could not be read or decoded).
  """
  shapes = np.zeros((count, 3), np.int64)
  decoded = np.zeros(count, bool)
  dataset = examples.map(lambda position, encoded: (position, tf.shape(decode_native(encoded), tf.int64)),
                         num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(_SCAN_BATCH)
  for positions, batch_shapes in dataset.as_numpy_iterator():
    shapes[positions] = batch_shapes
    decoded[positions] = True
  return shapes, np.flatnonzero(~decoded)


def decode_error(encoded):
  """The decoder's message for one image that `scan` reported as bad (runs eagerly)."""
  try:
    decode_native(tf.constant(encoded))
  except tf.errors.OpError as error:
    return errors.op_message(error)
  return "decoded on a second attempt"
