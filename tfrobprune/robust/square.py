"""The Square attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020): score-based, no gradients.

A random search over the vertices of the eps-ball: each iteration changes one square window of the best point
found so far and keeps the change, per example, unless it raises the margin loss (true logit minus the largest
other logit). It needs only logits, so it attacks what gradient attacks cannot: a model with masked gradients and a
deployed LiteRT interpreter. This is the AutoAttack variant (`fra31/auto-attack`, square.py): vertical-stripe
start (L-inf) or a grid of centre-weighted squares (L2), the piecewise schedule of the square's area p, one
window position per iteration shared by the batch, and only the examples not yet fooled are queried.

Differences from the reference, each deliberate:
- an example counts as fooled only when another class's logit is strictly above the true one (the reference
  stops at a tie); int8 artifacts tie on a grid of logits, and a tie is scored by `metrics.tie_aware_accuracy`,
  not settled in the attacker's favour;
- the random signs are drawn for every example at every iteration, so an example's search depends only on its own
  logits: the result does not change with the batching, with which other examples are fooled first, or with
  rounding differences on other examples (a Keras model and its float32 LiteRT file break the same examples);
- a change that leaves the margin equal is kept too (the reference keeps only a lower one): the quantized logits
  of an int8 file are flat over most single-window changes, and drifting across such a plateau is how the search
  gets off it; for float logits an equal margin practically means the change did nothing;
- every window position is possible (the reference never places a window at the last row or column);
- where the drawn signs would leave an example's window as it is (L-inf), the reference redraws them until the
  window changes; here they are flipped, which is the same for one channel and keeps the draws per example.

`keras_logits_fn` and `tflite_logits_fn` turn a Keras model or a LiteRT flatbuffer into the numpy `logits_fn`.
"""

import math

from absl import logging
import numpy as np

from tfrobprune.keras_compat import tf

NORMS = ("linf", "l2")
STANDARD_QUERIES = 5000  # AutoAttack's standard budget
PROGRESS_EVERY = 250  # iterations between two `progress` calls

# The schedule of the square's area: p = p_init / 2**k after the k-th breakpoint (in queries, out of 10,000).
_SCHEDULE_BREAKPOINTS = np.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
_SCHEDULE_LENGTH = 10000


def square_attack(logits_fn, x, y, eps, n_queries=STANDARD_QUERIES, p_init=0.8, norm="linf", seed=0, progress=None,
                  rescale_schedule=False, return_queries=False):
  """Runs the Square attack; returns the best adversarial points and which examples stay robust.

  Args:
    logits_fn: numpy float32 [m, H, W, C] -> numpy logits [m, K], for any m (see `keras_logits_fn`,
      `tflite_logits_fn`). Never differentiated.
    x: float32 [N, H, W, C] images in [0, 1].
    y: int [N] true labels.
    eps: radius of the `norm` ball (pixel scale), >= 0.
    n_queries: iterations (queries per example after the start); AutoAttack's standard is 5000.
    p_init: the square's initial area as a fraction of the image, in (0, 1].
    norm: 'linf' or 'l2'.
    seed: seeds every random draw; the same seed gives the same result.
    progress: optional `progress(queries_done, n_queries, robust_fraction)`, called every `PROGRESS_EVERY`
      iterations and at the end.
    rescale_schedule: stretch the area schedule, made for 10,000 queries, over `n_queries` (the reference's
      `resc_schedule`). AutoAttack's standard run leaves it off (5000 queries on the unscaled schedule).
    return_queries: also return the queries spent per example.

  Returns:
    (x_adv, robust) and, with `return_queries`, the int [N] query counts: x_adv float32 [N, H, W, C], projected into
    the eps-ball around x and into [0, 1]; robust bool [N], re-checked by running `logits_fn` on x_adv: True where
    no other logit is above the true one. Examples the model gets wrong unattacked keep x_adv = x and 0 queries.

  Raises:
    ValueError: for images outside [0, 1] or of the wrong rank, labels that do not match, a negative eps, a bad
      query budget, p_init or norm.
  """
  x, y = _check_inputs(x, y, eps, n_queries, p_init, norm)
  if not len(x):
    empty = (x.copy(), np.zeros(0, bool))
    return (*empty, np.zeros(0, np.int64)) if return_queries else empty
  search = _Search(logits_fn, x, y, float(eps), norm, np.random.default_rng(seed))
  for iteration in range(n_queries if eps > 0 else 0):
    if not search.active():
      break
    search.step(_square_fraction(iteration, n_queries, p_init, rescale_schedule))
    if progress is not None and (iteration + 1) % PROGRESS_EVERY == 0 and iteration + 1 < n_queries:
      progress(iteration + 1, n_queries, search.robust_fraction())
  x_adv = _project(search.result(), x, float(eps), norm)
  robust = margins(logits_fn(x_adv), y) >= 0
  if progress is not None:
    progress(n_queries, n_queries, float(np.mean(robust)))
  _log_queries(search.queries, robust)
  return (x_adv, robust, search.queries) if return_queries else (x_adv, robust)


