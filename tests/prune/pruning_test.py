"""Tests for tfrobprune.prune.pruning: tfmot wrapping, schedules, global magnitude, m:n, step driving, statistics."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl.testing import parameterized  # noqa: E402
import numpy as np  # noqa: E402

from tfrobprune.keras_compat import keras, tf  # noqa: E402
from tfrobprune.models import build_model  # noqa: E402
from tfrobprune.prune import pruning  # noqa: E402

_IMAGE_SHAPE = (12, 12, 1)


def _cnn_small():
  return build_model("cnn_small", _IMAGE_SHAPE, 10, seed=0)


def _dense_model(units, input_dim, use_bias=True, batch_norm=False):
  """Input(input_dim) -> Dense(units[0], name='d0') -> Dense(units[1], name='d1') ... (-> BatchNorm)."""
  inputs = keras.Input((input_dim,))
  x = inputs
  for index, width in enumerate(units):
    x = keras.layers.Dense(width, use_bias=use_bias, name=f"d{index}")(x)
  if batch_norm:
    x = keras.layers.BatchNormalization(name="bn")(x)
  return keras.Model(inputs, x)


def _wrappers(model):
  return {layer.layer.name: layer for layer in model.layers if hasattr(layer, "pruning_vars")}


def _pruning_steps(model):
  return {name: int(wrapper.pruning_step.numpy()) for name, wrapper in _wrappers(model).items()}


def _masks(model):
  return {name: wrapper.pruning_vars[0][1].numpy() for name, wrapper in _wrappers(model).items()}


class _Loop:
  """A custom training loop like tfrobprune's: compiled step, driver calls in Python, attack-like inference passes."""

  def __init__(self, model, inference_calls=0, training_calls=1, log_dir=None, driver=None):
    self.model = model
    self.driver = driver or pruning.PruningStepDriver(model, log_dir)
    self.inference_calls = inference_calls
    self.step_log = []  # pruning_step of each wrapper right after each optimizer step
    shape = model.input_shape[1:]
    rng = np.random.default_rng(0)
    self.x = tf.constant(rng.random((16,) + shape, np.float32))
    self.y = tf.constant(rng.integers(0, model.output_shape[-1], 16))
    optimizer = keras.optimizers.Adam(1e-2)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
      with tf.GradientTape() as tape:
        loss = tf.add_n([loss_fn(y, model(x, training=True)) for _ in range(training_calls)])
      grads = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))

    self.train_step = train_step
    self.driver.on_train_begin()

  def run(self, steps):
    for step_in_epoch in range(steps):
      self.driver.on_step_begin(step_in_epoch)
      for _ in range(self.inference_calls):
        self.model(self.x, training=False)
      self.train_step(self.x, self.y)
      self.step_log.append(_pruning_steps(self.model))
    return self

  def end_epoch(self):
    self.driver.on_epoch_end(0)
    return self


class PruningConfigTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("TargetOne", dict(target_sparsity=1.0), "1.0"),
      ("TargetNegative", dict(target_sparsity=-0.1), "-0.1"),
      ("TargetString", dict(target_sparsity="0.5"), "'0.5'"),
      ("UnknownSchedule", dict(target_sparsity=0.5, schedule="cubic"), "'cubic'"),
      ("UnknownScope", dict(target_sparsity=0.5, scope="network"), "'network'"),
      ("InitialAboveTarget", dict(target_sparsity=0.5, initial_sparsity=0.6), "0.6"),
      ("NegativeBegin", dict(target_sparsity=0.5, begin_step=-1), "-1"),
      ("EndNotAfterBegin", dict(target_sparsity=0.5, begin_step=200, end_step=200), "200"),
      ("ZeroFrequency", dict(target_sparsity=0.5, frequency=0), "0"),
      ("EndOffFrequencyGrid", dict(target_sparsity=0.5, end_step=1050), "1050"),
      ("ExcludeString", dict(target_sparsity=0.5, exclude_layers="conv1"), "'conv1'"),
      ("MByNReversed", dict(target_sparsity=0.5, m_by_n=(4, 2)), "(4, 2)"),
      ("MByNThreeValues", dict(target_sparsity=0.5, m_by_n=(1, 2, 4)), "(1, 2, 4)"),
      ("MByNGlobal", dict(target_sparsity=0.5, m_by_n=(2, 4), scope="global"), "(2, 4)"),
  )
  def testRejectsBadValue_NamingIt(self, kwargs, shown):
    with self.assertRaisesRegex(ValueError, re.escape(shown)):
      pruning.PruningConfig(**kwargs)

  def testConstantSchedule_IgnoresPolynomialFields(self):
    config = pruning.PruningConfig(0.5, schedule="constant", begin_step=5000, end_step=10, frequency=7)
    self.assertEqual(config.begin_step, 5000)

  def testRoundTripsThroughJsonDict(self):
    config = pruning.PruningConfig(0.75, schedule="constant", begin_step=5, scope="layer",
                                   exclude_layers=("conv1", "logits"), m_by_n=(2, 4))
    restored = pruning.PruningConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    self.assertEqual(restored, config)
    self.assertEqual(restored.exclude_layers, ("conv1", "logits"))
    self.assertEqual(restored.m_by_n, (2, 4))

  def testFromDict_RejectsUnknownField(self):
    with self.assertRaisesRegex(ValueError, "sparsity_target"):
      pruning.PruningConfig.from_dict({"sparsity_target": 0.5})


class IterativeTargetsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("TwoRounds", 0.9, 2, [1 - 0.1**0.5, 0.9]),
      ("ThreeRoundsHalving", 0.875, 3, [0.5, 0.75, 0.875]),
      ("OneRound", 0.6, 1, [0.6]),
  )
  def testKeepsConstantFractionPerRound(self, final, rounds, expected):
    targets = pruning.iterative_targets(final, rounds)
    self.assertAllClose(targets, expected)
    self.assertEqual(targets[-1], final)

  @parameterized.named_parameters(("FinalOne", 1.0, 2, "1.0"), ("ZeroRounds", 0.5, 0, "0"))
  def testRejectsBadValue(self, final, rounds, shown):
    with self.assertRaisesRegex(ValueError, re.escape(shown)):
      pruning.iterative_targets(final, rounds)


class GlobalMagnitudeTargetsTest(tf.test.TestCase, parameterized.TestCase):

  def _hand_model(self):
    # |d0| = .1 .4 .2 .9; |d1| = .3 .5 .6 .7 .05 .8; sorted: .05(d1) .1(d0) .2(d0) .3(d1) .4(d0) .5(d1) ...
    model = _dense_model([2, 3], 2, use_bias=False)
    model.get_layer("d0").set_weights([np.array([[0.1, -0.4], [0.2, 0.9]], np.float32)])
    model.get_layer("d1").set_weights([np.array([[0.3, -0.5, 0.6], [0.7, -0.05, 0.8]], np.float32)])
    return model

  @parameterized.named_parameters(
      ("Half", 0.5, (), {"d0": 3 / 4, "d1": 2 / 6}),
      ("ThreeTenths", 0.3, (), {"d0": 2 / 4, "d1": 1 / 6}),
      ("Zero", 0.0, (), {"d0": 0.0, "d1": 0.0}),
      ("HalfWithoutD0", 0.5, ("d0",), {"d1": 3 / 6}),
  )
  def testHandMadeWeights_GivesHandCheckedLayerTargets(self, sparsity, exclude, expected):
    targets = pruning.global_magnitude_targets(self._hand_model(), sparsity, exclude)
    self.assertEqual(list(targets), list(expected))
    self.assertAllClose(list(targets.values()), list(expected.values()))

  def testRejectsUnknownExcludedLayer(self):
    with self.assertRaisesRegex(ValueError, "d7"):
      pruning.global_magnitude_targets(self._hand_model(), 0.5, ("d7",))


class ParameterCountsTest(tf.test.TestCase):

  def _model(self):
    """Dense 3 -> 4 (12 kernel + 4 bias, six kernel zeros) then BatchNorm (4 x 4): 32 parameters."""
    model = _dense_model([4], 3, batch_norm=True)
    kernel = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    kernel[kernel % 2 == 0] = 0
    model.get_layer("d0").set_weights([kernel, np.array([1, 0, 2, 3], np.float32)])
    return model, kernel

  def testHandSizedDense_CountsKernelsBiasesAndBatchNorm(self):
    model, _ = self._model()
    expected = {"params": 32, "nonzero_params": 26, "prunable_params": 12, "prunable_nonzero": 6,
                "sparsity": 0.5, "compression": 32 / 26}
    self.assertAllClose(pruning.parameter_counts(model), expected)
    self.assertEqual(pruning.layer_sparsity(model), {"d0": 0.5})

  def testWrappedModel_CountsLikeItsStrippedModel(self):
    model, kernel = self._model()
    wrapped = pruning.fixed_mask_prune(model, {"d0": (kernel != 0).astype(np.float32)})
    self.assertAllClose(pruning.parameter_counts(wrapped), pruning.parameter_counts(model))
    self.assertAllClose(pruning.parameter_counts(pruning.strip(wrapped)), pruning.parameter_counts(model))
    self.assertEqual(pruning.sparsity_report(wrapped)["layers"], {"d0": 0.5})


class PruneModelTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(("LayerScope", "layer"), ("GlobalScope", "global"))
  def testBeforeTraining_OutputsEqualDenseModel_AndSharesNoVariables(self, scope):
    dense = _cnn_small()
    pruned = pruning.prune_model(dense, pruning.PruningConfig(0.8, scope=scope, exclude_layers=("conv1",)))
    x = np.random.default_rng(1).random((4,) + _IMAGE_SHAPE).astype(np.float32)
    self.assertAllClose(pruned(x, training=False), dense(x, training=False), atol=1e-6)
    self.assertEqual(sorted(_wrappers(pruned)), ["conv2", "fc1", "logits"])
    _wrappers(pruned)["fc1"].layer.kernel.assign_add(tf.ones_like(_wrappers(pruned)["fc1"].layer.kernel))
    self.assertNotAllClose(pruned(x, training=False), dense(x, training=False))

  def testRejectsUnknownExcludedLayer(self):
    with self.assertRaisesRegex(ValueError, "conv9"):
      pruning.prune_model(_cnn_small(), pruning.PruningConfig(0.5, exclude_layers=("conv9",)))

  def testRejectsWrappedModel(self):
    pruned = pruning.prune_model(_cnn_small(), pruning.PruningConfig(0.5))
    with self.assertRaisesRegex(ValueError, "strip"):
      pruning.prune_model(pruned, pruning.PruningConfig(0.5))


class CustomLoopPruningTest(tf.test.TestCase, parameterized.TestCase):

  def testLayerScope_ReachesTargetInEveryLayer(self):
    config = pruning.PruningConfig(0.7, begin_step=0, end_step=20, frequency=10)
    model = pruning.prune_model(_cnn_small(), config)
    loop = _Loop(model).run(11)
    mid = pruning.layer_sparsity(model)
    loop.run(13).end_epoch()
    loop.driver.finalize()
    for name, sparsity in pruning.layer_sparsity(model).items():
      self.assertAllClose(mid[name], 0.7 * (1 - 0.5**3), atol=0.01)  # the polynomial schedule at step 10 of 20
      self.assertAllClose(sparsity, 0.7, atol=0.01, msg=name)

  def testGlobalScope_ReachesOverallTarget_WithUnequalLayerTargets(self):
    dense = _cnn_small()
    expected = pruning.global_magnitude_targets(dense, 0.8)
    model = pruning.prune_model(dense, pruning.PruningConfig(0.8, scope="global", end_step=10, frequency=5))
    _Loop(model).run(12).end_epoch()
    layers = pruning.layer_sparsity(model)
    self.assertAllClose(pruning.parameter_counts(model)["sparsity"], 0.8, atol=0.01)
    self.assertAllClose(layers, expected, atol=0.01)
    self.assertGreater(max(layers.values()) - min(layers.values()), 0.05)

  def testExcludedLayers_StayDenseAndUnwrapped(self):
    config = pruning.PruningConfig(0.5, schedule="constant", exclude_layers=("conv1", "logits"))
    model = pruning.prune_model(_cnn_small(), config)
    _Loop(model).run(3).end_epoch()
    self.assertEqual(sorted(_wrappers(model)), ["conv2", "fc1"])
    self.assertAllClose(pruning.layer_sparsity(model), {"conv1": 0.0, "conv2": 0.5, "fc1": 0.5, "logits": 0.0},
                        atol=0.01)

  def testConstantSchedule_PrunesOnceAtBeginStep(self):
    model = pruning.prune_model(_cnn_small(), pruning.PruningConfig(0.6, schedule="constant", begin_step=3))
    loop = _Loop(model).run(3)
    self.assertEqual(set(pruning.layer_sparsity(model).values()), {0.0})
    loop.run(1)
    pruned_masks = _masks(model)
    self.assertAllClose(list(pruning.layer_sparsity(model).values()), [0.6] * 4, atol=0.01)
    loop.run(6)
    self.assertAllClose(_masks(model), pruned_masks)

  @parameterized.named_parameters(
      ("FiveInferencePassesPerStep", 5, 1),
      ("TwoTrainingPassesPerStep", 0, 2),
  )
  def testPruningStep_FollowsOptimizerSteps(self, inference_calls, training_calls):
    model = pruning.prune_model(_cnn_small(), pruning.PruningConfig(0.5, end_step=100, frequency=100))
    loop = _Loop(model, inference_calls=inference_calls, training_calls=training_calls).run(4)
    for step, steps in enumerate(loop.step_log):
      self.assertEqual(set(steps.values()), {step + training_calls})
    loop.end_epoch()
    self.assertEqual(set(_pruning_steps(model).values()), {4})
    self.assertEqual(loop.driver.step, 4)

  def testDriver_RaisesWhenAStepMakesNoTrainingPass(self):
    model = pruning.prune_model(_cnn_small(), pruning.PruningConfig(0.5))
    driver = pruning.PruningStepDriver(model)
    with self.assertRaisesRegex(RuntimeError, "on_train_begin"):
      driver.on_step_begin(0)
    driver.on_train_begin()
    driver.on_step_begin(0)
    model(np.zeros((1,) + _IMAGE_SHAPE, np.float32))  # inference only
    with self.assertRaisesRegex(RuntimeError, "training=True"):
      driver.on_step_begin(1)

  def testDriver_WritesSummariesToLogDir(self):
    log_dir = self.create_tempdir().full_path
    model = pruning.prune_model(_cnn_small(), pruning.PruningConfig(0.5, schedule="constant"))
    _Loop(model, log_dir=log_dir).run(1).end_epoch()
    self.assertTrue(any(name.startswith("events") for name in os.listdir(log_dir)))

  def testStrip_AfterFinalize_MatchesWrappedModel_WhileRawVariablesAreDense(self):
    model = pruning.prune_model(_cnn_small(), pruning.PruningConfig(0.7, schedule="constant"))
    loop = _Loop(model).run(3)
    raw_kernel = _wrappers(model)["fc1"].layer.kernel.numpy()
    self.assertLess(np.mean(raw_kernel == 0), 0.5)  # the last optimizer update moved most pruned entries
    loop.driver.finalize()
    stripped = pruning.strip(model)
    self.assertFalse(any(hasattr(layer, "pruning_vars") for layer in stripped.layers))
    self.assertAllClose(stripped(loop.x, training=False), model(loop.x, training=False), atol=1e-5)
    self.assertAllClose(pruning.layer_sparsity(stripped), {name: 0.7 for name in _wrappers(model)}, atol=0.01)
    loop.run(1)  # training the wrapped model further leaves the stripped copy alone
    self.assertAllClose(pruning.layer_sparsity(stripped), {name: 0.7 for name in _wrappers(model)}, atol=0.01)


