"""Verifiable robustness: interval bound propagation (IBP) and CROWN-IBP for the zoo's Keras 2 models.

IBP (Gowal et al., 2018) pushes an L-inf box through the network in center/radius form. An affine layer maps
`c' = W c + b, r' = |W| r`; a monotone activation f maps the box's ends, `[f(l), f(u)]`.

CROWN-IBP (Zhang et al., 2020) keeps IBP's box at every ReLU's input but bounds the output by back-substitution:
starting from the margin specification `Lambda = C`, every affine layer becomes `Lambda <- Lambda W` (the offset
gathers `Lambda b`), and every ReLU with pre-activation box `[l, u]` is replaced by a linear bound chosen per sign
of `Lambda`. At the input box the linear function `Lambda x + offset` is minimised in closed form,
`Lambda c - |Lambda| r + offset`.

Both read one description of each layer: the table `_LAYER_STEPS` turns a Keras layer into a few steps,
`_Affine` (a linear map given by its actions `A x`, `|A| x` and `Lambda A`, plus a bias), `_Relu`, `_Monotone`
(any map non-decreasing in every input: sigmoid, tanh, max pooling) and `_Sum` (Add). A tfmot pruned layer is its
inner layer's steps with the kernel replaced by `kernel * mask`, whether or not tfmot has applied the mask yet.
"""

import dataclasses
from typing import Callable, Optional

from absl import logging

from tfrobprune.keras_compat import keras, tf
from tfrobprune.models import Standardize
# tfmot imports TensorFlow, so it must follow keras_compat (which selects Keras 2 first).
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper  # noqa: E402,I100

layers = keras.layers

__all__ = [
    "IntervalBounds", "propagate_bounds", "margin_bounds", "crown_ibp_margin_bounds", "tightest_margin_bounds",
    "crown_ibp_training_margins", "robust_cross_entropy", "verified_accuracy",
]


class IntervalBounds:
  """A batch of boxes `lower <= x <= upper` (axis 0 is the batch), equally `center +- radius`."""

  def __init__(self, lower, upper):
    self.lower = tf.convert_to_tensor(lower)
    self.upper = tf.convert_to_tensor(upper)
    if not self.lower.shape.is_compatible_with(self.upper.shape):
      raise ValueError(f"lower has shape {self.lower.shape} but upper has shape {self.upper.shape}.")

  @classmethod
  def from_epsilon(cls, x, eps, clip_min=0., clip_max=1.):
    """The L-inf ball `[x - eps, x + eps]` intersected with the pixel range `[clip_min, clip_max]`.

    Args:
      x: a batch of inputs.
      eps: the radius, a number or scalar tensor (a tensor keeps `tf.function`s from retracing as it ramps).
      clip_min: the smallest valid input value, or None for no lower clipping.
      clip_max: the largest valid input value, or None for no upper clipping.
    """
    x = tf.cast(x, tf.float32)
    eps = tf.cast(eps, x.dtype)
    lower, upper = x - eps, x + eps
    if clip_min is not None:
      lower = tf.maximum(lower, clip_min)
    if clip_max is not None:
      upper = tf.minimum(upper, clip_max)
    return cls(lower, upper)

  @classmethod
  def from_center_radius(cls, center, radius):
    return cls(center - radius, center + radius)

  @property
  def center(self):
    return (self.lower + self.upper) / 2.

  @property
  def radius(self):
    return (self.upper - self.lower) / 2.

  @property
  def shape(self):
    return self.lower.shape

  def affine(self, apply, apply_abs, bias=None):
    """The image under `x -> A x + b`: `c' = A c + b`, `r' = |A| r`.

    Args:
      apply: `x -> A x` on a batch.
      apply_abs: `x -> |A| x`, the same map with every matrix entry replaced by its absolute value.
      bias: `b`, broadcast against `A x`, or None.
    """
    return self.half_affine(lambda x: 0.5 * apply(x), lambda x: 0.5 * apply_abs(x), bias)

  def half_affine(self, apply_half, apply_abs_half, bias=None):
    """`affine` given the halved maps `x -> A x / 2` and `x -> |A| x / 2`.

    `c' +- r' = (A / 2)(l + u) + b +- (|A| / 2)(u - l)`: with the 1/2 folded into the weights, the input's center
    and radius are never formed, which saves two passes over the activations per layer (forward and backward;
    about 7% of an IBP training step of cnn_small, where elementwise work is a large share).
    """
    center = apply_half(self.lower + self.upper)
    if bias is not None:
      center += bias
    radius = apply_abs_half(self.upper - self.lower)
    return IntervalBounds(center - radius, center + radius)

  def monotone(self, fn):
    """The image under `fn`, non-decreasing in every input: `[fn(lower), fn(upper)]`."""
    return IntervalBounds(fn(self.lower), fn(self.upper))

  def __add__(self, other):
    return IntervalBounds(self.lower + other.lower, self.upper + other.upper)


