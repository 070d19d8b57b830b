"""Tests for tfrobprune.robust.layer_support: what each objective needs of a model, refused up front by layer name."""

from absl.testing import absltest
from absl.testing import parameterized

from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import bound_registry
from tfrobprune.robust import bound_steps
from tfrobprune.robust import layer_support

layers = keras.layers


def _residual_model():
  inputs = keras.Input((6, 6, 1))
  x = layers.ReLU(name="relu1")(layers.Conv2D(4, 3, padding="same", name="conv1")(inputs))
  y = layers.Conv2D(4, 3, padding="same", name="conv2")(x)
  x = layers.ReLU(name="relu2")(layers.Add(name="add")([x, y]))
  return keras.Model(inputs, layers.Dense(3, name="logits")(layers.Flatten()(x)))


def _with_layer(layer, flatten_first=True):
  inputs = keras.Input((6, 6, 1))
  x = layers.Flatten()(inputs) if flatten_first else inputs
  return keras.Model(inputs, layers.Dense(3, name="logits")(layer(x)))


class _Double(layers.Layer):
  """y = 2 x: a layer class of one's own, with no bound rule until a test registers one."""

  def call(self, inputs):
    return 2.0 * inputs


class CheckModelTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters("natural", "pgd", "trades", "ibp")
  def testResidualFunctionalModel_IsAccepted(self, objective):
    layer_support.check_model(_residual_model(), [objective])

  def testZooModels_AreAcceptedByEveryObjective(self):
    for name in ("cnn_small", "mlp"):
      layer_support.check_model(models.build_model(name, (8, 8, 1), 10), ["pgd", "ibp", "crown_ibp"])

  def testCrownIbp_OnAResidualModel_NamesTheMerge(self):
    with self.assertRaisesRegex(layer_support.UnsupportedModelError, "crown_ibp.*'add' \\(Add\\).*chain"):
      layer_support.check_model(_residual_model(), ["crown_ibp"])

  def testIbp_NamesEveryLayerWithoutABoundRuleAndSaysHowToAddOne(self):
    inputs = keras.Input((6, 6, 1))
    x = layers.LayerNormalization(name="norm")(layers.Flatten()(inputs))
    x = layers.Dense(5, activation="elu", name="hidden")(x)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(x))
    with self.assertRaises(layer_support.UnsupportedModelError) as raised:
      layer_support.check_model(model, ["pgd", "ibp"])
    message = str(raised.exception)
    self.assertIn("'ibp' needs a bound rule for every layer; 2 layer(s)", message)
    self.assertIn("'norm' (LayerNormalization)", message)
    self.assertIn("'hidden' (Dense): activation 'elu'", message)
    self.assertIn("tfrobprune.bounds.register_layer", message)
    layer_support.check_model(model, ["pgd", "trades"])

  def testRegisteringABoundRule_MakesIbpAcceptTheLayer(self):
    model = _with_layer(_Double(name="double"))
    with self.assertRaisesRegex(layer_support.UnsupportedModelError, "'double' \\(_Double\\)"):
      layer_support.check_model(model, ["ibp"])
    bound_registry.register_layer(_Double, lambda layer: [bound_steps.Affine(bound_steps.scale_linear(2.0, True))])
    self.addCleanup(bound_registry._LAYER_STEPS.pop, _Double)  # pylint: disable=protected-access
    layer_support.check_model(model, ["ibp", "crown_ibp"])

  def testNonDifferentiableLayer_IsNamed(self):
    model = _with_layer(layers.Lambda(tf.round, name="rounding"))
    with self.assertRaisesRegex(layer_support.UnsupportedModelError, "'rounding' \\(Lambda\\) is not differentiable"):
      layer_support.check_model(model, ["pgd"])

  def testIbpNeedsAnAffineLastLayer(self):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(3, activation="relu", name="logits")(inputs))
    with self.assertRaisesRegex(layer_support.UnsupportedModelError, "affine last layer.*'logits'"):
      layer_support.check_model(model, ["ibp"])

  def testOutputsThatAreNotLogits_AreRefused(self):
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, layers.Conv2D(3, 3, name="conv")(inputs))
    with self.assertRaisesRegex(layer_support.UnsupportedModelError, "must return logits"):
      layer_support.check_model(model, ["pgd"])

  def testProbabilityOutputs_AreRefusedNamingTheLayer(self):
    inputs = keras.Input((4,))
    for ending, phrase in ((layers.Dense(3, activation="softmax", name="probs"), "ends in softmax .layer 'probs'"),
                           (layers.Softmax(name="probs"), "ends in softmax .layer 'probs'"),
                           (layers.Activation("sigmoid", name="probs"), "ends in sigmoid .layer 'probs'")):
      outputs = ending(inputs if isinstance(ending, layers.Dense) else layers.Dense(3)(inputs))
      with self.assertRaisesRegex(layer_support.UnsupportedModelError, phrase + ".*must return logits"):
        layer_support.check_model(keras.Model(inputs, outputs), ["pgd"])
    layer_support.check_model(keras.Model(inputs, layers.Dense(3, activation="linear")(inputs)), ["pgd"])

  def testTwoInputs_AreRefused(self):
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], layers.Dense(3)(layers.Add()([a, b])))
    with self.assertRaisesRegex(ValueError, "one input and one output"):
      layer_support.check_model(model, ["pgd"])


if __name__ == "__main__":
  absltest.main()
