"""Tests for tfrobprune.console: verbosity parsing, TensorFlow kept quiet at import, per-epoch progress bars."""

import io
import logging
import os
import re
import subprocess
import sys

from absl import logging as absl_logging
from absl.testing import absltest
from absl.testing import parameterized

from tfrobprune import console

# A line of TensorFlow's C++ logger: severity letter, MMDD date, e.g. "E0000 00:00:17... cuda_platform.cc:52] ...".
_CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_tensorflow_with_argv(*argv):
  """Runs a child that calls quiet_tensorflow(argv) and imports TensorFlow and tf_keras; returns its stderr."""
  script = ("import sys; from tfrobprune import console; console.quiet_tensorflow(sys.argv[1:]); "
            "from tfrobprune.keras_compat import tf; tf.constant(1.0) + 1.0")
  env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
  env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                          timeout=300, check=True)
  return result.stderr


class RequestedVerbosityTest(parameterized.TestCase):

  @parameterized.parameters(
      (["tfrobprune", "train"], None),
      (["tfrobprune", "train", "--verbosity=1"], 1),
      (["tfrobprune", "-v", "2", "train"], 2),
      (["tfrobprune", "--v=0"], 0),
      (["tfrobprune", "--verbosity", "-1"], -1),
      (["tfrobprune", "--verbosity=loud"], None),
      (["tfrobprune", "--verbosity_extra=3"], None),
  )
  def testParsesAbslVerbosityFlags(self, argv, expected):
    self.assertEqual(console.requested_verbosity(argv), expected)


class NativeLogLineTest(parameterized.TestCase):

  @parameterized.parameters(
      ("E0000 00:00:1796006971.472850    3612 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n", True),
      ("I0000 00:00:1796006968.860860    3612 cudart_stub.cc:31] Could not find cuda drivers\n", True),
      ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n", True),
      ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n", True),
      ("fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n", True),
      # absl's Python records (ours among them) name a .py file and pass.
      ("W1130 02:53:23.458048 140607882828672 checkpointing.py:77] Checkpoint x is unreadable\n", False),
      ("tfrobprune: error: --output_dir is required for `train`.\n", False),
      ("Traceback (most recent call last):\n", False),
  )
  def testTellsNativeLogLinesFromEverythingElse(self, line, native):
    self.assertEqual(console.is_native_log_line(line), native)


class QuietTensorflowTest(absltest.TestCase):

  def testDefaultHidesTensorflowCppLines(self):
    stderr = _import_tensorflow_with_argv("train")
    self.assertIsNone(_CPP_LOG_LINE.search(stderr), stderr)
    self.assertNotIn("cuInit", stderr)

  def testVerbosityOneLeavesTensorflowAlone(self):
    self.assertFalse(console.quiet_tensorflow(["tfrobprune", "--verbosity=1"]))
    # On a machine without a GPU (this one, CI's) TensorFlow reports at import that it found no CUDA driver.
    stderr = _import_tensorflow_with_argv("--verbosity=1")
    self.assertRegex(stderr, _CPP_LOG_LINE)


class NativeStderrFilterTest(absltest.TestCase):

  def testForwardsOtherLinesInOrderAndNeverBlocksWhenStderrIsGone(self):
    script = ("import sys; from tfrobprune import console; console.quiet_tensorflow(['tfrobprune']); "
              "[print(f'line {i}', file=sys.stderr) for i in range(3)]; "
              "print('I0000 00:00:17.5 12 port.cc:153] native', file=sys.stderr)")
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stderr, "line 0\nline 1\nline 2\n")
    # A reader that goes away (stderr piped into `head`): 1 MB of stderr later the process still exits.
    flood = script + "; [sys.stderr.write('x' * 99 + chr(10)) for _ in range(10000)]; sys.stderr.flush()"
    process = subprocess.Popen([sys.executable, "-c", flood], stderr=subprocess.PIPE, env=env)
    process.stderr.close()
    self.assertEqual(process.wait(timeout=300), 0)


class LibraryRecordsFilterTest(absltest.TestCase):

  def _record(self, pathname, level):
    return logging.LogRecord("absl", level, pathname, 1, "message", None, None)

  def testQuietConsoleDropsTensorflowInfoButKeepsOursAndErrors(self):
    console.quiet_tensorflow(["tfrobprune", "train"])
    handler = absl_logging.get_absl_handler()
    saver = "/venv/lib/python3.11/site-packages/tensorflow/python/checkpoint/functional_saver.py"
    self.assertFalse(all(f.filter(self._record(saver, logging.INFO)) for f in handler.filters))
    self.assertTrue(all(f.filter(self._record(saver, logging.ERROR)) for f in handler.filters))
    ours = os.path.join(_ROOT, "tfrobprune", "train", "training.py")
    self.assertTrue(all(f.filter(self._record(ours, logging.INFO)) for f in handler.filters))


class EpochProgressBarsTest(absltest.TestCase):

  def testPrintsTheEpochLineAndReturnsABar(self):
    stream = io.StringIO()
    bar = console.EpochProgressBars(stream)("pretrain", 2, 7, 12)
    self.assertEqual(stream.getvalue(), "[pretrain] epoch 3/7\n")
    self.assertEqual(bar.target, 12)
    bar.update(12, values=[("loss", 0.5)])  # the training loop's call


class EvaluationProgressBarsTest(absltest.TestCase):

  def testPrintsModelAttackAndExamplesAndShowsTheCurrentRobustAccuracy(self):
    stream = io.StringIO()
    bar = console.EvaluationProgressBars(stream)("s0.9", "apgd-t", 700)
    self.assertEqual(stream.getvalue(), "[evaluate s0.9] apgd-t: 700 examples\n")
    self.assertEqual(bar.target, 700)
    bar.update(500, values=[("robust_acc", 0.7)])  # the evaluation's calls
    bar.update(700, values=[("robust_acc", 0.6)])
    self.assertEqual(bar._values["robust_acc"], [0.6, 1])  # pylint: disable=protected-access  (the latest, no mean)


if __name__ == "__main__":
  absltest.main()
