"""bin/serve_bench: the development server under load and abuse, printed and saved as JSON.

    bin/serve_bench --output=serve_bench.json [--seconds=30 --slow_clients=8 --request_timeout=5]

Exports a tiny model with the package's exporter, starts `serve_forever` on it in a child process bound to
127.0.0.1 (ports picked by the system), and runs at once, for at most --seconds:
  - well-formed REST and gRPC Predict clients, --requests_per_client each (a 503 / RESOURCE_EXHAUSTED is retried
    after a short pause, and counted);
  - slow clients that send a request one byte every --slow_interval seconds, reconnecting when cut off;
  - abusive clients cycling through oversized and malformed bodies and headers and clients that disconnect
    mid-request.
It reports the answers per kind, the p50/p99 latency of the well-formed requests (retries included), the peak RSS
and thread count of the server process, whether every well-formed request was answered 200 and whether the server
stayed up (it must answer both protocols afterwards). The child is stopped at the end in every case.
"""

import collections
import concurrent.futures
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfrobprune import console  # pylint: disable=g-import-not-at-top,wrong-import-position

console.quiet_tensorflow(sys.argv)  # before TensorFlow's import

import grpc  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from tfrobprune import report  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfrobprune.deploy import saved_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfrobprune.keras_compat import keras, tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top

_OUTPUT = flags.DEFINE_string("output", "serve_bench.json", "Where to write the figures (JSON).")
_SECONDS = flags.DEFINE_float("seconds", 30.0, "Longest time under load (s); the run stops then in any case.",
                              lower_bound=1.0)
_REQUESTS = flags.DEFINE_integer("requests_per_client", 100, "Well-formed requests per well-formed client.",
                                 lower_bound=1)
_REST_CLIENTS = flags.DEFINE_integer("rest_clients", 8, "Concurrent well-formed REST clients.", lower_bound=0)
_GRPC_CLIENTS = flags.DEFINE_integer("grpc_clients", 8, "Concurrent well-formed gRPC clients.", lower_bound=0)
_SLOW_CLIENTS = flags.DEFINE_integer("slow_clients", 8, "Clients sending one byte every --slow_interval s.",
                                     lower_bound=0)
_SLOW_INTERVAL = flags.DEFINE_float("slow_interval", 2.0, "Seconds between the bytes of a slow client.",
                                    lower_bound=0.01)
_ABUSIVE_CLIENTS = flags.DEFINE_integer("abusive_clients", 4, "Clients sending malformed, oversized and broken "
                                        "requests.", lower_bound=0)
_BATCH = flags.DEFINE_integer("batch", 4, "Images per well-formed request.", lower_bound=1)
_MAX_BATCH = flags.DEFINE_integer("max_batch", 32, "The server's --max_batch.", lower_bound=1)
_REST_WORKERS = flags.DEFINE_integer("rest_workers", 16, "The server's --rest_workers.", lower_bound=1)
_REST_QUEUE = flags.DEFINE_integer("rest_queue", 64, "The server's --rest_queue.", lower_bound=1)
_REQUEST_TIMEOUT = flags.DEFINE_float("request_timeout", 5.0, "The server's --request_timeout (s).",
                                      lower_bound=0.1)

_HOST = "127.0.0.1"  # loopback only, always
_MODEL = "bench"
_SHAPE = (8, 8, 1)
_RETRY_PAUSE_S = 0.05
_SOCKET_TIMEOUT_S = 30.0
_SERVER_SCRIPT = """
import sys
from tfrobprune.deploy.serving import server
base, max_batch, workers, queue_size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \\
    float(sys.argv[5])
server.serve_forever(base, "bench", "127.0.0.1", 0, 0, max_batch, rest_workers=workers, rest_queue=queue_size,
                     request_timeout=timeout)
"""


def _export_model(base):
  """A tiny Keras model written by the package's exporter (its serving signature, range assertions included)."""
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.layers.Flatten(input_shape=_SHAPE), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(10)])
  saved_model.export_saved_model(model, base, _MODEL, version=1)


