"""Channel pruning: rank the channel groups by a group norm and mask whole channels, per layer or globally.

Structured pruning removes whole Conv2D filters and Dense units, so that the pruned model can be rebuilt smaller
(`surgery.shrink`) and runs faster on dense kernels. The groups come from `channel_groups` (a channel and every
weight that reads it). Each channel's score is the norm of its filter (L1 or L2 of the producer's kernel slice, the
mean over the producers of a residual group), times the mean |gamma| of the BatchNorms on it where there are any
(a simpler group score than Torch-Pruning's `GroupNormImportance`, which also sums the readers' input rows; with
network slimming's BN scale). Scope 'layer' removes the `s * n` (rounded half up) lowest
channels of every group; scope 'global' ranks all groups' channels together after dividing each group's scores by
their mean over the channels still present (Torch-Pruning's normaliser: raw norms grow with a layer's fan-in and
would not compare; channels a gradual schedule already removed score 0 and would drag a group's mean down, shielding
the groups pruned hardest). Every group keeps at least one channel.

Masks (`channel_masks`) zero the removed channels' output columns in the producers and their input rows in the
consumers, so the masked model already computes what the shrunken one will: whatever a removed channel still
outputs (its bias, BatchNorm offset) is read by no one. Training runs on tfmot wrappers as for unstructured pruning
(`wrap`, then `drivers.ScheduledMaskDriver` with `mask_chooser` on a one-shot or gradual schedule).
"""

import numpy as np

from tfrobprune.prune import validation
from tfrobprune.prune import wrapping

# `collect_prunable_layers` is not exported by tfmot's public API.
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

NORMS = ("l1", "l2")
SCOPES = ("layer", "global")


def _rounded(count):
  """`count` rounded half up (Python's round() goes to even: 0.5 x 5 channels would remove 2, 0.5 x 7 remove 4)."""
  return int(np.floor(count + 0.5))


def _filter_norms(kernel, norm):
  """The norm of each output channel's weights (the kernel's last axis)."""
  flat = np.reshape(np.asarray(kernel, np.float64), (-1, kernel.shape[-1]))
  return np.abs(flat).sum(axis=0) if norm == "l1" else np.sqrt(np.square(flat).sum(axis=0))


def _batch_norm_scale(layer):
  """|gamma| per channel, or None for a BatchNorm without a scale."""
  return np.abs(layer.gamma.numpy()) if layer.scale else None


def group_scores(model, groups, norm="l2"):
  """Each group's channel scores: the mean filter norm over its producers, times the mean |gamma| of its BatchNorms.

  Args:
    model: the model the groups were found in, or a copy with the same layer names (dense or stripped; kernels
      are read as they are, so removed channels score 0).
    groups: `channel_groups.ChannelGroup`s.
    norm: 'l1' or 'l2'.

  Returns:
    {group name: float64 array of one score per channel}.
  """
  validation.check_choice("norm", norm, NORMS)
  scores = {}
  for group in groups:
    score = np.mean([_filter_norms(model.get_layer(name).kernel.numpy(), norm) for name in group.producers], axis=0)
    gammas = [_batch_norm_scale(model.get_layer(name)) for name in group.batch_norms]
    gammas = [gamma for gamma in gammas if gamma is not None]
    scores[group.name] = score * np.mean(gammas, axis=0) if gammas else score
  return scores


def _lowest(scores, count):
  """Indices of the `count` lowest scores (ties to the lower index), sorted."""
  return np.sort(np.argsort(scores, kind="stable")[:count])


def channels_to_remove(scores, sparsity, scope="layer"):
  """The channels to remove from each group for a channel sparsity.

  Args:
    scores: {group name: one score per channel}, e.g. from `group_scores`.
    sparsity: the fraction of channels to remove, in [0, 1): of each group for scope 'layer', of all groups'
      channels together for scope 'global'.
    scope: 'layer' or 'global' (module docstring).

  Returns:
    {group name: sorted int array of removed channel indices}; every group keeps at least one channel.
  """
  validation.check_fraction("sparsity", sparsity)
  validation.check_choice("scope", scope, SCOPES)
  if scope == "layer":
    return {name: _lowest(score, min(_rounded(sparsity * len(score)), len(score) - 1))
            for name, score in scores.items()}
  return _global_removal(scores, sparsity)


