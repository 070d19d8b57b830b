"""Training: the compiled custom loop, its checkpoints, and the `tf.distribute` strategies it runs under."""
