"""Tests for tfrobprune.report: ratios, the Markdown table, plots and atomic writes."""

import json
import os

from absl.testing import absltest

from tfrobprune import report


def _report(sweep_sparsities=(0.9,)):
  dense = {"examples": 100, "benign_acc": 0.8, "pgd_acc": 0.5, "fgsm_acc": 0.6, "params": 1000,
           "nonzero_params": 1000, "sparsity": 0.0, "compression": 1.0, "layer_sparsity": {"fc1": 0.0}}
  sweep = [{"examples": 100, "benign_acc": 0.8 - s / 10, "pgd_acc": 0.5 - s / 10, "fgsm_acc": 0.55, "params": 1000,
            "nonzero_params": round(1000 * (1 - s)), "sparsity": s, "compression": 1 / (1 - s),
            "layer_sparsity": {"fc1": s, "logits": s / 2}, "target_sparsity": s} for s in sweep_sparsities]
  config = {"model": "cnn_small", "data": {"dataset": "synthetic"}, "pretrain_objective": {"name": "pgd"},
            "finetune_objective": {"name": "pgd"},
            "evaluation": {"eps": 0.1, "norm": "linf", "pgd_steps": 50, "pgd_restarts": 5}}
  return {"config": config, "dense": dense, "pruned": sweep[-1], "ratios": report.ratios(dense, sweep[-1]),
          "sweep": sweep}