# Steps: what a layer does, in the two forms the bounds need (forward on boxes, backward on linear functions).


@dataclasses.dataclass(frozen=True)
class _Linear:
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
  halve: Optional[Callable[[], "_Linear"]] = None
  matrix: Optional[tf.Tensor] = None  # the [inputs, outputs] matrix W of `x -> x W`, if the map is a plain matmul

  def halved(self):
    """`A / 2` as a `_Linear`."""
    if self.halve is not None:
      return self.halve()
    return _Linear(lambda x: 0.5 * self.apply(x), lambda x: 0.5 * self.apply_abs(x),
                   lambda lam, shape: 0.5 * self.transpose(lam, shape), self.nonnegative)


@dataclasses.dataclass(frozen=True)
class _Affine:
  """`x -> A x + b`."""
  linear: _Linear
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
class _Relu:
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
class _Monotone:
  """`x -> fn(x)` for `fn` non-decreasing in every input (sigmoid, tanh, max pooling); IBP only."""
  fn: Callable

  def interval(self, bounds):
    return bounds.monotone(self.fn)


@dataclasses.dataclass(frozen=True)
class _Sum:
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


def _vjp_transpose(apply):
  """The transpose of a linear map known only by its action: `Lambda A = d<Lambda, A x>/dx`."""

  def transpose(lam, input_shape):
    folded = _fold_specs(lam)
    x = tf.zeros(tf.concat([tf.shape(folded)[:1], input_shape], 0), lam.dtype)
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = apply(x)
    return _unfold_specs(tape.gradient(y, x, output_gradients=folded), lam)

  return transpose


def _reshape_linear(target_shape):
  """A reshape of each example to `target_shape`; a permutation, so `|A| = A`."""

  def apply(x):
    return tf.reshape(x, tf.concat([tf.shape(x)[:1], target_shape], 0))

  def transpose(lam, input_shape):
    return tf.reshape(lam, tf.concat([tf.shape(lam)[:2], input_shape], 0))

  return _Linear(apply, apply, transpose, nonnegative=True)


def _scale_linear(scale, positive=False):
  """`x -> x * scale`, a diagonal map broadcast over the last (channel) axis; `positive`: every scale is > 0."""
  return _Linear(apply=lambda x: x * scale, apply_abs=lambda x: x * tf.abs(scale), transpose=lambda lam, _: lam * scale,
                 nonnegative=positive, halve=lambda: _scale_linear(0.5 * scale, positive))


def _dense_linear(kernel):
  """`x -> x W` (Keras' row-vector convention), `|A| x = x |W|`, `Lambda A = Lambda W^T`."""
  return _Linear(apply=lambda x: tf.matmul(x, kernel),
                 apply_abs=lambda x: tf.matmul(x, tf.abs(kernel)),
                 transpose=lambda lam, _: tf.matmul(lam, kernel, transpose_b=True),
                 halve=lambda: _dense_linear(0.5 * kernel), matrix=kernel)


def _conv2d_linear(layer, kernel):
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

  return _Linear(apply, apply_abs, transpose if tuple(layer.dilation_rate) == (1, 1) else _vjp_transpose(apply),
                 halve=lambda: _conv2d_linear(layer, 0.5 * kernel))


# The table: Keras layer -> steps.


def _unsupported(layer, reason):
  return NotImplementedError(f"Layer {layer.name!r} ({type(layer).__name__}): {reason}")


_ACTIVATIONS = {
    keras.activations.relu: _Relu(),
    keras.activations.sigmoid: _Monotone(tf.sigmoid),
    keras.activations.tanh: _Monotone(tf.tanh),
}


