"""Waiting for the head (request line and headers) of each new HTTP connection on one thread, not one per client.

A client that sends its request a byte every few seconds would hold a worker thread for as long as it keeps going
(up to the request deadline). Here one thread reads the heads of all new connections as their bytes arrive
(a selector over non-blocking sockets), and a connection goes on to a worker only once its head is complete; one
whose head is not complete by its deadline is answered `timeout_response` (if it sent anything) and closed, without
ever taking a worker.
"""

import dataclasses
import queue
import selectors
import socket
import threading
import time

from absl import logging

_MAX_HEAD_BYTES = 65536 + 8192  # http.server refuses longer request lines and header lines itself
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_POLL_S = 0.1


@dataclasses.dataclass
class _Pending:
  sock: socket.socket
  address: object
  accepted_at: float
  received: bytearray = dataclasses.field(default_factory=bytearray)


class HeadReader:
  """Reads the heads of up to `max_pending` connections at once on one thread (see the module docstring).

  `on_head(sock, address, accepted_at, received)` gets each connection whose head is complete, with the bytes read
  so far (the head, and perhaps the start of the body); `close(sock)` ends the others.
  """

  def __init__(self, *, max_pending, timeout, timeout_response, on_head, close):
    self._max_pending = max_pending
    self._timeout = timeout
    self._timeout_response = timeout_response
    self._on_head = on_head
    self._close = close
    self._selector = selectors.DefaultSelector()
    self._wake_read, self._wake_write = socket.socketpair()
    self._wake_read.setblocking(False)
    self._wake_write.setblocking(False)
    self._selector.register(self._wake_read, selectors.EVENT_READ)
    self._new = queue.SimpleQueue()
    self._pending = {}  # socket -> _Pending, touched by the reader thread only
    self._count = 0  # pending plus not yet registered
    self._count_lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="serve-rest-heads", daemon=True)
    self._thread.start()

  @property
  def pending(self):
    """The number of connections whose head is still awaited."""
    return self._count

  def add(self, sock, address, accepted_at):
    """Starts waiting for the head of `sock`; False (and nothing done) when `max_pending` are already waited for."""
    with self._count_lock:
      if self._count >= self._max_pending:
        return False
      self._count += 1
    sock.setblocking(False)
    self._new.put(_Pending(sock, address, accepted_at))
    self._wake()
    return True

  def _wake(self):
    try:
      self._wake_write.send(b"\0")
    except BlockingIOError:  # Wake-ups already pending: the reader thread will look at the new ones too.
      pass

  def _run(self):
    while not self._stop.is_set():
      for key, _ in self._selector.select(self._wait_s()):
        try:
          if key.fileobj is self._wake_read:
            self._register_new()
          else:
            self._read(key.data)
        except Exception:  # A bug must cost one connection, not every future one.
          logging.exception("Reading a REST request head failed.")
      self._expire()

  def _wait_s(self):
    if not self._pending:
      return _POLL_S
    first = min(p.accepted_at for p in self._pending.values()) + self._timeout
    return min(_POLL_S, max(0.0, first - time.monotonic()))

  def _register_new(self):
    try:
      while self._wake_read.recv(4096):
        pass
    except BlockingIOError:
      pass
    while True:
      try:
        pending = self._new.get_nowait()
      except queue.Empty:
        return
      self._pending[pending.sock] = pending
      self._selector.register(pending.sock, selectors.EVENT_READ, pending)

  def _read(self, pending):
    try:
      data = pending.sock.recv(65536)
    except BlockingIOError:
      return
    except OSError:
      data = b""
    if not data:  # The client closed, or reset, before finishing its head.
      self._finish(pending)
      self._close(pending.sock)
      return
    pending.received += data
    if len(pending.received) >= _MAX_HEAD_BYTES or any(end in pending.received for end in _HEAD_ENDS):
      self._finish(pending)
      pending.sock.setblocking(True)
      self._on_head(pending.sock, pending.address, pending.accepted_at, bytes(pending.received))

  def _expire(self):
    now = time.monotonic()
    for pending in [p for p in self._pending.values() if now - p.accepted_at >= self._timeout]:
      self._finish(pending)
      if pending.received:
        try:
          pending.sock.send(self._timeout_response)
        except OSError:  # Its send buffer is full, or it is gone.
          pass
      self._close(pending.sock)

  def _finish(self, pending):
    self._selector.unregister(pending.sock)
    del self._pending[pending.sock]
    with self._count_lock:
      self._count -= 1

  def close(self):
    """Stops the thread and closes the connections still waited for."""
    self._stop.set()
    self._wake()
    self._thread.join(timeout=5)
    for pending in list(self._pending.values()):
      self._finish(pending)
      pending.sock.close()
    while True:
      try:
        self._new.get_nowait().sock.close()
      except queue.Empty:
        break
    self._selector.close()
    self._wake_read.close()
    self._wake_write.close()
    if self._thread.is_alive():
      logging.warning("The REST head reader did not stop within 5 s.")
