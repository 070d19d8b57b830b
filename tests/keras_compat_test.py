"""Tests for tfrobprune.keras_compat: Keras 2 (`tf_keras`) is the Keras, and Keras 3 models are refused."""

import os

from absl.testing import absltest

# Must come before anything else imports TensorFlow: that is the behaviour under test.
from tfrobprune import keras_compat

import tf_keras

try:
  import keras as keras3  # TensorFlow >= 2.16 installs Keras 3 as `keras`.
except ImportError:
  keras3 = None


def _keras2_model():
  inputs = tf_keras.Input(shape=(3,))
  return tf_keras.Model(inputs, tf_keras.layers.Dense(2)(inputs))


class KerasCompatTest(absltest.TestCase):

  def testKeras_IsTfKeras(self):
    self.assertIs(keras_compat.keras, tf_keras)

  def testImport_SetsLegacyKerasEnvironmentVariable(self):
    self.assertEqual(os.environ.get("TF_USE_LEGACY_KERAS"), "1")

  def testTfKeras_IsKeras2(self):
    # With TF_USE_LEGACY_KERAS=1 set before TensorFlow's import, tf.keras is tf_keras too, so code that reaches
    # Keras through `tf.keras` gets the same classes that tfmot wraps.
    self.assertIs(keras_compat.tf.keras.Model, tf_keras.Model)
    self.assertTrue(tf_keras.__version__.startswith("2."), tf_keras.__version__)

  def testRequireKeras2Model_FunctionalModel_ReturnsIt(self):
    model = _keras2_model()
    self.assertIs(keras_compat.require_keras2_model(model), model)

  def testRequireKeras2Model_SequentialModel_ReturnsIt(self):
    model = tf_keras.Sequential([tf_keras.layers.Dense(2)])
    self.assertIs(keras_compat.require_keras2_model(model), model)

  def testRequireKeras2Model_Keras3Model_RaisesTypeErrorNamingKeras3(self):
    if keras3 is None:
      self.skipTest("Keras 3 (`keras`) is not installed")
    self.assertTrue(keras3.__version__.startswith("3."), keras3.__version__)
    inputs = keras3.Input(shape=(3,))
    model = keras3.Model(inputs, keras3.layers.Dense(2)(inputs))
    with self.assertRaisesRegex(TypeError, r"Keras 3 model.*tf_keras.*TF_USE_LEGACY_KERAS=1"):
      keras_compat.require_keras2_model(model)

  def testRequireKeras2Model_Keras2Layer_RaisesTypeErrorNamingType(self):
    with self.assertRaisesRegex(TypeError, r"Expected a tf_keras\.Model, got Dense"):
      keras_compat.require_keras2_model(tf_keras.layers.Dense(2))

  def testRequireKeras2Model_NotAModel_RaisesTypeErrorNamingType(self):
    with self.assertRaisesRegex(TypeError, r"Expected a tf_keras\.Model, got str"):
      keras_compat.require_keras2_model("model.h5")


if __name__ == "__main__":
  absltest.main()
