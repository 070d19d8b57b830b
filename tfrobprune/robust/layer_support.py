"""What each objective needs of a model, checked before training with an error naming the layer.

- Every objective needs a model with one input and one output, logits (not probabilities: cross-entropy over a
  softmax's output trains and attacks the wrong loss, with flattened gradients, and no error), which depend
  differentiably on the input:
  PGD and TRADES attacks follow the input gradient, and training follows the gradient through every layer. That is
  all PGD, TRADES and natural training need, so any Sequential or functional model of differentiable layers
  (branches and residual adds included) trains with them.
- IBP needs a bound rule for every layer (`bound_registry`; `register_layer` adds one for a layer class of one's
  own) and an affine last layer (the logits) that the margin specification folds into.
- CROWN-IBP back-substitutes through chains of affine layers and ReLUs only (no merges, no other activation).

Without this check a missing rule surfaces as an error in the middle of tracing the first training step.
"""

from tfrobprune.keras_compat import keras, tf
from tfrobprune.robust import bound_registry
from tfrobprune.robust import crown_ibp
from tfrobprune.robust import interval_propagation
from tfrobprune.robust import margins

__all__ = ["UnsupportedModelError", "BOUND_OBJECTIVES", "check_model"]

BOUND_OBJECTIVES = ("ibp", "crown_ibp")


class UnsupportedModelError(ValueError):
  """A layer of the model cannot be trained with the requested objective."""


def _layers_in_call_order(model):
  if isinstance(model, keras.Sequential):
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
  return [node.layer for node in interval_propagation.graph_nodes(model)]


def _probe_input(model):
  if not model.inputs:
    raise UnsupportedModelError(f"Model {model.name!r} has no Input; build it with keras.Input(shape=...).")
  shape = model.input_shape[1:]
  if any(dim is None for dim in shape):
    raise UnsupportedModelError(f"Model {model.name!r} takes inputs of shape {tuple(shape)}; give its Input a fully "
                                "defined image shape (height, width, channels).")
  return tf.random.stateless_uniform((2,) + tuple(shape), seed=[0, 1])


def _layer_outputs(model):
  """[(layer, its output tensor)] for the layers called once, in call order (shared layers have no single output)."""
  pairs = []
  for layer in _layers_in_call_order(model):
    if len(layer.inbound_nodes) == 1 and not isinstance(layer.output, (list, tuple)):
      pairs.append((layer, layer.output))
  return pairs


def _check_differentiable(model):
  """Names the first layer whose output has no gradient with respect to the model's input (while its inputs have
  one): a cast to integers, rounding, argmax, a stop_gradient, ..."""
  x = _probe_input(model)
  pairs = _layer_outputs(model)
  probe = keras.Model(model.inputs, [tensor for _, tensor in pairs] + list(model.outputs))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    outputs = probe(x, training=False)
    sums = [tf.reduce_sum(tf.cast(output, tf.float32)) for output in outputs]
  for (layer, _), output, total in zip(pairs + [(interval_propagation.last_layer(model), None)], outputs, sums):
    if not output.dtype.is_floating or tape.gradient(total, x) is None:
      raise UnsupportedModelError(
          f"Layer {layer.name!r} ({type(layer).__name__}) is not differentiable with respect to the model's input "
          f"(output dtype {output.dtype.name}, no gradient): attacks and training need gradients through every layer.")
  del tape


def _check_bound_rules(model, objective_name, num_classes):
  """Every layer has a bound rule (all missing ones named at once), and the last layer is affine."""
  missing = []
  for layer in _layers_in_call_order(model):
    try:
      bound_registry.layer_steps(layer)
    except NotImplementedError as error:
      missing.append(str(error))
  if missing:
    raise UnsupportedModelError(
        f"Objective {objective_name!r} needs a bound rule for every layer; {len(missing)} layer(s) have none: "
        f"{' | '.join(missing)} Add one with tfrobprune.bounds.register_layer(LayerClass, steps_fn), or train with "
        "'pgd' or 'trades', which need only a differentiable model.")
  last = interval_propagation.last_layer(model)
  try:
    margins.check_final_affine(last, bound_registry.layer_steps(last), num_classes)
  except ValueError as error:
    raise UnsupportedModelError(f"Objective {objective_name!r}: {error}") from error


def _check_crown_ibp(model):
  try:
    crown_ibp.crown_ibp_steps(model)
  except NotImplementedError as error:
    raise UnsupportedModelError(f"Objective 'crown_ibp': {error}") from error


# Output activations that turn logits into probabilities.
_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")


def _check_returns_logits(model):
  """Refuses a model whose last layer applies softmax or sigmoid (a `Softmax` layer, or an activation)."""
  last = interval_propagation.last_layer(model)
  activation = getattr(last, "activation", None)
  name = keras.activations.serialize(activation) if activation is not None else None
  if isinstance(last, keras.layers.Softmax) or name in _PROBABILITY_ACTIVATIONS:
    raise UnsupportedModelError(f"Model {model.name!r} ends in {name or 'softmax'} (layer {last.name!r}): it must "
                                "return logits. Remove the final activation; the losses apply softmax themselves.")


def check_model(model, objective_names, num_classes=None):
  """Checks that `model` can be trained and evaluated with every objective in `objective_names`.

  Args:
    model: a built `tf_keras` model (dense; pruning wrappers are added later).
    objective_names: names from `objectives.OBJECTIVE_NAMES` (e.g. those of pre-training and fine-tuning).
    num_classes: the number of classes (default: the model's output width).

  Raises:
    UnsupportedModelError: a ValueError naming the layer and what it lacks for which objective.
  """
  interval_propagation.check_single_input_output(model)
  _check_returns_logits(model)
  num_classes = num_classes or int(model.output_shape[-1])
  if len(model.output_shape) != 2:
    raise UnsupportedModelError(f"Model {model.name!r} returns outputs of shape {model.output_shape[1:]}; it must "
                                "return logits, [batch, classes].")
  _check_differentiable(model)
  names = set(objective_names)
  for name in sorted(names & set(BOUND_OBJECTIVES)):
    _check_bound_rules(model, name, num_classes)
  if "crown_ibp" in names:
    _check_crown_ibp(model)
