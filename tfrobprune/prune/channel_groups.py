"""Dependency groups of channel pruning: which weights go when one output channel of a Conv2D or Dense goes.

Removing output channel c of a layer only makes the model smaller if everything that reads channel c loses it too.
Following Torch-Pruning's DepGraph (Fang et al., CVPR 2023), the model's layer calls are walked once and every
tensor is given a *channel space* (its last axis):

- a Dense or Conv2D *produces* a new space (its filters or units) and *consumes* its input's space (the kernel's
  input axis);
- BatchNormalization carries the space along and holds one scale, offset and moving statistics per channel;
  activations, dropout, pooling, padding and cropping carry it along unchanged;
- Flatten carries it along with its spatial positions folded in: the next Dense's input row `p * C + c` belongs to
  channel c at position p (channels-last order);
- a residual merge (`Add`, and the other elementwise merges) joins the spaces of its inputs: their channels are
  one group and are removed together.

A *group* is one joined space: its producers, BatchNorms and consumers. It can be pruned unless it is the model's
input or output (the logits layer keeps its units), one of its producers is excluded, or it has one channel. A
prunable group read by a layer this module cannot shrink (a Reshape, a Concatenate, a custom layer, ...) is an
error naming that layer: exclude the group's producer to keep it whole.
"""

import dataclasses

import numpy as np

from tfrobprune.keras_compat import keras, require_keras2_model
from tfrobprune.robust import interval_propagation

layers = keras.layers

# Layers that map each channel to itself (elementwise or per-channel spatial work): the space passes through.
_CHANNELWISE = (layers.ReLU, layers.LeakyReLU, layers.ELU, layers.ThresholdedReLU, layers.Dropout,
                layers.SpatialDropout2D, layers.GaussianNoise, layers.GaussianDropout, layers.AlphaDropout,
                layers.ActivityRegularization, layers.MaxPooling2D, layers.AveragePooling2D,
                layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D, layers.ZeroPadding2D, layers.Cropping2D,
                layers.UpSampling2D)
# Layers that combine their inputs channel by channel: their inputs' channels are one group.
_MERGES = (layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum)
# Activations known to work elementwise (as Keras serializes them); any other one (softmax, a custom function) may
# mix channels, so that a removed channel would change the others, and stops channel pruning there.
_ELEMENTWISE_ACTIVATIONS = ("linear", "relu", "relu6", "elu", "selu", "gelu", "swish", "sigmoid", "hard_sigmoid",
                            "tanh", "softplus", "softsign", "exponential", "mish", "leaky_relu")


@dataclasses.dataclass(frozen=True)
class Consumer:
  """A Dense or Conv2D whose kernel input axis reads a group's channels.

  Attributes:
    layer: the layer's name.
    positions: 1, or the spatial positions a Flatten folded in: input row `p * channels + c` is channel c at p.
  """
  layer: str
  positions: int = 1

  def rows(self, channels, indices):
    """The kernel input rows of channels `indices` (of `channels`), in flattened order."""
    indices = np.asarray(indices, np.int64)
    return (np.arange(self.positions)[:, None] * channels + indices[None, :]).ravel()


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """Channels removed together: the output channels of `producers` and everything that reads them.

  Attributes:
    producers: names of the Dense/Conv2D layers whose output channels these are (several when joined by a merge).
    batch_norms: names of the BatchNormalization layers on these channels.
    consumers: the `Consumer`s that read them.
    channels: the number of channels.
  """
  producers: tuple[str, ...]
  batch_norms: tuple[str, ...]
  consumers: tuple[Consumer, ...]
  channels: int

  @property
  def name(self):
    """The group's name: its first producer's."""
    return self.producers[0]

  def layer_names(self):
    """Names of the Dense/Conv2D layers whose kernels the group masks: producers, then consumers."""
    return self.producers + tuple(consumer.layer for consumer in self.consumers)

  def removed_indices(self, removed):
    """`removed[name]` ({group name: channel indices}; none if absent) as int64 indices, each one checked to be a
    channel of the group: a negative index would mean different channels to a mask and to a slice."""
    indices = np.asarray(removed.get(self.name, ()), np.int64).reshape(-1)
    outside = indices[(indices < 0) | (indices >= self.channels)]
    if outside.size:
      raise ValueError(f"Channel group {self.name!r} has channels 0..{self.channels - 1}; cannot remove "
                       f"{outside.tolist()}.")
    return indices


