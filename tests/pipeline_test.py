"""End-to-end test of tfrobprune.pipeline on synthetic data: pre-train, prune, fine-tune, evaluate, export, report."""

import json
import os
from unittest import mock

from absl.testing import absltest
import numpy as np
from PIL import Image

from tfrobprune import config
from tfrobprune.data import datasets
from tfrobprune.deploy import tflite
from tfrobprune.evaluate import evaluation
from tfrobprune.keras_compat import keras
from tfrobprune import pipeline
from tfrobprune.prune import pruning_config
from tfrobprune.prune import pruning_schedules
from tfrobprune.prune import scores
from tfrobprune.robust import objectives
from tfrobprune.train import checkpointing
from tfrobprune.train import overfit_monitor
from tfrobprune.train import training


_QUIET = pipeline.RunOptions(progress=False, log=lambda line: None)


def _config(**overrides):
  pgd = objectives.ObjectiveConfig(name="pgd", eps=0.1, pgd_steps=2)
  values = dict(
      data=config.DataConfig(dataset="synthetic", synthetic_examples=(512, 128), synthetic_shape=(12, 12, 1)),
      model="cnn_small", seed=0,
      pretrain=training.TrainConfig(epochs=3, batch_size=64, learning_rate=3e-3),
      pretrain_objective=pgd,
      finetune=training.TrainConfig(epochs=2, batch_size=64, learning_rate=1e-3),
      finetune_objective=pgd,
      pruning=pruning_config.PruningConfig(target_sparsity=0.8, scope="global", frequency=2),
      sparsities=(0.8,),
      evaluation=evaluation.EvalConfig(eps=0.1, pgd_steps=5, pgd_restarts=1, batch_size=128),
      export=False)
  values.update(overrides)
  return config.RunConfig(**values)


def _class_ordered_image_folder(root, train_per_class, test_per_class, classes=3):
  """DIR/{train,test}/<class>/*.png of 12x12 grey images whose brightness tells the class (a learnable split that
  the loader returns in class order)."""
  rng = np.random.default_rng(0)
  for split, count in (("train", train_per_class), ("test", test_per_class)):
    for label in range(classes):
      folder = os.path.join(root, split, f"class{label}")
      os.makedirs(folder)
      for index in range(count):
        pixels = np.clip(0.2 + 0.3 * label + rng.normal(0, 0.05, (12, 12)), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8), mode="L").save(os.path.join(folder, f"{index}.png"))
  return root


def _read_json(path):
  with open(path) as handle:
    return json.load(handle)


def _reevaluated(output_dir, run_config, phase):
  """The accuracies of the model the run saved for `phase`, evaluated afresh with the run's settings and seed."""
  cfg = run_config.data
  dataset = datasets.load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size,
                                  synthetic_examples=cfg.synthetic_examples, synthetic_shape=cfg.synthetic_shape,
                                  seed=run_config.seed)
  model = pipeline.load_model(os.path.join(output_dir, "models", f"{phase}.keras"))
  return evaluation.evaluate_model(model, dataset.x_test, dataset.y_test, run_config.evaluation, dataset.num_classes,
                                   seed=run_config.seed)


