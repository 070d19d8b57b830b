"""Test helper for the loaders' fuzz tests: bounded Hypothesis settings and a byte mutation of a valid file.

Runs are derandomized and bounded so that CI takes the same, short time on every run; the property under test is
always "any bytes give a result or a DataError, never another exception".
"""

import hypothesis
from hypothesis import strategies as st

SETTINGS = hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))

# (cut, flips) for `mutate`: where to truncate, as a fraction, and up to six (fraction, byte value) overwrites.
MUTATION = st.tuples(st.floats(0.0, 1.0), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)),
                                                    max_size=6))


def mutate(payload, cut, flips):
  """Truncates `payload` at `cut` (as a fraction) and overwrites bytes at the given (fraction, value) places."""
  mutated = bytearray(payload[:max(0, int(len(payload) * cut))])
  for where, value in flips:
    if mutated:
      mutated[int(where * (len(mutated) - 1))] = value
  return bytes(mutated)