def margins(logits, y):
  """The true logit minus the largest other logit, per row (negative: another class wins)."""
  logits = np.array(logits, np.float32)
  rows = np.arange(len(y))
  true = logits[rows, y]
  logits[rows, y] = -np.inf
  return true - logits.max(axis=1)


def _check_inputs(x, y, eps, n_queries, p_init, norm):
  """The images and labels as float32 / int64 arrays, every argument checked."""
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int64)
  if x.ndim != 4:
    raise ValueError(f"x must be images [N, H, W, C], got shape {x.shape}.")
  if y.shape != (len(x),):
    raise ValueError(f"y must hold one label per image ({len(x)}), got shape {y.shape}.")
  if len(x) and (x.min() < 0 or x.max() > 1):
    raise ValueError(f"x must be in [0, 1], got values in [{x.min()}, {x.max()}].")
  if not eps >= 0:
    raise ValueError(f"eps must be >= 0, got {eps}.")
  if not isinstance(n_queries, (int, np.integer)) or n_queries < 0:
    raise ValueError(f"n_queries must be an integer >= 0, got {n_queries!r}.")
  if not 0 < p_init <= 1:
    raise ValueError(f"p_init must be in (0, 1], got {p_init}.")
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}.")
  return x, y


def _square_fraction(iteration, n_queries, p_init, rescale):
  """p, the square's area as a fraction of the image at this iteration (halved at each schedule breakpoint)."""
  if rescale:
    iteration = int(iteration / n_queries * _SCHEDULE_LENGTH)
  return p_init / 2 ** int(np.searchsorted(_SCHEDULE_BREAKPOINTS, iteration, side="left"))


def _project(points, x, eps, norm):
  """`points` moved into the `norm` ball of radius eps around x, then into [0, 1] (which keeps them in the ball)."""
  delta = points - x
  if norm == "linf":
    delta = np.clip(delta, -eps, eps)
  else:
    norms = np.sqrt(np.sum(delta.reshape(len(x), -1) ** 2, axis=1)).reshape(-1, 1, 1, 1)
    delta = delta * np.minimum(1.0, eps / np.maximum(norms, 1e-12))
  return np.clip(x + delta, 0.0, 1.0).astype(np.float32)


def _log_queries(queries, robust):
  fooled = queries[~robust & (queries > 0)]
  if len(fooled):
    logging.info("Square: %d examples fooled, %.0f queries on average (median %.0f).", len(fooled),
                 fooled.mean(), np.median(fooled))


