"""`StreamedImages`: a dataset's images kept encoded (file paths or TFRecord records), decoded batch by batch.

It stands where an in-memory loader has its float32 image array: it has a length and a shape, a subset is taken
with an index (`images[index]`, as the validation split and `--max_train_examples` do), and `tf.data` pipelines
decode it in a parallel map (`dataset`). Memory holds the source's listing, not pixels: decoding a whole
`StreamedImages` into an array (`np.asarray(images)`) is meant for small selections only.

A source is anything with:
  * `size`: how many images it holds, at positions 0 .. size - 1 (its storage order);
  * `examples(index, shuffle, seed)`: a `tf.data.Dataset` of (int64 position, encoded image string) holding every
    position of the sorted array `index` once, in storage order, or shuffled when `shuffle` is True (the same seed
    gives the same order; None draws a fresh one);
  * `describe(position)`: where the image is, for messages ('DIR/train/cat/1.png', 'FILE, record 7');
  * `encoded(position)`: the image's bytes, read eagerly (for error messages).
"""

import numpy as np

from tfrobprune.data import image_decoding
from tfrobprune.keras_compat import tf

__all__ = ["StreamedImages"]

# Images decoded per step when a selection is turned into an array or its moments are summed.
_DECODE_BATCH = 256


class StreamedImages:
  """Images of a source at the positions `index`, decoded to float32 [H, W, C] in [0, 1] on demand.

  Args:
    source: where the encoded images are (see the module docstring).
    index: sorted positions in the source (None: all of them).
    image_size: (height, width) every image is decoded to.
    channels: 1 or 3.

  Raises:
    ValueError: if `index` is not strictly increasing or holds a position outside the source.
  """

  def __init__(self, source, index, image_size, channels):
    self.source = source
    self.index = np.arange(source.size, dtype=np.int64) if index is None else np.asarray(index, np.int64)
    self.image_size = (int(image_size[0]), int(image_size[1]))
    self.channels = int(channels)
    if self.index.ndim != 1 or np.any(np.diff(self.index) <= 0):
      raise ValueError("StreamedImages keep their source's order: the index must be strictly increasing.")
    if self.index.size and (self.index[0] < 0 or self.index[-1] >= source.size):
      raise ValueError(f"index holds positions outside [0, {source.size}).")

  def __len__(self):
    return int(self.index.size)

  @property
  def shape(self):
    """(N, H, W, C), as the array would have."""
    return (len(self), *self.image_size, self.channels)

  @property
  def ndim(self):
    return 4

  @property
  def dtype(self):
    return np.dtype(np.float32)

  def __getitem__(self, key):
    """The images at `key` (a slice, or sorted integer positions into this selection) as a new `StreamedImages`."""
    if isinstance(key, (int, np.integer)):
      raise TypeError("Index StreamedImages with a slice or an array of positions; np.asarray(images[[i]]) "
                      "decodes one image.")
    return StreamedImages(self.source, self.index[key], self.image_size, self.channels)

  def __repr__(self):
    return f"StreamedImages({len(self)} images of {self.image_size[0]}x{self.image_size[1]}x{self.channels})"

  def encoded(self, shuffle=False, seed=None):
    """A `tf.data.Dataset` of (int64 position, encoded image string): what the pipelines hold before decoding."""
    return self.source.examples(self.index, shuffle=shuffle, seed=seed)

  def dataset(self, labels=None, *, shuffle=False, seed=None):
    """Decoded images (float32 [H, W, C] in [0, 1]), or (image, int64 label) pairs if `labels` is given.

    Args:
      labels: None, or one integer label per image of this selection, in its order.
      shuffle: shuffle as the source does (the whole listing for files; files and a bounded buffer for TFRecord).
      seed: seeds the shuffle; None draws a fresh one.

    Returns:
      A `tf.data.Dataset` whose images are decoded in a parallel map (uint8 until that map).

    Raises:
      ValueError: if `labels` does not hold one label per image.
    """
    decode = self._decode_fn()
    examples = self.encoded(shuffle=shuffle, seed=seed)
    if labels is None:
      return examples.map(lambda position, encoded: decode(encoded), num_parallel_calls=tf.data.AUTOTUNE)
    labels = np.asarray(labels, np.int64)
    if labels.shape != (len(self),):
      raise ValueError(f"labels must hold one label per image ({len(self)}), got shape {labels.shape}.")
    by_position = np.full(self.source.size, -1, np.int64)
    by_position[self.index] = labels
    table = tf.constant(by_position)
    return examples.map(lambda position, encoded: (decode(encoded), tf.gather(table, position)),
                        num_parallel_calls=tf.data.AUTOTUNE)

  def _decode_fn(self):
    image_size, channels = self.image_size, self.channels
    return lambda encoded: image_decoding.to_unit_float(image_decoding.decode_uint8(encoded, image_size, channels))

  def uint8(self):
    """All images of this selection decoded into one uint8 [N, H, W, C] array (in storage order)."""
    image_size, channels = self.image_size, self.channels
    images = np.empty(self.shape, np.uint8)
    decoded = self.encoded().map(lambda position, encoded: image_decoding.decode_uint8(encoded, image_size, channels),
                                 num_parallel_calls=tf.data.AUTOTUNE).batch(_DECODE_BATCH)
    start = 0
    for batch in decoded.as_numpy_iterator():
      images[start:start + len(batch)] = batch
      start += len(batch)
    return images

  def __array__(self, dtype=None, copy=None):
    """float32 [N, H, W, C] in [0, 1]: every image of this selection decoded (for small selections)."""
    del copy  # always a new array
    images = self.uint8().astype(np.float32)
    images /= 255.0
    return images if dtype is None else images.astype(dtype)

  def channel_moments(self):
    """(count, per-channel sum, per-channel sum of squares) of the pixels in [0, 1], in float64, by one pass."""
    def moments(image):
      pixels = tf.reshape(tf.cast(image, tf.float64), (-1, self.channels))
      return tf.reduce_sum(pixels, axis=0), tf.reduce_sum(tf.square(pixels), axis=0)

    sums, squares = np.zeros(self.channels), np.zeros(self.channels)
    for batch_sums, batch_squares in self.dataset().map(moments).batch(_DECODE_BATCH).as_numpy_iterator():
      sums += batch_sums.sum(axis=0)
      squares += batch_squares.sum(axis=0)
    return len(self) * self.image_size[0] * self.image_size[1], sums, squares
