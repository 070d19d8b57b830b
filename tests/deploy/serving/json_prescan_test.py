"""Tests for tfrobprune.deploy.serving.json_prescan: JSON values counted on the bytes, checked against the parser."""

import json
import random
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from tfrobprune.deploy.serving import json_prescan


def _leaves(value):
  """The number of non-container values in parsed JSON."""
  if isinstance(value, list):
    return sum(_leaves(item) for item in value)
  if isinstance(value, dict):
    return sum(_leaves(item) for item in value.values())
  return 1


def _random_json(rng, depth=0):
  """Nested lists and objects (never empty) of numbers and strings full of commas, quotes and backslashes."""
  draw = rng.random()
  if depth > 3 or draw < 0.4:
    text = "".join(rng.choice(['a', ',', '\\', '"', ' ', 'é', '[', '}']) for _ in range(rng.randint(0, 6)))
    return rng.choice([1, -2.5e3, None, True, text])
  if draw < 0.7:
    return [_random_json(rng, depth + 1) for _ in range(rng.randint(1, 4))]
  return {f"k{i},\\": _random_json(rng, depth + 1) for i in range(rng.randint(1, 3))}


class CountValuesTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("Number", b"0.5", 1),
      ("Image", json.dumps({"instances": [[[[0.5]] * 4] * 4] * 3}).encode(), 48),
      ("CommasInAString", b'{"signature_name": "a,b,c", "inputs": [1, 2]}', 3),
      ("EscapedQuote", b'{"k": "a\\",b", "v": [1, 2]}', 3),
      ("EscapedBackslashThenQuote", b'{"k": "a\\\\", "v": [1, 2]}', 3),
  )
  def testHandWritten_CountsTheLeaves(self, body, expected):
    self.assertEqual(json_prescan.count_values(body), expected)
    self.assertEqual(_leaves(json.loads(body)), expected)

  @parameterized.named_parameters(("WholeBody", 1 << 20), ("SevenByteChunks", 7), ("OneByteChunks", 1))
  def testRandomJson_SameCountAsTheParser(self, chunk):
    rng = random.Random(chunk)
    with mock.patch.object(json_prescan, "_CHUNK", chunk):  # Strings and backslash runs across chunk borders.
      for _ in range(300):
        value = _random_json(rng)
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8")
        self.assertEqual(json_prescan.count_values(body), _leaves(value), body)


if __name__ == "__main__":
  absltest.main()
