"""How many values a JSON body holds, counted on its bytes before it is parsed.

Parsing JSON into Python lists costs tens of bytes per number, so a body within the size limit can still cost
gigabytes once parsed. In JSON without empty arrays or objects, the separating commas outside strings number one
less than the leaves (numbers, strings, ...), so counting them bounds the batch a body carries at the cost of a few
vectorised passes over its bytes, in fixed-size chunks so that the scan's own memory stays small.
"""

import numpy as np

_CHUNK = 1 << 20
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")


def _escaped(quotes, backslashes, carried_run):
  """Which `quotes` (positions) follow an odd run of backslashes; `carried_run` backslashes end the previous chunk."""
  if not len(quotes):
    return np.zeros(0, bool)
  run_length = np.zeros(len(quotes), np.int64)
  if len(backslashes):
    starts = np.flatnonzero(np.diff(backslashes, prepend=-2) != 1)
    run_start = np.maximum.accumulate(np.isin(np.arange(len(backslashes)), starts) * np.arange(len(backslashes)))
    last = np.searchsorted(backslashes, quotes) - 1
    adjacent = (last >= 0) & (backslashes[np.maximum(last, 0)] == quotes - 1)
    first = backslashes[run_start[np.maximum(last, 0)]]
    run_length = np.where(adjacent, quotes - first + (first == 0) * carried_run, 0)
  run_length = np.where(quotes == 0, carried_run, run_length)
  return run_length % 2 == 1


def _trailing_backslashes(chunk, carried_run):
  """The length of the backslash run that ends `chunk` (continuing `carried_run` if the chunk is all backslashes)."""
  others = np.flatnonzero(chunk != _BACKSLASH)
  if not len(others):
    return carried_run + len(chunk)
  return len(chunk) - 1 - int(others[-1])


class ValueCounter:
  """Counts the values of a JSON body fed to it in pieces (as it arrives), so a body can be refused part-read."""

  def __init__(self):
    self._in_string = False
    self._carried_run = 0  # backslashes ending the previous piece
    self._commas = 0

  @property
  def count(self):
    """The values seen so far: commas outside strings, plus one. It only grows as more of the body is fed."""
    return self._commas + 1

  def feed(self, piece):
    """Counts the commas of `piece` (bytes), the next part of the body."""
    data = np.frombuffer(piece, np.uint8)
    for start in range(0, len(data), _CHUNK):
      self._feed_chunk(data[start:start + _CHUNK])

  def _feed_chunk(self, chunk):
    quotes = np.flatnonzero(chunk == _QUOTE)
    quotes = quotes[~_escaped(quotes, np.flatnonzero(chunk == _BACKSLASH), self._carried_run)]
    quotes_before = np.searchsorted(quotes, np.flatnonzero(chunk == _COMMA))
    self._commas += int(np.count_nonzero((quotes_before + self._in_string) % 2 == 0))
    self._in_string = bool((len(quotes) + self._in_string) % 2)
    self._carried_run = _trailing_backslashes(chunk, self._carried_run)


def count_values(body):
  """The number of values a JSON body holds: commas outside strings, plus one.

  Exact for JSON without empty arrays or objects (for which the count is a little higher); for text that is not
  JSON it is just a number that the parser that follows will reject anyway.
  """
  counter = ValueCounter()
  counter.feed(body)
  return counter.count
