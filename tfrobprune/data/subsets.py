"""Subsets that are fair samples of a split: stratified by class, seeded, and their class histograms.

Loaders may return a split in class order (an image folder lists its classes one after the other), so "the first N
examples" of such a split holds only the first classes. `stratified_subset` takes every class's share of N instead,
so that accuracies measured on a subset (`--eval_examples`) or training on one (`--max_train_examples`) see the
split's class mix. The same seed selects the same examples, so reruns and resumed runs use the same subset.
"""

import numpy as np

# A subset whose class frequencies differ from its split's by more than this total-variation distance is reported.
MAX_HISTOGRAM_DISTANCE = 0.05


def stratified_subset(labels, count, seed):
  """Indices of `count` examples with each class's share of `labels`, drawn at random within each class.

  Class counts are proportional to the split's, rounded by largest remainder (ties to the lower class index), so
  they add up to `count` exactly. The indices are returned in ascending order (the split's own order).

  Args:
    labels: 1-D integer class labels of the whole split.
    count: how many examples to take; at least the split's size takes all of it.
    seed: seeds the choice within each class.

  Returns:
    A sorted int64 array of indices into `labels`.

  Raises:
    ValueError: `count` is negative.
  """
  labels = np.asarray(labels)
  if count < 0:
    raise ValueError(f"count must be >= 0, got {count}.")
  if count >= len(labels):
    return np.arange(len(labels), dtype=np.int64)
  classes, sizes = np.unique(labels, return_counts=True)
  quotas = _largest_remainder(sizes, count)
  rng = np.random.default_rng(seed)
  chosen = [rng.choice(np.flatnonzero(labels == label), quota, replace=False)
            for label, quota in zip(classes, quotas) if quota]
  return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def _largest_remainder(sizes, count):
  """Integer shares of `count` proportional to `sizes`, summing to `count` exactly."""
  exact = sizes * count / sizes.sum()
  quotas = np.floor(exact).astype(np.int64)
  order = np.argsort(-(exact - quotas), kind="stable")
  quotas[order[:count - quotas.sum()]] += 1
  return quotas


def class_histogram(labels, num_classes):
  """Examples per class, as a list of `num_classes` ints."""
  return np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(int).tolist()


def histogram_warnings(name, subset_histogram, split_histogram):
  """Plain-text warnings when a subset misrepresents its split: a class missing, or frequencies far apart.

  Args:
    name: what the subset is, for the message ('evaluated test examples').
    subset_histogram: examples per class in the subset.
    split_histogram: examples per class in the whole split.

  Returns:
    A list of warning strings (empty when the subset is a fair sample).
  """
  subset, split = np.asarray(subset_histogram, float), np.asarray(split_histogram, float)
  warnings = []
  missing = [int(c) for c in np.flatnonzero((subset == 0) & (split > 0))]
  if missing:
    warnings.append(f"The {name} hold no example of class(es) {', '.join(map(str, missing))}, which the split has.")
  if subset.sum() and split.sum():
    distance = 0.5 * float(np.abs(subset / subset.sum() - split / split.sum()).sum())
    if distance > MAX_HISTOGRAM_DISTANCE:
      warnings.append(f"The class frequencies of the {name} differ from the split's by {distance:.3f} "
                      f"(total variation; more than {MAX_HISTOGRAM_DISTANCE}).")
  return warnings