class PipelineTest(absltest.TestCase):

  def testClassOrderedFolderSubsetsHoldEveryClassAndTheReportSaysWhatRan(self):
    data_dir = _class_ordered_image_folder(self.create_tempdir().full_path, train_per_class=64, test_per_class=20)
    run_config = _config(
        data=config.DataConfig(dataset="image_folder", data_dir=data_dir, image_size=(12, 12),
                               max_train_examples=96),
        pretrain=training.TrainConfig(epochs=1, batch_size=32, learning_rate=3e-3),
        finetune=training.TrainConfig(epochs=2, batch_size=32, learning_rate=1e-3),
        evaluation=evaluation.EvalConfig(eps=0.1, pgd_steps=2, pgd_restarts=1, batch_size=128, max_examples=15))
    report = pipeline.run(run_config, self.create_tempdir().full_path, _QUIET)
    # --eval_examples smaller than one class (20) still evaluates every class; so does the training subset.
    histograms = report["dataset"]["class_histograms"]
    self.assertEqual(histograms["test"], [20, 20, 20])
    self.assertEqual(histograms["evaluated"], [5, 5, 5])
    self.assertEqual(report["dense"]["examples"], 15)
    self.assertEqual(histograms["train_split"], [64, 64, 64])
    self.assertEqual(histograms["train"], [32, 32, 32])
    self.assertEqual(report["warnings"], [])
    # The recorded pruning schedule is the one that ran: 2 epochs x 3 steps, sparsity ramping over the first half,
    # so the target is reached at step 2 (mask updates every 2 steps), not at the flag default of 1000.
    self.assertEqual(report["schedules"]["finetune"], dict(report["schedules"]["finetune"], steps_per_epoch=3,
                                                           steps=6))
    pruning = report["config"]["pruning"]
    self.assertEqual((pruning["begin_step"], pruning["end_step"], pruning["frequency"]), (0, 2, 2))
    schedule = pruning_schedules.sparsity_schedule(config.RunConfig.from_dict(report["config"]).pruning)
    self.assertAlmostEqual(float(schedule(2 + 1)[1]), 0.8, places=5)  # schedule(k + 1) answers for step k
    self.assertLess(float(schedule(1 + 1)[1]), 0.79)
    self.assertAlmostEqual(report["pruned"]["sparsity"], 0.8, delta=0.01)

  def testRunWritesAValidReportWithAPrunedModelAtTargetSparsity(self):
    output_dir = self.create_tempdir().full_path
    result = pipeline.run(_config(), output_dir, _QUIET)
    with open(os.path.join(output_dir, "report.json")) as handle:
      report = json.load(handle)
    self.assertEqual(report["config"]["model"], "cnn_small")
    for key in ("benign_acc", "pgd_acc", "params", "nonzero_params"):
      self.assertIn(key, report["dense"])
    for key in ("benign_acc", "pgd_acc", "sparsity", "layer_sparsity", "compression"):
      self.assertIn(key, report["pruned"])
    self.assertAlmostEqual(report["pruned"]["sparsity"], 0.8, delta=0.01)
    self.assertGreater(report["pruned"]["compression"], 3.0)
    self.assertGreater(report["dense"]["benign_acc"], 0.5)  # the synthetic classes are learnable
    # The report's accuracies are those of the saved models, measured again with the run's seed.
    for name, phase in (("dense", "dense"), ("pruned", "finetune_s0.8")):
      reevaluated = _reevaluated(output_dir, _config(), phase)
      self.assertEqual({key: report[name][key] for key in reevaluated}, reevaluated, name)
    self.assertAlmostEqual(report["ratios"]["benign"], report["pruned"]["benign_acc"] / report["dense"]["benign_acc"])
    self.assertEqual(result["ratios"], report["ratios"])
    self.assertIn("| pruned |", open(os.path.join(output_dir, "report.md")).read())
    timing = report["timing"]
    self.assertEqual(timing["order"], ["pretrain", "evaluate_dense", "pruning_s0.8", "finetune_s0.8", "evaluate_s0.8"])
    self.assertEqual(sorted(timing["seconds"]), sorted(timing["order"]))
    self.assertAlmostEqual(timing["training_seconds"], timing["seconds"]["pretrain"] +
                           timing["seconds"]["finetune_s0.8"], places=2)
    self.assertIn("## Wall time", open(os.path.join(output_dir, "report.md")).read())
    self.assertEqual(report["overfitting"], [])
    self.assertTrue(os.path.exists(os.path.join(output_dir, "layer_sparsity.png")))
    self.assertNotEmpty(os.listdir(os.path.join(output_dir, "tensorboard")))

  def testDenseCheckpointSkipsPretraining(self):
    first = self.create_tempdir().full_path
    pipeline.run(_config(), first, _QUIET)
    checkpoint = os.path.join(first, "models", "dense.keras")
    second = self.create_tempdir().full_path
    report = pipeline.run(_config(dense_checkpoint=checkpoint), second, _QUIET)
    self.assertEqual(report["history"]["pretrain"], [])
    first_report = json.load(open(os.path.join(first, "report.json")))
    self.assertAlmostEqual(report["dense"]["benign_acc"], first_report["dense"]["benign_acc"])

  def testRerunResumesFinishedPartsAndRefusesOtherSettings(self):
    output_dir = self.create_tempdir().full_path
    first = pipeline.run(_config(), output_dir, _QUIET)
    lines = []
    second = pipeline.run(_config(), output_dir, pipeline.RunOptions(progress=False, log=lines.append))
    self.assertIn("Resuming", lines[0])
    self.assertEqual(first, second)
    with self.assertRaisesRegex(checkpointing.ConfigMismatchError, r"different settings \(seed\)"):
      pipeline.run(_config(seed=1), output_dir, _QUIET)
    third = pipeline.run(_config(seed=1), output_dir, pipeline.RunOptions(progress=False, log=lines.append,
                                                                         overwrite=True))
    self.assertEqual(third["config"]["seed"], 1)

  def testInterruptedPhaseResumesToTheSameReportAsAnUninterruptedRun(self):
    config = _config(deterministic=True)
    reference = pipeline.run(config, self.create_tempdir().full_path, _QUIET)
    output_dir = self.create_tempdir().full_path
    polls = []
    stop_in_finetune = pipeline.RunOptions(progress=False, log=lambda line: None, checkpoint_every_steps=3,
                                           should_stop=lambda: polls.append(1) or len(polls) == 30)
    with self.assertRaises(training.TrainingInterrupted):
      pipeline.run(config, output_dir, stop_in_finetune)
    resumed = pipeline.run(config, output_dir, _QUIET)
    self.assertEqual(dict(resumed, timing=None), dict(reference, timing=None))  # wall seconds differ
    self.assertEqual(resumed["timing"]["seconds"].keys(), reference["timing"]["seconds"].keys())

  def testScoreCriterionPrunesToTheTargetAndIsReported(self):
    config = _config(prune_criterion="scores", scores=scores.ScoreConfig(epochs=1))
    output_dir = self.create_tempdir().full_path
    report = pipeline.run(config, output_dir, _QUIET)
    self.assertEqual(report["config"]["prune_criterion"], "scores")
    self.assertAlmostEqual(report["pruned"]["sparsity"], 0.8, delta=0.01)
    reevaluated = _reevaluated(output_dir, config, "finetune_s0.8")
    self.assertEqual({key: report["pruned"][key] for key in reevaluated}, reevaluated)

  def testChannelStructure_ShrinksTheModelPrunesOnTopReportsMacsAndResumes(self):
    config = _config(prune_structure="channels", channel_sparsity=0.5, sparsities=(0.0, 0.5),
                     pruning=pruning_config.PruningConfig(target_sparsity=0.5, scope="layer", frequency=2))
    output_dir = self.create_tempdir().full_path
    report = pipeline.run(config, output_dir, _QUIET)
    channels_only, on_top = report["sweep"]
    self.assertEqual(channels_only["channel_sparsity"], {"conv1": 0.5, "conv2": 0.5, "fc1": 0.5, "logits": 0.0})
    self.assertLess(channels_only["macs"], report["dense"]["macs"] / 3)
    self.assertLess(channels_only["params"], report["dense"]["params"] / 3)
    # --sparsity prunes the shrunken model's weights: same shapes (and MACs), half of their kernels zero.
    self.assertEqual((on_top["macs"], on_top["params"]), (channels_only["macs"], channels_only["params"]))
    self.assertAlmostEqual(on_top["sparsity"], 0.5, delta=0.01)
    shrunken = pipeline.load_model(os.path.join(output_dir, "models", "channels_c0.5.keras"))
    self.assertEqual((shrunken.get_layer("conv2").filters, shrunken.get_layer("logits").units), (16, 10))
    reevaluated = _reevaluated(output_dir, config, "channels_c0.5")
    self.assertEqual({key: channels_only[key] for key in reevaluated}, reevaluated)
    self.assertIn("| conv2 | 50.00% |", open(os.path.join(output_dir, "report.md")).read())
    lines = []
    self.assertEqual(pipeline.run(config, output_dir, pipeline.RunOptions(progress=False, log=lines.append)), report)
    self.assertIn("[channels_c0.5] finished earlier; loading its model.", lines)

  def testGradualScoreScheduleRelearnsTheMaskAtEachTurnUpToTheTarget(self):
    lines = []
    config = _config(prune_criterion="scores", scores=scores.ScoreConfig(schedule="gradual", update_steps=3))
    report = pipeline.run(config, self.create_tempdir().full_path, pipeline.RunOptions(progress=False,
                                                                                      log=lines.append))
    turns = [line for line in lines if "-sparse mask (3 score steps)" in line]
    # 2 epochs x 8 steps; sparsity ramps over the first half, a turn every 2 steps (step 0's has sparsity 0).
    self.assertEqual([line.split(": learning")[0].split()[-1] for line in turns], ["2", "4", "6", "8"])
    self.assertIn("learning a 0.8000-sparse mask", turns[-1])
    self.assertEqual(report["config"]["scores"]["schedule"], "gradual")
    self.assertAlmostEqual(report["pruned"]["sparsity"], 0.8, delta=0.01)

  def testExportResumesAfterAFailureIsNotRedoneOnRerunAndExportExistingRunAddsAVersion(self):
    output_dir = self.create_tempdir().full_path
    run_config = _config(export=True, pretrain=training.TrainConfig(epochs=1, batch_size=64, learning_rate=3e-3),
                         finetune=training.TrainConfig(epochs=1, batch_size=64, learning_rate=1e-3),
                         artifact_square_examples=16)
    with mock.patch.object(pipeline.export, "export_all", side_effect=RuntimeError("export killed")):
      with self.assertRaisesRegex(RuntimeError, "export killed"):
        pipeline.run(run_config, output_dir, _QUIET)
    # The rerun resumes after the evaluations; the export finds the same adversarial examples again by the seed.
    lines = []
    report = pipeline.run(run_config, output_dir, pipeline.RunOptions(progress=False, log=lines.append))
    self.assertTrue(any(line.startswith("[export]") for line in lines), lines)
    artifacts = report["artifacts"]
    self.assertEqual(set(artifacts), {"saved_model", "dense_float32", *tflite.TFLITE_VARIANTS})
    for name in ("saved_model", "float32", "float32_sparse"):
      self.assertEqual((artifacts[name]["benign_acc"], artifacts[name]["transfer_pgd_acc"],
                        artifacts[name]["agreement"]),
                       (report["pruned"]["benign_acc"], report["pruned"]["pgd_acc"], 1.0), name)
    self.assertEqual([artifacts[name].get("square_examples") for name in sorted(artifacts)],
                     [None if name == "saved_model" else 16 for name in sorted(artifacts)])
    versions_dir = os.path.join(output_dir, "export", "saved_model", "cnn_small")
    self.assertEqual(os.listdir(versions_dir), ["1"])
    self.assertEqual(_read_json(os.path.join(output_dir, "report.json"))["artifacts"], artifacts)

    lines = []
    rerun = pipeline.run(run_config, output_dir, pipeline.RunOptions(progress=False, log=lines.append))
    self.assertFalse(any(line.startswith("[export]") for line in lines), lines)
    self.assertEqual(rerun, report)
    self.assertEqual(os.listdir(versions_dir), ["1"])

    lines = []
    again = pipeline.export_existing_run(output_dir, pipeline.RunOptions(log=lines.append))
    self.assertEqual(sorted(os.listdir(versions_dir)), ["1", "2"])
    manifest = _read_json(os.path.join(output_dir, "export", "manifest.json"))
    self.assertEqual(manifest["artifacts"]["saved_model"]["path"], os.path.join("saved_model", "cnn_small", "2"))
    for name in again:
      self.assertEqual((again[name]["benign_acc"], again[name]["transfer_pgd_acc"], again[name].get("square_acc")),
                       (artifacts[name]["benign_acc"], artifacts[name]["transfer_pgd_acc"],
                        artifacts[name].get("square_acc")), name)
    self.assertEqual(_read_json(os.path.join(output_dir, "report.json"))["artifacts"], again)

    unattacked = pipeline.export_existing_run(output_dir, _QUIET, artifact_square_examples=0)
    self.assertEqual([name for name, row in unattacked.items() if "square_acc" in row], [])
    self.assertEqual(unattacked["float32"]["benign_acc"], artifacts["float32"]["benign_acc"])

  def testOverfitStopInPretraining_KeepsTheBestEpochsWeightsAsTheDenseModel(self):
    output_dir = self.create_tempdir().full_path
    run_config = _config(pretrain_objective=objectives.ObjectiveConfig(name="nfgsm", eps=0.1),
                         overfit=overfit_monitor.OverfitConfig(action="stop", examples=64, pgd_steps=2))
    with mock.patch.object(overfit_monitor.OverfitMonitor, "pgd_accuracy", side_effect=[0.3, 0.5, 0.1]), \
         mock.patch.object(overfit_monitor.OverfitMonitor, "fgsm_accuracy", side_effect=[0.3, 0.5, 0.1]):
      report = pipeline.run(run_config, output_dir, _QUIET)
    (event,) = report["overfitting"]
    self.assertEqual((event["phase"], event["epoch"], event["restored_best"]), ("pretrain", 3, True))
    with np.load(os.path.join(output_dir, "checkpoints", "pretrain", "best_weights.npz")) as snapshot:
      best = [snapshot[f"arr_{index}"] for index in range(len(snapshot.files))]
    dense = pipeline.load_model(os.path.join(output_dir, "models", "dense.keras")).get_weights()
    for saved, expected in zip(dense, best, strict=True):
      np.testing.assert_array_equal(saved, expected)

  def testUnwritableOutputDirectoryIsNamed(self):
    with self.assertRaisesRegex(OSError, "/proc/nope"):
      pipeline.run(_config(), "/proc/nope", _QUIET)


class ModelStatisticsTest(absltest.TestCase):

  def testModelTheMacCounterCannotCount_HasStatisticsWithoutMacs(self):
    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Conv2DTranspose(2, 3, name="up")(inputs)))
    statistics = pipeline.model_statistics(keras.Model(inputs, outputs))
    self.assertNotIn("macs", statistics)
    self.assertEqual(statistics["params"], 2 * 9 + 2 + 6 * 6 * 2 * 2 + 2)
    self.assertIn("macs", pipeline.model_statistics(keras.Sequential([inputs, keras.layers.Flatten()])))


if __name__ == "__main__":
  absltest.main()