class ReportTest(absltest.TestCase):

  def testRatiosArePrunedOverDense(self):
    ratios = report.ratios({"benign_acc": 0.8, "pgd_acc": 0.5, "pgd_only": 1}, {"benign_acc": 0.76, "pgd_acc": 0.5})
    self.assertAlmostEqual(ratios["benign"], 0.95)
    self.assertAlmostEqual(ratios["pgd"], 1.0)
    self.assertNotIn("verified", ratios)
    self.assertIsNone(report.ratios({"pgd_acc": 0.0}, {"pgd_acc": 0.0})["pgd"])

  def testMarkdownListsOverfittingEventsWithWhatWasDone(self):
    events = [{"phase": "pretrain", "epoch": 4, "pgd_acc": 0.1, "best_before": 0.5, "fgsm_acc": 0.2, "stopped": True,
               "fallback": False, "restored_best": True},
              {"phase": "finetune_s0.9", "epoch": 1, "pgd_acc": 0.05, "best_before": None, "fgsm_acc": 0.7,
               "stopped": False, "fallback": True, "restored_best": False}]
    text = report.markdown(dict(_report(), overfitting=events))
    self.assertIn("| pretrain | 4 | 10.00% | 50.00% | 20.00% | stopped, back to the best epoch's weights |", text)
    self.assertIn("| finetune_s0.9 | 1 | 5.00% | - | 70.00% | PGD from here |", text)
    self.assertNotIn("Catastrophic overfitting", report.markdown(_report()))

  def testMarkdownHasTheDenseVsPrunedTable(self):
    text = report.markdown(_report())
    self.assertIn("| dense | 0.00% | 1,000 / 1,000 | 1.0x | 80.00% | 60.00% | 50.00% |", text)
    self.assertIn("| pruned | 90.00% | 100 / 1,000 | 10.0x | 71.00% | 55.00% | 41.00% |", text)
    self.assertIn("| ratio (pruned / dense) | | | | 0.888 | 0.917 | 0.820 |", text)
    self.assertIn("| fc1 | 90.00% |", text)
    self.assertNotIn("Sparsity sweep", text)

  def testMarkdownArtifactsTable_NamesTheTransferFigureAndTheFilesOwnSquareAccuracy(self):
    exported = dict(_report(), artifacts={
        "saved_model": {"bytes": 2000, "benign_acc": 0.71, "transfer_pgd_acc": 0.41, "agreement": 1.0},
        "int8_full": {"bytes": 500, "benign_acc": 0.7, "square_acc": 0.38, "transfer_pgd_acc": 0.42,
                      "agreement": 0.98, "pgd_ties": 0.02},
        "recorded_before": {"bytes": 700, "benign_acc": 0.7, "pgd_acc": 0.4, "agreement": 0.99}})
    text = report.markdown(exported)
    self.assertIn("| artifact | bytes | benign | square (on the file) | transfer pgd (Keras adv.) |", text)
    self.assertIn("| saved_model | 2,000 | 71.00% | - | 41.00% | 100.00% | - |", text)
    self.assertIn("| int8_full | 500 | 70.00% | 38.00% | 42.00% | 98.00% | 2.00% |", text)
    self.assertIn("| recorded_before | 700 | 70.00% | - | 40.00% | 99.00% | - |", text)

  def testMarkdownHasTheCostAndSpeedTableOnlyWithMacsOrSpeed(self):
    self.assertNotIn("Cost and speed", report.markdown(_report()))
    measured = _report()
    measured["dense"] = dict(measured["dense"], macs=600000)
    measured["pruned"] = dict(measured["pruned"], macs=150000)
    measured["speed"] = {"tflite_batch1_ms": {"dense": 0.03, "pruned": 0.01},
                         "savedmodel_batch128_ms": {"dense": 4.0, "pruned": 1.6},
                         "tflite_runtime": {"dense": "xnnpack", "pruned": "xnnpack"}, "rounds": 20}
    text = report.markdown(measured)
    self.assertIn("## Cost and speed (dense vs pruned)", text)
    self.assertIn("| MACs per example | 600,000 | 150,000 | 4.00x |", text)
    self.assertIn("| TFLite float32, batch 1, XNNPACK 1 thread (ms) | 0.030 | 0.010 | 3.00x |", text)
    self.assertIn("| SavedModel serving_default, batch 128 (ms) | 4.000 | 1.600 | 2.50x |", text)
    self.assertIn("medians of 20 interleaved rounds", text)
    self.assertEqual(report.speed_table({"dense": {"macs": 10}, "pruned": {"macs": 5}}).count("\n"), 3)

  def testMarkdownHasTheRemovedChannelsTableOnlyForChannelPruning(self):
    self.assertNotIn("Channels removed", report.markdown(_report()))
    channel_pruned = _report()
    channel_pruned["pruned"] = dict(channel_pruned["pruned"], channel_sparsity={"fc1": 0.5, "logits": 0.0})
    text = report.markdown(channel_pruned)
    self.assertIn("## Channels removed (pruned model, `--prune_structure=channels`)", text)
    self.assertIn("| fc1 | 50.00% |\n| logits | 0.00% |", text)

  def testMarkdownWarnsAboutAnUnfairSubsetAtTheTopAndOnlyThen(self):
    self.assertNotIn("Warning", report.markdown(_report()))
    warned = dict(_report(), warnings=["The evaluated test examples hold no example of class(es) 2, which the "
                                       "split has."])
    lines = report.markdown(warned).splitlines()
    warning_line = lines.index("> **Warning:** The evaluated test examples hold no example of class(es) 2, which "
                               "the split has.")
    self.assertLess(warning_line, next(i for i, line in enumerate(lines) if line.startswith("| model |")))

  def testWritesJsonMarkdownAndPlotsForASweep(self):
    directory = self.create_tempdir().full_path
    written = report.write_report(_report((0.5, 0.9, 0.99)), directory)
    self.assertEqual(written["plots"], ["sparsity_sweep.png", "layer_sparsity.png"])
    for name in ("report.json", "report.md", "sparsity_sweep.png", "layer_sparsity.png"):
      self.assertTrue(os.path.getsize(os.path.join(directory, name)) > 0, name)
    with open(os.path.join(directory, "sparsity_sweep.png"), "rb") as handle:
      self.assertEqual(handle.read(8), b"\x89PNG\r\n\x1a\n")
    loaded = json.load(open(os.path.join(directory, "report.json")))
    self.assertLen(loaded["sweep"], 3)
    self.assertIn("## Sparsity sweep", open(os.path.join(directory, "report.md")).read())
    self.assertEqual([n for n in os.listdir(directory) if n.startswith(".tmp")], [])

  def testAtomicWriteLeavesTheOldFileWhenWritingFails(self):
    path = os.path.join(self.create_tempdir().full_path, "report.json")
    report.atomic_write(path, "old")

    class Exploding:
      def __str__(self):
        raise RuntimeError("boom")

    with self.assertRaises(TypeError):
      report.atomic_write(path, Exploding())
    self.assertEqual(open(path).read(), "old")
    self.assertEqual(os.listdir(os.path.dirname(path)), ["report.json"])

  def testAtomicWriteNamesAMissingDirectory(self):
    with self.assertRaisesRegex(OSError, "no-such-dir"):
      report.atomic_write("/nonexistent/no-such-dir/report.json", "x")


if __name__ == "__main__":
  absltest.main()
