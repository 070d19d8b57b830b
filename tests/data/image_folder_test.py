"""Tests for tfrobprune.data.image_folder: small PNG / JPEG folders built in a temp dir at run time."""

import io
import os
import pathlib

from absl.testing import absltest
from absl.testing import parameterized
import hypothesis
import numpy as np
from PIL import Image

import format_files
import fuzzing
from tfrobprune.data import errors
from tfrobprune.data import image_folder


class ImageFolderTest(parameterized.TestCase):

  def _rgb(self, seed, size=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)

  def testLoadImageFolderReadsPngAndJpegWithSortedClasses(self):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "zebra", "a.png"), self._rgb(0))
    format_files.write_image(os.path.join(root, "train", "zebra", "b.JPG"), self._rgb(1, size=(9, 9)))
    format_files.write_image(os.path.join(root, "train", "ant", "c.jpeg"), self._rgb(2))
    format_files.write(os.path.join(root, "train", "ant", "notes.txt"), b"not an image, ignored")
    format_files.write_image(os.path.join(root, "test", "zebra", "d.png"), self._rgb(3))
    ds = image_folder.load_image_folder(root, (4, 3))
    self.assertEqual(ds.class_names, ("ant", "zebra"))
    self.assertEqual(ds.x_train.shape, (3, 4, 3, 3))
    self.assertEqual(ds.x_test.shape, (1, 4, 3, 3))
    np.testing.assert_array_equal(ds.y_train, [0, 1, 1])
    np.testing.assert_array_equal(ds.y_test, [1])
    self.assertEqual(ds.x_train.dtype, np.float32)
    self.assertTrue(0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0)

  def testLoadImageFolderUsesOneChannelWhenAllImagesAreGrayscale(self):
    root = self.create_tempdir().full_path
    gray = np.arange(30, dtype=np.uint8).reshape(6, 5)
    format_files.write_image(os.path.join(root, "train", "a", "x.png"), gray)
    format_files.write_image(os.path.join(root, "test", "a", "y.jpg"), gray)
    ds = image_folder.load_image_folder(root, (6, 5))
    self.assertEqual(ds.input_shape, (6, 5, 1))
    np.testing.assert_allclose(ds.x_train[0, ..., 0], gray / 255.0, rtol=1e-6)

  def testLoadImageFolderUsesThreeChannelsWhenAnyImageIsColor(self):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "a", "x.png"), np.zeros((6, 5), np.uint8))
    format_files.write_image(os.path.join(root, "test", "a", "y.png"), self._rgb(5))
    ds = image_folder.load_image_folder(root, (6, 5))
    self.assertEqual(ds.input_shape, (6, 5, 3))

  @parameterized.named_parameters(("_Train", "train"), ("_Test", "test"))
  def testLoadImageFolderRejectsMissingSplit(self, missing):
    root = self.create_tempdir().full_path
    present = "test" if missing == "train" else "train"
    format_files.write_image(os.path.join(root, present, "a", "x.png"), self._rgb(0))
    with self.assertRaisesRegex(errors.DataError, f"{os.path.join(root, missing)}: folder not found"):
      image_folder.load_image_folder(root, (4, 4))

  def testLoadImageFolderRejectsEmptyClassFolder(self):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "a", "x.png"), self._rgb(0))
    os.makedirs(os.path.join(root, "train", "b"))
    format_files.write_image(os.path.join(root, "test", "a", "y.png"), self._rgb(1))
    with self.assertRaisesRegex(errors.DataError, f"{os.path.join(root, 'train', 'b')}: empty class folder"):
      image_folder.load_image_folder(root, (4, 4))

  def testLoadImageFolderRejectsTestClassNotInTrain(self):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "a", "x.png"), self._rgb(0))
    format_files.write_image(os.path.join(root, "test", "b", "y.png"), self._rgb(1))
    with self.assertRaisesRegex(errors.DataError, r"class folder\(s\) \['b'\] are not among the training classes"):
      image_folder.load_image_folder(root, (4, 4))

  @parameterized.named_parameters(("_NotAnImage", b"plain text"),
                                  ("_TruncatedPng", None))
  def testLoadImageFolderNamesUnreadableImage(self, content):
    root = self.create_tempdir().full_path
    good = format_files.write_image(os.path.join(root, "train", "a", "x.png"), self._rgb(0, size=(40, 40)))
    if content is None:
      content = pathlib.Path(good).read_bytes()[:-200]
    bad = format_files.write(os.path.join(root, "train", "a", "y.png"), content)
    format_files.write_image(os.path.join(root, "test", "a", "z.png"), self._rgb(1))
    with self.assertRaisesRegex(errors.DataError, f"{bad}: unreadable image"):
      image_folder.load_image_folder(root, (4, 4))

  @parameterized.named_parameters(("_OneDim", (4,)), ("_Zero", (0, 4)), ("_Float", (4.5, 4)))
  def testLoadImageFolderRejectsBadImageSize(self, image_size):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "a", "x.png"), self._rgb(0))
    format_files.write_image(os.path.join(root, "test", "a", "y.png"), self._rgb(1))
    with self.assertRaisesRegex(ValueError, "image_size must be"):
      image_folder.load_image_folder(root, image_size)



class ImageFolderFuzzTest(absltest.TestCase):
  """Bounded fuzzing: a mutated PNG in the folder gives a dataset or a DataError."""

  @fuzzing.SETTINGS
  @hypothesis.given(fuzzing.MUTATION)
  def testImageFolderGivesDatasetOrDataError(self, mutation):
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6), 128, np.uint8)).save(buffer, format="PNG")
    root = self.create_tempdir().full_path
    for split in ("train", "test"):
      for label in ("a", "b"):
        os.makedirs(os.path.join(root, split, label))
        payload = buffer.getvalue() if (split, label) != ("test", "b") else fuzzing.mutate(buffer.getvalue(), *mutation)
        with open(os.path.join(root, split, label, "0.png"), "wb") as handle:
          handle.write(payload)
    try:
      dataset = image_folder.load_image_folder(root, (6, 6))
    except errors.DataError:
      return
    self.assertEqual(dataset.class_names, ("a", "b"))


if __name__ == "__main__":
  absltest.main()
