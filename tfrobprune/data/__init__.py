"""Datasets: files in each supported format -> float32 images in [0, 1] and int64 labels -> `tf.data`.

Callers import `datasets` (dispatch by name, validation split, `tf.data` pipeline); it re-exports what the
one-format modules define: `idx`, `cifar10` (with `safe_unpickle`), `image_folder`, `synthetic`, and the shared
`array_dataset`, `errors` and `file_bytes`.
"""
