"""Bound steps: what a layer does, in the two forms the bounds need (forward on boxes, backward on linear functions).

A Keras layer becomes a few steps (`bound_registry` says which): `Affine` (a linear map given by its actions
`A x`, `|A| x` and `Lambda A`, plus a bias), `Relu`, `Monotone` (any map non-decreasing in every input: sigmoid,
tanh, max pooling) and `Sum` (Add). Forward, every step maps an `IntervalBounds` box (IBP); backward, `Affine` and
`Relu` turn a linear function `Lambda y` of their output into a lower bound `Lambda' x + offset` in their input
(CROWN-IBP's back-substitution), which `concretize` minimises over the input box in closed form.
"""

import dataclasses
from typing import Callable, Optional

from tfrobprune.keras_compat import tf

__all__ = [
    "Linear", "Affine", "Relu", "Monotone", "Sum", "vjp_transpose", "reshape_linear", "scale_linear", "dense_linear",
    "conv2d_linear", "forward", "back_substitute", "concretize",
]


@dataclasses.dataclass(frozen=True)
class Linear:
  """A linear map A on batched tensors: `apply` is `x -> A x`, `apply_abs` is `x -> |A| x`, and `transpose`
  is `(Lambda, input_shape) -> Lambda A` for `Lambda` of shape [batch, specs, *output_shape].

  `nonnegative`: every entry of A is >= 0 (reshapes, averages, positive scales), so `[A l, A u]` is the exact
  image of a box and IBP needs neither center nor radius. `halve`: builds `A / 2` with the 1/2 folded into the
  weights (cheaper than halving activations); None halves the output.
  """
  apply: Callable
  apply_abs: Callable
  transpose: Callable
  nonnegative: bool = False
  halve: Optional[Callable[[], "Linear"]] = None
  matrix: Optional[tf.Tensor] = None  # the [inputs, outputs] matrix W of `x -> x W`, if the map is a plain matmul

  def halved(self):
    """`A / 2` as a `Linear`."""
    if self.halve is not None:
      return self.halve()
    return Linear(lambda x: 0.5 * self.apply(x), lambda x: 0.5 * self.apply_abs(x),
                  lambda lam, shape: 0.5 * self.transpose(lam, shape), self.nonnegative)


@dataclasses.dataclass(frozen=True)
class Affine:
  """`x -> A x + b`."""
  linear: Linear
  bias: Optional[tf.Tensor] = None

  def interval(self, bounds):
    if self.linear.nonnegative:
      apply = self.linear.apply if self.bias is None else lambda x: self.linear.apply(x) + self.bias
      return bounds.monotone(apply)
    half = self.linear.halved()
    return bounds.half_affine(half.apply, half.apply_abs, self.bias)

  def backward(self, lam, bounds):
    """`Lambda (A x + b) = (Lambda A) x + Lambda b`: returns `Lambda A` and `Lambda b`."""
    offset = 0. if self.bias is None else _sum_trailing(lam * self.bias)
    return self.linear.transpose(lam, bounds.shape[1:].as_list()), offset


@dataclasses.dataclass(frozen=True)
class Relu:
  """`x -> max(x, 0)`."""

  def interval(self, bounds):
    return bounds.monotone(tf.nn.relu)

  def backward(self, lam, bounds):
    """A linear lower bound `Lambda' x + offset <= Lambda relu(x)` on the box `bounds` of x.

    Where `Lambda >= 0` relu is bounded below by `alpha x` (alpha = 1 if u > -l else 0, CROWN-IBP's adaptive
    choice); where `Lambda < 0` it is bounded above by the chord `u / (u - l) (x - l)` of unstable neurons
    (`l < 0 < u`), and exactly by `x` or `0` for the stable ones.
    """
    lower, upper = bounds.lower[:, None], bounds.upper[:, None]
    unstable = (lower < 0.) & (upper > 0.)
    chord_slope = tf.where(unstable, upper / tf.where(unstable, upper - lower, 1.), tf.cast(lower >= 0., lam.dtype))
    chord_offset = tf.where(unstable, -lower * chord_slope, 0.)
    alpha = tf.cast(upper + lower > 0., lam.dtype)
    positive, negative = tf.maximum(lam, 0.), tf.minimum(lam, 0.)
    return positive * alpha + negative * chord_slope, _sum_trailing(negative * chord_offset)


@dataclasses.dataclass(frozen=True)
class Monotone:
  """`x -> fn(x)` for `fn` non-decreasing in every input (sigmoid, tanh, max pooling); IBP only."""
  fn: Callable

  def interval(self, bounds):
    return bounds.monotone(self.fn)


@dataclasses.dataclass(frozen=True)
class Sum:
  """`[x1, x2, ...] -> x1 + x2 + ...`; IBP only."""

  def interval(self, bounds_list):
    total = bounds_list[0]
    for bounds in bounds_list[1:]:
      total += bounds
    return total


