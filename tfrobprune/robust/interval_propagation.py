"""Interval bound propagation (IBP): an L-inf box pushed through a Sequential or functional Keras model.

IBP (Gowal et al., 2018) maps the box of each layer's input to a box of its output, layer by layer in topological
order, by the layer's steps from `bound_registry`. Also here: walking a model's layer calls, which the margin
bounds and CROWN-IBP share, and the batch statistics of a training step's BatchNormalization layers.
"""

from tfrobprune.keras_compat import keras, tf
from tfrobprune.robust import bound_registry
from tfrobprune.robust import intervals

__all__ = ["propagate_bounds", "graph_nodes", "check_single_input_output", "last_layer", "nominal_batch_statistics"]


# Walking the model.


def graph_nodes(model):
  """A functional model's layer calls (Keras nodes) in topological order, input layers left out."""
  nodes_by_depth = model._nodes_by_depth  # pylint: disable=protected-access
  return [node for depth in sorted(nodes_by_depth, reverse=True) for node in nodes_by_depth[depth] if not node.is_input]


def check_single_input_output(model):
  """Raises a ValueError unless the model has one input and one output (a Sequential has by construction)."""
  if not isinstance(model, keras.Sequential) and (len(model.inputs) != 1 or len(model.outputs) != 1):
    raise ValueError(f"Bounds need a model with one input and one output; {model.name!r} has "
                     f"{len(model.inputs)} and {len(model.outputs)}.")


def last_layer(model):
  """The layer that computes the model's output."""
  if isinstance(model, keras.Sequential):
    return model.layers[-1]
  return graph_nodes(model)[-1].layer


def _layer_interval(layer, bounds, observe=None):
  if observe is not None:
    observe(layer, bounds)
  for step in bound_registry.layer_steps(layer):
    bounds = step.interval(bounds)
  return bounds


def _propagate_graph(model, bounds, stop_before_last, observe):
  boxes = {str(id(model.inputs[0])): bounds}
  nodes = graph_nodes(model)
  for node in nodes[:-1] if stop_before_last else nodes:
    inputs = [boxes[tensor_id] for tensor_id in node.flat_input_ids]
    boxes[node.flat_output_ids[0]] = _layer_interval(node.layer, inputs[0] if len(inputs) == 1 else inputs, observe)
  if stop_before_last:
    if len(nodes[-1].flat_input_ids) != 1:
      raise ValueError(f"stop_before_last needs a last layer with one input; {nodes[-1].layer.name!r} has "
                       f"{len(nodes[-1].flat_input_ids)}.")
    return boxes[nodes[-1].flat_input_ids[0]]
  return boxes[str(id(model.outputs[0]))]


def propagate_bounds(model, bounds, *, stop_before_last=False, observe=None):
  """Interval bound propagation (IBP) through a Sequential or functional model.

  Each layer is mapped by the table of `bound_registry`: affine layers (Standardize, Dense, Conv2D,
  BatchNormalization by its moving statistics or those of `bound_registry.batch_statistics`, average pooling,
  Flatten, Reshape) by `c' = W c + b, r' = |W| r`; monotone ones (ReLU, sigmoid, tanh, max pooling) by
  `[f(l), f(u)]`; Add by summing the boxes; Dropout and InputLayer are the identity. tfmot `PruneLowMagnitude`
  layers use `kernel * mask`.

  Args:
    model: a single-input, single-output `tf_keras` model.
    bounds: an `IntervalBounds` on the model's input.
    stop_before_last: if True, return the box entering the last layer (for folding a specification into it).
    observe: if set, called as `observe(layer, box)` with the box entering each layer, before the layer.

  Returns:
    An `IntervalBounds` on the model's output (or on the last layer's input).

  Raises:
    NotImplementedError: for a layer, activation or layer option without a bound rule, naming the layer.
    ValueError: for a model with several inputs or outputs.
  """
  check_single_input_output(model)
  if not isinstance(model, keras.Sequential):
    return _propagate_graph(model, bounds, stop_before_last, observe)
  for layer in model.layers[:-1] if stop_before_last else model.layers:
    bounds = _layer_interval(layer, bounds, observe)
  return bounds


def nominal_batch_statistics(model, x):
  """The batch statistics a training pass of `model` on `x` normalises by: {BatchNormalization layer: (mean,
  variance)} of each layer's input over the batch and spatial axes, for the layers `normalises_by_batch`.

  Bounds of a training step use them (`bound_registry.batch_statistics`) so that they bound the network the step
  trains, not the one the moving averages describe. They are found by pushing the zero-width box [x, x] through
  the model: each layer's input is then its nominal activation, normalised by the batch statistics of the
  BatchNormalization layers before it. Empty (and nothing computed) for a model without such layers.
  """
  if not any(bound_registry.normalises_by_batch(layer) for layer in model.submodules):
    return {}

  def record(layer, box):
    if bound_registry.normalises_by_batch(layer):
      nominal = box.center
      statistics[layer] = tf.nn.moments(nominal, axes=list(range(nominal.shape.rank - 1)))

  x = tf.cast(x, tf.float32)
  with bound_registry.batch_statistics({}) as statistics:
    propagate_bounds(model, intervals.IntervalBounds(x, x), observe=record)
  return statistics