class _Server:
  """The server child process: its ports, and its RSS and thread count sampled every few milliseconds."""

  def __init__(self, base):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), TF_CPP_MIN_LOG_LEVEL="2")
    self._stderr = tempfile.TemporaryFile()
    self.process = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT, base, str(_MAX_BATCH.value), str(_REST_WORKERS.value),
         str(_REST_QUEUE.value), str(_REQUEST_TIMEOUT.value)],
        stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
    self.rest_port, self.grpc_port = self._read_ports()
    self.samples = []
    self._sampling = threading.Event()

  def _read_ports(self):
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
    ports, deadline = {}, time.monotonic() + 300
    while len(ports) < 2 and time.monotonic() < deadline and self.process.poll() is None:
      try:
        line = lines.get(timeout=1)
      except queue.Empty:
        continue
      for kind in ("gRPC", "REST"):
        if line.strip().startswith(f"{kind}:"):
          ports[kind] = int(line.rsplit(f"{_HOST}:", 1)[1].split("/")[0])
    if len(ports) < 2:
      self._stderr.seek(0)
      raise RuntimeError(f"The server did not start: {self._stderr.read()[-3000:].decode(errors='replace')}")
    return ports["REST"], ports["gRPC"]

  def sample(self):
    """(RSS in MiB, threads) of the server now, from /proc."""
    fields = {}
    with open(f"/proc/{self.process.pid}/status") as status:
      for line in status:
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["Threads"][0])

  def start_sampling(self):
    def loop():
      while not self._sampling.wait(0.02) and self.process.poll() is None:
        try:
          self.samples.append(self.sample())
        except (OSError, KeyError):
          return
    threading.Thread(target=loop, daemon=True).start()

  def stop_sampling(self):
    self._sampling.set()

  def stop(self):
    """SIGTERM (a clean stop), then SIGKILL if it has not exited within 30 s; returns the exit status."""
    self._sampling.set()
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      try:
        self.process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    return self.process.returncode


class _Tally:
  """Thread-safe counts of outcomes per kind, and latencies of the well-formed requests."""

  def __init__(self):
    self._lock = threading.Lock()
    self.counts = collections.defaultdict(collections.Counter)
    self.latencies = collections.defaultdict(list)

  def add(self, kind, outcome, latency=None):
    with self._lock:
      self.counts[kind][str(outcome)] += 1
      if latency is not None:
        self.latencies[kind].append(latency)


def _http_status(sock):
  """The status code of the answer on `sock` (read until the server closes), or 'no answer'."""
  data = b""
  try:
    while len(data) < 65536 and (chunk := sock.recv(65536)):
      data += chunk
      if b"\r\n\r\n" in data and b"Connection: close" not in data.split(b"\r\n\r\n")[0]:
        break
  except OSError as error:
    return f"no answer ({type(error).__name__})" if not data else int(data.split()[1])
  return int(data.split()[1]) if data.startswith(b"HTTP/") else "no answer (closed)"