@dataclasses.dataclass
class _Space:
  """What the walk learns about one channel space before spaces are joined."""
  producers: list = dataclasses.field(default_factory=list)
  batch_norms: list = dataclasses.field(default_factory=list)
  consumers: list = dataclasses.field(default_factory=list)
  unsupported: list = dataclasses.field(default_factory=list)  # (layer name, reason)
  blocked: list = dataclasses.field(default_factory=list)      # reasons the space cannot be pruned
  channels: int = 0


class _Walk:
  """The walk over a model's layer calls: tensors -> (space, positions), spaces joined by union-find."""

  def __init__(self):
    self.spaces, self.parent, self.tensors = [], [], {}

  def new_space(self, channels, producer=None, blocked=None):
    self.spaces.append(_Space(channels=channels))
    self.parent.append(len(self.parent))
    if producer is not None:
      self.spaces[-1].producers.append(producer)
    if blocked is not None:
      self.spaces[-1].blocked.append(blocked)
    return len(self.spaces) - 1

  def root(self, space):
    while self.parent[space] != space:
      self.parent[space] = self.parent[self.parent[space]]
      space = self.parent[space]
    return space

  def join(self, spaces):
    roots = sorted({self.root(space) for space in spaces})
    for other in roots[1:]:
      self.parent[other] = roots[0]
    return roots[0]


def _is_exact(layer, cls):
  return type(layer) is cls  # pylint: disable=unidiomatic-typecheck  (subclasses lay out kernels differently)


def _channels_last(layer):
  return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _activation_name(layer):
  """The layer's activation as Keras serializes it (a dict for custom functions), or None."""
  activation = getattr(layer, "activation", None)
  return None if activation is None else keras.activations.serialize(activation)


def _mixes_channels(layer):
  name = _activation_name(layer)
  return name is not None and name not in _ELEMENTWISE_ACTIVATIONS


def _kernel_layer_problem(layer):
  """Why a Dense/Conv2D cannot take part in channel pruning (None if it can)."""
  if _is_exact(layer, layers.Conv2D) and (layer.groups != 1 or not _channels_last(layer)):
    return "a grouped or channels-first convolution"
  return None


def _batch_norm_problem(layer, rank):
  axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
  if [axis % rank for axis in axes] != [rank - 1]:
    return f"a BatchNormalization over axis {layer.axis}, not the channel (last) axis"
  return None


def _rank(layer):
  return len(layer.output_shape)


def _visit_kernel_layer(walk, node, layer, state):
  space, positions = state
  problem = _kernel_layer_problem(layer)
  if problem is not None:
    return _visit_unsupported(walk, node, layer, [state], problem)
  if _is_exact(layer, layers.Conv2D) and positions != 1:
    return _visit_unsupported(walk, node, layer, [state], "a convolution over flattened features")
  walk.spaces[space].consumers.append(Consumer(layer.name, positions))
  output = walk.new_space(int(layer.kernel.shape[-1]), producer=layer.name)
  if _mixes_channels(layer):
    walk.spaces[output].blocked.append(f"layer {layer.name!r} has an activation not known to be elementwise "
                                       f"({_activation_name(layer)!r}) over its outputs")
  walk.tensors[node.flat_output_ids[0]] = (output, 1)


