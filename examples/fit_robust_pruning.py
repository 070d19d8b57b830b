"""The residual model of `robust_prune_residual.py`, robustly trained and pruned through `model.fit`.

    python examples/fit_robust_pruning.py --output_dir=/tmp/fit

`prune_for_fit` wraps the model for tfmot magnitude pruning on a schedule that ends within the fit;
`RobustModel.train_step` runs the PGD objective of the CLI; Keras' callbacks work as usual (BackupAndRestore: kill
it and run it again, it resumes). The sparse model is saved to OUTPUT_DIR/pruned.keras.
"""

import os

from absl import app
from absl import flags

from robust_prune_residual import residual_model
import tfrobprune
from tfrobprune import keras
from tfrobprune.data import datasets
from tfrobprune.keras_compat import tf

def run(output_dir, train_examples=2048, test_examples=512, image_shape=(28, 28, 1), epochs=4, batch_size=64):
  """Returns (the stripped sparse model, its evaluation logs)."""
  data = datasets.make_synthetic(train_examples, test_examples, image_shape, num_classes=10, seed=0)  # your data
  train = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)).shuffle(4096, seed=0).batch(batch_size)
  test = tf.data.Dataset.from_tensor_slices((data.x_test, data.y_test)).batch(256)
  steps = epochs * int(train.cardinality())
  pruned = tfrobprune.prune_for_fit(residual_model(data.input_shape, data.num_classes),
                                    tfrobprune.Pruning(sparsity=0.9, frequency=10), steps=steps)
  robust = tfrobprune.RobustModel(pruned, tfrobprune.Objective("pgd", eps=0.1, pgd_steps=3))
  robust.compile(optimizer=keras.optimizers.Adam(1e-3))
  robust.fit(train, epochs=epochs, validation_data=test, verbose=2, callbacks=[
      keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard")),
      keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup"))])
  logs = robust.evaluate(test, return_dict=True, verbose=0)
  sparse = robust.stripped()
  sparse.save(os.path.join(output_dir, "pruned.keras"))
  return sparse, logs


def main(argv):
  del argv
  _, logs = run(flags.FLAGS.output_dir)
  print(f"clean accuracy {logs['natural_acc']:.3f}; sparse model: {flags.FLAGS.output_dir}/pruned.keras")


if __name__ == "__main__":
  flags.DEFINE_string("output_dir", None, "Where TensorBoard logs, the backup and pruned.keras go.", required=True)
  app.run(main)
