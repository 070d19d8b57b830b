"""A learnable synthetic dataset (noisy copies of random class prototypes) for smoke tests without files."""

from typing import Sequence

import numpy as np

from tfrobprune.data import array_dataset

__all__ = ["make_synthetic"]

_SYNTHETIC_NOISE_STD = 0.2


def make_synthetic(num_train: int, num_test: int, image_shape: Sequence[int], num_classes: int,
                   seed: int) -> array_dataset.ArrayDataset:
  """Makes a learnable dataset: each class is a random prototype image plus Gaussian noise, clipped to [0, 1].

  Labels cycle through the classes (balanced) in a seeded random order; the noise (std 0.2) leaves the classes
  easily separable. The same seed gives the same arrays.

  Args:
    num_train: number of training examples, >= 1.
    num_test: number of test examples, >= 0.
    image_shape: (H, W, C) of each image.
    num_classes: number of classes, >= 2.
    seed: seeds the prototypes, labels and noise.

  Returns:
    An `ArrayDataset` named 'synthetic' with class names 'class_0', 'class_1', ...

  Raises:
    ValueError: if a size is out of range or `image_shape` is not three positive integers.
  """
  if num_train < 1 or num_test < 0:
    raise ValueError(f"make_synthetic needs num_train >= 1 and num_test >= 0, got {num_train} and {num_test}.")
  if num_classes < 2:
    raise ValueError(f"make_synthetic needs num_classes >= 2, got {num_classes}.")
  shape = tuple(int(d) for d in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape must be (height, width, channels) with positive entries, got {image_shape!r}.")
  rng = np.random.default_rng(seed)
  prototypes = rng.uniform(0.0, 1.0, size=(num_classes, *shape))
  x_train, y_train = _noisy_copies(rng, prototypes, num_train)
  x_test, y_test = _noisy_copies(rng, prototypes, num_test)
  return array_dataset.ArrayDataset(name="synthetic", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                                    class_names=tuple(f"class_{i}" for i in range(num_classes)))


def _noisy_copies(rng, prototypes, count):
  labels = rng.permutation(np.arange(count) % len(prototypes))
  noise = rng.normal(0.0, _SYNTHETIC_NOISE_STD, size=(count, *prototypes.shape[1:]))
  return np.clip(prototypes[labels] + noise, 0.0, 1.0).astype(np.float32), labels.astype(np.int64)
