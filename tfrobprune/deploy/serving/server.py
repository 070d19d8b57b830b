"""A development model server that speaks TF Serving's own gRPC and REST protocols: `ModelServer`, `serve_forever`.

It serves one model of an export directory in TF Serving's layout, EXPORT_BASE/<model_name>/<int>/, so that client
code written for `tensorflow_model_server` runs unchanged against it. What is served, the version policy and the
error codes are documented in docs/serving.md.
"""

import concurrent.futures
import ipaddress
import os
import signal
import threading
from typing import Optional

from absl import logging
import grpc

from tfrobprune.deploy.serving import errors
from tfrobprune.deploy.serving import execution
from tfrobprune.deploy.serving import grpc_service
from tfrobprune.deploy.serving import rest
from tfrobprune.deploy.serving import signatures
from tfrobprune.deploy.serving import validation
from tfrobprune.deploy.serving import versions

DEFAULT_GRPC_PORT = 8500  # tensorflow_model_server's --port
DEFAULT_REST_PORT = 8501  # tensorflow_model_server's --rest_api_port

# The package's other public names, importable from here as before it was split into modules.
MAX_REQUEST_BYTES = validation.MAX_REQUEST_BYTES
PIXEL_RANGE = validation.PIXEL_RANGE
SIGNATURE_KEY = signatures.SIGNATURE_KEY
SIGNATURE_DEF_FIELD = signatures.SIGNATURE_DEF_FIELD
ServingError = errors.ServingError
ModelLoadError = versions.ModelLoadError
list_versions = versions.list_versions

DEFAULT_REST_WORKERS = 16
DEFAULT_REST_QUEUE = 64
DEFAULT_REQUEST_TIMEOUT_S = 30.0

_MAX_CONCURRENT_RPCS = 64
_GRPC_WORKERS = 8
_MODEL_WORKERS = 8  # threads running the model for both protocols (`execution.ModelExecutor`)
_STOP_GRACE_S = 1.0


def _bracketed(host):
  """`host` as it goes before ':port' (IPv6 addresses in brackets)."""
  return f"[{host}]" if ":" in host else host


def _check_port(name, port):
  if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
    raise ValueError(f"{name} must be an integer port in [0, 65535] (0 picks a free port), got {port!r}.")


def _check_positive_int(name, value):
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def is_loopback(host):
  """Whether binding `host` keeps the server on this machine: 'localhost' or a loopback address."""
  if host.lower() == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:  # A host name: it may resolve to any interface.
    return False


