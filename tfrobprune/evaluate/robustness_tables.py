"""How an AutoAttack evaluation reads in report.md: the per-attack breakdown and the gradient-masking checks.

Plain formatting of the `autoattack` and `masking_checks` fields of a model's evaluation results (no TensorFlow),
so that `report` can render them without importing the attacks.
"""


def _percent(value):
  return "-" if value is None else f"{100 * value:.2f}%"


def breakdown_lines(results_by_model):
  """The robust accuracy after each attack of the ensemble and its seconds, one column pair per model."""
  models = {name: row["autoattack"] for name, row in results_by_model.items() if row and row.get("autoattack")}
  if not models:
    return []
  first = next(iter(models.values()))
  lines = ["", f"## AutoAttack ({first['version']}, {first['examples']} examples)", "",
           "Each attack runs on the examples all earlier ones failed on; robust accuracy after it, and its wall time.",
           "", "| attack | " + " | ".join(f"{name} robust | {name} s" for name in models) + " |",
           "|---|" + "---|---|" * len(models)]
  lines.append("| clean | " + " | ".join(f"{_percent(aa['clean_acc'])} | " for aa in models.values()) + " |")
  for index, stage in enumerate(first["stages"]):
    cells = []
    for aa in models.values():
      row = aa["stages"][index] if index < len(aa["stages"]) else {}
      cells.append(f"{_percent(row.get('robust_acc'))} | {row.get('seconds', '-')}")
    skipped = f" (skipped: {stage['skipped']})" if "skipped" in stage else ""
    lines.append(f"| {stage['attack']}{skipped} | " + " | ".join(cells) + " |")
  return lines


def _check_cells(checks):
  large, square, gradient = checks["large_eps"], checks.get("square_vs_whitebox"), checks["gradient"]
  verdict = lambda check: "pass" if check["passed"] else "**FAIL**"  # noqa: E731
  cells = [f"{verdict(large)}: {_percent(large['robust_acc'])} at eps {large['eps']:g} "
           f"(max {_percent(large['max_acc'])})"]
  cells.append("-" if square is None else f"{verdict(square)}: white-box {_percent(square['whitebox_acc'])} -> "
               f"Square {_percent(square['after_square_acc'])} ({square['square_broke']} of {square['examples']})")
  cells.append(f"{verdict(gradient)}: rel. error {gradient['max_relative_error']:.1e}, zero "
               f"{_percent(gradient['zero_gradient_fraction'])}")
  return cells


def checks_lines(results_by_model):
  """One row per model with the three gradient-masking checks of `gradient_masking.run_checks`."""
  models = {name: row["masking_checks"] for name, row in results_by_model.items() if row and row.get("masking_checks")}
  if not models:
    return []
  lines = ["", "## Gradient-masking checks", "",
           f"The large-eps and gradient checks on {next(iter(models.values()))['examples']} evaluated examples per "
           "model, the Square check on every example AutoAttack ran on (see `tfrobprune/evaluate/gradient_masking.py` "
           "for the thresholds).", "",
           "| model | APGD-CE at a large eps | Square after the white-box attacks | input gradient vs autodiff |",
           "|---|---|---|---|"]
  lines += [f"| {name} | " + " | ".join(_check_cells(checks)) + " |" for name, checks in models.items()]
  return lines


def markdown_lines(results_by_model):
  """Both sections for {model name: evaluation results}; [] when no model ran AutoAttack."""
  return breakdown_lines(results_by_model) + checks_lines(results_by_model)
