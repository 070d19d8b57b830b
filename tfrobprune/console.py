"""What the command line shows on the console: per-epoch progress bars, and TensorFlow kept quiet.

The library logs through absl logging and never prints; the CLI owns the console. On a machine without a GPU,
TensorFlow's C++ runtime prints CUDA probing errors and INFO lines at import, and its Python side adds INFO and
WARNING lines (checkpoint saver, converters) into the progress bars. `quiet_tensorflow` keeps them out unless the
user asked for verbose output with absl's `--verbosity` / `-v`; it must run before TensorFlow is imported, because
the C++ log level is read once, at import.
"""

import atexit
import importlib
import logging
import os
import re
import sys
import threading
import warnings

from absl import logging as absl_logging

# TF_CPP_MIN_LOG_LEVEL: 0 shows everything, 3 hides INFO, WARNING and ERROR lines of the C++ runtime (the CUDA
# probe on GPU-less machines is an ERROR line). Errors that matter reach Python as exceptions either way.
_QUIET_CPP_LOG_LEVEL = "3"
_VERBOSITY_ARG = re.compile(r"^(?:--verbosity|--v|-v)(?:=(?P<value>-?\d+))?$")
# Lines of absl's C++ logger, "I0000 00:00:1796.. 3612 port.cc:153] oneDNN custom operations are on ..." (a C++
# source file: absl's Python records name a .py file and pass), its preamble, and what LiteRT and the TFLite
# converter print directly.
_CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+\.(cc|cpp|h):\d+\] ")
# Packages whose absl INFO/WARNING records are kept off the console (absl logs every package through one logger).
_LIBRARY_PATH = re.compile(r"[/\\](tensorflow|tf_keras|keras|tensorflow_model_optimization|ai_edge_litert)[/\\]")
_NATIVE_PREFIXES = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                    "INFO: Created TensorFlow Lite", "fully_quantize: ")
_PUMP_DRAIN_SECONDS = 5
_STDERR_FILTER = None


def requested_verbosity(argv):
  """The absl verbosity given on the command line (`--verbosity=N`, `-v N`, `--v N`), or None if none was."""
  verbosity = None
  for index, arg in enumerate(argv):
    match = _VERBOSITY_ARG.match(arg)
    if not match:
      continue
    value = match.group("value")
    if value is None and index + 1 < len(argv):
      value = argv[index + 1]
    try:
      verbosity = int(value)
    except (TypeError, ValueError):
      continue  # absl reports the malformed value itself when it parses the flags
  return verbosity


def quiet_tensorflow(argv):
  """Imports TensorFlow without its console noise, unless argv asks for absl verbosity >= 1.

  Sets the C++ log level (an explicit TF_CPP_MIN_LOG_LEVEL in the environment is respected), filters the native
  log lines that ignore that level out of stderr for the rest of the process, and keeps TensorFlow's Python
  logger and the TFLite converter's warnings at ERROR. Call before anything else imports TensorFlow.

  Returns:
    True if TensorFlow was quietened, False if verbosity was asked for (TensorFlow is then imported untouched).
  """
  verbosity = requested_verbosity(argv)
  if verbosity is not None and verbosity >= 1:
    importlib.import_module("tfrobprune.keras_compat")
    return False
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _QUIET_CPP_LOG_LEVEL)
  _filter_native_stderr_once()
  importlib.import_module("tfrobprune.keras_compat")
  logging.getLogger("tensorflow").setLevel(logging.ERROR)
  absl_logging.get_absl_handler().addFilter(_BelowErrorFromLibraries())
  # The TFLite converter warns from inside TensorFlow (its calibration builds a deprecated tf.lite.Interpreter,
  # quantized inputs without statistics): nothing a user of this CLI can act on.
  warnings.filterwarnings("ignore", category=UserWarning, module=r"tensorflow\.lite\.")
  return True


class _BelowErrorFromLibraries(logging.Filter):
  """Drops INFO and WARNING records that TensorFlow's own code logs through absl (checkpoint saver, converter)."""

  def filter(self, record):
    return record.levelno >= logging.ERROR or not _LIBRARY_PATH.search(record.pathname or "")


def _filter_native_stderr_once():
  global _STDERR_FILTER
  if _STDERR_FILTER is None:
    _STDERR_FILTER = _NativeStderrFilter()
    _STDERR_FILTER.start()
    atexit.register(_STDERR_FILTER.stop)


class _NativeStderrFilter:
  """Passes file descriptor 2 (so C++ writes too) through a pipe whose pump drops native library log lines.

  TensorFlow's shared libraries log while they load, before TF_CPP_MIN_LOG_LEVEL applies, and the TFLite
  converter and LiteRT print straight to stderr; none of that reaches Python's logging. Every other line
  (Python's, tracebacks, the CLI's own errors) is forwarded unchanged, in order.
  """

  def __init__(self):
    self._real_stderr = None
    self._pump = None

  def start(self):
    sys.stderr.flush()
    self._real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    self._pump = threading.Thread(target=self._forward, args=(read_end,), name="stderr-filter", daemon=True)
    self._pump.start()

  def stop(self):
    """Restores the real stderr and lets the pump forward what is left (called at exit)."""
    sys.stderr.flush()
    os.dup2(self._real_stderr, 2)  # closes this process's write end of the pipe: the pump reads to its end
    self._pump.join(timeout=_PUMP_DRAIN_SECONDS)

  def _forward(self, read_end):
    with os.fdopen(read_end, "rb") as pipe:
      for line in iter(pipe.readline, b""):
        if not is_native_log_line(line.decode(errors="replace")):
          self._write(line)

  def _write(self, data):
    try:
      while data:
        data = data[os.write(self._real_stderr, data):]
    except OSError:
      pass  # the real stderr is gone (e.g. a closed pipe): keep draining, so that writers to fd 2 never block


def is_native_log_line(line):
  """True for what native code logs: absl C++ log lines ('E0000 ... cuda_platform.cc:52] ...'), LiteRT's INFO."""
  return bool(_CPP_LOG_LINE.match(line)) or line.startswith(_NATIVE_PREFIXES)


class EpochProgressBars:
  """Shows `[phase] epoch e/E` and a Keras progress bar per epoch; the training loop calls it as a factory.

  `bars(phase, epoch, epochs, steps)` prints the epoch line and returns an object with
  `update(current_step, values=[(name, value), ...])`.
  """

  def __init__(self, stream=None):
    self._stream = stream or sys.stdout

  def __call__(self, phase, epoch, epochs, steps):
    from tfrobprune.keras_compat import keras  # pylint: disable=g-import-not-at-top (quiet_tensorflow imports it)
    print(f"[{phase}] epoch {epoch + 1}/{epochs}", file=self._stream, flush=True)
    return keras.utils.Progbar(steps if steps and steps > 0 else None, verbose=1, unit_name="step")


class EvaluationProgressBars:
  """Shows `[evaluate model] attack: N examples` and a Keras progress bar of examples done and the current robust
  accuracy; the evaluation calls it as a factory (`evaluation.evaluate_model`'s `progress`).

  `bars(model, attack, examples)` prints the line and returns an object with
  `update(examples_done, values=[('robust_acc', value)])`.
  """

  def __init__(self, stream=None):
    self._stream = stream or sys.stdout

  def __call__(self, model, attack, examples):
    from tfrobprune.keras_compat import keras  # pylint: disable=g-import-not-at-top (quiet_tensorflow imports it)
    print(f"[evaluate {model}] {attack}: {examples} examples", file=self._stream, flush=True)
    return keras.utils.Progbar(examples or None, verbose=1, unit_name="example", stateful_metrics=["robust_acc"])
