"""An HTTP server with a fixed pool of worker threads and a bounded queue of accepted connections.

http.server's ThreadingHTTPServer starts one thread per connection, without limit, so slow or idle clients can make
the server start threads without bound. Here a new connection first waits for its request head on one shared thread
(`http_heads.HeadReader`), then queues for one of `workers` threads; when `queue_size` connections already wait
(or too many heads are awaited), it is answered at once with `overload_response` (bytes) and closed, so overload
costs the server a few bytes per refused connection and no thread. Handlers get when their connection was accepted
and the bytes read with its head (`admission`), so that waiting counts against the request's deadline.
"""

import http.server
import queue
import socket
import threading
import time

from absl import logging

from tfrobprune.deploy.serving import http_heads

_POLL_S = 0.2  # how often idle workers look for the stop flag
_DRAIN_BYTES = 4 << 20  # at most this much of what a client already sent is read and dropped when closing


class PooledHTTPServer(http.server.HTTPServer):
  """`http.server.HTTPServer` whose connections are handled by a fixed pool of threads (see the module docstring)."""
  request_queue_size = 128  # the listen backlog: socketserver's 5 drops bursts of connects (clients retry after 1 s)
  max_pending_heads = 512  # connections whose head is awaited at once (each holds a file descriptor)

  def __init__(self, address, handler_class, *, workers, queue_size, overload_response, head_timeout,
               timeout_response):
    if not isinstance(workers, int) or workers < 1:
      raise ValueError(f"The REST server needs an integer >= 1 of workers, got {workers!r}.")
    if not isinstance(queue_size, int) or queue_size < 1:
      raise ValueError(f"The REST connection queue size must be an integer >= 1, got {queue_size!r}.")
    super().__init__(address, handler_class)
    self.workers = workers
    self._queue = queue.Queue(maxsize=queue_size)
    self._overload_response = overload_response
    self._stop = threading.Event()
    self._active = {}  # connection -> (time.monotonic() when it was accepted, the bytes read with its head)
    self._active_lock = threading.Lock()
    self.refused = 0
    self._heads = http_heads.HeadReader(max_pending=self.max_pending_heads, timeout=head_timeout,
                                        timeout_response=timeout_response, on_head=self._enqueue,
                                        close=self.shutdown_request)
    self._threads = [threading.Thread(target=self._work, name=f"serve-rest-{i}", daemon=True) for i in range(workers)]
    for thread in self._threads:
      thread.start()

  @property
  def busy(self):
    """The number of connections being handled by a worker now."""
    with self._active_lock:
      return len(self._active)

  @property
  def queued(self):
    """The number of accepted connections waiting for a worker."""
    return self._queue.qsize()

  @property
  def pending_heads(self):
    """The number of accepted connections whose request head is still awaited."""
    return self._heads.pending

  def admission(self, request):
    """(time.monotonic() when it was accepted, the bytes read with its head) of a connection a worker handles."""
    with self._active_lock:
      return self._active[request]

  def process_request(self, request, client_address):
    """Waits for the connection's head, or refuses it when too many are awaited (on the accepting thread)."""
    if not self._heads.add(request, client_address, time.monotonic()):
      self._refuse(request)

  def _enqueue(self, request, client_address, accepted_at, received):
    """Queues a connection whose head has arrived for a worker, or refuses it when the queue is full."""
    try:
      self._queue.put_nowait((request, client_address, (accepted_at, received)))
    except queue.Full:
      self._refuse(request)

  def _refuse(self, request):
    """Sends `overload_response` without blocking, and closes."""
    self.refused += 1
    try:
      request.setblocking(False)
      request.send(self._overload_response)
    except OSError:  # The client is gone.
      pass
    self.shutdown_request(request)

  def shutdown_request(self, request):
    """Ends the connection with FIN, drops what the client already sent (up to `_DRAIN_BYTES`, without waiting) so
    that closing does not reset the connection before the client reads the answer, and closes it."""
    try:
      request.shutdown(socket.SHUT_WR)
      request.setblocking(False)
      drained = 0
      while drained < _DRAIN_BYTES and (chunk := request.recv(65536)):
        drained += len(chunk)
    except OSError:  # Nothing more to read now, or the client is gone: either way, done.
      pass
    request.close()

  def _work(self):
    while not self._stop.is_set():
      try:
        request, client_address, admission = self._queue.get(timeout=_POLL_S)
      except queue.Empty:
        continue
      with self._active_lock:
        self._active[request] = admission
      try:
        self.finish_request(request, client_address)
      except Exception:  # A bug or a broken connection must cost one connection, not the worker.
        logging.exception("REST connection from %s failed.", client_address)
      finally:
        with self._active_lock:
          self._active.pop(request, None)
        self.shutdown_request(request)

  def server_close(self):
    """Closes the listening socket, the queued connections and the active ones, and waits for the workers."""
    super().server_close()
    self._stop.set()
    self._heads.close()
    while True:
      try:
        request, _, _ = self._queue.get_nowait()
      except queue.Empty:
        break
      request.close()
    with self._active_lock:
      active = list(self._active)
    for request in active:  # Unblocks a worker waiting on a client.
      try:
        request.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass
    for thread in self._threads:
      thread.join(timeout=5)