def _activation_steps(layer, activation):
  """[] for the identity, else the monotone activation's step."""
  if activation is keras.activations.linear:
    return []
  if activation not in _ACTIVATIONS:
    raise _unsupported(layer, f"activation {getattr(activation, '__name__', activation)!r} is not one of linear, "
                       f"{', '.join(fn.__name__ for fn in _ACTIVATIONS)}.")
  return [_ACTIVATIONS[activation]]


def _identity_steps(layer):
  del layer
  return []


def _standardize_steps(layer):
  """`(x - mean) / std = x / std - mean / std` with std > 0."""
  return [_Affine(_scale_linear(1. / layer.std, positive=True), -layer.mean / layer.std)]


def _batch_norm_steps(layer):
  """Inference BatchNormalization: `x gamma / sqrt(var + epsilon) + (beta - mean gamma / sqrt(var + epsilon))`."""
  if list(layer.axis) != [layer.input_spec.ndim - 1]:
    raise _unsupported(layer, f"BatchNormalization over axis {list(layer.axis)}; only the last axis is supported.")
  scale = tf.math.rsqrt(layer.moving_variance + layer.epsilon)
  if layer.scale:
    scale *= layer.gamma
  shift = -layer.moving_mean * scale
  if layer.center:
    shift += layer.beta
  return [_Affine(_scale_linear(scale), shift)]


def _dense_steps(layer, kernel=None):
  kernel = layer.kernel if kernel is None else kernel
  return [_Affine(_dense_linear(kernel), layer.bias)] + _activation_steps(layer, layer.activation)


def _conv2d_steps(layer, kernel=None):
  if layer.data_format != "channels_last" or layer.groups != 1:
    raise _unsupported(layer, "only channels_last convolutions with groups=1 are supported.")
  kernel = layer.kernel if kernel is None else kernel
  return [_Affine(_conv2d_linear(layer, kernel), layer.bias)] + _activation_steps(layer, layer.activation)


def _relu_layer_steps(layer):
  """A ReLU layer; with max_value, threshold or negative_slope it is still monotone (IBP) but not relaxed."""
  plain = layer.max_value is None and layer.threshold == 0 and layer.negative_slope == 0
  return [_Relu() if plain else _Monotone(layer.call)]


def _activation_layer_steps(layer):
  return _activation_steps(layer, layer.activation)


def _flatten_steps(layer):
  if layer.data_format != "channels_last":
    raise _unsupported(layer, "only channels_last Flatten is supported.")
  return [_Affine(_reshape_linear([-1]))]


def _reshape_steps(layer):
  return [_Affine(_reshape_linear(list(layer.target_shape)))]


def _average_pooling_steps(layer):
  """Averages have non-negative weights, so `|A| = A`."""
  return [_Affine(_Linear(layer.call, layer.call, _vjp_transpose(layer.call), nonnegative=True))]


def _max_pooling_steps(layer):
  return [_Monotone(layer.call)]


def _add_steps(layer):
  del layer
  return [_Sum()]


def _pruned_steps(wrapper):
  """A tfmot `PruneLowMagnitude` layer: the inner layer's steps with its kernel replaced by `kernel * mask`."""
  inner = wrapper.layer
  steps_fn = _steps_fn(inner)
  if not wrapper.pruning_vars:
    return steps_fn(inner)
  kernel = getattr(inner, "kernel", None)
  if len(wrapper.pruning_vars) != 1 or wrapper.pruning_vars[0][0] is not kernel:
    raise _unsupported(wrapper, "only pruned kernels (of Dense and Conv2D) are supported.")
  return steps_fn(inner, kernel=kernel * wrapper.pruning_vars[0][1])


_LAYER_STEPS = {
    layers.InputLayer: _identity_steps,
    layers.Dropout: _identity_steps,
    layers.SpatialDropout2D: _identity_steps,
    Standardize: _standardize_steps,
    layers.BatchNormalization: _batch_norm_steps,
    layers.Dense: _dense_steps,
    layers.Conv2D: _conv2d_steps,
    layers.ReLU: _relu_layer_steps,
    layers.Activation: _activation_layer_steps,
    layers.Flatten: _flatten_steps,
    layers.Reshape: _reshape_steps,
    layers.AveragePooling2D: _average_pooling_steps,
    layers.GlobalAveragePooling2D: _average_pooling_steps,
    layers.MaxPooling2D: _max_pooling_steps,
    layers.GlobalMaxPooling2D: _max_pooling_steps,
    layers.Add: _add_steps,
    pruning_wrapper.PruneLowMagnitude: _pruned_steps,
}


