"""Artifact files: written atomically with the user's usual permissions, checksummed, sized raw and gzipped.

The manifest records each artifact's sha256 and its size as shipped (a directory as a gzipped tar), so a copy can
be checked and the cost of shipping each artifact compared. Both depend only on the files' contents, so equal
artifacts from two runs (or a killed and resumed one) record equal figures.
"""

import gzip
import hashlib
import io
import os
import tarfile

from tfrobprune import report as report_lib


def _read_umask():
  umask = os.umask(0o022)  # read by setting; restored at once (import time, before any threads of ours)
  os.umask(umask)
  return umask


_UMASK = _read_umask()


def sha256(path):
  """The hex sha256 of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def relative_files(directory):
  """Relative paths of every file under `directory`, sorted."""
  found = []
  for root, _, names in os.walk(directory):
    found += [os.path.relpath(os.path.join(root, name), directory) for name in names]
  return sorted(found)


def _content_only(member):
  """A tar entry stripped of what varies between copies of the same files: times, owners, permissions."""
  member.mtime, member.uid, member.gid, member.uname, member.gname, member.mode = 0, 0, 0, "", "", 0o644
  return member


def canonical_tar_gz(directory):
  """A gzipped tar of every file under `directory`, sorted, that depends only on the files' names and contents.

  Neither the files' times, owners and permissions nor the time of archiving enter it (tar's PAX headers would
  record fractional modification times, gzip's header the current time), so equal directories give equal bytes.
  """
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
    for name in relative_files(directory):
      archive.add(os.path.join(directory, name), arcname=name, recursive=False, filter=_content_only)
  return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def directory_sizes(directory):
  """(total bytes, bytes of `canonical_tar_gz`) of every file under `directory` (what shipping it costs)."""
  total = sum(os.path.getsize(os.path.join(directory, name)) for name in relative_files(directory))
  return total, len(canonical_tar_gz(directory))


def write_artifact(path, content):
  """Writes `content` atomically, readable like any file the user creates (the temporary file is 0600)."""
  report_lib.atomic_write(path, content, mode="wb" if isinstance(content, bytes) else "w")
  os.chmod(path, 0o666 & ~_UMASK)