class ModelServer:
  """Serves EXPORT_BASE/<model_name>/ over TF Serving's gRPC and REST APIs (see docs/serving.md).

  Usage:
    with ModelServer(export_base, "cnn_small") as server:
      channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
      ...
  """

  def __init__(self, base_path, model_name, *, host="127.0.0.1", grpc_port=0, rest_port=0, max_batch=256,
               poll_seconds=1.0, rest_workers=DEFAULT_REST_WORKERS, rest_queue=DEFAULT_REST_QUEUE,
               request_timeout=DEFAULT_REQUEST_TIMEOUT_S):
    """Checks the arguments; nothing is loaded or bound before `start`.

    Args:
      base_path: the export base directory, holding <model_name>/<integer version>/ SavedModels.
      model_name: the model's directory name, and the name clients ask for.
      host: the address to bind; loopback by default. '0.0.0.0' (or '::') exposes the server to the network.
      grpc_port: the gRPC port; 0 picks a free one (see `grpc_port` after `start`).
      rest_port: the REST port; 0 picks a free one (see `rest_port` after `start`).
      max_batch: the largest batch (dimension 0) a request may send; larger ones get INVALID_ARGUMENT.
      poll_seconds: how often to look for a new version directory.
      rest_workers: REST connections served at once, each by one thread of a fixed pool.
      rest_queue: accepted REST connections that may wait for a worker; more are answered 503 at once.
      request_timeout: seconds within which a request must be read, parsed and run (gRPC: or the client's deadline
        if sooner); later ones get DEADLINE_EXCEEDED (REST: 408 while reading, 504 while running the model).

    Raises:
      ValueError: for an argument out of range or a model directory that does not exist.
    """
    base_path = os.fspath(base_path)
    if not isinstance(model_name, str) or not model_name or model_name in (".", "..") or "/" in model_name:
      raise ValueError(f"model_name must be a plain directory name, got {model_name!r}.")
    self.model_dir = os.path.join(base_path, model_name)
    if not os.path.isdir(self.model_dir):
      raise ValueError(f"No model directory {self.model_dir}: base_path {base_path!r} must hold {model_name}/ with "
                       "integer version directories.")
    if not isinstance(host, str) or not host:
      raise ValueError(f"host must be an address to bind such as '127.0.0.1', got {host!r}.")
    _check_port("grpc_port", grpc_port)
    _check_port("rest_port", rest_port)
    if not isinstance(max_batch, int) or max_batch < 1:
      raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}.")
    if not poll_seconds > 0:
      raise ValueError(f"poll_seconds must be > 0, got {poll_seconds!r}.")
    _check_positive_int("rest_workers", rest_workers)
    _check_positive_int("rest_queue", rest_queue)
    if isinstance(request_timeout, bool) or not isinstance(request_timeout, (int, float)) or not request_timeout > 0:
      raise ValueError(f"request_timeout must be a number of seconds > 0, got {request_timeout!r}.")
    self._model = versions.VersionedModel(self.model_dir, model_name)
    self.host = host
    self.max_batch = max_batch
    self._requested_ports = (grpc_port, rest_port)
    self._poll_seconds = poll_seconds
    self.rest_workers = rest_workers
    self.rest_queue = rest_queue
    self.request_timeout = float(request_timeout)
    self._executor = None
    self.grpc_port = None
    self.rest_port = None
    self._grpc_server = None
    self._httpd = None
    self._threads = []
    self._stopping = threading.Event()
    self._started = False

  @property
  def model_name(self):
    return self._model.name

  @property
  def version(self) -> Optional[int]:
    """The version being served, or None while no version is loaded."""
    servable = self._model.servable
    return servable.version if servable is not None else None

  def start(self):
    """Loads the highest version, binds both ports and starts polling for new versions.

    Raises:
      ModelLoadError: the highest version directory cannot be served (with no version at all, the server starts
        and answers NOT_FOUND until one appears).
      RuntimeError: `start` was called before, or a port cannot be bound.
    """
    if self._started:
      raise RuntimeError("ModelServer.start() may be called once; create a new ModelServer to serve again.")
    self._started = True
    error = self._model.refresh()
    if error is not None:
      raise error
    if self.version is None:
      logging.warning("No integer version directory under %s yet; answering NOT_FOUND until one appears.",
                      self.model_dir)
    if not is_loopback(self.host):
      logging.warning("Binding %s, which is not a loopback address: any host that can reach it can use this "
                      "development server, which has no authentication or TLS. Bind 127.0.0.1 unless you mean to.",
                      self.host)
    self._executor = execution.ModelExecutor(_MODEL_WORKERS)
    try:
      self._start_grpc()
      self._start_rest()
    except BaseException:
      self.stop()
      raise
    self._spawn(self._poll, "poll")
    logging.info("Serving %s: gRPC at %s:%d, REST at %s:%d.", self.model_name, self.host, self.grpc_port,
                 self.host, self.rest_port)
    return self

  def _start_grpc(self):
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=_GRPC_WORKERS, thread_name_prefix="serve-grpc"),
        maximum_concurrent_rpcs=_MAX_CONCURRENT_RPCS,
        options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES), ("grpc.so_reuseport", 0)])
    grpc_service.add_to_server(server, self._model, self.max_batch, self._executor, self.request_timeout)
    address = _bracketed(self.host)
    try:
      port = server.add_insecure_port(f"{address}:{self._requested_ports[0]}")
    except RuntimeError as error:
      raise RuntimeError(f"Cannot bind the gRPC port {address}:{self._requested_ports[0]}: {error}") from error
    if not port:
      raise RuntimeError(f"Cannot bind the gRPC port {address}:{self._requested_ports[0]}.")
    server.start()
    self._grpc_server, self.grpc_port = server, port

  def _start_rest(self):
    try:
      self._httpd = rest.make_http_server(self.host, self._requested_ports[1], self._model, self.max_batch,
                                          executor=self._executor, workers=self.rest_workers,
                                          queue_size=self.rest_queue, request_timeout=self.request_timeout)
    except OSError as error:
      raise RuntimeError(f"Cannot bind the REST port {self.host}:{self._requested_ports[1]}: {error}") from error
    self.rest_port = self._httpd.server_address[1]
    self._spawn(self._httpd.serve_forever, "rest")

  def _spawn(self, target, name):
    thread = threading.Thread(target=target, name=f"serve-{name}", daemon=True)
    thread.start()
    self._threads.append(thread)

  def _poll(self):
    while not self._stopping.wait(self._poll_seconds):
      try:
        self._model.refresh()
      except Exception:  # e.g. the model directory vanished for a moment; keep serving and keep polling.
        logging.exception("Polling %s for new versions failed.", self.model_dir)

  def stop(self):
    """Stops polling and both servers; in-flight gRPC calls get `_STOP_GRACE_S` to finish. Idempotent."""
    self._stopping.set()
    if self._httpd is not None:
      if any(t.name == "serve-rest" for t in self._threads):
        self._httpd.shutdown()
      self._httpd.server_close()
      self._httpd = None
    if self._grpc_server is not None:
      self._grpc_server.stop(_STOP_GRACE_S).wait()
      self._grpc_server = None
    for thread in self._threads:
      thread.join(timeout=10)
    self._threads = []
    if self._executor is not None:
      self._executor.shutdown()
      self._executor = None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc_info):
    self.stop()