def _visit_batch_norm(walk, node, layer, state):
  space, positions = state
  problem = _batch_norm_problem(layer, _rank(layer))
  if positions != 1:
    problem = "a BatchNormalization over flattened features"
  if problem is not None:
    return _visit_unsupported(walk, node, layer, [state], problem)
  walk.spaces[space].batch_norms.append(layer.name)
  walk.tensors[node.flat_output_ids[0]] = state


def _visit_channelwise(walk, node, layer, state):
  if not _channels_last(layer):
    return _visit_unsupported(walk, node, layer, [state], "a channels-first layer")
  if _mixes_channels(layer):
    return _visit_unsupported(walk, node, layer, [state],
                              f"an activation not known to be elementwise ({_activation_name(layer)!r})")
  walk.tensors[node.flat_output_ids[0]] = state


def _visit_flatten(walk, node, layer, state):
  space, positions = state
  if not _channels_last(layer):
    return _visit_unsupported(walk, node, layer, [state], "a channels-first Flatten")
  spatial = layer.input_shape[1:-1]
  walk.tensors[node.flat_output_ids[0]] = (space, positions * int(np.prod(spatial, dtype=np.int64)))


def _visit_merge(walk, node, layer, states):
  if len({positions for _, positions in states}) != 1:
    return _visit_unsupported(walk, node, layer, states, "a merge of tensors flattened differently")
  if len({tuple(shape)[-1] for shape in node.input_shapes}) != 1:
    return _visit_unsupported(walk, node, layer, states, "a merge that broadcasts channels")
  joined = walk.join([space for space, _ in states])
  walk.tensors[node.flat_output_ids[0]] = (joined, states[0][1])


def _visit_unsupported(walk, node, layer, states, reason):
  """The layer reads its inputs' channels in a way this module cannot follow; its outputs are not ours to prune."""
  for space, _ in states:
    walk.spaces[space].unsupported.append((layer.name, reason))
  for tensor_id in node.flat_output_ids:
    walk.tensors[tensor_id] = (walk.new_space(0, blocked=f"output of layer {layer.name!r}"), 1)


def _visit(walk, node):
  layer = node.layer
  states = [walk.tensors[tensor_id] for tensor_id in node.flat_input_ids]
  states = [(walk.root(space), positions) for space, positions in states]
  if len(states) == 1 and (_is_exact(layer, layers.Dense) or _is_exact(layer, layers.Conv2D)):
    return _visit_kernel_layer(walk, node, layer, states[0])
  if len(states) == 1 and _is_exact(layer, layers.BatchNormalization):
    return _visit_batch_norm(walk, node, layer, states[0])
  if len(states) == 1 and (isinstance(layer, _CHANNELWISE) or _is_exact(layer, layers.Activation)):
    return _visit_channelwise(walk, node, layer, states[0])
  if len(states) == 1 and _is_exact(layer, layers.Flatten):
    return _visit_flatten(walk, node, layer, states[0])
  if len(states) > 1 and isinstance(layer, _MERGES):
    return _visit_merge(walk, node, layer, states)
  return _visit_unsupported(walk, node, layer, states, f"a {type(layer).__name__} layer")


def _check_model(model):
  require_keras2_model(model)
  if not getattr(model, "_is_graph_network", False):
    raise ValueError(f"Channel pruning needs a Sequential or functional model; {model.name!r} is subclassed.")
  interval_propagation.check_single_input_output(model)
  calls = {}
  for node in interval_propagation.graph_nodes(model):
    calls[node.layer.name] = calls.get(node.layer.name, 0) + 1
    if isinstance(node.layer, keras.Model):
      raise ValueError(f"Nested model {node.layer.name!r} inside {model.name!r} is not supported; flatten it.")
    if isinstance(node.layer, layers.Wrapper):
      raise ValueError(f"Model {model.name!r} has wrapped layer {node.layer.name!r}; strip the pruning wrappers "
                       "before analysing its channels.")
  shared = sorted(name for name, count in calls.items() if count > 1)
  if shared:
    raise ValueError(f"Channel pruning cannot shrink layers called more than once: {shared}.")


