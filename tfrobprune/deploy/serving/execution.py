"""Running the model within a request's deadline, on a bounded set of threads shared by both protocols.

A TensorFlow call cannot be interrupted. So the model runs on a fixed pool of threads and the request waits for it
only until its deadline: a request past its deadline is answered DEADLINE_EXCEEDED at once, its call finishes in
the background, and the pool (not the number of requests) bounds the threads and memory those calls hold.
"""

import concurrent.futures

from tfrobprune.deploy.serving import signatures


class ModelExecutor:
  """A fixed pool of `workers` threads that run signatures for requests with deadlines."""

  def __init__(self, workers):
    if not isinstance(workers, int) or workers < 1:
      raise ValueError(f"The model executor needs an integer >= 1 of workers, got {workers!r}.")
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="serve-model")

  def run(self, signature, arrays, output_names, deadline):
    """`signatures.run_signature(signature, arrays, output_names)`, waited for until `deadline`.

    Raises:
      ServingError: DEADLINE_EXCEEDED when the deadline passes first (a call that had not started is cancelled),
        else as `signatures.run_signature`.
    """
    deadline.check("waiting to run the model")
    future = self._pool.submit(signatures.run_signature, signature, arrays, output_names)
    try:
      return future.result(timeout=deadline.remaining())
    except concurrent.futures.TimeoutError:
      future.cancel()
      raise deadline.error("running the model") from None

  def shutdown(self):
    """Stops taking calls; calls already running finish on their own threads."""
    self._pool.shutdown(wait=False, cancel_futures=True)
