"""Tests for tfrobprune.prune.scores: straight-through top-k, exact budgets, frozen score model, beats magnitude."""

import dataclasses
import gc
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

from tfrobprune.keras_compat import keras, tf  # noqa: E402
from tfrobprune.models import Standardize, build_model, prunable_layers  # noqa: E402
from tfrobprune.prune import global_allocation  # noqa: E402
from tfrobprune.prune import magnitude  # noqa: E402
from tfrobprune.prune import pruning_config  # noqa: E402
from tfrobprune.prune import scores  # noqa: E402
from tfrobprune.prune import stats  # noqa: E402
from tfrobprune.prune import wrapping  # noqa: E402
from tfrobprune.robust import margins  # noqa: E402
from tfrobprune.robust import objectives  # noqa: E402
from tfrobprune.train import training  # noqa: E402

_FEATURES = 8


def _quiet(line):
  del line


def _cnn_small():
  """conv1 4x4x1x16 (256), conv2 4x4x16x32 (8192), fc1 128x100 (12800), logits 100x3 (300) on 8x8x1 images."""
  return build_model("cnn_small", (8, 8, 1), 3, seed=0)


def _images(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return rng.random((n, 8, 8, 1), np.float32), rng.integers(0, 3, n).astype(np.int64)


def _image_dataset_fn(n=32, batch=16):
  x, y = _images(n)
  return lambda epoch: tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _batch_norm_model():
  """Functional Dense(6) -> BatchNorm -> ReLU -> Dense(3) with non-trivial BatchNorm statistics."""
  inputs = keras.Input((4,))
  x = keras.layers.Dense(6, name="hidden")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.ReLU()(x)
  model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
  bn = model.get_layer("bn")
  rng = np.random.default_rng(1)
  bn.set_weights([rng.uniform(0.5, 2, 6), rng.normal(size=6), rng.normal(size=6), rng.uniform(0.5, 2, 6)])
  return model


def _magnitude_trap():
  """A linear classifier whose largest weights read noise features and whose smallest read the informative one.

  Feature 0 is 0.5 +- 0.3 by class; features 1..7 are 0.5 + U(-0.02, 0.02) noise. The kernel gives feature 0 the
  weights (-1, +1) and the noise features weights of magnitude 4 to 10.5: the dense model is accurate (noise
  contributes little), but magnitude pruning to 2 of 16 weights keeps two noise weights and drops the signal.
  """
  model = keras.Sequential([keras.Input((_FEATURES,)), Standardize([0.5], [1.0], name="standardize"),
                            keras.layers.Dense(2, name="logits")])
  kernel = np.zeros((_FEATURES, 2), np.float32)
  kernel[0] = [-1, 1]
  signs = np.random.default_rng(1).choice([-1.0, 1.0], (_FEATURES - 1, 2))
  kernel[1:] = signs * np.linspace(4, 10, _FEATURES - 1)[:, None] * [1.0, 1.05]
  model.get_layer("logits").set_weights([kernel, np.zeros(2, np.float32)])
  return model


def _trap_data(n, seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  x = 0.5 + 0.02 * rng.uniform(-1, 1, (n, _FEATURES))
  x[:, 0] = 0.5 + (2 * y - 1) * 0.3 + 0.05 * rng.uniform(-1, 1, n)
  return x.astype(np.float32), y.astype(np.int64)


def _accuracy(model, x, y):
  return float(np.mean(np.argmax(model(x).numpy(), axis=1) == y))


def _masked_copy(model, masks):
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights())
  for name, mask in masks.items():
    layer = copy.get_layer(name)
    layer.set_weights([layer.get_weights()[0] * mask] + layer.get_weights()[1:])
  return copy


def _objective(name, eps=0.02, steps=2):
  return objectives.make_objective(objectives.ObjectiveConfig(name=name, eps=0.0 if name == "natural" else eps,
                                                              pgd_steps=steps), 3)


def _sparsities(masks):
  return {name: float(np.mean(mask == 0)) for name, mask in masks.items()}


class ScoreConfigTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      ("epochs must be an integer >= 0, got -1", {"epochs": -1}),
      ("batch_size must be an integer >= 1, got 0", {"batch_size": 0}),
      ("learning_rate must be a finite number > 0, got 0", {"learning_rate": 0}),
      ("scope must be one of layer, global; got 'all'", {"scope": "all"}),
      ("optimizer must be one of adam, sgd; got 'rmsprop'", {"optimizer": "rmsprop"}),
      ("budgets must be one of learned, magnitude; got 'equal'", {"budgets": "equal"}),
      ("schedule must be one of oneshot, gradual; got 'iterative'", {"schedule": "iterative"}),
      ("update_steps must be an integer >= 1, got 0", {"update_steps": 0}),
      (r"got the string 'conv1'; did you mean \('conv1',\)", {"exclude_layers": "conv1"}),
  )
  def testRejectsBadValuesNamingThem(self, message, kwargs):
    with self.assertRaisesRegex(ValueError, message):
      scores.ScoreConfig(**kwargs)

  def testRoundTripsThroughDict(self):
    config = scores.ScoreConfig(epochs=3, scope="global", exclude_layers=["conv1"])
    self.assertEqual(config.to_dict()["exclude_layers"], ["conv1"])
    self.assertEqual(scores.ScoreConfig.from_dict(config.to_dict()), config)
    with self.assertRaisesRegex(ValueError, r"Unknown ScoreConfig fields \['epoch'\]"):
      scores.ScoreConfig.from_dict({"epoch": 1})