def serve_forever(base_path, model_name, host="127.0.0.1", grpc_port=DEFAULT_GRPC_PORT,
                  rest_port=DEFAULT_REST_PORT, max_batch=256, *, poll_seconds=1.0, rest_workers=DEFAULT_REST_WORKERS,
                  rest_queue=DEFAULT_REST_QUEUE, request_timeout=DEFAULT_REQUEST_TIMEOUT_S):
  """Runs a ModelServer until SIGINT or SIGTERM, then stops it cleanly; for `tfrobprune serve`.

  Prints the two addresses to stdout once serving. Must be called from the main thread (signal handlers).

  Args:
    base_path, model_name, host, grpc_port, rest_port, max_batch, poll_seconds, rest_workers, rest_queue,
      request_timeout: as `ModelServer`; the default ports are tensorflow_model_server's.

  Raises:
    ValueError, ModelLoadError, RuntimeError: as `ModelServer` and `ModelServer.start`.
  """
  stop = threading.Event()

  def request_stop(signum, frame):
    del frame
    logging.info("Received %s; stopping.", signal.Signals(signum).name)
    stop.set()

  previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    with ModelServer(base_path, model_name, host=host, grpc_port=grpc_port, rest_port=rest_port,
                     max_batch=max_batch, poll_seconds=poll_seconds, rest_workers=rest_workers,
                     rest_queue=rest_queue, request_timeout=request_timeout) as server:
      print(f"Serving model {model_name!r} version {server.version} from {server.model_dir}\n"
            f"  gRPC: {_bracketed(host)}:{server.grpc_port}\n"
            f"  REST: http://{_bracketed(host)}:{server.rest_port}/v1/models/{model_name}", flush=True)
      while not stop.wait(0.5):
        pass
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
