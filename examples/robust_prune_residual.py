"""A residual model of your own, robustly pre-trained, pruned to 90% sparsity and fine-tuned, through the Python API.

    python examples/robust_prune_residual.py --output_dir=/tmp/residual

Synthetic arrays stand in for your data (images float in [0, 1], labels class indices). The run writes
OUTPUT_DIR/report.md, the models, and the exports (SavedModel, TFLite) that `export_and_serve.py` serves; running it
again with the same directory resumes it.
"""

from absl import app
from absl import flags

import tfrobprune
from tfrobprune import keras
from tfrobprune.data import datasets

def residual_model(input_shape, num_classes):
  inputs = keras.Input(input_shape)
  x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
  y = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
  y = keras.layers.Conv2D(16, 3, padding="same")(y)
  x = keras.layers.ReLU()(keras.layers.Add()([x, y]))  # the residual block
  outputs = keras.layers.Dense(num_classes)(keras.layers.Flatten()(x))
  return keras.Model(inputs, outputs, name="my_residual_net")


def run(output_dir, train_examples=2048, test_examples=512, image_shape=(28, 28, 1), epochs=2, export=True):
  """Returns (the pruned model, the report)."""
  data = datasets.make_synthetic(train_examples, test_examples, image_shape, num_classes=10, seed=0)  # your data
  model = residual_model(data.input_shape, data.num_classes)
  return tfrobprune.robust_prune(
      model, (data.x_train, data.y_train), (data.x_test, data.y_test),
      objective=tfrobprune.Objective("pgd", eps=0.1, pgd_steps=3),
      pruning=tfrobprune.Pruning(sparsity=0.9, scope="global"),
      training=tfrobprune.Training(pretrain_epochs=epochs, finetune_epochs=epochs, batch_size=64),
      evaluation=tfrobprune.Evaluation(pgd_steps=10, pgd_restarts=1),
      output_dir=output_dir, export=export)


def main(argv):
  del argv
  _, report = run(flags.FLAGS.output_dir)
  dense, pruned = report["dense"], report["pruned"]
  print(f"dense:  benign {dense['benign_acc']:.3f}, PGD {dense['pgd_acc']:.3f}")
  print(f"pruned: benign {pruned['benign_acc']:.3f}, PGD {pruned['pgd_acc']:.3f}, sparsity {pruned['sparsity']:.3f}")
  print(f"report: {flags.FLAGS.output_dir}/report.md")


if __name__ == "__main__":
  flags.DEFINE_string("output_dir", None, "Where the report, models and exports go.", required=True)
  app.run(main)
