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

  def testMarkdownHasTheDenseVsPrunedTable(self):
    text = report.markdown(_report())
    self.assertIn("| dense | 0.00% | 1,000 / 1,000 | 1.0x | 80.00% | 60.00% | 50.00% |", text)
    self.assertIn("| pruned | 90.00% | 100 / 1,000 | 10.0x | 71.00% | 55.00% | 41.00% |", text)
    self.assertIn("| ratio (pruned / dense) | | | | 0.888 | 0.917 | 0.820 |", text)
    self.assertIn("| fc1 | 90.00% |", text)
    self.assertNotIn("Sparsity sweep", text)

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
