"""Wall time of a run's parts (pre-training, pruning, fine-tuning, evaluation, export), kept across resumes.

What a user waits for is the time to a robust compact model, so every run reports where its wall time went:
`report.json`'s `timing` (`summary`) and a table in `report.md` (`markdown_lines`). The pipeline wraps each part in
`RunTimer.part`, which adds the part's wall seconds to what earlier processes of the same run recorded for it
(kept in the run's progress file, `checkpointing.RunProgress.keep`). So for a resumed run:
- a part finished by an earlier process keeps the seconds recorded then (and is not timed again: it is not redone);
- a part interrupted by a signal (SIGINT/SIGTERM: checkpoint, then stop) counts its seconds before the
  interruption plus those of the process that finishes it;
- a process killed outright (SIGKILL, a crash) records nothing for its unfinished part: that time is lost, and the
  work redone after the last checkpoint is counted once, by the process that does it.
The seconds include tracing and checkpointing; `summary` adds the training parts up (`training_seconds`).
"""

import contextlib
import time

__all__ = ["RunTimer", "summary", "markdown_lines"]

_RECORD = "timing"


class RunTimer:
  """Times a run's parts into its progress record.

  Args:
    progress: the run's `checkpointing.RunProgress` (or anything with `record(name)` and `keep(name, value)`).
    clock: a function returning seconds (tests pass a fake one).
  """

  def __init__(self, progress, clock=time.perf_counter):
    self.progress, self.clock = progress, clock
    recorded = progress.record(_RECORD) or {}
    self.order = list(recorded.get("order", []))  # the parts in the order they first ran (JSON sorts dict keys)
    self.seconds = dict(recorded.get("seconds", {}))
    self.training = list(recorded.get("training", []))

  @contextlib.contextmanager
  def part(self, name, training=False, done=False):
    """Times the block as part `name` (added to earlier processes' seconds); `training`: a training phase;
    `done`: the part finished in an earlier process (the block only reads its result back): not timed."""
    if done:
      yield
      return
    started = self.clock()
    try:
      yield
    finally:
      self.seconds[name] = round(self.seconds.get(name, 0.0) + self.clock() - started, 3)
      if name not in self.order:
        self.order.append(name)
      if training and name not in self.training:
        self.training.append(name)
      self.progress.keep(_RECORD, {"seconds": self.seconds, "order": self.order, "training": self.training})

  def summary(self):
    """The run's `timing` record (see `summary`)."""
    return summary(self.seconds, self.order, self.training)


def summary(seconds, order, training):
  """{'seconds': {part: wall seconds}, 'order': the parts in the order they ran, 'training_parts',
  'training_seconds': the training phases' sum (pre-training and fine-tuning), 'total_seconds': all parts'}."""
  return {"seconds": dict(seconds), "order": list(order), "training_parts": list(training),
          "training_seconds": round(sum(seconds[name] for name in training if name in seconds), 3),
          "total_seconds": round(sum(seconds.values()), 3)}


def markdown_lines(timing):
  """The report's 'Wall time' table (empty for a report without `timing`)."""
  if not timing:
    return []
  lines = ["", "## Wall time", "", "| part | seconds |", "|---|---|"]
  lines += [f"| {name}{' (training)' if name in timing['training_parts'] else ''} | {timing['seconds'][name]:.1f} |"
            for name in timing["order"]]
  lines += [f"| training (pre-training + fine-tuning) | {timing['training_seconds']:.1f} |",
            f"| all parts timed | {timing['total_seconds']:.1f} |"]
  return lines
