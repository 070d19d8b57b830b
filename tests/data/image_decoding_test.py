"""Tests for tfrobprune.data.image_decoding: encoded bytes -> uint8 pixels as Pillow reads them, resizing, scanning."""

import io

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from tfrobprune.data import image_decoding
from tfrobprune.keras_compat import tf


def _encoded(array, image_format):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=image_format)
  return buffer.getvalue()


def _pillow(encoded, mode):
  """The pixels the in-memory loader used to return: Pillow's decoder, converted to `mode`."""
  with Image.open(io.BytesIO(encoded)) as image:
    return np.asarray(image.convert(mode))


class ImageDecodingTest(parameterized.TestCase):

  @parameterized.named_parameters(("_Png", "PNG"), ("_Jpeg", "JPEG"), ("_Bmp", "BMP"), ("_Gif", "GIF"))
  def testDecodeUint8GivesPillowsPixelsAtTheNativeSize(self, image_format):
    rgb = np.random.default_rng(0).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    encoded = _encoded(rgb if image_format != "GIF" else rgb[..., 0], image_format)
    decoded = image_decoding.decode_uint8(tf.constant(encoded), (9, 7), 3)
    self.assertEqual(decoded.dtype, tf.uint8)
    np.testing.assert_array_equal(decoded.numpy(), _pillow(encoded, "RGB"))

  def testDecodeUint8OfGrayscaleJpegMatchesPillowWithOneChannel(self):
    gray = np.random.default_rng(1).integers(0, 256, size=(8, 8), dtype=np.uint8)
    encoded = _encoded(gray, "JPEG")
    np.testing.assert_array_equal(image_decoding.decode_uint8(tf.constant(encoded), (8, 8), 1).numpy()[..., 0],
                                  _pillow(encoded, "L"))

  @parameterized.named_parameters(("_Shrink", (37, 29), (20, 16)), ("_Grow", (8, 6), (16, 12)))
  def testDecodeUint8ResizesBilinearlyWithinOneLevelOfPillow(self, native, target):
    rgb = np.random.default_rng(2).integers(0, 256, size=(*native, 3), dtype=np.uint8)
    decoded = image_decoding.decode_uint8(tf.constant(_encoded(rgb, "PNG")), target, 3).numpy()
    pillow = np.asarray(Image.fromarray(rgb).resize(target[::-1], Image.Resampling.BILINEAR))
    self.assertEqual(decoded.shape, (*target, 3))
    self.assertLessEqual(np.abs(decoded.astype(int) - pillow).max(), 1)

  def testToUnitFloatMatchesTheArrayLoadersScaling(self):
    pixels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(image_decoding.to_unit_float(tf.constant(pixels)).numpy(),
                                  pixels.astype(np.float32) / np.float32(255.0))

  @parameterized.named_parameters(("_AllGray", [1, 2, 1], 1), ("_OneColor", [1, 3], 3), ("_Rgba", [4], 3))
  def testChannelsForIsOneOnlyWhenEveryImageIsGrayscale(self, native, expected):
    self.assertEqual(image_decoding.channels_for(native), expected)

  def testScanReturnsNativeShapesAndTheUndecodablePositions(self):
    images = [_encoded(np.zeros((3, 5, 3), np.uint8), "PNG"), b"not an image", _encoded(np.zeros((4, 2), np.uint8),
                                                                                         "JPEG")]
    examples = tf.data.Dataset.from_tensor_slices((np.arange(3, dtype=np.int64), images))
    shapes, bad = image_decoding.scan(examples, 3)
    np.testing.assert_array_equal(shapes[[0, 2]], [[3, 5, 3], [4, 2, 1]])
    np.testing.assert_array_equal(bad, [1])
    self.assertIn("Unknown image file format", image_decoding.decode_error(b"not an image"))


if __name__ == "__main__":
  absltest.main()
