"""Tests for tfrobprune.data.safe_unpickle: numpy arrays come back; any other global is refused, never called."""

import io
import os
import pickle

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

import format_files
from tfrobprune.data import cifar10
from tfrobprune.data import errors
from tfrobprune.data import safe_unpickle


class _EvilPayload:
  """Pickles to a call of `function(argument)`: what a malicious batch file would contain."""

  def __init__(self, function, argument):
    self.function, self.argument = function, argument

  def __reduce__(self):
    return self.function, (self.argument,)


def _unpickle(content, path="batch"):
  return safe_unpickle.RestrictedUnpickler(io.BytesIO(content), path).load()


class RestrictedUnpicklerTest(parameterized.TestCase):

  # Protocols 3 to 5 only: Python 3 writes `bytes` at protocol 2 as a call of `_codecs.encode`, which is refused.
  @parameterized.parameters(3, 4, 5)
  def testRebuildsDictOfNumpyArrayListAndBytes(self, protocol):
    batch = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2], b"batch_label": b"batch 1"}
    loaded = _unpickle(pickle.dumps(batch, protocol=protocol))
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    self.assertEqual(loaded[b"data"].dtype, np.uint8)
    self.assertEqual((loaded[b"labels"], loaded[b"batch_label"]), ([1, 2], b"batch 1"))

  @parameterized.named_parameters(("_OsSystem", os.system, "true"), ("_BuiltinsEval", eval, "1"))
  def testRefusesOtherGlobalsNamingFileAndGlobal(self, function, argument):
    content = pickle.dumps({b"data": _EvilPayload(function, argument)})
    with self.assertRaisesRegex(errors.DataError, f"^evil: refusing to unpickle global .*{function.__name__}"):
      _unpickle(content, path="evil")

  @parameterized.named_parameters(("_OsSystem", "system"), ("_BuiltinsExec", "exec"))
  def testRestrictedUnpicklerRefusesMaliciousPickleWithoutRunningIt(self, attack):
    folder = self.create_tempdir().full_path
    format_files.write_cifar_python(folder)
    sentinel = os.path.join(folder, "pwned")
    payloads = {"system": _EvilPayload(os.system, f"touch {sentinel}"),
                "exec": _EvilPayload(exec, f"open({sentinel!r}, 'w').close()")}
    path = format_files.write(os.path.join(folder, "data_batch_1"),
                              pickle.dumps({b"data": payloads[attack], b"labels": []}))
    with self.assertRaisesRegex(errors.DataError, f"{path}: refusing to unpickle global"):
      cifar10.load_cifar10(folder)
    self.assertFalse(os.path.exists(sentinel))

  def testMaliciousPayloadWouldRunUnderPlainPickle(self):
    # Control for the test above: the payload is live, so its sentinel not appearing there means something.
    sentinel = os.path.join(self.create_tempdir().full_path, "pwned")
    pickle.loads(pickle.dumps(_EvilPayload(exec, f"open({sentinel!r}, 'w').close()")))
    self.assertTrue(os.path.exists(sentinel))


if __name__ == "__main__":
  absltest.main()
