"""Bound rules of one's own: `tfrobprune.bounds.register_layer` and the steps a rule is made of.

IBP and CROWN-IBP push bounds through a model layer by layer, by a table from Keras layer class to bound steps
(`robust.bound_registry`). A layer class without an entry is refused before training, naming the layer. To train
a model with such a layer under IBP, describe the layer as steps and register the class:

```python
@keras.utils.register_keras_serializable("mine")
class Scale(keras.layers.Layer):           # y = x * factor, factor > 0
  def __init__(self, factor, **kwargs):
    super().__init__(**kwargs)
    self.factor = factor
  def call(self, x):
    return x * self.factor
  def get_config(self):
    return dict(super().get_config(), factor=self.factor)

tfrobprune.bounds.register_layer(
    Scale, lambda layer: [tfrobprune.bounds.Affine(tfrobprune.bounds.scale_linear(layer.factor, positive=True))])
```

Steps: `Affine(linear, bias)` for `x -> A x + b` (`dense_linear(kernel)`, `scale_linear(scale)`,
`reshape_linear(shape)`, or a `Linear` of one's own giving `A x`, `|A| x` and `Lambda A`), `Relu()`,
`Monotone(fn)` for a map non-decreasing in every input (IBP only: CROWN-IBP relaxes affine steps and ReLU), and
`Sum()` for a layer adding its inputs. The registration is per process: register before training, and before
loading a model that holds the layer.
"""

from tfrobprune.robust import bound_registry
from tfrobprune.robust import bound_steps

__all__ = ["register_layer", "layer_steps", "Affine", "Linear", "Relu", "Monotone", "Sum", "dense_linear",
           "scale_linear", "reshape_linear"]

register_layer = bound_registry.register_layer
layer_steps = bound_registry.layer_steps
Affine = bound_steps.Affine
Linear = bound_steps.Linear
Relu = bound_steps.Relu
Monotone = bound_steps.Monotone
Sum = bound_steps.Sum
dense_linear = bound_steps.dense_linear
scale_linear = bound_steps.scale_linear
reshape_linear = bound_steps.reshape_linear
