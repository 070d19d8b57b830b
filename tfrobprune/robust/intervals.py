"""Interval bounds: a batch of boxes `lower <= x <= upper`, the value that interval bound propagation carries.

IBP (Gowal et al., 2018) pushes an L-inf box through the network in center/radius form. An affine layer maps
`c' = W c + b, r' = |W| r`; a monotone activation f maps the box's ends, `[f(l), f(u)]`. This class holds the box
and those two maps; which layer does what is `bound_steps` and `bound_registry`.
"""

from tfrobprune.keras_compat import tf

__all__ = ["IntervalBounds"]


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
    and radius are never formed, which saves two passes over the activations per layer (forward and backward);
    elementwise work is a large share of an IBP training step.
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
