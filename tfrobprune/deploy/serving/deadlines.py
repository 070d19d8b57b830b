"""Per-request deadlines: one budget for reading a request, parsing it and running the model.

A socket timeout bounds each read, not the request: a client sending a byte every few seconds would never trip it.
A `Deadline` is fixed when a request starts, and every later wait (socket reads, the model) gets only what is left.
"""

import socket
import time

import grpc

from tfrobprune.deploy.serving import errors

_Code = grpc.StatusCode


class Deadline:
  """The instant by which a request must be answered (time.monotonic seconds)."""

  def __init__(self, seconds, start=None):
    """A deadline `seconds` after `start` (a time.monotonic() reading; now by default)."""
    if not seconds > 0:
      raise ValueError(f"A request deadline must be > 0 seconds, got {seconds!r}.")
    self.seconds = seconds
    self.expires = (time.monotonic() if start is None else start) + seconds

  def remaining(self):
    """Seconds left, never negative."""
    return max(0.0, self.expires - time.monotonic())

  def expired(self):
    return self.remaining() <= 0

  def error(self, stage):
    """The DEADLINE_EXCEEDED ServingError for a request that ran out of time at `stage` (e.g. 'running the model')."""
    return errors.ServingError(_Code.DEADLINE_EXCEEDED, f"Deadline of {self.seconds:g} s exceeded while {stage}.")

  def check(self, stage):
    """Raises `error(stage)` if the deadline has passed."""
    if self.expired():
      raise self.error(stage)


class DeadlineSocketReader(socket.SocketIO):
  """A socket's read side whose every read waits at most until the current deadline of its owner.

  `deadline_of()` returns the Deadline of the request being read (it changes between requests of one keep-alive
  connection). A read past it raises TimeoutError, as a socket timeout does. `bytes_read` counts what was read.
  """

  def __init__(self, sock, deadline_of, received=b""):
    """`received`: bytes already read from `sock` elsewhere, returned first."""
    super().__init__(sock, "rb")
    self._deadline_of = deadline_of
    self._received = memoryview(received)
    self.bytes_read = 0

  def readinto(self, buffer):
    if self._received:
      count = min(len(buffer), len(self._received))
      buffer[:count] = self._received[:count]
      self._received = self._received[count:]
      self.bytes_read += count
      return count
    remaining = self._deadline_of().remaining()
    if remaining <= 0:
      raise TimeoutError("request deadline exceeded")
    self._sock.settimeout(remaining)
    count = super().readinto(buffer)
    self.bytes_read += count or 0
    return count
