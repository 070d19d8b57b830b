"""Argument checks shared by the pruning and score configs: each raises a ValueError naming the argument and its value.

One place for the wording, so `PruningConfig` and `ScoreConfig` reject the same mistake with the same message.
"""

import numbers


def check_fraction(name, value):
  """Raises a ValueError naming `name` unless `value` is a number in [0, 1) (a sparsity)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
    raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")


def check_int(name, value, minimum):
  """Raises a ValueError naming `name` unless `value` is an integer >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def check_choice(name, value, choices):
  """Raises a ValueError naming `name` and listing `choices` unless `value` is one of them."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


def as_tuple(name, value, expected="a sequence"):
  """Returns `value` as a tuple (JSON gives lists where the configs hold tuples).

  Raises:
    ValueError: naming `name` and saying it must be `expected`, if `value` is not iterable.
  """
  try:
    return tuple(value)
  except TypeError:
    raise ValueError(f"{name} must be {expected}, got {value!r}.") from None


def layer_names_tuple(name, value, expected="a sequence"):
  """Returns the layer names `value` as a tuple; a lone string is refused, as it would iterate as characters.

  Raises:
    ValueError: for a string (suggesting the one-name tuple) or, as `as_tuple`, a value that is not iterable.
  """
  if isinstance(value, str):
    raise ValueError(f"{name} must be a sequence of layer names, got the string {value!r}; "
                     f"did you mean ({value!r},)?")
  return as_tuple(name, value, expected)


def check_strings(name, names):
  """Raises a ValueError naming `name` unless every entry of `names` is a string (a layer name)."""
  if not all(isinstance(entry, str) for entry in names):
    raise ValueError(f"{name} must hold layer names (strings), got {names!r}.")
