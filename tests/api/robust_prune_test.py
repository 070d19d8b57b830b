"""Tests for tfrobprune.api.robust_prune: a residual functional model of one's own, on arrays and on tf.data,
through the whole pipeline to the target sparsity; resuming; layers without a bound rule under IBP."""

import os

from absl.testing import absltest
import numpy as np

from tfrobprune.api import robust_prune as robust_prune_lib
from tfrobprune.api import settings
from tfrobprune.keras_compat import keras, tf
from tfrobprune.prune import stats
from tfrobprune.prune import wrapping
from tfrobprune.robust import bound_registry
from tfrobprune.robust import bound_steps
from tfrobprune.robust import layer_support

layers = keras.layers
robust_prune = robust_prune_lib.robust_prune
_TINY = dict(objective=settings.Objective("pgd", eps=0.05, pgd_steps=1),
             pruning=settings.Pruning(sparsity=0.75, frequency=2),
             training=settings.Training(pretrain_epochs=1, finetune_epochs=2, batch_size=32, learning_rate=1e-2),
             evaluation=settings.Evaluation(pgd_steps=2, pgd_restarts=1, batch_size=48), deterministic=True)


@keras.utils.register_keras_serializable("robust_prune_test")
class Scale(layers.Layer):
  """y = x * factor (factor > 0): a layer class of one's own, without a bound rule until a test registers one."""

  def __init__(self, factor=2.0, **kwargs):
    super().__init__(**kwargs)
    self.factor = factor

  def call(self, inputs):
    return inputs * self.factor

  def get_config(self):
    return dict(super().get_config(), factor=self.factor)


def _residual_model(with_scale=False):
  init = keras.initializers.GlorotUniform(seed=0)
  inputs = keras.Input((6, 6, 1))
  x = Scale(name="scale")(inputs) if with_scale else inputs
  x = layers.ReLU(name="relu1")(layers.Conv2D(8, 3, padding="same", kernel_initializer=init, name="conv1")(x))
  y = layers.Conv2D(8, 3, padding="same", kernel_initializer=init, name="conv2")(x)
  x = layers.ReLU(name="relu2")(layers.Add(name="add")([x, y]))
  outputs = layers.Dense(3, kernel_initializer=init, name="logits")(layers.Flatten(name="flatten")(x))
  return keras.Model(inputs, outputs, name="mine")


def _data(n, seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  return np.clip(rng.normal(0.2 + 0.3 * y[:, None, None, None], 0.1, (n, 6, 6, 1)), 0, 1).astype(np.float32), y


class RobustPruneTest(tf.test.TestCase):

  def testArraysAndTfData_GiveTheSameRunToTheTargetSparsity(self):
    model, train, test = _residual_model(), _data(192, 0), _data(48, 1)
    weights = model.get_weights()
    output_dir = self.create_tempdir().full_path
    pruned, report = robust_prune(model, train, test, output_dir=output_dir, export=False, **_TINY)
    self.assertEqual(report["config"]["model"], os.path.join(output_dir, "mine.keras"))
    self.assertEqual(report["dataset"]["train"], 192)
    self.assertAllClose(report["pruned"]["sparsity"], 0.75, atol=0.01)
    self.assertAllClose(stats.parameter_counts(pruned)["sparsity"], 0.75, atol=0.01)
    self.assertFalse(any(wrapping.is_wrapper(layer) for layer in pruned.layers))
    self.assertEqual([layer.name for layer in pruned.layers], [layer.name for layer in model.layers])
    for before, after in zip(weights, model.get_weights()):
      self.assertAllEqual(before, after)  # the caller's model is left alone

    batches = (tf.data.Dataset.from_tensor_slices(train).batch(50), tf.data.Dataset.from_tensor_slices(test))
    pruned_again, again = robust_prune(_residual_model(), *batches, **_TINY)
    self.assertEqual(again["pruned"]["pgd_acc"], report["pruned"]["pgd_acc"])
    self.assertEqual(again["pruned"]["layer_sparsity"], report["pruned"]["layer_sparsity"])
    self.assertNotIn("artifacts", again)  # no output directory: nothing to export into
    self.assertAllEqual(pruned_again.get_layer("logits").kernel, pruned.get_layer("logits").kernel)

    lines = []
    _, resumed = robust_prune(_residual_model(), train, test, output_dir=output_dir, export=False, log=lines.append,
                              **_TINY)
    self.assertEqual(resumed["pruned"], report["pruned"])
    self.assertTrue(any(line.startswith("Resuming") for line in lines), lines)

    # Another model (same name, same settings) or other data in the same directory is not that run.
    edited = _residual_model()
    edited.get_layer("logits").set_weights([2 * w for w in edited.get_layer("logits").get_weights()])
    for other_model, other_train in ((edited, train), (_residual_model(), _data(192, 5))):
      with self.assertRaisesRegex(ValueError, "holds a run of another model or other data"):
        robust_prune(other_model, other_train, test, output_dir=output_dir, export=False, **_TINY)
    self.assertEqual(robust_prune(_residual_model(), train, test, output_dir=output_dir, export=False,
                                  **_TINY)[1]["pruned"], report["pruned"])  # the file holds the original model still

  def testIbp_LayerWithoutABoundRuleFailsBeforeTraining_RegisteringOneMakesItTrain(self):
    ibp = dict(_TINY, objective=settings.Objective("ibp", eps=0.05))
    output_dir = self.create_tempdir().full_path
    with self.assertRaisesRegex(layer_support.UnsupportedModelError, "'ibp' needs a bound rule.*'scale' \\(Scale\\)"):
      robust_prune(_residual_model(with_scale=True), _data(96, 0), _data(48, 1), output_dir=output_dir, **ibp)
    self.assertFalse(os.path.exists(os.path.join(output_dir, "models")))

    bound_registry.register_layer(
        Scale, lambda layer: [bound_steps.Affine(bound_steps.scale_linear(layer.factor, positive=True))])
    self.addCleanup(bound_registry._LAYER_STEPS.pop, Scale)  # pylint: disable=protected-access
    pruned, report = robust_prune(_residual_model(with_scale=True), _data(96, 0), _data(48, 1), **ibp)
    self.assertIn("verified_acc", report["pruned"])
    self.assertAllClose(stats.parameter_counts(pruned)["sparsity"], 0.75, atol=0.01)
    self.assertIsInstance(pruned.get_layer("scale"), Scale)

  def testAModelWithTwoOutputs_IsRefusedNamingIt(self):
    inputs = keras.Input((6, 6, 1))
    flat = layers.Flatten()(inputs)
    model = keras.Model(inputs, [layers.Dense(3)(flat), layers.Dense(3)(flat)], name="two_heads")
    with self.assertRaisesRegex(ValueError, "one input and one output; 'two_heads' has 1 and 2"):
      robust_prune(model, _data(8, 0), _data(8, 1))

  def testAModelThatIsNotKeras2_IsRefused(self):
    with self.assertRaisesRegex(TypeError, "tf_keras.Model"):
      robust_prune(object(), _data(8, 0), _data(8, 1))


if __name__ == "__main__":
  absltest.main()