def register_layer(layer_class, steps_fn):
  """Adds bound propagation for a layer class defined elsewhere (e.g. `scores.ScoredLayer`).

  Args:
    layer_class: the exact Keras layer class.
    steps_fn: `steps_fn(layer)` returning the layer's steps; `layer_steps(inner_layer, kernel=...)` builds the
      steps of a Dense/Conv2D with a substituted kernel (a masked one, say).
  """
  _LAYER_STEPS[layer_class] = steps_fn


def layer_steps(layer, **kwargs):
  """The steps of `layer` from the table, with optional substitutions (`kernel=` for Dense and Conv2D)."""
  return _steps_fn(layer)(layer, **kwargs)


def _steps_fn(layer):
  """The table entry for the layer's exact class (a subclass may compute something else)."""
  if type(layer) not in _LAYER_STEPS:
    supported = ", ".join(sorted(cls.__name__ for cls in _LAYER_STEPS))
    raise _unsupported(layer, f"no bound propagation for this layer class; supported: {supported}.")
  return _LAYER_STEPS[type(layer)]


def _steps(layer):
  return _steps_fn(layer)(layer)


def _forward(steps, bounds):
  """IBP through `steps`; returns the box entering each step and the box leaving the last."""
  inputs = []
  for step in steps:
    inputs.append(bounds)
    bounds = step.interval(bounds)
  return inputs, bounds


def _back_substitute(steps, inputs, lam):
  """Turns `Lambda y` (y the output of `steps`) into a lower bound `Lambda' x + offset` in their input x."""
  offset = 0.
  for step, bounds in zip(reversed(steps), reversed(inputs)):
    lam, step_offset = step.backward(lam, bounds)
    offset += step_offset
  return lam, offset


def _concretize(lam, offset, bounds):
  """`min over the box of Lambda x + offset = Lambda c - |Lambda| r + offset`, shape [batch, specs]."""
  return (_sum_trailing(lam * bounds.center[:, None]) - _sum_trailing(tf.abs(lam) * bounds.radius[:, None]) +
          offset)


# Walking the model.


def _graph_nodes(model):
  """A functional model's layer calls (Keras nodes) in topological order, input layers left out."""
  nodes_by_depth = model._nodes_by_depth  # pylint: disable=protected-access
  return [node for depth in sorted(nodes_by_depth, reverse=True) for node in nodes_by_depth[depth] if not node.is_input]


def _check_single_input_output(model):
  if not isinstance(model, keras.Sequential) and (len(model.inputs) != 1 or len(model.outputs) != 1):
    raise ValueError(f"Bounds need a model with one input and one output; {model.name!r} has "
                     f"{len(model.inputs)} and {len(model.outputs)}.")


def _last_layer(model):
  if isinstance(model, keras.Sequential):
    return model.layers[-1]
  return _graph_nodes(model)[-1].layer


def _layer_interval(layer, bounds):
  for step in _steps(layer):
    bounds = step.interval(bounds)
  return bounds


def _propagate_graph(model, bounds, stop_before_last):
  boxes = {str(id(model.inputs[0])): bounds}
  nodes = _graph_nodes(model)
  for node in nodes[:-1] if stop_before_last else nodes:
    inputs = [boxes[tensor_id] for tensor_id in node.flat_input_ids]
    boxes[node.flat_output_ids[0]] = _layer_interval(node.layer, inputs[0] if len(inputs) == 1 else inputs)
  if stop_before_last:
    if len(nodes[-1].flat_input_ids) != 1:
      raise ValueError(f"stop_before_last needs a last layer with one input; {nodes[-1].layer.name!r} has "
                       f"{len(nodes[-1].flat_input_ids)}.")
    return boxes[nodes[-1].flat_input_ids[0]]
  return boxes[str(id(model.outputs[0]))]


