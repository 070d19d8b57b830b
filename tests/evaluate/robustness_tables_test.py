"""Tests for tfrobprune.evaluate.robustness_tables: the AutoAttack breakdown and masking checks as report.md reads
them, and through `report.markdown` (with `ratios.autoattack`)."""

from absl.testing import absltest

from tfrobprune.evaluate import robustness_tables
from tfrobprune import report


def _breakdown(clean, after, seconds):
  return {"version": "standard", "examples": 100, "clean_acc": clean, "robust_acc": after[-1], "seconds": sum(seconds),
          "stages": [{"attack": name, "examples": 0, "robust_acc": acc, "seconds": s}
                     for name, acc, s in zip(("apgd-ce", "apgd-t", "fab-t", "square"), after, seconds)]}


def _checks(passed=True):
  return {"examples": 200, "passed": passed,
          "large_eps": {"eps": 0.5, "robust_acc": 0.0 if passed else 0.8, "max_acc": 0.05, "passed": passed},
          "square_vs_whitebox": {"whitebox_acc": 0.7, "after_square_acc": 0.7 if passed else 0.6,
                                 "square_broke": 0 if passed else 10, "examples": 100, "passed": passed},
          "gradient": {"max_relative_error": 2e-7, "zero_gradient_fraction": 0.0 if passed else 1.0,
                       "passed": passed}}


_DENSE = {"autoattack_acc": 0.68, "autoattack": _breakdown(0.8, (0.7, 0.69, 0.69, 0.68), (3, 20, 40, 30)),
          "masking_checks": _checks()}
_PRUNED = {"autoattack_acc": 0.66, "autoattack": _breakdown(0.79, (0.68, 0.67, 0.67, 0.66), (3, 21, 41, 31)),
           "masking_checks": _checks(passed=False)}


class RobustnessTablesTest(absltest.TestCase):

  def testBreakdownHasOneRowPerAttackInOrderWithEachModelsAccuracyAndSeconds(self):
    text = "\n".join(robustness_tables.markdown_lines({"dense": _DENSE, "pruned": _PRUNED}))
    self.assertIn("## AutoAttack (standard, 100 examples)", text)
    self.assertIn("| attack | dense robust | dense s | pruned robust | pruned s |", text)
    self.assertIn("| apgd-ce | 70.00% | 3 | 68.00% | 3 |", text)
    self.assertIn("| square | 68.00% | 30 | 66.00% | 31 |", text)
    self.assertLess(text.index("| apgd-t |"), text.index("| fab-t |"))

  def testChecksShowPassAndFailPerModel(self):
    lines = robustness_tables.checks_lines({"dense": _DENSE, "pruned": _PRUNED})
    dense = next(line for line in lines if line.startswith("| dense |"))
    pruned = next(line for line in lines if line.startswith("| pruned |"))
    self.assertEqual(dense.count("pass"), 3)
    self.assertEqual(pruned.count("**FAIL**"), 3)
    self.assertIn("0.00% at eps 0.5", dense)
    self.assertIn("white-box 70.00% -> Square 60.00% (10 of 100)", pruned)

  def testNothingWithoutAutoAttack(self):
    self.assertEqual(robustness_tables.markdown_lines({"dense": {"pgd_acc": 0.7}, "pruned": {}}), [])

  def testReportShowsTheAutoAttackColumnRatioAndSections(self):
    dense = dict(_DENSE, examples=100, benign_acc=0.8, pgd_acc=0.7, params=10, nonzero_params=10, layer_sparsity={})
    pruned = dict(_PRUNED, examples=100, benign_acc=0.79, pgd_acc=0.69, params=10, nonzero_params=1,
                  layer_sparsity={})
    config = {"model": "cnn_small", "data": {"dataset": "synthetic"}, "pretrain_objective": {"name": "pgd"},
              "finetune_objective": {"name": "pgd"},
              "evaluation": {"eps": 0.1, "norm": "linf", "pgd_steps": 50, "pgd_restarts": 2}}
    ratios = report.ratios(dense, pruned)
    self.assertAlmostEqual(ratios["autoattack"], 0.66 / 0.68)
    text = report.markdown({"config": config, "dense": dense, "pruned": pruned, "ratios": ratios,
                            "warnings": ["gradient masking? pruned: ..."]})
    self.assertIn("| benign | pgd | autoattack |", text)
    self.assertIn("| 80.00% | 70.00% | 68.00% |", text)
    self.assertIn(f"| {ratios['autoattack']:.3f} |", text)
    self.assertIn("## AutoAttack (standard, 100 examples)", text)
    self.assertIn("## Gradient-masking checks", text)
    self.assertIn("> **Warning:** gradient masking? pruned", text)


if __name__ == "__main__":
  absltest.main()
