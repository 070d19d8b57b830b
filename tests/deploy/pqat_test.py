"""Tests for tfrobprune.deploy.pqat: pruning-preserving quantization-aware training and its 'pqat_int8' variant."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from tfrobprune.deploy import pqat  # noqa: E402
from tfrobprune.keras_compat import keras, tf  # noqa: E402

_SHAPE = (12, 12, 1)
_CLASSES = 10


def _synthetic(count, shape=_SHAPE, seed=0):
  """Ten fixed random templates plus noise: learnable with a margin, pixels in [0, 1]."""
  templates = np.random.default_rng(123).random((_CLASSES,) + shape, np.float32)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, _CLASSES, count)
  images = 0.7 * templates[labels] + 0.3 * rng.random((count,) + shape, np.float32)
  return images.astype(np.float32), labels.astype(np.int64)


class PqatTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x_train, cls.y_train = _synthetic(8)

  def testPqat_FunctionalModel_RaisesNamingSequential(self):
    inputs = keras.Input(_SHAPE)
    functional = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with self.assertRaisesRegex(ValueError, "Sequential"):
      pqat.export_pqat(functional, self.x_train[:8], self.y_train[:8],
                       os.path.join(self.create_tempdir().full_path, "m.tflite"))


if __name__ == "__main__":
  tf.test.main()
