"""Tests for tfrobprune.deploy.pqat: pruning-preserving quantization-aware training and its 'pqat_int8' variant."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import pqat  # noqa: E402
from tfrobprune.keras_compat import keras, tf  # noqa: E402


class PqatTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x_train, cls.y_train = deploy_test_utils.synthetic(8)

  def testPqat_FunctionalModel_RaisesNamingSequential(self):
    inputs = keras.Input(deploy_test_utils.SHAPE)
    functional = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with self.assertRaisesRegex(ValueError, "Sequential"):
      pqat.export_pqat(functional, self.x_train[:8], self.y_train[:8],
                       os.path.join(self.create_tempdir().full_path, "m.tflite"))


if __name__ == "__main__":
  tf.test.main()
