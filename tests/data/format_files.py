"""Test helper: writes small, valid dataset files of every format (IDX, CIFAR-10 binary and python, images, TFRecord).

The loaders' tests build their inputs with these at run time in a temp dir, then damage them to test the errors.
"""

import gzip
import io
import os
import pickle
import struct

import numpy as np
from PIL import Image

from tfrobprune.data import cifar10

_IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write(path, content):
  """Writes the bytes `content` to `path`; returns `path`."""
  with open(path, "wb") as f:
    f.write(content)
  return path


def idx_bytes(array):
  """The IDX encoding of `array`: magic (0, 0, type code, ndim), big-endian uint32 dims, big-endian data."""
  header = bytes([0, 0, _IDX_TYPE_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array):
  """Writes `array` as an IDX file, gzipped when `path` ends in '.gz'."""
  content = idx_bytes(np.asarray(array))
  return write(path, gzip.compress(content) if path.endswith(".gz") else content)


def write_mnist(folder, *, gz=False, num_train=12, num_test=5, names=None, rng_seed=0):
  """Writes the four MNIST IDX files; returns {(split, kind): array}."""
  rng = np.random.default_rng(rng_seed)
  names = names or {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
                    ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}
  arrays = {}
  for split, count in (("train", num_train), ("test", num_test)):
    arrays[split, "images"] = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    arrays[split, "labels"] = (np.arange(count) % 10).astype(np.uint8)
  for key, array in arrays.items():
    write_idx(os.path.join(folder, names[key] + (".gz" if gz else "")), array)
  return arrays


def _cifar_arrays(count, rng):
  return rng.integers(0, 256, size=(count, 3072), dtype=np.uint8), (np.arange(count) % 10).astype(np.uint8)


def write_cifar_binary(folder, *, per_batch=3, rng_seed=0):
  """Writes the binary CIFAR-10 layout; returns {batch name: (rows, labels)}."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(rng_seed)
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    rows, labels = batches[name] = _cifar_arrays(per_batch, rng)
    write(os.path.join(folder, name + ".bin"), np.concatenate([labels[:, None], rows], axis=1).tobytes())
  write(os.path.join(folder, "batches.meta.txt"), "\n".join(cifar10._CIFAR10_CLASSES).encode() + b"\n\n")
  return batches


def _py2_style_pickle(batch):
  """A pickle shaped like the original Python 2 CIFAR-10 files: protocol 2, numpy.core names, byte strings."""
  def string(b):  # BINSTRING: a Python 2 str, read back as bytes with encoding='bytes'
    return b"T" + struct.pack("<I", len(b)) + b
  rows, labels = batch[b"data"], batch[b"labels"]
  array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b") + b"\x87R(K\x01"
           + b"J" + struct.pack("<i", rows.shape[0]) + b"J" + struct.pack("<i", rows.shape[1]) + b"\x86cnumpy\ndtype\n"
           + string(b"u1") + b"K\x00K\x01\x87R(K\x03" + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
           + b"\x89" + string(rows.tobytes()) + b"tb")
  label_list = b"](" + b"".join(b"K" + bytes([int(label)]) for label in labels) + b"e"
  return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def write_cifar_python(folder, *, protocol=4, per_batch=3, rng_seed=0):
  """Writes the python CIFAR-10 layout (pickled dicts of byte-string keys); returns {batch name: (rows, labels)}.

  `protocol` is a pickle protocol number, or 'py2' for one shaped like the original Python 2 files.
  """
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(rng_seed)
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    rows, labels = batches[name] = _cifar_arrays(per_batch, rng)
    batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": rows,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
    content = _py2_style_pickle(batch) if protocol == "py2" else pickle.dumps(batch, protocol=protocol)
    write(os.path.join(folder, name), content)
  meta = {b"label_names": [n.encode() for n in cifar10._CIFAR10_CLASSES], b"num_vis": 3072}
  write(os.path.join(folder, "batches.meta"), pickle.dumps(meta, protocol=4))
  return batches


def write_image(path, array):
  """Saves a uint8 [H, W] or [H, W, 3] array as an image (format from the name), making its folder; returns `path`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def encoded_image(array, image_format="PNG"):
  """The bytes of a uint8 [H, W] or [H, W, 3] array saved as `image_format` (PNG, JPEG, ...)."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=image_format)
  return buffer.getvalue()


def write_tfrecord(path, examples):
  """Writes (encoded image, label) pairs as a TFRecord file of tf.train.Examples, making its folder; returns `path`."""
  from tfrobprune.data import tfrecord  # pylint: disable=g-import-not-at-top  (TensorFlow only where needed)
  from tfrobprune.keras_compat import tf  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for encoded, label in examples:
      writer.write(tfrecord.example_bytes(encoded, label))
  return path
