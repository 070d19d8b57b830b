"""Cheaper input gradients for image-facing convolutions: the attack's backward pass as a forward convolution.

Every PGD iteration differentiates the loss with respect to the image, so it runs the first convolution's
input-gradient kernel (`Conv2DBackpropInput`), which training never needs. For a convolution with a 1-channel input
that kernel is slow on oneDNN (several times its forward pass; almost half an attack iteration of cnn_small). This
module computes the same gradient with one forward convolution instead, by
the polyphase (sub-pixel) decomposition of a strided transposed convolution (Shi et al. 2016):

With stride s, 'same'/'valid' top padding p and kernel W[a, b, ci, co], the forward pass is
y[o] = sum_a x[s*o - p + a] W[a] (one spatial axis shown). Its input gradient, at input position u = s*m + r
(phase r in [0, s)), is

    dx[s*m + r] = sum_d dy[m - d] W[s*d + r + p],     over the d with 0 <= s*d + r + p < k,

a stride-1 correlation of dy with a small kernel per phase. All s*s phases (of both axes) stack into the output
channels of a single stride-1 convolution over dy, with kernel K[j, co, (r, ci)] = W[s*(d_max - j) + r + p, ci, co]
(zero where out of range), and a depth-to-space interleaves the phases back into the image grid. The result equals
TensorFlow's gradient up to float rounding (`tests/robust/input_gradients_test.py`).

Scope: attack passes only (`attacks.inference_fn`); training steps, which need no image gradient, keep
TensorFlow's kernels. Only strided Conv2D layers whose input has at most `MAX_INPUT_CHANNELS` channels take this
path: with wide inputs TensorFlow's kernel is fine, and at stride 1 there is no zero-dilated gradient to avoid.
And only under oneDNN (`pays_off`): with TensorFlow's Eigen kernels (`TF_ENABLE_ONEDNN_OPTS=0`, or CPUs without
AVX-512 VNNI) the input-gradient kernel is fast and the polyphase convolution is not. The measurements behind each
of these choices are in docs/performance.md.
"""

import contextlib
import functools

import numpy as np

from tfrobprune.keras_compat import keras, tf

# Input channels up to which the polyphase gradient is used (image-facing convolutions: grey or RGB(A)).
MAX_INPUT_CHANNELS = 4