class TopKTest(tf.test.TestCase):

  def testStraightThroughTopKForwardAndBackwardByHand(self):
    # kernel (1, 2, 3), scores (0.5, -3, 1), keep 2 -> mask (0, 1, 1); x = (1, 1, 1) -> output 0*1 + 2 + 3 = 5.
    # dL/dmask = x * kernel = (1, 2, 3); straight through |s|: dL/ds = (1, 2, 3) * sign(s) = (1, -2, 3).
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False, name="d")])
    model.get_layer("d").set_weights([np.array([[1.0], [2.0], [3.0]], np.float32)])
    score_model = scores.ScoreModel(model, ["d"], {"d": 2})
    layer = score_model.layers["d"]
    layer.scores.assign([[0.5], [-3.0], [1.0]])
    score_model.refresh_masks()
    self.assertAllEqual(layer.mask, [[0.0], [1.0], [1.0]])
    with tf.GradientTape() as tape:
      output = score_model.model(tf.ones((1, 3)), training=True)
    self.assertAllEqual(output, [[5.0]])
    self.assertAllEqual(tape.gradient(output, layer.scores), [[1.0], [-2.0], [3.0]])
    self.assertAllEqual(score_model.model(tf.ones((1, 3)), training=False), [[5.0]])

  def testLayerTopKKeepsExactCountsAndBreaksTiesByIndex(self):
    masks = scores.top_k_masks([tf.constant([[1.0, -2.0], [2.0, 0.5]]), tf.constant([3.0, 3.0, 3.0])], [2, 1])
    self.assertAllEqual(masks[0], [[0, 1], [1, 0]])
    self.assertAllEqual(masks[1], [1, 0, 0])

  def testGlobalTopKRanksAllLayersTogetherButKeepsOnePerLayer(self):
    values = [tf.constant([5.0, -4.0, 3.0]), tf.constant([[0.1, 0.2]]), tf.constant([2.5, -6.0])]
    masks = scores.top_k_masks(values, 4, scope="global")
    # The best of each layer (5, 0.2, -6) first, then the largest remaining |score|: -4.
    self.assertAllEqual(masks[0], [1, 1, 0])
    self.assertAllEqual(masks[1], [[0, 1]])
    self.assertAllEqual(masks[2], [0, 1])


