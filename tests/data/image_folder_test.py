"""Tests for tfrobprune.data.image_folder: small PNG / JPEG folders built in a temp dir at run time, streamed or
decoded into arrays."""

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
from tfrobprune.data import streaming_dataset


class ImageFolderTest(parameterized.TestCase):

  def _rgb(self, seed, size=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)

  def testLoadImageFolderReadsPngAndJpegWithSortedClasses(self):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "zebra", "a.png"), self._rgb(0))
    format_files.write_image(os.path.join(root, "train", "zebra", "b.JPG"), self._rgb(1, size=(9, 9)))
    format_files.write_image(os.path.join(root, "train", "ant", "c.jpeg"), self._rgb(2))
    format_files.write(os.path.join(root, "train", "ant", "notes.txt"), b"not an image, ignored")
    format_files.write(os.path.join(root, "train", "ant", "._c.jpeg"), b"macOS metadata, ignored")
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

  def testOpenImageFolderStreamsThePixelsPillowReadsInClassOrder(self):
    # The in-memory loader used to decode with Pillow; the stream decodes in the tf.data map to the same pixels.
    root = self.create_tempdir().full_path
    files = [(os.path.join(root, "train", name), self._rgb(seed, size=(7, 5)))
             for seed, name in enumerate(["b/1.png", "b/0.jpg", "a/2.jpeg", "a/3.png"])]
    for path, pixels in files:
      format_files.write_image(path, pixels)
    format_files.write_image(os.path.join(root, "test", "b", "t.jpg"), self._rgb(9, size=(7, 5)))
    ds = image_folder.open_image_folder(root)
    self.assertIsInstance(ds, streaming_dataset.StreamingDataset)
    order = ["a/2.jpeg", "a/3.png", "b/0.jpg", "b/1.png"]
    pillow = np.stack([np.asarray(Image.open(os.path.join(root, "train", name)).convert("RGB")) for name in order])
    np.testing.assert_array_equal(ds.x_train.uint8(), pillow)
    np.testing.assert_array_equal(ds.y_train, [0, 0, 1, 1])
    np.testing.assert_array_equal(np.asarray(ds.x_train), pillow.astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(ds.x_test[0] * 255, np.asarray(Image.open(os.path.join(root, "test", "b", "t.jpg"))))
    arrays = image_folder.load_image_folder(root)
    np.testing.assert_array_equal(arrays.x_train, np.asarray(ds.x_train))
    np.testing.assert_allclose(ds.mean, arrays.mean, rtol=1e-6)
    np.testing.assert_allclose(ds.std, arrays.std, rtol=1e-6)

  def testImageSizeOmittedTakesTheFirstTrainingImageAndResizesTheOthers(self):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "a", "0.png"), self._rgb(0, size=(6, 5)))
    big = format_files.write_image(os.path.join(root, "train", "a", "1.png"), self._rgb(1, size=(12, 10)))
    format_files.write_image(os.path.join(root, "test", "a", "2.png"), self._rgb(2, size=(3, 3)))
    ds = image_folder.open_image_folder(root)
    self.assertEqual((ds.input_shape, ds.x_test.shape), ((6, 5, 3), (1, 6, 5, 3)))
    pillow = np.asarray(Image.open(big).resize((5, 6), Image.Resampling.BILINEAR)).astype(int)
    self.assertLessEqual(np.abs(ds.x_train.uint8()[1].astype(int) - pillow).max(), 1)

  def testOpenImageFolderCountsEveryUnreadableImageAndNamesTheFirst(self):
    root = self.create_tempdir().full_path
    format_files.write_image(os.path.join(root, "train", "a", "0.png"), self._rgb(0))
    first = format_files.write(os.path.join(root, "train", "a", "1.png"), b"not a png")
    os.makedirs(os.path.join(root, "train", "b"))
    format_files.write(os.path.join(root, "train", "b", "2.jpg"), b"\xff\xd8 not a jpeg either")
    format_files.write_image(os.path.join(root, "test", "a", "3.png"), self._rgb(1))
    with self.assertRaisesRegex(errors.DataError, f"{first}: unreadable image .*; 2 unreadable images in total"):
      image_folder.open_image_folder(root)

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