def _post(port, body, headers=""):
  """Raw bytes of a POST :predict with `body` and extra `headers` lines."""
  return (f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: {_HOST}\r\nConnection: close\r\n{headers}"
          f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _rest_client(port, body, stop, tally):
  """Sends --requests_per_client well-formed :predict requests, one connection each, retrying 503s."""
  request = _post(port, body)
  for _ in range(_REQUESTS.value):
    start = time.monotonic()
    while not stop.is_set():
      try:
        with socket.create_connection((_HOST, port), timeout=_SOCKET_TIMEOUT_S) as sock:
          sock.sendall(request)
          status = _http_status(sock)
      except OSError as error:
        status = f"no answer ({type(error).__name__})"
      if status != 503:
        break
      tally.add("rest_predict", "503 (retried)")
      time.sleep(_RETRY_PAUSE_S)
    else:
      tally.add("rest_predict", "not answered before the end")
      return
    tally.add("rest_predict", status, time.monotonic() - start if status == 200 else None)


def _grpc_client(port, request, stop, tally):
  """Sends --requests_per_client well-formed Predict calls on one channel, retrying RESOURCE_EXHAUSTED."""
  with grpc.insecure_channel(f"{_HOST}:{port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for _ in range(_REQUESTS.value):
      start = time.monotonic()
      while not stop.is_set():
        try:
          stub.Predict(request, timeout=_SOCKET_TIMEOUT_S)
          outcome = "OK"
        except grpc.RpcError as error:
          outcome = error.code().name
        if outcome != "RESOURCE_EXHAUSTED":
          break
        tally.add("grpc_predict", "RESOURCE_EXHAUSTED (retried)")
        time.sleep(_RETRY_PAUSE_S)
      else:
        tally.add("grpc_predict", "not answered before the end")
        return
      tally.add("grpc_predict", outcome, time.monotonic() - start if outcome == "OK" else None)


def _slow_client(port, body, stop, tally):
  """Sends well-formed requests one byte every --slow_interval s until cut off, then again, until `stop`."""
  request = _post(port, body)
  while not stop.is_set():
    start = time.monotonic()
    try:
      with socket.create_connection((_HOST, port), timeout=_SOCKET_TIMEOUT_S) as sock:
        for byte in request:
          sock.sendall(bytes([byte]))
          if stop.wait(_SLOW_INTERVAL.value):
            return
          if _pending(sock):
            break
        status = _http_status(sock)
    except OSError as error:
      status = f"cut ({type(error).__name__})"
    tally.add("slow", status, time.monotonic() - start)


def _pending(sock):
  """Whether the server has sent something (an answer, or the end of the connection) on `sock`."""
  try:
    sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"" once the server has closed the connection
    return True
  except BlockingIOError:
    return False


def _abuses(port, max_batch):
  """(kind, request bytes, whether to read an answer) of each abusive request."""
  image = json.dumps(np.full(_SHAPE, 0.5).tolist())
  huge_batch = ('{"instances": [%s]}' % ",".join([image] * (max_batch * 2000))).encode()
  return [
      ("oversized_content_length", (f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                                    f"Content-Length: {65 * 2**20}\r\n\r\n").encode(), True),
      ("huge_batch_body", _post(port, huge_batch), True),
      ("malformed_json", _post(port, b'{"instances": [[[[0.5'), True),
      ("out_of_range_pixels", _post(port, json.dumps({"inputs": [np.full(_SHAPE, 7.0).tolist()]}).encode()), True),
      ("duplicate_content_length", _post(port, b"{}", "Content-Length: 2\r\n"), True),
      ("length_and_chunked", _post(port, b"{}", "Transfer-Encoding: chunked\r\n"), True),
      ("malformed_header", _post(port, b"{}", "Content-Length 2\r\n"), True),
      ("garbage_request_line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", True),
      ("disconnect_mid_body", _post(port, b'{"instances": [' + b"0.5, " * 2000)[:-3000], False),
      ("disconnect_before_answer", _post(port, json.dumps({"inputs": [np.full(_SHAPE, 0.5).tolist()]}).encode()),
       False),
  ]


def _abusive_client(port, abuses, offset, stop, tally):
  """Sends the abuses in turn (each client starting at another), one connection each, until `stop`."""
  index = offset
  while not stop.is_set():
    kind, request, read = abuses[index % len(abuses)]
    index += 1
    try:
      with socket.create_connection((_HOST, port), timeout=_SOCKET_TIMEOUT_S) as sock:
        try:
          sock.sendall(request)
        except OSError:  # The server answered and closed before taking it all (an oversized body): read that.
          pass
        status = _http_status(sock) if read else "disconnected"
    except OSError as error:
      status = f"no answer ({type(error).__name__})"
    tally.add(kind, status)


def _percentiles(latencies):
  if not latencies:
    return None
  values = np.asarray(latencies) * 1000
  return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2),
          "max": round(float(values.max()), 2), "count": len(values)}


def _run_load(server, tally):
  """All clients at once, until the well-formed ones are done or --seconds pass; returns the seconds taken."""
  images = np.random.default_rng(0).uniform(0, 1, (_BATCH.value, *_SHAPE)).astype(np.float32)
  body = json.dumps({"instances": images.tolist()}).encode()
  grpc_request = predict_pb2.PredictRequest()
  grpc_request.model_spec.name = _MODEL
  grpc_request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
  abuses = _abuses(server.rest_port, _MAX_BATCH.value)
  stop = threading.Event()
  background = [threading.Thread(target=_slow_client, args=(server.rest_port, body, stop, tally), daemon=True)
                for _ in range(_SLOW_CLIENTS.value)]
  background += [threading.Thread(target=_abusive_client, args=(server.rest_port, abuses, i, stop, tally),
                                  daemon=True) for i in range(_ABUSIVE_CLIENTS.value)]
  start = time.monotonic()
  for thread in background:
    thread.start()
  time.sleep(min(2.0, _SECONDS.value / 4))  # The abuse is under way before the well-formed load starts.
  with concurrent.futures.ThreadPoolExecutor(_REST_CLIENTS.value + _GRPC_CLIENTS.value or 1) as pool:
    futures = [pool.submit(_rest_client, server.rest_port, body, stop, tally) for _ in range(_REST_CLIENTS.value)]
    futures += [pool.submit(_grpc_client, server.grpc_port, grpc_request, stop, tally)
                for _ in range(_GRPC_CLIENTS.value)]
    concurrent.futures.wait(futures, timeout=max(0.0, _SECONDS.value - (time.monotonic() - start)))
    stop.set()
  for thread in background:
    thread.join(timeout=_SOCKET_TIMEOUT_S)
  return time.monotonic() - start, body, grpc_request