def _sum_trailing(t):
  """Sums [batch, specs, ...] over everything after the specs axis."""
  return tf.reduce_sum(t, axis=list(range(2, t.shape.rank)))


def _fold_specs(lam):
  """[batch, specs, *shape] -> [batch * specs, *shape], so that layer ops see an ordinary batch."""
  return tf.reshape(lam, tf.concat([[-1], tf.shape(lam)[2:]], 0))


def _unfold_specs(t, lam):
  """Undoes `_fold_specs(lam)` for a result `t` of shape [batch * specs, *shape']."""
  return tf.reshape(t, tf.concat([tf.shape(lam)[:2], tf.shape(t)[1:]], 0))


def vjp_transpose(apply):
  """The transpose of a linear map known only by its action: `Lambda A = d<Lambda, A x>/dx`."""

  def transpose(lam, input_shape):
    folded = _fold_specs(lam)
    x = tf.zeros(tf.concat([tf.shape(folded)[:1], input_shape], 0), lam.dtype)
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = apply(x)
    return _unfold_specs(tape.gradient(y, x, output_gradients=folded), lam)

  return transpose


def reshape_linear(target_shape):
  """A reshape of each example to `target_shape`; a permutation, so `|A| = A`."""

  def apply(x):
    return tf.reshape(x, tf.concat([tf.shape(x)[:1], target_shape], 0))

  def transpose(lam, input_shape):
    return tf.reshape(lam, tf.concat([tf.shape(lam)[:2], input_shape], 0))

  return Linear(apply, apply, transpose, nonnegative=True)


def scale_linear(scale, positive=False):
  """`x -> x * scale`, a diagonal map broadcast over the last (channel) axis; `positive`: every scale is > 0."""
  return Linear(apply=lambda x: x * scale, apply_abs=lambda x: x * tf.abs(scale), transpose=lambda lam, _: lam * scale,
                nonnegative=positive, halve=lambda: scale_linear(0.5 * scale, positive))


def dense_linear(kernel):
  """`x -> x W` (Keras' row-vector convention), `|A| x = x |W|`, `Lambda A = Lambda W^T`.

  `Lambda W^T` multiplies the specs folded into the batch, one 2-D matmul: a [batch, specs, n] x [n, m] batched
  matmul would take W's gradient as one [n, m] product per example, summed afterwards.
  """
  def transpose(lam, _):
    product = tf.matmul(tf.reshape(lam, [-1, kernel.shape[1]]), kernel, transpose_b=True)
    return tf.reshape(product, tf.concat([tf.shape(lam)[:-1], [kernel.shape[0]]], 0))

  return Linear(apply=lambda x: tf.matmul(x, kernel),
                apply_abs=lambda x: tf.matmul(x, tf.abs(kernel)),
                transpose=transpose, halve=lambda: dense_linear(0.5 * kernel), matrix=kernel)


def conv2d_linear(layer, kernel):
  """Conv2D without bias; the transpose is `conv2d_transpose` (a vector-Jacobian product if dilated)."""
  options = dict(strides=layer.strides, padding=layer.padding.upper(), dilations=layer.dilation_rate)

  def transpose(lam, input_shape):
    folded = _fold_specs(lam)
    output_shape = tf.concat([tf.shape(folded)[:1], input_shape], 0)
    return _unfold_specs(tf.nn.conv2d_transpose(folded, kernel, output_shape, **options), lam)

  def apply(x):
    return tf.nn.convolution(x, kernel, **options)

  def apply_abs(x):
    return tf.nn.convolution(x, tf.abs(kernel), **options)

  return Linear(apply, apply_abs, transpose if tuple(layer.dilation_rate) == (1, 1) else vjp_transpose(apply),
                halve=lambda: conv2d_linear(layer, 0.5 * kernel))


def forward(steps, bounds):
  """IBP through `steps`; returns the box entering each step and the box leaving the last."""
  inputs = []
  for step in steps:
    inputs.append(bounds)
    bounds = step.interval(bounds)
  return inputs, bounds


def back_substitute(steps, inputs, lam):
  """Turns `Lambda y` (y the output of `steps`) into a lower bound `Lambda' x + offset` in their input x."""
  offset = 0.
  for step, bounds in zip(reversed(steps), reversed(inputs)):
    lam, step_offset = step.backward(lam, bounds)
    offset += step_offset
  return lam, offset


def concretize(lam, offset, bounds):
  """`min over the box of Lambda x + offset = Lambda c - |Lambda| r + offset`, shape [batch, specs]."""
  return (_sum_trailing(lam * bounds.center[:, None]) - _sum_trailing(tf.abs(lam) * bounds.radius[:, None]) +
          offset)
