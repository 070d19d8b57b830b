"""The caller's data for `robust_prune`: numpy arrays or a `tf.data.Dataset` -> the pipeline's `ArrayDataset`.

Accepted per split: a pair `(images, labels)` of arrays (or tensors), or a `tf.data.Dataset` of `(image, label)`
elements or batches of them, finite. Images are float in [0, 1] (uint8 is scaled by 1/255), NHWC or NHW (a channel
axis is added); labels are class indices, or one-hot rows. The data is read into memory once, checked like every
loader's data (`ArrayDataset`: range, counts, labels within the model's classes), and then fed by the pipeline as
any dataset is (shuffled per epoch from the run's seed, so a resumed run sees the same batches).
"""

import numpy as np

from tfrobprune import config as config_lib
from tfrobprune.data import array_dataset
from tfrobprune.keras_compat import tf

__all__ = ["to_arrays", "array_dataset_of"]


def _batched(image_spec, label_spec):
  """Whether a dataset's elements are batches: NHWC images, or NHW greyscale ones with a label per row. An
  unbatched HWC image has a channel axis of 1, 3 or 4 and a known height; a batch's first axis is unknown unless
  batched with drop_remainder."""
  shape = image_spec.shape
  if shape.rank == 4:
    return True
  return (shape.rank == 3 and label_spec.shape.rank in (1, 2) and
          (shape[0] is None or shape[-1] not in (1, 3, 4)))


def _dataset_arrays(dataset, split):
  spec = dataset.element_spec
  if not isinstance(spec, tuple) or len(spec) != 2:
    raise ValueError(f"{split}_data: a tf.data.Dataset of (image, label) elements or batches is needed; its "
                     f"elements are {spec}.")
  if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
    raise ValueError(f"{split}_data: the tf.data.Dataset is infinite (repeat()); pass one pass over the data.")
  if _batched(*spec):
    dataset = dataset.unbatch()
  images, labels = [], []
  try:
    for x, y in dataset.batch(1024).as_numpy_iterator():
      images.append(x)
      labels.append(y)
  except tf.errors.InvalidArgumentError as error:
    raise ValueError(f"{split}_data: the tf.data.Dataset's images (or labels) differ in shape; resize them to one "
                     f"size first ({error.message.splitlines()[0]}).") from error
  if not images:
    raise ValueError(f"{split}_data: the tf.data.Dataset is empty.")
  return np.concatenate(images), np.concatenate(labels)


def _images(x, split):
  x = np.asarray(x)
  if x.dtype == np.uint8:
    x = array_dataset.to_unit_float(x)
  elif np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32, copy=False)
  else:
    raise ValueError(f"{split}_data: images must be float in [0, 1] or uint8, got dtype {x.dtype}.")
  return x[..., None] if x.ndim == 3 else x


def _labels(y, split):
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  elif y.ndim == 2:  # one-hot rows
    y = np.argmax(y, axis=1)
  if not np.issubdtype(y.dtype, np.number):
    raise ValueError(f"{split}_data: labels must be class indices (numbers), got {y.dtype} labels; map class names "
                     "to 0 .. classes - 1 first.")
  if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
    raise ValueError(f"{split}_data: labels must be class indices [N] (or one-hot [N, classes]), got {y.dtype} "
                     f"{y.shape}.")
  return y.astype(np.int64)


def to_arrays(data, split):
  """(float32 images [N, H, W, C], int64 labels [N]) of one split.

  Args:
    data: `(images, labels)` arrays, or a finite `tf.data.Dataset` of `(image, label)` elements or batches.
    split: 'train' or 'test', for error messages.

  Raises:
    ValueError: naming `split` and what is wrong.
  """
  if isinstance(data, tf.data.Dataset):
    x, y = _dataset_arrays(data, split)
  elif isinstance(data, (tuple, list)) and len(data) == 2:
    x, y = data
  else:
    raise ValueError(f"{split}_data must be (images, labels) arrays or a tf.data.Dataset of (image, label), got "
                     f"{type(data).__name__}.")
  return _images(x, split), _labels(y, split)


def array_dataset_of(train_data, test_data, num_classes):
  """The pipeline's `ArrayDataset` (named `config.API_DATASET`) of the caller's two splits.

  Raises:
    ValueError: a split is not in an accepted form.
    DataError: the images or labels fail the loaders' checks (pixel range, counts, labels outside the classes).
  """
  x_train, y_train = to_arrays(train_data, "train")
  x_test, y_test = to_arrays(test_data, "test")
  return array_dataset.ArrayDataset(config_lib.API_DATASET, x_train, y_train, x_test, y_test,
                                    tuple(str(label) for label in range(num_classes)))