def _still_serving(server, body, grpc_request):
  """Whether the server process is alive and answers one REST and one gRPC Predict with success."""
  if server.process.poll() is not None:
    return False
  with socket.create_connection((_HOST, server.rest_port), timeout=_SOCKET_TIMEOUT_S) as sock:
    sock.sendall(_post(server.rest_port, body))
    rest_ok = _http_status(sock) == 200
  with grpc.insecure_channel(f"{_HOST}:{server.grpc_port}") as channel:
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(grpc_request, timeout=30)
  return rest_ok and response.outputs["logits"].tensor_shape.dim[0].size == _BATCH.value


def _figures(server, tally, seconds, stayed_up, before):
  rss = [rss for rss, _ in server.samples] or [before[0]]
  threads = [threads for _, threads in server.samples] or [before[1]]
  expected = {"rest_predict": _REST_CLIENTS.value * _REQUESTS.value,
              "grpc_predict": _GRPC_CLIENTS.value * _REQUESTS.value}
  succeeded = {"rest_predict": tally.counts["rest_predict"]["200"], "grpc_predict": tally.counts["grpc_predict"]["OK"]}
  return {
      "config": {name: flag.value for name, flag in (
          ("seconds", _SECONDS), ("requests_per_client", _REQUESTS), ("rest_clients", _REST_CLIENTS),
          ("grpc_clients", _GRPC_CLIENTS), ("slow_clients", _SLOW_CLIENTS), ("slow_interval", _SLOW_INTERVAL),
          ("abusive_clients", _ABUSIVE_CLIENTS), ("batch", _BATCH), ("max_batch", _MAX_BATCH),
          ("rest_workers", _REST_WORKERS), ("rest_queue", _REST_QUEUE), ("request_timeout", _REQUEST_TIMEOUT))},
      "seconds_under_load": round(seconds, 2),
      "answers": {kind: dict(sorted(counts.items())) for kind, counts in sorted(tally.counts.items())},
      "well_formed": {kind: {"expected": expected[kind], "succeeded": succeeded[kind],
                             "latency_ms": _percentiles(tally.latencies[kind])} for kind in expected},
      "slow_clients_held_s": _percentiles(tally.latencies["slow"]) and {
          k: round(v / 1000, 2) for k, v in _percentiles(tally.latencies["slow"]).items() if k != "count"},
      "server": {"rss_mib_before": round(before[0], 1), "rss_mib_peak": round(max(rss), 1),
                 "threads_before": before[1], "threads_peak": max(threads)},
      "every_well_formed_request_answered_200": all(succeeded[kind] == expected[kind] for kind in expected),
      "server_stayed_up": stayed_up,
  }


def main(argv):
  del argv
  tally = _Tally()
  with tempfile.TemporaryDirectory() as base:
    _export_model(base)
    server = _Server(base)
    try:
      time.sleep(1.0)
      before = server.sample()
      server.start_sampling()
      seconds, body, grpc_request = _run_load(server, tally)
      server.stop_sampling()
      stayed_up = _still_serving(server, body, grpc_request)
    finally:
      exit_status = server.stop()
  figures = _figures(server, tally, seconds, stayed_up, before)
  figures["server"]["exit_status_after_sigterm"] = exit_status
  text = json.dumps(figures, indent=2)
  print(text)
  report.atomic_write(os.path.abspath(_OUTPUT.value), text + "\n")
  print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