class ScoreModelTest(tf.test.TestCase):

  def testWithSparsityZeroComputesExactlyLikeTheDenseModel(self):
    for model, x in ((_cnn_small(), _images()[0]), (_batch_norm_model(), np.random.default_rng(0).random((8, 4)))):
      names = [layer.name for layer in prunable_layers(model)]
      keep = {layer.name: int(np.prod(layer.kernel.shape)) for layer in prunable_layers(model)}
      score_model = scores.ScoreModel(model, names, keep)
      expected = model(x, training=False)
      self.assertAllEqual(score_model.model(x, training=False), expected)
      # BatchNorm is frozen, so training mode computes the same.
      self.assertAllEqual(score_model.model(x, training=True), expected)

  def testTrainsOnlyScoresAndLeavesWeightsAndBatchNormStatisticsUnchanged(self):
    model = _batch_norm_model()
    keep = {"hidden": 12, "out": 9}
    score_model = scores.ScoreModel(model, ["hidden", "out"], keep)
    self.assertEqual([v.name for v in score_model.model.trainable_variables],
                     ["scored_hidden/scores:0", "scored_out/scores:0"])
    frozen = [w.numpy().copy() for w in score_model.model.non_trainable_weights if "mask" not in w.name]
    initial_scores = [s.numpy().copy() for s in score_model.model.trainable_variables]
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 4), np.float32), rng.integers(0, 3, 16)
    trainer = training.Trainer(score_model.model, _objective("natural"), keras.optimizers.SGD(1.0))
    trainer.train_step(tf.constant(x), tf.constant(y))
    after = [w.numpy() for w in score_model.model.non_trainable_weights if "mask" not in w.name]
    self.assertLen(after, len(frozen))
    for old, new in zip(frozen, after):
      self.assertAllEqual(old, new)
    self.assertNotAllClose(score_model.model.trainable_variables[0], initial_scores[0])

  def testIntervalBoundsSeeTheMaskedKernel(self):
    model = _cnn_small()
    keep = {"conv1": 64, "conv2": 2048, "fc1": 3200, "logits": 75}
    score_model = scores.ScoreModel(model, list(keep), keep)
    x, y = _images(4)
    masked = _masked_copy(model, score_model.masks())
    self.assertAllClose(margins.margin_bounds(score_model.model, x, y, 0.05, 3),
                        margins.margin_bounds(masked, x, y, 0.05, 3), atol=1e-5)

  def testLearnMasksLeavesTheModelUnchanged(self):
    model = _batch_norm_model()
    before = [w.copy() for w in model.get_weights()]
    x, y = np.random.default_rng(0).random((32, 4), np.float32), np.arange(32) % 3
    masks = scores.learn_masks(model, _objective("natural"), lambda e: tf.data.Dataset.from_tensor_slices((x, y))
                               .batch(16), 0.5, scores.ScoreConfig(epochs=1), log=_quiet)
    self.assertEqual(_sparsities(masks), {"hidden": 0.5, "out": 0.5})
    for old, new in zip(before, model.get_weights()):
      self.assertAllEqual(old, new)


