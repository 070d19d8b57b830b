"""Tests for tfrobprune.data.subsets: stratified subsets of class-ordered splits, histograms, warnings."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tfrobprune.data import subsets


def _class_ordered(sizes):
  """Labels as a class-ordered loader returns them: all of class 0, then all of class 1, ..."""
  return np.concatenate([np.full(size, label, np.int64) for label, size in enumerate(sizes)])


class StratifiedSubsetTest(parameterized.TestCase):

  def testSubsetSmallerThanOneClassHoldsEveryClassInProportion(self):
    labels = _class_ordered([500, 500, 250, 250])
    index = subsets.stratified_subset(labels, 120, seed=0)
    self.assertLen(index, 120)
    self.assertLen(set(index.tolist()), 120)
    self.assertEqual(np.bincount(labels[index]).tolist(), [40, 40, 20, 20])
    self.assertTrue(np.all(np.diff(index) > 0), "indices in the split's order")

  def testLargestRemainderAddsUpExactly(self):
    labels = _class_ordered([3, 3, 3])
    # 7/3 each: 2 + 2 + 2 by floor, the one left to the lowest class index among equal remainders.
    self.assertEqual(np.bincount(labels[subsets.stratified_subset(labels, 7, seed=0)]).tolist(), [3, 2, 2])

  def testSameSeedSameSubsetOtherSeedOtherExamples(self):
    labels = _class_ordered([100, 100])
    first = subsets.stratified_subset(labels, 20, seed=3)
    np.testing.assert_array_equal(first, subsets.stratified_subset(labels, 20, seed=3))
    self.assertFalse(np.array_equal(first, subsets.stratified_subset(labels, 20, seed=4)))
    self.assertFalse(np.array_equal(first, np.r_[0:10, 100:110]), "drawn at random within each class")

  @parameterized.parameters(10, 11, 1000)
  def testCountAtLeastTheSplitTakesAllOfIt(self, count):
    np.testing.assert_array_equal(subsets.stratified_subset(_class_ordered([5, 5]), count, seed=0), np.arange(10))

  def testNegativeCountIsRefused(self):
    with self.assertRaisesRegex(ValueError, "count must be >= 0, got -1"):
      subsets.stratified_subset(_class_ordered([5]), -1, seed=0)


class HistogramTest(absltest.TestCase):

  def testClassHistogramCountsEveryClassIncludingEmptyOnes(self):
    self.assertEqual(subsets.class_histogram([0, 2, 2, 3], 5), [1, 0, 2, 1, 0])

  def testFairSubsetHasNoWarning(self):
    self.assertEqual(subsets.histogram_warnings("evaluated test examples", [10, 10, 5], [100, 100, 50]), [])

  def testMissingClassAndSkewAreReported(self):
    warnings = subsets.histogram_warnings("evaluated test examples", [20, 5, 0], [100, 100, 100])
    self.assertLen(warnings, 2)
    self.assertIn("no example of class(es) 2", warnings[0])
    self.assertIn("differ from the split's by 0.467", warnings[1])

  def testFirstNOfAClassOrderedSplitWouldBeReported(self):
    labels = _class_ordered([50, 50, 50])
    split = subsets.class_histogram(labels, 3)
    self.assertNotEqual(subsets.histogram_warnings("first 60", subsets.class_histogram(labels[:60], 3), split), [])
    fair = subsets.class_histogram(labels[subsets.stratified_subset(labels, 60, seed=0)], 3)
    self.assertEqual(subsets.histogram_warnings("stratified 60", fair, split), [])


if __name__ == "__main__":
  absltest.main()
