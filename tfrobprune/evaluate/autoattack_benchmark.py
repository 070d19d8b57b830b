"""The AutoAttack figure of `bin/bench`: seconds for the standard ensemble on 1,000 test examples of a robust model.

AutoAttack's cost depends on the model far more than a training step's does: every attack runs only on the
examples all earlier ones failed on, so an untrained model (everything falls to the first attack) costs a fraction
of a robust one. The figure is therefore measured on a PGD-trained model like the reference's: a saved model
(`model_path`, e.g. a reference run's models/dense.keras), or one trained here for a few PGD epochs on Fashion-MNIST
(the reference's data; synthetic data of the same shape for tests). Compilation is included, as a run pays it.
"""

import dataclasses
import time

import numpy as np

from tfrobprune.data import datasets
from tfrobprune.data import subsets
from tfrobprune.evaluate import autoattack
from tfrobprune.keras_compat import keras, tf
from tfrobprune import models
from tfrobprune.robust import objectives
from tfrobprune.train import training


@dataclasses.dataclass(frozen=True)
class AutoAttackBenchConfig:
  """What the AutoAttack figure runs on.

  Attributes:
    examples: test examples attacked (class-stratified, seed 0); the figure is scaled to 1,000.
    model: architecture trained when `model_path` is empty.
    model_path: a saved Keras model (.keras) to attack instead of training one.
    dataset: 'fashion_mnist' or 'synthetic' (of `input_shape`, `num_classes`).
    train_epochs: PGD training epochs of the model trained here.
    eps: the threat model's L-inf radius (training and attack).
    pgd_steps: PGD steps of the training attack.
    batch_size: training batch size; AutoAttack uses `attack_batch_size`.
    attack_batch_size: AutoAttack's batch size (the evaluation default).
    budget: the attacks' budgets (AutoAttack's standard ones by default).
    input_shape, num_classes: of the synthetic data.
  """
  examples: int = 1000
  model: str = "cnn_small"
  model_path: str = ""
  dataset: str = "fashion_mnist"
  train_epochs: int = 2
  eps: float = 0.1
  pgd_steps: int = 10
  batch_size: int = 128
  attack_batch_size: int = 500
  budget: autoattack.Budget = autoattack.Budget()
  input_shape: tuple = (28, 28, 1)
  num_classes: int = 10


def _data(config):
  if config.dataset == "synthetic":
    return datasets.make_synthetic(2048, max(config.examples, 64), config.input_shape, config.num_classes, seed=0)
  return datasets.load_dataset(config.dataset)


def _pgd_trained(config, data):
  """`config.model` PGD-trained on `data` for `config.train_epochs` epochs (step 2.5 eps / steps)."""
  model = models.build_model(config.model, data.input_shape, data.num_classes, data.mean, data.std, seed=0)
  objective = objectives.ObjectiveConfig(name="pgd", eps=config.eps, pgd_steps=config.pgd_steps)
  steps = len(data.x_train) // config.batch_size
  trainer = training.Trainer(model, objectives.make_objective(objective, data.num_classes),
                             training.make_optimizer(training.TrainConfig(epochs=config.train_epochs), steps))
  batches = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)).shuffle(len(data.x_train), seed=0)
  training.train(trainer, lambda epoch: batches.batch(config.batch_size, drop_remainder=True), config.train_epochs,
                 progress=False)
  return model


def measure(config=AutoAttackBenchConfig(), log=print):
  """Runs standard AutoAttack on `config.examples` test examples; returns the figures.

  Returns:
    {'autoattack_s_per_1k', 'autoattack_examples', 'autoattack_clean_acc', 'autoattack_acc',
     'autoattack_stages': [{'attack', 'examples', 'robust_acc', 'seconds', 's_per_1k'}], 'autoattack_model'}.
  """
  data = _data(config)
  if config.model_path:
    model = keras.models.load_model(config.model_path, custom_objects={"Standardize": models.Standardize},
                                    safe_mode=True, compile=False)
  else:
    started = time.perf_counter()
    model = _pgd_trained(config, data)
    log(f"autoattack: trained {config.model} with PGD-{config.pgd_steps} for {config.train_epochs} epochs "
        f"({time.perf_counter() - started:.0f} s)")
  index = subsets.stratified_subset(data.y_test, config.examples, 0)
  result = autoattack.run_autoattack(model, data.x_test[index], np.asarray(data.y_test)[index], config.eps,
                                     data.num_classes, budget=config.budget, batch_size=config.attack_batch_size)
  breakdown, scale = result.breakdown(), 1000.0 / max(len(index), 1)
  stages = [dict(row, s_per_1k=round(row["seconds"] * scale, 1)) for row in breakdown["stages"]]
  for row in stages:
    log(f"autoattack {row['attack']}: {row['examples']} examples, robust {row['robust_acc']:.4f}, "
        f"{row['seconds']:.1f} s")
  return {"autoattack_s_per_1k": round(breakdown["seconds"] * scale, 1), "autoattack_examples": len(index),
          "autoattack_clean_acc": breakdown["clean_acc"], "autoattack_acc": breakdown["robust_acc"],
          "autoattack_stages": stages, "autoattack_model": config.model_path or f"{config.model}, PGD-trained here"}