class MByNTest(tf.test.TestCase):

  def _zeros_per_group(self, kernel, n):
    """Zeros in each run of n consecutive input-channel weights (kernel axis -2) of each output."""
    shape = kernel.shape
    grouped = kernel.reshape(shape[:-2] + (shape[-2] // n, n, shape[-1]))
    return np.sum(grouped == 0, axis=-2)

  def testDense_TwoOfEveryFourInputWeightsZero(self):
    model = pruning.prune_model(_dense_model([8, 3], 8), pruning.PruningConfig(0.5, m_by_n=(2, 4)))
    _Loop(model).run(2)
    pruning.apply_masks(model)
    for name in ("d0", "d1"):
      kernel = model.get_layer(f"prune_low_magnitude_{name}").layer.kernel.numpy()
      self.assertEqual(set(self._zeros_per_group(kernel, 4).ravel()), {2}, msg=name)

  def testConv2D_TwoOfEveryFourInputChannelsZero(self):
    config = pruning.PruningConfig(0.5, m_by_n=(2, 4), exclude_layers=("conv1",))
    model = pruning.prune_model(_cnn_small(), config)
    _Loop(model).run(1)
    pruning.apply_masks(model)
    kernel = _wrappers(model)["conv2"].layer.kernel.numpy()  # (4, 4, 16, 32)
    self.assertEqual(set(self._zeros_per_group(kernel, 4).ravel()), {2})

  def testRaisesNamingLayer_WhoseInputChannelsAreNotAMultipleOfN(self):
    with self.assertRaisesRegex(ValueError, "'conv1'.*1 input channels"):
      pruning.prune_model(_cnn_small(), pruning.PruningConfig(0.5, m_by_n=(2, 4)))
    with self.assertRaisesRegex(ValueError, "'d1'.*6 input channels"):
      pruning.prune_model(_dense_model([6, 3], 8), pruning.PruningConfig(0.5, m_by_n=(2, 4)))


class FixedMaskPruneTest(tf.test.TestCase):

  def testKeepsExactlyTheGivenMasksThroughTraining(self):
    dense = _cnn_small()
    rng = np.random.default_rng(2)
    masks = {name: (rng.random(dense.get_layer(name).kernel.shape) > 0.6).astype(np.float32)
             for name in ("conv2", "fc1")}
    model = pruning.fixed_mask_prune(dense, masks)
    self.assertEqual(sorted(_wrappers(model)), ["conv2", "fc1"])
    loop = _Loop(model).run(12)
    loop.driver.finalize()
    for name, mask in masks.items():
      self.assertAllEqual(_masks(model)[name], mask)
      self.assertAllEqual(model.get_layer(f"prune_low_magnitude_{name}").layer.kernel.numpy() != 0, mask == 1)
    self.assertEqual(pruning.layer_sparsity(model)["conv1"], 0.0)

  def testRejectsMaskOfWrongShape_NamingLayer(self):
    with self.assertRaisesRegex(ValueError, "'fc1'"):
      pruning.fixed_mask_prune(_cnn_small(), {"fc1": np.ones((3, 3))})



class ScheduledMaskDriverTest(tf.test.TestCase):
  """Masks chosen by the caller at the schedule's turns (gradual pruning by a criterion other than magnitude)."""

  def _chooser(self, calls):
    """Prunes the *largest* weights (anything but magnitude), recording each call."""

    def choose_masks(model, sparsity, step):
      calls.append(dict(step=step, sparsity=sparsity, wrapped=any(hasattr(layer, "pruning_vars")
                                                                  for layer in model.layers),
                        kernels={name: model.get_layer(name).kernel.numpy() for name in ("conv2", "fc1")}))
      masks = {}
      for name in ("conv2", "fc1"):
        magnitudes = np.abs(model.get_layer(name).kernel.numpy()).ravel()
        mask = np.ones(magnitudes.size, np.float32)
        mask[np.argsort(-magnitudes, kind="stable")[:int(round(sparsity * magnitudes.size))]] = 0
        masks[name] = mask.reshape(model.get_layer(name).kernel.shape)
      calls[-1]["masks"] = masks
      return masks

    return choose_masks

  def _wrapped(self):
    dense = _cnn_small()
    ones = {name: np.ones(dense.get_layer(name).kernel.shape, np.float32) for name in ("conv2", "fc1")}
    return pruning.fixed_mask_prune(dense, ones)

  def testChoosesMasksAtTheScheduleTurns_AndTrainsUnderThem(self):
    model, calls = self._wrapped(), []
    config = pruning.PruningConfig(target_sparsity=0.8, schedule="polynomial", begin_step=0, end_step=8, frequency=2)
    schedule = pruning.sparsity_schedule(config)
    driver = pruning.ScheduledMaskDriver(model, schedule, self._chooser(calls))
    _Loop(model, driver=driver).run(12)
    driver.finalize()
    # Step 0's turn has sparsity 0 and is skipped; tfmot's schedule answers for step k at k + 1.
    self.assertEqual([call["step"] for call in calls], [2, 4, 6, 8])
    self.assertAllClose([call["sparsity"] for call in calls], [float(schedule(k + 1)[1]) for k in (2, 4, 6, 8)])
    self.assertAlmostEqual(calls[-1]["sparsity"], 0.8, places=5)
    self.assertFalse(any(call["wrapped"] for call in calls))
    # Each choice sees the weights as training left them: the previous turn's zeros applied, the rest moved on.
    for before, after in zip(calls, calls[1:]):
      for name in ("conv2", "fc1"):
        kept = before["masks"][name] == 1
        self.assertAllEqual(after["kernels"][name][~kept], np.zeros(np.sum(~kept)))
        self.assertNotAllClose(after["kernels"][name][kept], before["kernels"][name][kept])
    for name in ("conv2", "fc1"):
      self.assertAllEqual(_masks(model)[name], calls[-1]["masks"][name])
      pruned = calls[-1]["masks"][name] == 0
      self.assertAllEqual(model.get_layer(f"prune_low_magnitude_{name}").layer.kernel.numpy()[pruned],
                          np.zeros(np.sum(pruned)))

  def testRejectsMasksForOtherLayers_NamingThem(self):
    model = self._wrapped()
    config = pruning.PruningConfig(target_sparsity=0.5, schedule="constant", begin_step=1)
    driver = pruning.ScheduledMaskDriver(model, pruning.sparsity_schedule(config),
                                         lambda stripped, sparsity, step: {"fc1": np.ones((288, 100))})
    with self.assertRaisesRegex(ValueError, "conv2"):
      _Loop(model, driver=driver).run(3)


if __name__ == "__main__":
  tf.test.main()
