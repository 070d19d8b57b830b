"""Datasets: files in each supported format -> float32 images in [0, 1] and int64 labels -> `tf.data`."""