def _relative_to_present(score):
  """`score` divided by its mean over the channels not yet removed (score > 0); all ones if none is left."""
  present = score[score > 0]
  return score / np.mean(present) if present.size else np.ones_like(score)


def _global_removal(scores, sparsity):
  """One ranking over every group's mean-normalised scores; a group whose last channel comes up keeps it."""
  names = list(scores)
  normalised = [_relative_to_present(score) for score in scores.values()]
  owner = np.concatenate([np.full(len(score), index) for index, score in enumerate(normalised)])
  channel = np.concatenate([np.arange(len(score)) for score in normalised])
  budget = _rounded(sparsity * owner.size)
  left = {index: len(score) - 1 for index, score in enumerate(normalised)}
  removed = {index: [] for index in left}
  for position in np.argsort(np.concatenate(normalised), kind="stable"):
    if budget == 0:
      break
    if left[owner[position]] > 0:
      removed[owner[position]].append(channel[position])
      left[owner[position]] -= 1
      budget -= 1
  return {names[index]: np.sort(np.asarray(indices, np.int64)) for index, indices in removed.items()}


def mask_layers(groups):
  """Names of the Dense/Conv2D layers whose kernels channel masks cover (every group's producers and consumers)."""
  return sorted({name for group in groups for name in group.layer_names()})


def channel_masks(model, groups, removed):
  """0/1 kernel masks that remove `removed` channels: producers' output columns, consumers' input rows.

  Args:
    model: a dense or stripped model with the groups' layers.
    groups: `channel_groups.ChannelGroup`s.
    removed: {group name: removed channel indices}, e.g. from `channels_to_remove`.

  Returns:
    {layer name: float32 mask shaped like its kernel} for every layer of `mask_layers(groups)`.
  """
  masks = {name: np.ones(model.get_layer(name).kernel.shape, np.float32) for name in mask_layers(groups)}
  for group in groups:
    indices = group.removed_indices(removed)
    for name in group.producers:
      masks[name][..., indices] = 0.0
    for consumer in group.consumers:
      masks[consumer.layer][..., consumer.rows(group.channels, indices), :] = 0.0
  return masks


def wrap(model, groups):
  """A copy of `model` with tfmot wrappers on the groups' layers, all masks one (nothing removed yet).

  Train it with `drivers.ScheduledMaskDriver(wrapped, schedule, mask_chooser(groups, ...))`.
  """
  if not groups:
    raise ValueError(f"Model {model.name!r} has no channel group to prune (every Dense/Conv2D output is the model "
                     "output, excluded, or a single channel).")
  return wrapping.fixed_mask_prune(model, channel_masks(model, groups, {}))


def mask_chooser(groups, norm="l2", scope="layer"):
  """The `choose_masks(model, sparsity, step)` of `drivers.ScheduledMaskDriver` for channel pruning.

  At each pruning turn the groups are ranked on the weights as fine-tuning has left them; removed channels have
  zero filters, so they score lowest and stay removed while the sparsity rises.
  """
  validation.check_choice("norm", norm, NORMS)
  validation.check_choice("scope", scope, SCOPES)

  def choose_masks(model, sparsity, step):
    del step
    return channel_masks(model, groups, channels_to_remove(group_scores(model, groups, norm), sparsity, scope))

  return choose_masks


def removed_channels(wrapped_model, groups):
  """{group name: removed channel indices}, read from the wrappers' masks (a channel is removed when its output
  column is zero in every producer's mask).

  Raises:
    ValueError: if a group's producer is not wrapped.
  """
  masks = {wrapper.layer.name: wrapper.pruning_vars[0][1].numpy()
           for wrapper in pruning_wrapper.collect_prunable_layers(wrapped_model)}
  removed = {}
  for group in groups:
    missing = [name for name in group.producers if name not in masks]
    if missing:
      raise ValueError(f"Layers {missing} of channel group {group.name!r} are not wrapped in {wrapped_model.name!r}.")
    alive = np.zeros(group.channels, bool)
    for name in group.producers:
      alive |= np.reshape(masks[name], (-1, group.channels)).any(axis=0)
    removed[group.name] = np.flatnonzero(~alive)
  return removed