def propagate_bounds(model, bounds, *, stop_before_last=False):
  """Interval bound propagation (IBP) through a Sequential or functional model.

  Each layer is mapped by the table `_LAYER_STEPS`: affine layers (Standardize, Dense, Conv2D, inference
  BatchNormalization, average pooling, Flatten, Reshape) by `c' = W c + b, r' = |W| r`; monotone ones (ReLU,
  sigmoid, tanh, max pooling) by `[f(l), f(u)]`; Add by summing the boxes; Dropout and InputLayer are the identity.
  tfmot `PruneLowMagnitude` layers use `kernel * mask`.

  Args:
    model: a single-input, single-output `tf_keras` model.
    bounds: an `IntervalBounds` on the model's input.
    stop_before_last: if True, return the box entering the last layer (for folding a specification into it).

  Returns:
    An `IntervalBounds` on the model's output (or on the last layer's input).

  Raises:
    NotImplementedError: for a layer, activation or layer option without a bound rule, naming the layer.
    ValueError: for a model with several inputs or outputs.
  """
  _check_single_input_output(model)
  if not isinstance(model, keras.Sequential):
    return _propagate_graph(model, bounds, stop_before_last)
  for layer in model.layers[:-1] if stop_before_last else model.layers:
    bounds = _layer_interval(layer, bounds)
  return bounds


def _margin_spec(y, num_classes):
  """C with `C[b, j] = e_y - e_j`, so that `(C z)_j = z_y - z_j`; row y is zero. Shape [batch, K, K]."""
  return tf.one_hot(y, num_classes)[:, None, :] - tf.eye(num_classes)[None]


def _check_final_affine(layer, steps, num_classes):
  """Checks that the last layer is affine (the spec folds into it) with `num_classes` outputs."""
  if not steps or not all(isinstance(step, _Affine) for step in steps):
    raise ValueError(f"The margin specification folds into an affine last layer (logits, no activation); "
                     f"{layer.name!r} ({type(layer).__name__}) is not one.")
  if layer.output_shape[-1] != num_classes:
    raise ValueError(f"num_classes={num_classes} but layer {layer.name!r} has {layer.output_shape[-1]} outputs.")


def _folded_margins(steps, bounds, spec):
  """IBP with the spec folded into the last layer (its checked `steps`): `min (C W) x + C b` over the box of its
  input."""
  inputs, _ = _forward(steps, bounds)
  lam, offset = _back_substitute(steps, inputs, spec)
  return _concretize(lam, offset, bounds)


def _pairwise_margins(kernel, bias, bounds, y):
  """`_folded_margins` for a final Dense layer `z = x W + b` and the margin spec of labels `y`, computed pairwise.

  Row j of `C W` is `W[:, y] - W[:, j]`, so the bound `(z_y - z_j)(c) - |W[:, y] - W[:, j]| r` needs the center's
  logits and, for the radius, the K x K table of column differences `|W[:, i] - W[:, j]|`, whichever the labels:
  one [batch, n] x [n, K*K] matmul replaces the [batch, K, n] per-example matrices `C W` (and their backward),
  which were 10x the size of the last hidden layer's activations.
  """
  num_inputs, num_classes = kernel.shape
  logits = tf.matmul(bounds.center, kernel)
  if bias is not None:
    logits += bias
  differences = tf.abs(kernel[:, :, None] - kernel[:, None, :])  # [n, K (label), K (other class)]
  spreads = tf.matmul(bounds.radius, tf.reshape(differences, [num_inputs, num_classes * num_classes]))
  spread = tf.gather(tf.reshape(spreads, [-1, num_classes, num_classes]), y, axis=1, batch_dims=1)
  return tf.gather(logits, y, axis=1, batch_dims=1)[:, None] - logits - spread