def _walk(model):
  walk = _Walk()
  walk.tensors[str(id(model.inputs[0]))] = (walk.new_space(0, blocked="the model input"), 1)
  for node in interval_propagation.graph_nodes(model):
    _visit(walk, node)
  for tensor in model.outputs:
    space, _ = walk.tensors[str(id(tensor))]
    walk.spaces[walk.root(space)].blocked.append("it is the model output")
  return walk


def _merged(walk):
  """{root space: _Space} with the facts of every joined space gathered on its root."""
  merged = {}
  for index, space in enumerate(walk.spaces):
    target = merged.setdefault(walk.root(index), _Space())
    for field in ("producers", "batch_norms", "consumers", "unsupported", "blocked"):
      getattr(target, field).extend(getattr(space, field))
    target.channels = max(target.channels, space.channels)
  return merged


def _unprunable_reason(space, exclude_layers):
  """Why a joined space is not pruned (None if it is)."""
  if space.blocked:
    return space.blocked[0]
  excluded = sorted(set(space.producers) & set(exclude_layers))
  if excluded:
    return f"{excluded} are in exclude_layers"
  if space.channels < 2:
    return "it has one channel"
  return None


def _check_supported(model, space):
  """Raises a ValueError naming the first layer that reads the space's channels in a way surgery cannot follow."""
  unsupported = list(space.unsupported)
  for consumer in space.consumers:
    rows = int(model.get_layer(consumer.layer).kernel.shape[-2])
    if rows != consumer.positions * space.channels:
      unsupported.append((consumer.layer, f"its kernel has {rows} input rows, not {consumer.positions} positions "
                                          f"x {space.channels} channels"))
  if unsupported:
    layer, reason = unsupported[0]
    raise ValueError(
        f"Channel pruning cannot shrink layer {layer!r} ({reason}), which reads the output channels of "
        f"{space.producers}; keep those channels with exclude_layers (--prune_exclude={','.join(space.producers)}).")


def channel_groups(model, exclude_layers=()):
  """The prunable channel groups of `model`, in the order of their first producer (see the module docstring).

  Args:
    model: a built, unwrapped Keras 2 Sequential or functional model with one input and one output.
    exclude_layers: names of Dense/Conv2D layers whose output channels are kept (with every layer joined to them).

  Returns:
    A list of `ChannelGroup`s; groups that cannot be pruned (the model's output, excluded, one channel) are left
    out.

  Raises:
    ValueError: for a subclassed, nested or wrapped model, a layer called more than once, unknown names in
      `exclude_layers`, or a layer that reads a prunable group's channels in a way that cannot be shrunk (naming
      it).
  """
  _check_model(model)
  names = {layer.name for layer in model.layers}
  unknown = sorted(set(exclude_layers) - names)
  if unknown:
    raise ValueError(f"exclude_layers names layers {unknown} that model {model.name!r} does not have.")
  walk = _walk(model)
  order = {layer.name: index for index, layer in enumerate(model.layers)}
  groups = []
  for space in _merged(walk).values():
    if not space.producers or _unprunable_reason(space, exclude_layers) is not None:
      continue
    _check_supported(model, space)
    groups.append(ChannelGroup(tuple(space.producers), tuple(space.batch_norms), tuple(space.consumers),
                               space.channels))
  return sorted(groups, key=lambda group: order[group.name])


def describe_unpruned(model, exclude_layers=()):
  """{producer layer name: why its output channels are kept} for the Dense/Conv2D layers no group prunes (for
  logging which layers channel pruning leaves alone)."""
  _check_model(model)
  reasons = {}
  for space in _merged(_walk(model)).values():
    reason = _unprunable_reason(space, exclude_layers)
    if reason is not None:
      reasons.update({name: reason for name in space.producers})
  return reasons