def _padding_before(size, kernel, stride, padding):
  """(output size, padding before the first input) of one spatial axis, as TensorFlow computes them."""
  if padding == "VALID":
    return (size - kernel) // stride + 1, 0
  out = -(-size // stride)
  return out, max((out - 1) * stride + kernel - size, 0) // 2


def _offset_range(kernel, stride, pad):
  """Smallest and largest d with 0 <= s*d + r + p < k for some phase r (the polyphase kernel's extent)."""
  offsets = [d for r in range(stride) for d in range(-(r + pad) // stride - 1, (kernel - r - pad) // stride + 2)
             if 0 <= stride * d + r + pad < kernel]
  return min(offsets), max(offsets)


def _polyphase_indices(kernel_shape, stride, pads):
  """Flat kernel index (or k_h*k_w for a zero) of every polyphase kernel tap, shape [J_h, J_w, s, s]."""
  (k_h, k_w), (p_h, p_w) = kernel_shape, pads
  (d_min_h, d_max_h), (d_min_w, d_max_w) = _offset_range(k_h, stride, p_h), _offset_range(k_w, stride, p_w)
  j_h, j_w = np.arange(d_max_h - d_min_h + 1), np.arange(d_max_w - d_min_w + 1)
  phases = np.arange(stride)
  a = stride * (d_max_h - j_h)[:, None, None, None] + phases[None, None, :, None] + p_h
  b = stride * (d_max_w - j_w)[None, :, None, None] + phases[None, None, None, :] + p_w
  inside = (a >= 0) & (a < k_h) & (b >= 0) & (b < k_w)
  return np.where(inside, a * k_w + b, k_h * k_w), (d_max_h, d_max_w)


def polyphase_kernel(kernel, stride, pads):
  """The stride-1 kernel [J_h, J_w, c_out, s*s*c_in] whose correlation with dy gives every input phase of dx.

  Args:
    kernel: a Conv2D kernel [k_h, k_w, c_in, c_out] (tensor).
    stride: the convolution's stride (the same on both axes).
    pads: padding before the first row and column (`_padding_before`).

  Returns:
    (polyphase kernel, (d_max_h, d_max_w)): the kernel, and the padding of dy before its first row and column.
  """
  k_h, k_w, c_in, c_out = kernel.shape
  indices, d_max = _polyphase_indices((k_h, k_w), stride, pads)
  taps = tf.concat([tf.reshape(kernel, [k_h * k_w, c_in, c_out]), tf.zeros([1, c_in, c_out], kernel.dtype)], 0)
  gathered = tf.reshape(tf.gather(taps, indices.reshape(-1)), indices.shape + (c_in, c_out))
  # [J_h, J_w, r_h, r_w, c_in, c_out] -> [J_h, J_w, c_out, (r_h, r_w, c_in)]: depth_to_space's channel order.
  stacked = tf.transpose(gathered, [0, 1, 5, 2, 3, 4])
  return tf.reshape(stacked, [indices.shape[0], indices.shape[1], c_out, stride * stride * c_in]), d_max


def _pad_or_crop(tensor, axis, before, after):
  """Zero-pads (positive) or crops (negative) `before`/`after` entries of one axis."""
  window = [slice(None)] * tensor.shape.rank
  window[axis] = slice(max(-before, 0), tensor.shape[axis] - max(-after, 0))
  cropped = tensor[tuple(window)]
  paddings = [[0, 0]] * len(tensor.shape)
  paddings[axis] = [max(before, 0), max(after, 0)]
  return tf.pad(cropped, paddings) if max(before, 0) or max(after, 0) else cropped


def conv2d_input_gradient(dy, kernel, input_size, stride, padding):
  """The gradient of `tf.nn.conv2d(x, kernel, stride, padding)` with respect to `x`, by one forward convolution.

  Args:
    dy: upstream gradient [batch, out_h, out_w, c_out] (static spatial shape).
    kernel: [k_h, k_w, c_in, c_out].
    input_size: (height, width) of `x`.
    stride: int, the same on both axes.
    padding: 'SAME' or 'VALID'.

  Returns:
    dx, shaped [batch, height, width, c_in].
  """
  height, width = input_size
  k_h, k_w = kernel.shape[:2]
  out_h, pad_h = _padding_before(height, k_h, stride, padding)
  out_w, pad_w = _padding_before(width, k_w, stride, padding)
  poly, (d_max_h, d_max_w) = polyphase_kernel(kernel, stride, (pad_h, pad_w))
  # Phase rows m = 0 .. ceil(H/s) - 1 read dy[m - d_max .. m - d_min]; rows of dy outside [0, out) are zeros.
  rows, cols = -(-height // stride), -(-width // stride)
  dy = _pad_or_crop(dy, 1, d_max_h, rows + poly.shape[0] - 1 - out_h - d_max_h)
  dy = _pad_or_crop(dy, 2, d_max_w, cols + poly.shape[1] - 1 - out_w - d_max_w)
  phases = tf.nn.conv2d(dy, poly, 1, "VALID")
  return _interleave_phases(phases, stride)[:, :height, :width, :]


def _interleave_phases(phases, stride):
  """`depth_to_space(phases, stride)` as reshape-transpose-reshape (oneDNN's transpose is faster than TensorFlow's
  DepthToSpace kernel here; see docs/performance.md)."""
  _, rows, cols, channels = phases.shape
  c_in = channels // (stride * stride)
  blocks = tf.reshape(phases, [-1, rows, cols, stride, stride, c_in])
  return tf.reshape(tf.transpose(blocks, [0, 1, 3, 2, 4, 5]), [-1, rows * stride, cols * stride, c_in])


def conv2d(x, kernel, stride, padding):
  """`tf.nn.conv2d` (NHWC, no dilation) whose input gradient is `conv2d_input_gradient`; the kernel's is TF's."""
  kernel = tf.convert_to_tensor(kernel)  # a variable read outside the custom gradient: no `variables` argument

  @tf.custom_gradient
  def convolve(x, kernel):
    def gradient(dy):
      dx = conv2d_input_gradient(dy, kernel, x.shape[1:3], stride, padding)
      dkernel = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
                                                strides=[1, stride, stride, 1], padding=padding)
      return dx, dkernel
    return tf.nn.conv2d(x, kernel, stride, padding), gradient

  return convolve(x, kernel)


def onednn_enabled():
  """Whether TensorFlow runs its oneDNN CPU kernels (on by default on x86 CPUs with AVX-512 VNNI and newer; off with
  TF_ENABLE_ONEDNN_OPTS=0); None if this TensorFlow build cannot tell."""
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    return bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):
    return None


def pays_off():
  """Whether the polyphase input gradient is faster than TensorFlow's here: under oneDNN (module docstring)."""
  return bool(onednn_enabled())


def _eligible(layer):
  """Conv2D layers (exact class) the polyphase gradient supports and speeds up: strided, few input channels."""
  if type(layer) is not keras.layers.Conv2D or not layer.built:
    return False
  return (layer.data_format == "channels_last" and layer.groups == 1 and tuple(layer.dilation_rate) == (1, 1)
          and layer.strides[0] == layer.strides[1] > 1 and layer.padding in ("same", "valid")
          and layer.kernel.shape[2] <= MAX_INPUT_CHANNELS)


def eligible_layers(model):
  """The Conv2D layers of `model` (inside pruning or score wrappers too) whose input gradient goes polyphase."""
  return [layer for layer in model.submodules if isinstance(layer, keras.layers.Layer) and _eligible(layer)]


def _polyphase_convolution_op(layer, inputs, kernel):
  if inputs.shape.rank != 4 or None in inputs.shape[1:3]:
    return type(layer).convolution_op(layer, inputs, kernel)  # unknown spatial size: TensorFlow's kernel
  return conv2d(inputs, kernel, layer.strides[0], layer.padding.upper())


@contextlib.contextmanager
def polyphase_input_gradients(layers):
  """Within the block, the given Conv2D layers (`eligible_layers`) compute their input gradients polyphase.

  Sets an instance `convolution_op` on each layer (Keras' Conv2D.call goes through it) and removes it on exit. The
  forward pass is the same op; only the recorded gradient differs. A `tf.function` traced inside the block keeps
  the polyphase gradient in its graph.
  """
  for layer in layers:
    object.__setattr__(layer, "convolution_op", functools.partial(_polyphase_convolution_op, layer))
  try:
    yield
  finally:
    for layer in layers:
      layer.__dict__.pop("convolution_op", None)
