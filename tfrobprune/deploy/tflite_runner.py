"""A TFLite flatbuffer run in LiteRT, with the fallback from the XNNPACK delegate to the builtin kernels.

LiteRT's default XNNPACK delegate cannot prepare the sparse int8 FULLY_CONNECTED kernel ('failed to delegate
FULLY_CONNECTED node ... failed to prepare'); `TFLiteRunner` then falls back to the builtin kernels without default
delegates and reports which setting ran ('xnnpack' or 'builtin_no_delegates'). `tflite_bench` times them.
"""

import numpy as np

RUNTIME_XNNPACK = "xnnpack"
RUNTIME_BUILTIN = "builtin_no_delegates"
RUNTIME_GIVEN = "interpreter as given"

_BATCH = 128  # the most images per invoke in `run_tflite`


class TFLiteRunner:
  """A LiteRT interpreter for one flatbuffer, batch size fixed, with the XNNPACK -> builtin-kernels fallback.

  Attributes:
    runtime: 'xnnpack' (LiteRT's default, XNNPACK delegate) or 'builtin_no_delegates'
      (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`), whichever prepared and ran.
    xnnpack_error: why XNNPACK was not used (None if it was).
    batch: images per `invoke`.
  """

  def __init__(self, path, num_threads=1, batch=1):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top

    self.batch = batch
    self.xnnpack_error = None
    try:
      self._open(litert.Interpreter(model_path=path, num_threads=num_threads))
      self.runtime = RUNTIME_XNNPACK
    except (RuntimeError, ValueError) as error:
      self.xnnpack_error = " ".join(str(error).split())
      self._open(litert.Interpreter(
          model_path=path, num_threads=num_threads,
          experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
      self.runtime = RUNTIME_BUILTIN

  @classmethod
  def from_interpreter(cls, interpreter, batch=1):
    """Wraps a LiteRT `Interpreter` opened elsewhere (its delegates as they are), its input resized to `batch`."""
    runner = cls.__new__(cls)
    runner.batch, runner.xnnpack_error, runner.runtime = batch, None, RUNTIME_GIVEN
    runner._open(interpreter)
    return runner

  def _open(self, interpreter):
    """Sizes the input to `batch`, allocates (delegates prepare here) and runs once on zeros."""
    (self._input,), (self._output,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(self._input["index"], [self.batch, *self._input["shape"][1:]])
    interpreter.allocate_tensors()
    self._input = interpreter.get_input_details()[0]
    self.interpreter = interpreter
    self.set_input(np.zeros(self._input["shape"], np.float32))
    interpreter.invoke()

  def set_input(self, images):
    """Sets a float [batch, H, W, C] input, quantizing it if the input tensor is int8/uint8."""
    dtype = self._input["dtype"]
    if np.issubdtype(dtype, np.integer):
      scale, zero_point = self._input["quantization"]
      info = np.iinfo(dtype)
      images = np.clip(np.round(images / scale + zero_point), info.min, info.max)
    self.interpreter.set_tensor(self._input["index"], np.asarray(images, dtype))

  def output(self):
    """The float logits of the last invoke (dequantized if the output tensor is int8/uint8)."""
    values = self.interpreter.get_tensor(self._output["index"])
    if np.issubdtype(self._output["dtype"], np.integer):
      scale, zero_point = self._output["quantization"]
      return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)

  def predict(self, images):
    """Logits for any number of images, `batch` at a time (the last batch zero-padded)."""
    images = np.asarray(images, np.float32)
    logits = np.empty((len(images), self._output["shape"][-1]), np.float32)
    for start in range(0, len(images), self.batch):
      chunk = images[start:start + self.batch]
      if len(chunk) < self.batch:
        chunk = np.concatenate([chunk, np.zeros((self.batch - len(chunk),) + chunk.shape[1:], np.float32)])
      self.set_input(chunk)
      self.interpreter.invoke()
      logits[start:start + self.batch] = self.output()[:len(images) - start]
    return logits


def run_tflite(path, images, num_threads=1):
  """Runs a TFLite flatbuffer with LiteRT on `images`.

  LiteRT's default (XNNPACK delegate) is tried first; if the flatbuffer fails to prepare or run under it (sparse
  int8 FULLY_CONNECTED does), the builtin kernels without default delegates run it instead.

  Args:
    path: a .tflite file.
    images: float32 [N, H, W, C] in [0, 1].
    num_threads: LiteRT's CPU threads.

  Returns:
    (float32 logits [N, K], runtime setting 'xnnpack' or 'builtin_no_delegates').
  """
  images = np.asarray(images, np.float32)
  runner = TFLiteRunner(path, num_threads, batch=max(1, min(_BATCH, len(images))))
  return runner.predict(images), runner.runtime