class _Search:
  """The state of the random search: best points, their margins and the examples still being searched.

  The searched examples are held as compact arrays (`rows` maps them back to the batch); an example leaves the
  search, its best point written back, when its margin turns negative.
  """

  def __init__(self, logits_fn, x, y, eps, norm, rng):
    self.logits_fn, self.eps, self.norm, self.rng = logits_fn, eps, norm, rng
    self.count, self.shape = len(x), x.shape[1:]
    self.best_all = x.copy()
    self.queries = np.zeros(len(x), np.int64)
    self.rows = np.flatnonzero(margins(logits_fn(x), y) >= 0)
    self.x, self.y = x[self.rows], y[self.rows]
    self.best = self.x.copy()
    if eps > 0:
      self._start()

  def active(self):
    return len(self.rows) > 0

  def robust_fraction(self):
    return len(self.rows) / self.count

  def result(self):
    self.best_all[self.rows] = self.best
    return self.best_all

  def _start(self):
    """The first point per example (stripes or squares at the ball's surface), queried once."""
    if self.norm == "linf":
      _, width, channels = self.shape
      stripes = self._signs((1, width, channels))
      start = self.x + self.eps * stripes
    else:
      start = self.x + self.eps * _unit_l2(_l2_start_pattern(self.shape, self._signs, self.rng))
    self.best = np.clip(start, 0.0, 1.0).astype(np.float32)
    self.low, self.high = np.maximum(self.x - self.eps, 0.0), np.minimum(self.x + self.eps, 1.0)
    self.margin = self._query(self.best)
    self._retire_fooled()

  def _signs(self, shape):
    """Random +-1 of [len(rows), *shape], drawn for every example so each one's draws never depend on the others."""
    signs = self.rng.integers(0, 2, (self.count, *shape), dtype=np.int8)
    return (2 * signs[self.rows] - 1).astype(np.float32)

  def _query(self, points):
    self.queries[self.rows] += 1
    return margins(self.logits_fn(points), self.y)

  def step(self, fraction):
    """One query per searched example: a new square window, kept where it does not raise the margin."""
    if self.norm == "linf":
      self._linf_step(fraction)
    else:
      self._l2_step(fraction)
    self._retire_fooled()

  def _linf_step(self, fraction):
    """Sets one window of each best point to a random vertex of the ball (per channel), queries, undoes failures."""
    height, width, channels = self.shape
    side = min(max(int(round(math.sqrt(fraction * height * width))), 1), height, width)
    top, left = self.rng.integers(0, height - side + 1), self.rng.integers(0, width - side + 1)
    window = (slice(None), slice(top, top + side), slice(left, left + side))
    signs = self._signs((1, 1, channels))
    old = self.best[window].copy()
    unchanged = np.all(np.abs(np.where(signs > 0, self.high[window], self.low[window]) - old) < 1e-7, axis=(1, 2, 3))
    signs[unchanged] *= -1  # the window is already at that vertex: the opposite one, so no query is wasted
    self.best[window] = np.where(signs > 0, self.high[window], self.low[window])
    margin = self._query(self.best)
    kept = margin <= self.margin
    self.best[window] = np.where(kept[:, None, None, None], self.best[window], old)
    self.margin = np.where(kept, margin, self.margin)

  def _l2_step(self, fraction):
    """Moves L2 mass from one window into another, with a new centre-weighted pattern, at the ball's surface."""
    height, width, channels = self.shape
    side = max(int(round(math.sqrt(fraction * height * width))), 3)
    side = min(side + 1 - side % 2, height, width)  # odd (as in the reference) unless the image is smaller
    (top, left), (top2, left2) = [(self.rng.integers(0, height - side + 1), self.rng.integers(0, width - side + 1))
                                  for _ in range(2)]
    window = (slice(None), slice(top, top + side), slice(left, left + side))
    window2 = (slice(None), slice(top2, top2 + side), slice(left2, left2 + side))
    delta = self.best - self.x
    mask = np.zeros((1, height, width, 1), np.float32)
    mask[window] = mask[window2] = 1.0
    room = np.maximum(self.eps ** 2 - _sum_squares(delta), 0.0) / channels + _sum_squares(delta * mask)
    pattern = _eta(side, self.rng)[None, :, :, None] * self._signs((1, 1, channels))
    old = delta[window]
    pattern = pattern + old / (1e-12 + np.sqrt(np.sum(old ** 2, axis=(1, 2), keepdims=True)))
    pattern *= np.sqrt(room) / (1e-12 + np.sqrt(np.sum(pattern ** 2, axis=(1, 2), keepdims=True)))
    delta[window2] = 0.0
    delta[window] = pattern
    candidate = np.clip(self.x + self.eps * _unit_l2(delta), 0.0, 1.0).astype(np.float32)
    margin = self._query(candidate)
    kept = margin <= self.margin
    self.best[kept] = candidate[kept]
    self.margin = np.where(kept, margin, self.margin)

  def _retire_fooled(self):
    """Writes back the best points of the examples now fooled and drops them from the search."""
    fooled = self.margin < 0
    if not fooled.any():
      return
    self.best_all[self.rows[fooled]] = self.best[fooled]
    keep = ~fooled
    self.rows, self.x, self.y, self.best, self.margin = (
        self.rows[keep], self.x[keep], self.y[keep], self.best[keep], self.margin[keep])
    self.low, self.high = self.low[keep], self.high[keep]


def _sum_squares(values):
  """Per-example sum of squares, shaped [N, 1, 1, 1]."""
  return np.sum(values.reshape(len(values), -1) ** 2, axis=1).reshape(-1, 1, 1, 1)