def margin_bounds(model, x, y, eps, num_classes):
  """IBP lower bounds of the margins `logit_y - logit_j` over the L-inf ball (clipped to [0, 1]).

  As in Gowal et al. (2018), the specification C (`C z = z_y - z_j`) is folded into the last layer, which then has
  weights `C W` and bias `C b`; this is never looser than `lower(logit_y) - upper(logit_j)`.

  Args:
    model: a single-input, single-output model whose last layer is affine (Dense logits).
    x: inputs, [batch, ...] in [0, 1].
    y: integer labels, [batch].
    eps: the L-inf radius (number or scalar tensor).
    num_classes: K, the number of logits.

  Returns:
    A [batch, K] tensor of lower bounds; the entry `j == y` is 0.

  Raises:
    NotImplementedError: for an unsupported layer (see `propagate_bounds`).
    ValueError: if the last layer is not affine or has other than K outputs.
  """
  box = IntervalBounds.from_epsilon(x, eps)
  penultimate = propagate_bounds(model, box, stop_before_last=True)
  last = _last_layer(model)
  steps = _steps(last)
  _check_final_affine(last, steps, num_classes)
  if len(steps) == 1 and steps[0].linear.matrix is not None and penultimate.shape.rank == 2:
    return _pairwise_margins(steps[0].linear.matrix, steps[0].bias, penultimate, tf.cast(y, tf.int32))
  return _folded_margins(steps, penultimate, _margin_spec(y, num_classes))


def _chain_layers(model):
  """The layers of a model that is one chain (no merges or branches), in order."""
  _check_single_input_output(model)
  if isinstance(model, keras.Sequential):
    return list(model.layers)
  nodes = _graph_nodes(model)
  merges = [node for node in nodes if len(node.flat_input_ids) != 1]
  if merges:
    raise _unsupported(merges[0].layer, "CROWN-IBP back-substitutes through chain models only, not merges.")
  previous = str(id(model.inputs[0]))
  for node in nodes:
    if node.flat_input_ids[0] != previous:
      raise _unsupported(node.layer, "CROWN-IBP back-substitutes through chain models only; this layer branches.")
    previous = node.flat_output_ids[0]
  return [node.layer for node in nodes]


def _crown_ibp_steps(model):
  """The model's layers and their steps, checked to be ones CROWN-IBP can back-substitute through."""
  chain = _chain_layers(model)
  layer_steps = [_steps(layer) for layer in chain]
  for layer, steps in zip(chain, layer_steps):
    if not all(isinstance(step, (_Affine, _Relu)) for step in steps):
      raise _unsupported(layer, "CROWN-IBP relaxes affine layers and ReLU only (use IBP for this model).")
  return chain, layer_steps


def _ibp_and_crown_ibp_margins(model, x, y, eps, num_classes):
  """IBP and CROWN-IBP margin lower bounds from one IBP pass, each [batch, K]."""
  chain, layer_steps = _crown_ibp_steps(model)
  last = layer_steps[-1]
  _check_final_affine(chain[-1], last, num_classes)
  steps = [step for steps in layer_steps for step in steps]
  box = IntervalBounds.from_epsilon(x, eps)
  inputs, _ = _forward(steps, box)
  spec = _margin_spec(y, num_classes)
  ibp = _concretize(*_back_substitute(last, inputs[-len(last):], spec), inputs[-len(last)])
  crown_ibp = _concretize(*_back_substitute(steps, inputs, spec), box)
  return ibp, crown_ibp


def crown_ibp_margin_bounds(model, x, y, eps, num_classes):
  """CROWN-IBP lower bounds of the margins `logit_y - logit_j` (Zhang et al., 2020).

  IBP gives the box `[l, u]` at every ReLU's input; the margin specification C is then back-substituted through
  the whole network to the input box (`Lambda <- Lambda W`, ReLUs relaxed linearly), which is concretised as
  `Lambda c - |Lambda| r + offset`. Not always tighter than IBP: see `tightest_margin_bounds`.

  Args:
    model: a chain model (Sequential, or functional without branches) of affine layers and ReLUs whose last layer
      is affine; tfmot-pruned layers are fine.
    x: inputs, [batch, ...] in [0, 1].
    y: integer labels, [batch].
    eps: the L-inf radius (number or scalar tensor).
    num_classes: K, the number of logits.

  Returns:
    A [batch, K] tensor of lower bounds; the entry `j == y` is 0.

  Raises:
    NotImplementedError: naming the first layer CROWN-IBP cannot relax (Add, max pooling, sigmoid, ...).
    ValueError: if the last layer is not affine or has other than K outputs.
  """
  return _ibp_and_crown_ibp_margins(model, x, y, eps, num_classes)[1]


