"""Tests for tfrobprune.prune.validation: each check names the argument and repeats the value it rejects."""

import re

from absl.testing import absltest
from absl.testing import parameterized

from tfrobprune.prune import validation


class ValidationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("One", 1.0, "sparsity must be a number in [0, 1), got 1.0."),
      ("Negative", -0.1, "sparsity must be a number in [0, 1), got -0.1."),
      ("Bool", True, "sparsity must be a number in [0, 1), got True."),
      ("String", "0.5", "sparsity must be a number in [0, 1), got '0.5'."),
  )
  def testCheckFraction_RejectsNamingValue(self, value, message):
    with self.assertRaisesRegex(ValueError, re.escape(message)):
      validation.check_fraction("sparsity", value)

  def testCheckFraction_AcceptsZeroAndBelowOne(self):
    validation.check_fraction("sparsity", 0)
    validation.check_fraction("sparsity", 0.999)

  @parameterized.named_parameters(
      ("BelowMinimum", 0, "steps must be an integer >= 1, got 0."),
      ("Float", 2.0, "steps must be an integer >= 1, got 2.0."),
      ("Bool", True, "steps must be an integer >= 1, got True."),
  )
  def testCheckInt_RejectsNamingValue(self, value, message):
    with self.assertRaisesRegex(ValueError, re.escape(message)):
      validation.check_int("steps", value, 1)

  def testCheckChoice_ListsTheChoices(self):
    validation.check_choice("scope", "layer", ("layer", "global"))
    with self.assertRaisesRegex(ValueError, re.escape("scope must be one of layer, global; got 'all'.")):
      validation.check_choice("scope", "all", ("layer", "global"))

  def testLayerNamesTuple_TurnsListsIntoTuples_AndRefusesStringsAndScalars(self):
    self.assertEqual(validation.layer_names_tuple("exclude_layers", ["conv1", "fc1"]), ("conv1", "fc1"))
    with self.assertRaisesRegex(ValueError, re.escape("got the string 'conv1'; did you mean ('conv1',)?")):
      validation.layer_names_tuple("exclude_layers", "conv1")
    with self.assertRaisesRegex(ValueError, re.escape("exclude_layers must be a sequence, got 3.")):
      validation.layer_names_tuple("exclude_layers", 3)
    with self.assertRaisesRegex(ValueError, re.escape("exclude_layers must be a sequence of layer names, got 3.")):
      validation.layer_names_tuple("exclude_layers", 3, "a sequence of layer names")

  def testCheckStrings_RejectsNonStringNames(self):
    validation.check_strings("exclude_layers", ("conv1",))
    with self.assertRaisesRegex(ValueError, re.escape("exclude_layers must hold layer names (strings), got (1,).")):
      validation.check_strings("exclude_layers", (1,))


if __name__ == "__main__":
  absltest.main()
