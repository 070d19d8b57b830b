"""Tests for tfrobprune.data.streaming_dataset: the checks of a streamed split and its moments, on PNGs made here."""

import os

from absl.testing import absltest
import numpy as np

import format_files
from tfrobprune.data import errors
from tfrobprune.data import image_folder
from tfrobprune.data import streamed_images
from tfrobprune.data import streaming_dataset


class StreamingDatasetTest(absltest.TestCase):

  def _images(self, count, size=(4, 3), gray=False):
    root = self.create_tempdir().full_path
    rng = np.random.default_rng(count)
    shape = size if gray else (*size, 3)
    paths = [format_files.write_image(os.path.join(root, f"{i}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
             for i in range(count)]
    return image_folder.FileSource(paths)

  def _dataset(self, **overrides):
    values = dict(name="d", x_train=streamed_images.StreamedImages(self._images(4), None, (4, 3), 3),
                  y_train=[0, 1, 1, 0], x_test=np.zeros((2, 4, 3, 3)), y_test=[1, 0], class_names=("a", "b"))
    values.update(overrides)
    return streaming_dataset.StreamingDataset(**values)

  def testMomentsAndShapesAreThoseOfTheDecodedTrainingImages(self):
    dataset = self._dataset()
    arrays = dataset.to_arrays()
    self.assertEqual((dataset.input_shape, dataset.num_classes), ((4, 3, 3), 2))
    np.testing.assert_allclose(dataset.mean, arrays.mean, rtol=1e-6)
    np.testing.assert_allclose(dataset.std, arrays.std, rtol=1e-6)
    self.assertEqual(dataset.x_test.dtype, np.float32)

  def testRejectsInconsistentSplitsNamingTheProblem(self):
    cases = [(dict(y_train=[0, 1]), "4 images but 2 labels"),
             (dict(y_test=[0, 2]), r"label 2 at index 1 is outside \[0, 2\)"),
             (dict(x_test=np.zeros((2, 5, 3, 3))), r"train images are \(4, 3, 3\) but test images are \(5, 3, 3\)"),
             (dict(y_train=np.zeros(4)), "labels must be a 1-D integer array")]
    for overrides, pattern in cases:
      with self.assertRaisesRegex(errors.DataError, pattern):
        self._dataset(**overrides)

  def testOpenStreamingPicksOneChannelOnlyWhenBothSplitsAreGrayscale(self):
    gray, color = self._images(2, gray=True), self._images(1)
    labels = np.zeros(2, np.int64)
    self.assertEqual(streaming_dataset.open_streaming("d", (gray, labels), (gray, labels), ("a",)).input_shape,
                     (4, 3, 1))
    self.assertEqual(streaming_dataset.open_streaming("d", (gray, labels), (color, labels[:1]), ("a",),
                                                      image_size=(2, 2)).input_shape, (2, 2, 3))
    with self.assertRaisesRegex(ValueError, "image_size must be"):
      streaming_dataset.open_streaming("d", (gray, labels), (gray, labels), ("a",), image_size=(2,))


if __name__ == "__main__":
  absltest.main()