class LearnMasksTest(tf.test.TestCase, parameterized.TestCase):

  def testLayerScopeReachesEachTargetExactlyAndStartsAtMagnitudePruning(self):
    model = _cnn_small()
    masks = scores.learn_masks(model, _objective("natural"), _image_dataset_fn(), 0.75,
                               scores.ScoreConfig(epochs=0, exclude_layers=("logits",)),
                               layer_targets={"fc1": 0.9}, log=_quiet)
    self.assertEqual(list(masks), ["conv1", "conv2", "fc1"])
    self.assertEqual(_sparsities(masks), {"conv1": 0.75, "conv2": 0.75, "fc1": 0.9})
    kernel = model.get_layer("conv2").kernel.numpy()
    threshold = np.sort(np.abs(kernel).ravel())[int(0.75 * kernel.size)]
    self.assertAllEqual(masks["conv2"], (np.abs(kernel) >= threshold).astype(np.float32))

  def testGlobalScopeReachesOverallSparsityAndStartsAtGlobalMagnitudePruning(self):
    model = _cnn_small()
    masks = scores.learn_masks(model, _objective("natural"), _image_dataset_fn(), 0.7,
                               scores.ScoreConfig(epochs=0, scope="global"), log=_quiet)
    total = sum(mask.size for mask in masks.values())
    self.assertEqual(sum(int(np.sum(mask == 0)) for mask in masks.values()), round(0.7 * total))
    for name, target in global_allocation.global_magnitude_targets(model, 0.7).items():
      self.assertAllClose(_sparsities(masks)[name], target, atol=1e-12)

  def testMagnitudeBudgets_KeepGlobalMagnitudeCountsPerLayerAndLayerwiseTopK(self):
    model = _cnn_small()
    masks = scores.learn_masks(model, _objective("natural"), _image_dataset_fn(), 0.8,
                               scores.ScoreConfig(epochs=0, scope="global", budgets="magnitude"), log=_quiet)
    targets = global_allocation.global_magnitude_targets(model, 0.8)
    for name, mask in masks.items():
      kernel = np.abs(model.get_layer(name).kernel.numpy())
      self.assertEqual(int(np.sum(mask == 0)), min(round(targets[name] * kernel.size), kernel.size - 1), name)
      # The scaled initialisation keeps each layer's largest weights: the kept ones are never smaller.
      if 0 < mask.sum() < mask.size:
        self.assertGreaterEqual(kernel[mask == 1].min(), kernel[mask == 0].max(), name)

  def testMagnitudeBudgets_LearnWhichWeightsButNotHowManyPerLayer(self):
    model = _cnn_small()
    config = scores.ScoreConfig(epochs=1, learning_rate=1.0, scope="global", budgets="magnitude")
    start = scores.learn_masks(model, _objective("pgd"), _image_dataset_fn(), 0.5,
                               dataclasses.replace(config, epochs=0), log=_quiet)
    learned = scores.learn_masks(model, _objective("pgd"), _image_dataset_fn(), 0.5, config, log=_quiet)
    self.assertEqual({name: int(mask.sum()) for name, mask in learned.items()},
                     {name: int(mask.sum()) for name, mask in start.items()})
    self.assertTrue(any(np.any(learned[name] != start[name]) for name in start))

  def testMagnitudeBudgetsWithLayerTargets_RaiseValueError(self):
    with self.assertRaisesRegex(ValueError, "layer_targets conflict with budgets 'magnitude'"):
      scores.learn_masks(_cnn_small(), _objective("natural"), _image_dataset_fn(), 0.8,
                         scores.ScoreConfig(epochs=0, scope="global", budgets="magnitude"),
                         layer_targets={"fc1": 0.5}, log=_quiet)

  def testGlobalScopeKeepsAtLeastOneWeightPerLayer(self):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="small"),
                              keras.layers.Dense(500, name="large")])
    model.get_layer("small").set_weights([np.full((2, 2), 1e-3, np.float32), np.zeros(2, np.float32)])
    masks = scores.learn_masks(model, _objective("natural"), _image_dataset_fn(), 0.995,
                               scores.ScoreConfig(epochs=0, scope="global"), log=_quiet)
    self.assertEqual({name: int(mask.sum()) for name, mask in masks.items()}, {"small": 1, "large": 4})

  def testSparsityZeroGivesAllOnesMasks(self):
    masks = scores.learn_masks(_cnn_small(), _objective("natural"), _image_dataset_fn(), 0.0, scores.ScoreConfig(),
                               log=_quiet)
    self.assertEqual(list(masks), ["conv1", "conv2", "fc1", "logits"])
    for mask in masks.values():
      self.assertAllEqual(mask, np.ones_like(mask))

  @parameterized.named_parameters(("natural", "natural"), ("pgd", "pgd"), ("ibp", "ibp"))
  def testLearnsToKeepSmallInformativeWeightsThatMagnitudePruningDrops(self, objective_name):
    model = _magnitude_trap()
    x_train, y_train = _trap_data(256, seed=0)
    x_test, y_test = _trap_data(1000, seed=1)
    dataset_fn = lambda epoch: (tf.data.Dataset.from_tensor_slices((x_train, y_train))  # noqa: E731
                                .shuffle(256, seed=epoch).batch(32))
    objective = objectives.make_objective(objectives.ObjectiveConfig(
        name=objective_name, eps=0.0 if objective_name == "natural" else 0.02, pgd_steps=2), 2)
    learned = scores.learn_masks(model, objective, dataset_fn, 0.875, scores.ScoreConfig(epochs=3), log=_quiet)
    magnitude_masks = scores.learn_masks(model, objective, dataset_fn, 0.875, scores.ScoreConfig(epochs=0), log=_quiet)
    self.assertEqual(int(learned["logits"].sum()), 2)
    self.assertAllEqual(magnitude_masks["logits"][0], [0, 0])
    self.assertAllEqual(learned["logits"][0], [1, 1])
    self.assertGreater(_accuracy(model, x_test, y_test), 0.9)
    learned_accuracy = _accuracy(_masked_copy(model, learned), x_test, y_test)
    self.assertGreater(learned_accuracy, 0.95)
    self.assertGreater(learned_accuracy, _accuracy(_masked_copy(model, magnitude_masks), x_test, y_test) + 0.3)

  def testPgdMasksAreDeterministicAndAcceptedByFixedMaskPrune(self):
    model = _cnn_small()
    config = scores.ScoreConfig(epochs=1, learning_rate=1.0)
    runs = [scores.learn_masks(model, _objective("pgd"), _image_dataset_fn(), 0.5, config, seed=3, log=_quiet)
            for _ in range(2)]
    for name in runs[0]:
      self.assertAllEqual(runs[0][name], runs[1][name])
    magnitude_masks = scores.learn_masks(model, _objective("pgd"), _image_dataset_fn(), 0.5,
                                         scores.ScoreConfig(epochs=0), log=_quiet)
    self.assertFalse(all(np.array_equal(runs[0][name], magnitude_masks[name]) for name in magnitude_masks))
    pruned = wrapping.fixed_mask_prune(model, runs[0])
    self.assertEqual(stats.layer_sparsity(pruned), {"conv1": 0.5, "conv2": 0.5, "fc1": 0.5, "logits": 0.5})
    x, _ = _images(4)
    self.assertAllClose(pruned(x), _masked_copy(model, runs[0])(x), atol=1e-5)

  def testLeavesGlobalRandomStateAloneAndSeedsItsRandomLayers(self):

    def draws_after_seeding(between=lambda: None):
      random.seed(11)
      np.random.seed(11)
      tf.random.set_seed(11)
      between()
      return [random.random(), float(np.random.rand()), tf.random.uniform([2]).numpy().tolist()]

    # Unseeded kernel initialisers and a Dropout layer: cloning or running them could draw from global state.
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(16, name="fc"),
                              keras.layers.Dropout(0.5, name="dropout"), keras.layers.Dense(3, name="logits")])
    config = scores.ScoreConfig(epochs=1, learning_rate=1.0)
    untouched, runs = draws_after_seeding(), []
    for seed in (5, 5, 6):
      learn = lambda seed=seed: runs.append(scores.learn_masks(  # noqa: E731
          model, _objective("natural"), _image_dataset_fn(), 0.5, config, seed=seed, log=_quiet))
      self.assertEqual(draws_after_seeding(learn), untouched)
    self.assertAllEqual(runs[0]["fc"], runs[1]["fc"])
    self.assertFalse(np.array_equal(runs[0]["fc"], runs[2]["fc"]))  # the seed reaches the Dropout layer

  def testOneObjectiveServingManyMaskUpdatesKeepsNoScoreModelAlive(self):
    # Gradual scores: one objective, a new score model at every mask update (learned with PGD, whose attack
    # function the objective caches per model).
    model, objective = _cnn_small(), _objective("pgd")
    config = scores.ScoreConfig(epochs=1, update_steps=2)
    for update in range(3):
      scores.learn_masks(model, objective, _image_dataset_fn(), 0.25 * (update + 1), config, log=_quiet)
      gc.collect()
      alive = [layer for layer in gc.get_objects() if isinstance(layer, scores.ScoredLayer)]
      self.assertEmpty(alive, f"score layers alive after update {update + 1}")

  @parameterized.named_parameters(
      ("sparsity_one", {"sparsity": 1.0}, r"sparsity must be a number in \[0, 1\), got 1.0"),
      ("negative_sparsity", {"sparsity": -0.1}, r"sparsity must be a number in \[0, 1\), got -0.1"),
      ("unknown_exclusion", {"config": scores.ScoreConfig(exclude_layers=("conv9",))},
       r"exclude_layers names layers \['conv9'\]"),
      ("everything_excluded", {"config": scores.ScoreConfig(exclude_layers=("conv1", "conv2", "fc1", "logits"))},
       "no Dense/Conv2D layer to prune after exclude_layers"),
      ("global_with_targets", {"config": scores.ScoreConfig(scope="global"), "layer_targets": {"fc1": 0.5}},
       "layer_targets apply to scope 'layer'"),
      ("unknown_target", {"layer_targets": {"flatten": 0.5}}, r"layer_targets names layers \['flatten'\]"),
      ("bad_target", {"layer_targets": {"fc1": 1.5}}, r"layer_targets\['fc1'\] must be a number in \[0, 1\)"),
  )
  def testRejectsBadArgumentsNamingThem(self, kwargs, message):
    arguments = dict({"sparsity": 0.5, "config": scores.ScoreConfig()}, **kwargs)
    sparsity, config = arguments.pop("sparsity"), arguments.pop("config")
    with self.assertRaisesRegex(ValueError, message):
      scores.learn_masks(_cnn_small(), _objective("natural"), _image_dataset_fn(), sparsity, config, log=_quiet,
                         **arguments)

  def testRejectsModelsWithoutPrunableLayersOrWithPruningWrappers(self):
    no_kernels = keras.Sequential([keras.Input((4,)), keras.layers.ReLU(name="relu")], name="plain")
    with self.assertRaisesRegex(ValueError, "Model 'plain' has no Dense/Conv2D layer to prune."):
      scores.learn_masks(no_kernels, _objective("natural"), _image_dataset_fn(), 0.5, scores.ScoreConfig(),
                         log=_quiet)
    wrapped = magnitude.prune_model(_cnn_small(), pruning_config.PruningConfig(0.5, schedule="constant"))
    with self.assertRaisesRegex(ValueError, "strip pruning wrappers first"):
      scores.learn_masks(wrapped, _objective("natural"), _image_dataset_fn(), 0.5, scores.ScoreConfig(), log=_quiet)


if __name__ == "__main__":
  tf.test.main()
