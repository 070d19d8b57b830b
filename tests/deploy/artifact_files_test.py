"""Tests for tfrobprune.deploy.artifact_files: atomic writes with the user's permissions, checksums and sizes."""

import gzip
import hashlib
import io
import os
import sys
import tarfile
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tfrobprune.deploy import artifact_files  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402


class ArtifactFilesTest(tf.test.TestCase):

  def _write(self, path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
      handle.write(content)

  def testSha256_IsTheFilesDigest(self):
    path = os.path.join(self.create_tempdir().full_path, "a.bin")
    self._write(path, b"x" * 3_000_000)  # more than one 1 MiB block
    self.assertEqual(artifact_files.sha256(path), hashlib.sha256(b"x" * 3_000_000).hexdigest())

  def testRelativeFiles_ListsNestedFilesSorted(self):
    directory = self.create_tempdir().full_path
    for name in ("variables/variables.index", "saved_model.pb", "assets/z"):
      self._write(os.path.join(directory, name), b"1")
    self.assertEqual(artifact_files.relative_files(directory),
                     ["assets/z", "saved_model.pb", "variables/variables.index"])

  def testDirectorySizes_AreTheRawTotalAndASmallerGzippedTar(self):
    directory = self.create_tempdir().full_path
    self._write(os.path.join(directory, "a"), b"0" * 50_000)
    self._write(os.path.join(directory, "sub", "b"), b"1" * 20_000)
    total, gzipped = artifact_files.directory_sizes(directory)
    self.assertEqual(total, 70_000)
    self.assertBetween(gzipped, 1, len(gzip.compress(b"0" * 50_000 + b"1" * 20_000)) + 1_000)

  def _copy_with_metadata(self, mtime, mode):
    """The same two files, with their own modification time and permissions."""
    directory = self.create_tempdir().full_path
    for name, content in (("a", bytes(range(256)) * 200), ("sub/b", b"1" * 20_000)):
      path = os.path.join(directory, name)
      self._write(path, content)
      os.chmod(path, mode)
      os.utime(path, (mtime, mtime))
    return directory

  def testDirectorySizes_OfCopiesWithOtherTimesAndPermissions_AreEqual(self):
    first = self._copy_with_metadata(1.25, 0o600)
    second = self._copy_with_metadata(1_700_000_000.123456, 0o755)
    self.assertEqual(artifact_files.directory_sizes(first), artifact_files.directory_sizes(second))

  def testCanonicalTarGz_IsTheSameBytesForCopiesAndAtAnyTime_AndHoldsTheFiles(self):
    first = self._copy_with_metadata(1.25, 0o600)
    second = self._copy_with_metadata(1_700_000_000.123456, 0o755)
    with mock.patch.object(time, "time", return_value=1_000_000_000.0):
      archive = artifact_files.canonical_tar_gz(first)
    with mock.patch.object(time, "time", return_value=2_000_000_000.0):
      self.assertEqual(artifact_files.canonical_tar_gz(second), archive)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as opened:
      self.assertEqual(opened.getnames(), ["a", "sub/b"])
      self.assertEqual(opened.extractfile("sub/b").read(), b"1" * 20_000)
      self.assertEqual(opened.extractfile("a").read(), bytes(range(256)) * 200)

  def testWriteArtifact_WritesBytesAndText_WithThePermissionsOfAPlainFile(self):
    directory = self.create_tempdir().full_path
    artifact_files.write_artifact(os.path.join(directory, "m.tflite"), b"\x00\x01")
    artifact_files.write_artifact(os.path.join(directory, "manifest.json"), "{}")
    with open(os.path.join(directory, "plain"), "w"):
      pass
    with open(os.path.join(directory, "m.tflite"), "rb") as handle:
      self.assertEqual(handle.read(), b"\x00\x01")
    with open(os.path.join(directory, "manifest.json")) as handle:
      self.assertEqual(handle.read(), "{}")
    plain_mode = os.stat(os.path.join(directory, "plain")).st_mode
    for name in ("m.tflite", "manifest.json"):
      self.assertEqual(os.stat(os.path.join(directory, name)).st_mode, plain_mode, name)  # not mkstemp's 0600
    self.assertEqual(sorted(os.listdir(directory)), ["m.tflite", "manifest.json", "plain"])  # no temporary file


if __name__ == "__main__":
  tf.test.main()