def tightest_margin_bounds(model, x, y, eps, num_classes):
  """The elementwise maximum of the CROWN-IBP and IBP margin lower bounds: both are sound, so is their max.

  Takes the arguments of `crown_ibp_margin_bounds` and raises like it; never looser than `margin_bounds`.
  """
  ibp, crown_ibp = _ibp_and_crown_ibp_margins(model, x, y, eps, num_classes)
  return tf.maximum(ibp, crown_ibp)


def crown_ibp_training_margins(model, x, y, eps, num_classes, beta):
  """`beta * CROWN-IBP + (1 - beta) * IBP` margin lower bounds, CROWN-IBP's training bound (beta ramps 1 -> 0).

  Differentiable with respect to the model's weights and free of Python-side numerics, so it traces once in a
  `tf.function` for a fixed batch shape; pass `eps` and `beta` as tensors when they follow a schedule.

  Args:
    model, x, y, eps, num_classes: as for `crown_ibp_margin_bounds`.
    beta: the weight of the CROWN-IBP bound, in [0, 1].

  Returns:
    A [batch, K] tensor of margin lower bounds.
  """
  ibp, crown_ibp = _ibp_and_crown_ibp_margins(model, x, y, eps, num_classes)
  beta = tf.cast(beta, ibp.dtype)
  return beta * crown_ibp + (1. - beta) * ibp


def robust_cross_entropy(margin_lower):
  """The IBP worst-case loss: softmax cross-entropy of the logits `z_j = -margin_lower_j` with label y.

  Since `margin_lower_y = 0`, `z_y = 0` and the loss is `log sum_j exp(-margin_lower_j)`, an upper bound of the
  cross-entropy at every point of the ball.

  Args:
    margin_lower: [batch, K] margin lower bounds from one of this module's margin functions.

  Returns:
    The per-example losses, [batch].
  """
  return tf.reduce_logsumexp(-margin_lower, axis=-1)


_MARGIN_METHODS = {"ibp": margin_bounds, "crown_ibp": tightest_margin_bounds}


def _verified_count(model, margin_fn, x, y, eps, num_classes):
  """The number of examples in a batch that are verified and correctly classified."""
  margins = margin_fn(model, x, y, eps, num_classes)
  is_label = tf.one_hot(y, num_classes, on_value=True, off_value=False)
  verified = tf.reduce_all((margins > 0.) | is_label, axis=1)
  correct = tf.argmax(model(x, training=False), axis=1) == y
  return int(tf.reduce_sum(tf.cast(verified & correct, tf.int64)))


def verified_accuracy(model, x, y, eps, num_classes, method="ibp", batch_size=256):
  """The fraction of examples that are correctly classified and provably robust within the L-inf ball.

  An example counts if every margin lower bound `logit_y - logit_j`, `j != y`, is positive.

  Args:
    model: a single-input, single-output model ending in Dense logits.
    x: inputs, [n, ...] in [0, 1] (array or tensor).
    y: integer labels, [n].
    eps: the L-inf radius.
    num_classes: K, the number of logits.
    method: 'ibp' (`margin_bounds`) or 'crown_ibp' (`tightest_margin_bounds`, so never below the IBP figure). For a
      model CROWN-IBP cannot relax (Add, max pooling, sigmoid, ...) 'crown_ibp' logs a warning and reports the IBP
      figure.
    batch_size: examples per bound computation.

  Returns:
    The verified accuracy, a float in [0, 1].

  Raises:
    ValueError: for an unknown method, a non-positive batch size or no examples.
  """
  if method not in _MARGIN_METHODS:
    raise ValueError(f"method must be one of {', '.join(_MARGIN_METHODS)}, got {method!r}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  num_examples = int(x.shape[0])
  if num_examples == 0:
    raise ValueError("verified_accuracy needs at least one example, got none.")
  if method == "crown_ibp":
    try:
      _crown_ibp_steps(model)
    except NotImplementedError as error:
      logging.warning("%s Verified accuracy falls back to IBP.", error)
      method = "ibp"
  y = tf.cast(y, tf.int64)
  verified = sum(
      _verified_count(model, _MARGIN_METHODS[method], x[start:start + batch_size], y[start:start + batch_size], eps,
                      num_classes) for start in range(0, num_examples, batch_size))
  return verified / num_examples