def _unit_l2(values):
  return values / (np.sqrt(_sum_squares(values)) + 1e-12)


def _centre_weighted(rows, cols):
  """Concentric rectangles around the centre, the k-th weighted 1/(k+1)^2 and summed; unit L2 norm.

  A cell at Chebyshev distance d from the centre lies in rectangles d, d+1, ..., so its weight is the tail sum.
  """
  rings = max(rows // 2, cols // 2) + 1
  tail = np.cumsum((1.0 / np.arange(1, rings + 1) ** 2)[::-1])[::-1]
  distance = np.maximum(np.abs(np.arange(rows)[:, None] - rows // 2), np.abs(np.arange(cols)[None, :] - cols // 2))
  weights = tail[distance]
  return weights / np.sqrt(np.sum(weights ** 2))


def _eta(side, rng):
  """The L2 square pattern: a positive centre-weighted half over a negative one, transposed at random; unit norm."""
  half = side // 2
  pattern = np.concatenate([_centre_weighted(half, side), -_centre_weighted(side - half, side)]) if half else (
      _centre_weighted(side, side))
  pattern /= np.sqrt(np.sum(pattern ** 2))
  return (pattern.T if rng.random() > 0.5 else pattern).astype(np.float32)


def _l2_start_pattern(shape, signs_fn, rng):
  """The L2 start: a grid of squares of side H // 5, each an `_eta` pattern with a random sign per channel."""
  height, width, channels = shape
  side = max(height // 5, 1)
  offset = (height - side * 5) // 2
  grid_rows, grid_cols = height // side, width // side
  signs = signs_fn((grid_rows, grid_cols, channels))
  pattern = np.zeros((len(signs), height, width, channels), np.float32)
  for i in range(grid_rows):
    for j in range(grid_cols):
      top, left = offset + i * side, offset + j * side
      if top + side <= height and left + side <= width:
        pattern[:, top:top + side, left:left + side, :] += (_eta(side, rng)[None, :, :, None] *
                                                            signs[:, i:i + 1, j:j + 1, :])
  return pattern


def keras_logits_fn(model, batch_size=500):
  """A `logits_fn` of a Keras model: one compiled inference-mode forward, at most `batch_size` images per call.

  The forward is traced once, for any batch of up to `batch_size` images (the batch dimension is left open), so a
  shrinking set of still-robust examples neither retraces it nor pays for padding. Gradients are never taken (the
  attack needs none), so a model that stops them is attacked the same way.

  Args:
    model: a built Keras model from [0, 1] images to logits.
    batch_size: the most images per call.

  Returns:
    logits_fn: numpy float32 [n, H, W, C] -> numpy float32 logits [n, K].
  """
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
  forward = tf.function(lambda images: model(images, training=False),
                        input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])
  classes = model.output_shape[-1]

  def logits_fn(images):
    images = np.asarray(images, np.float32)
    logits = np.empty((len(images), classes), np.float32)
    for start in range(0, len(images), batch_size):
      logits[start:start + batch_size] = forward(images[start:start + batch_size]).numpy()
    return logits

  return logits_fn


def tflite_logits_fn(interpreter_or_path, batch_size=32, num_threads=1):
  """A `logits_fn` running a LiteRT flatbuffer (`tflite_runner.TFLiteRunner`: int8 inputs quantized, XNNPACK or
  the builtin kernels).

  Args:
    interpreter_or_path: a .tflite path, a `tflite_runner.TFLiteRunner` (its batch size is kept), or a LiteRT
      `Interpreter` (its input is resized to `batch_size`).
    batch_size: images per invoke (the input tensor's batch dimension; the last batch is zero-padded to it, so a
      small batch wastes little, and LiteRT's cost per invoke is low).
    num_threads: LiteRT's CPU threads, for a path.

  Returns:
    logits_fn: numpy float32 [n, H, W, C] -> numpy float32 logits [n, K].
  """
  from tfrobprune.deploy import tflite_runner  # pylint: disable=g-import-not-at-top  (deploy sits downstream)

  if isinstance(interpreter_or_path, tflite_runner.TFLiteRunner):
    runner = interpreter_or_path
  elif hasattr(interpreter_or_path, "invoke"):
    runner = tflite_runner.TFLiteRunner.from_interpreter(interpreter_or_path, batch=batch_size)
  else:
    runner = tflite_runner.TFLiteRunner(str(interpreter_or_path), num_threads=num_threads, batch=batch_size)
  return runner.predict

