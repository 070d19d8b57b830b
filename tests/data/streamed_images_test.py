"""Tests for tfrobprune.data.streamed_images: a lazily decoded image selection over files written at run time."""

import os

from absl.testing import absltest
import numpy as np

import format_files
from tfrobprune.data import image_folder
from tfrobprune.data import streamed_images
from tfrobprune.keras_compat import tf


class StreamedImagesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    root = self.create_tempdir().full_path
    self.pixels = np.random.default_rng(0).integers(0, 256, size=(6, 4, 3, 3), dtype=np.uint8)
    paths = [format_files.write_image(os.path.join(root, f"{i}.png"), image) for i, image in enumerate(self.pixels)]
    self.images = streamed_images.StreamedImages(image_folder.FileSource(paths), None, (4, 3), 3)

  def testLooksLikeTheFloatArrayItStandsFor(self):
    self.assertEqual((len(self.images), self.images.shape, self.images.ndim), (6, (6, 4, 3, 3), 4))
    array = np.asarray(self.images)
    self.assertEqual(array.dtype, np.float32)
    np.testing.assert_array_equal(array, self.pixels.astype(np.float32) / np.float32(255.0))

  def testIndexingSelectsInStorageOrderAndRejectsUnsortedPositions(self):
    subset = self.images[np.array([1, 4, 5])][1:]
    np.testing.assert_array_equal(subset.index, [4, 5])
    np.testing.assert_array_equal(subset.uint8(), self.pixels[[4, 5]])
    with self.assertRaisesRegex(ValueError, "strictly increasing"):
      self.images[np.array([3, 1])]
    with self.assertRaisesRegex(TypeError, "slice or an array"):
      self.images[0]

  def testHoldsEncodedStringsUntilTheDecodingMap(self):
    # What the pipeline stores and shuffles are paths / bytes; pixels exist only after the map, a batch at a time.
    self.assertEqual(self.images.encoded().element_spec[1].dtype, tf.string)
    self.assertEqual(self.images.source.paths.dtype, object)
    spec = self.images.dataset().element_spec
    self.assertEqual((spec.dtype, tuple(spec.shape)), (tf.float32, (4, 3, 3)))

  def testDatasetPairsEachImageWithItsOwnLabelInAnyOrder(self):
    subset = self.images[np.array([0, 2, 3, 5])]
    labels = np.array([10, 12, 13, 15])
    pairs = list(subset.dataset(labels, shuffle=True, seed=3).as_numpy_iterator())
    self.assertCountEqual([int(label) for _, label in pairs], labels)
    for image, label in pairs:
      np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), self.pixels[label - 10])
    again = [int(label) for _, label in subset.dataset(labels, shuffle=True, seed=3).as_numpy_iterator()]
    self.assertEqual(again, [int(label) for _, label in pairs])
    with self.assertRaisesRegex(ValueError, "one label per image"):
      subset.dataset(labels[:2])

  def testChannelMomentsAreThoseOfTheDecodedArray(self):
    count, sums, squares = self.images[1:].channel_moments()
    array = self.pixels[1:].astype(np.float32) / np.float32(255.0)
    self.assertEqual(count, 5 * 4 * 3)
    np.testing.assert_allclose(sums, array.sum(axis=(0, 1, 2), dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(squares, np.square(array, dtype=np.float64).sum(axis=(0, 1, 2)), rtol=1e-12)


if __name__ == "__main__":
  absltest.main()
