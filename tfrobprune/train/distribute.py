"""`tf.distribute` strategies for the training loop: choosing one, chief-ness, and the small rules the loop follows.

The same custom loop (`training.train`) runs under three strategies, chosen by `--distribute`:

- `default`: TensorFlow's default strategy, one device; the loop is exactly the single-device loop.
- `mirrored`: `tf.distribute.MirroredStrategy` over the local GPUs, or, without GPUs, over the logical CPU devices
  (`--logical_cpus=N` splits the CPU into N, which is how the tests and `configs/fmnist_pgd_s90_mirrored.cfg` get
  two replicas on a CPU-only machine).
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG` environment variable
  (one process per worker; each worker contributes its GPUs, or its CPU as one device).

What changes under a strategy (the loop's own code says how):
- Variables (model, pruning wrappers, optimizer slots, the schedule step) are made in `strategy.scope()`, so they
  are mirrored: one copy per replica, kept equal by applying the same all-reduced update everywhere.
- A batch of `batch_size` examples is the GLOBAL batch: `distribute_dataset` splits it into `num_replicas_in_sync`
  equal per-replica batches (`check_global_batch` insists they are equal), and each replica's loss is scaled by
  `scale_to_global_batch` so that the all-reduced gradient is the gradient of the global batch mean.
- Batch normalisation normalises each replica's batch by its own statistics (not synchronised); its moving
  averages are kept per replica and averaged when read (saving, evaluation). That changes results slightly, so the
  strategy is part of `RunConfig`. PGD's random starts are drawn statelessly from (seed, step) on every replica,
  so each replica's share of the batch gets the same start pattern (on one device the whole batch draws one).
  Otherwise the maths is the single-device step's: with a deterministic objective a mirrored run matches a
  single-device run to float precision.
- A non-finite loss on any replica skips the update on every replica and stops the run, as on one device.
- Checkpoints, reports and exports are written by the chief only (`is_chief`); other workers take part in every
  collective step but write into a private temporary directory that is deleted afterwards (`worker_directory`).
"""

import json
import os
import shutil
import tempfile

from tfrobprune.keras_compat import keras, tf
from tfrobprune.prune import wrapping
from tfrobprune.robust import attacks

# After keras_compat, which makes tfmot bind to Keras 2.
import tensorflow_model_optimization as tfmot  # noqa: E402,I100
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper  # noqa: E402,I100

STRATEGY_NAMES = ("default", "mirrored", "multi_worker")

# One strategy of each kind per process: each strategy numbers its collective operations from the same start, so two
# strategies in one process would run different all-reduces under the same collective keys.
_STRATEGIES = {}

_TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}')


# ----------------------------------------------------------------------------------------------------------------
# Devices and strategies.


def configure_logical_cpus(count):
  """Splits the first physical CPU into `count` logical devices (for `mirrored` on a CPU-only machine).

  Must run before TensorFlow initialises its devices (before the first op). Calling it again with the same count
  is a no-op, so a process may call it more than once.

  Args:
    count: number of logical CPU devices; 0 or 1 leaves the CPU as it is.

  Raises:
    ValueError: `count` is negative.
    RuntimeError: TensorFlow has already initialised its devices with another configuration.
  """
  if count < 0:
    raise ValueError(f"logical_cpus must be >= 0, got {count}.")
  if count < 2:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) == count:
    return
  try:
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
  except RuntimeError as error:
    raise RuntimeError(
        f"--logical_cpus={count} must be applied before TensorFlow initialises its devices, but TensorFlow is "
        f"already running with {len(tf.config.list_logical_devices('CPU'))} logical CPU device(s) ({error}). "
        "Configure the logical CPUs first thing in the process (the CLI does).") from error


def read_tf_config():
  """The `TF_CONFIG` environment variable, parsed and checked (what `multi_worker` is configured by).

  Returns:
    The dict: {'cluster': {job: [host:port, ...]}, 'task': {'type': job, 'index': i}}.

  Raises:
    ValueError: TF_CONFIG is missing, not JSON, or does not name this task within its cluster.
  """
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    raise ValueError(f"--distribute=multi_worker needs the TF_CONFIG environment variable, e.g. "
                     f"TF_CONFIG='{_TF_CONFIG_EXAMPLE}' (index 0 on the first machine, 1 on the second); "
                     "it is not set.")
  try:
    config = json.loads(raw)
  except json.JSONDecodeError as error:
    raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {raw!r}; expected e.g. '{_TF_CONFIG_EXAMPLE}'.") from None
  cluster = config.get("cluster") if isinstance(config, dict) else None
  task = config.get("task") if isinstance(config, dict) else None
  if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
    raise ValueError(f"TF_CONFIG needs a 'cluster' with a 'worker' list of host:port addresses, got {raw!r}.")
  if not all(isinstance(hosts, list) and all(isinstance(h, str) and ":" in h for h in hosts)
             for hosts in cluster.values()):
    raise ValueError(f"TF_CONFIG's cluster must map job names to lists of 'host:port', got {cluster!r}.")
  if not isinstance(task, dict) or task.get("type") not in cluster:
    raise ValueError(f"TF_CONFIG needs a 'task' whose 'type' is a job of its cluster ({', '.join(cluster)}), "
                     f"got {task!r}.")
  index = task.get("index", 0)
  if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
    raise ValueError(f"TF_CONFIG's task index must be in [0, {len(cluster[task['type']])}) for job "
                     f"{task['type']!r}, got {index!r}.")
  return config


def make_strategy(name, logical_cpus=0):
  """Builds the strategy named by `--distribute`.

  Call it at the start of the process, before any TensorFlow op: `logical_cpus` and `multi_worker` both configure
  the TensorFlow runtime, which is only possible before it starts. Later calls with the same name return the same
  strategy (a process must not run two strategies of the same kind side by side).

  Args:
    name: one of STRATEGY_NAMES.
    logical_cpus: if >= 2, first split the CPU into this many logical devices (see `configure_logical_cpus`);
      `mirrored` then has one replica per logical CPU when there is no GPU.

  Returns:
    A `tf.distribute.Strategy`.

  Raises:
    ValueError: an unknown name, or (multi_worker) a missing or invalid TF_CONFIG.
    RuntimeError: TensorFlow was initialised before the logical CPUs or the multi-worker runtime were configured.
  """
  if name not in STRATEGY_NAMES:
    raise ValueError(f"distribute must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}.")
  configure_logical_cpus(logical_cpus)
  if name == "default":
    return tf.distribute.get_strategy()
  if name not in _STRATEGIES:
    _STRATEGIES[name] = _mirrored() if name == "mirrored" else _multi_worker()
  return _STRATEGIES[name]


def _mirrored():
  gpus = tf.config.list_logical_devices("GPU")
  return tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])


def _multi_worker():
  read_tf_config()
  try:
    return tf.distribute.MultiWorkerMirroredStrategy()
  except (RuntimeError, ValueError) as error:
    raise RuntimeError(f"Cannot start the multi-worker strategy: {error}. It must be made before any other "
                       "TensorFlow op in the process (the CLI does).") from error


def is_default(strategy):
  """True for TensorFlow's default strategy (one device, no mirrored variables; the plain single-device step)."""
  return type(strategy).__name__ == "_DefaultDistributionStrategy"


def strategy_name(strategy):
  """The STRATEGY_NAMES entry of `strategy` (what `RunConfig.distribute` records)."""
  if is_default(strategy):
    return "default"
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return "multi_worker"
  if isinstance(strategy, tf.distribute.MirroredStrategy):
    return "mirrored"
  raise ValueError(f"Unsupported strategy {type(strategy).__name__}; use one of {', '.join(STRATEGY_NAMES)}.")


def _task(strategy):
  """(task type, task index, cluster spec dict) of this process; (None, 0, {}) outside a multi-worker cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return None, 0, {}
  return resolver.task_type, resolver.task_id or 0, resolver.cluster_spec().as_dict()


def is_chief_task(task_type, task_index, cluster):
  """The TensorFlow convention: the 'chief' task, or worker 0 of a cluster without one (or no cluster at all)."""
  return task_type is None or task_type == "chief" or (task_type == "worker" and task_index == 0 and
                                                         "chief" not in cluster)


def is_chief(strategy):
  """True in the process that writes checkpoints, reports and exports (always, outside a multi-worker cluster)."""
  return is_chief_task(*_task(strategy))


def describe(strategy):
  """A JSON-able record of the strategy for the report: name, replicas, workers and this process's task."""
  task_type, task_index, cluster = _task(strategy)
  return {"strategy": strategy_name(strategy), "replicas": strategy.num_replicas_in_sync,
          "workers": max(1, sum(len(hosts) for hosts in cluster.values())),
          "task": f"{task_type}:{task_index}" if task_type else None}


# ----------------------------------------------------------------------------------------------------------------
# The training loop's rules.


def check_global_batch(batch_size, strategy, flag="batch_size"):
  """Raises unless the global batch splits into equal per-replica batches (then mean-of-means = global mean)."""
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise ValueError(f"--{flag}={batch_size} is the global batch and must be a multiple of the "
                     f"{replicas} replicas of the {strategy_name(strategy)} strategy; use e.g. "
                     f"--{flag}={max(replicas, batch_size - batch_size % replicas)}.")


def scale_to_global_batch(per_replica_loss, num_replicas):
  """Scales one replica's loss so that summing gradients over replicas gives the global batch mean's gradient.

  Each replica's objective returns the MEAN loss over its own b = B / R examples (R replicas, global batch B):
  L_r = (1/b) sum_{i in r} l_i. The loss of the global batch is L = (1/B) sum_i l_i = (1/R) sum_r L_r, so
  grad L = sum_r grad(L_r / R). The optimizer's all-reduce SUMS the replicas' gradients, hence each replica
  differentiates L_r / R. Terms that do not depend on the examples (weight decay, layer regularisers) are the same
  on every replica; dividing them by R as well makes the sum count them once. This needs equal per-replica batches
  (`check_global_batch`); with one replica the loss is returned unchanged (no extra op, bit-identical results).

  Args:
    per_replica_loss: the replica's scalar loss (batch mean plus example-independent terms).
    num_replicas: `strategy.num_replicas_in_sync`.

  Returns:
    The loss to differentiate on this replica.
  """
  if num_replicas == 1:
    return per_replica_loss
  return per_replica_loss / tf.cast(num_replicas, per_replica_loss.dtype)


def distribute_dataset(strategy, dataset):
  """Splits each global batch of `dataset` over the replicas (and workers); the default strategy keeps it as is.

  Multi-worker input is sharded by data (every worker builds the same seeded pipeline and keeps its own slice of
  each global batch), which suits in-memory arrays that have no files to shard by.
  """
  if is_default(strategy):
    return dataset
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


def has_pruning_wrappers(model):
  """True if `model` holds tfmot pruning wrappers."""
  return bool(pruning_wrapper.collect_prunable_layers(model))


def route_attacks_around_pruning_wrappers(objective, model):
  """Makes `objective`'s attacks on `model` run on a variable-sharing copy of it without tfmot's wrappers.

  Why: in inference mode a tfmot `PruneLowMagnitude` wrapper still assigns `kernel * mask` to its kernel, through
  `merge_call` when in a replica context. cleverhans computes each PGD gradient in its own nested `tf.function`,
  and a `merge_call` inside a nested `tf.function` of a replica function is not supported by MirroredStrategy
  ("`merge_call` called while defining a new graph or a tf.function"). The copy (`strip_pruning`, which reuses the
  wrapped layers and so their variables) has no `merge_call`. It computes what the wrapper computes provided the
  kernels are already masked, which the distributed step ensures before every replica step (the wrapper's
  inference call would assign `kernel * mask` with the same mask; masking is idempotent). The training-mode pass
  still goes through the wrappers, so tfmot's step counting and mask updates are unchanged.

  Args:
    objective: an `objectives.Objective` (`attack_through` redirects its attacks).
    model: the tfmot-wrapped model being trained.
  """
  view = tfmot.sparsity.keras.strip_pruning(model)
  objective.attack_through(model, attacks.inference_fn(view))


def single_device_copy(model, strategy):
  """A copy of `model` with plain (single-device) variables, for evaluation, export and saving after training.

  Under the default strategy the model itself is returned. A model made in a strategy's scope keeps that strategy
  (Keras' `predict` would distribute, and under multi_worker wait for the other workers); the copy does not.
  """
  if is_default(strategy):
    return model
  if tf.distribute.has_strategy():
    raise RuntimeError("single_device_copy must be called outside strategy.scope(), or the copy is mirrored too.")
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights())
  return copy


def strip_pruning(model, strategy):
  """`wrapping.strip` for a model trained under `strategy`: a sparse, unwrapped, single-device copy.

  The masks are applied in the strategy's scope (cross-replica context: one assignment per mirrored kernel; outside
  the scope tfmot would take its replica-context path, which fails on mirrored variables).
  """
  if is_default(strategy):
    return wrapping.strip(model)
  with strategy.scope():
    wrapping.apply_masks(model)
  return single_device_copy(tfmot.sparsity.keras.strip_pruning(model), strategy)


# ----------------------------------------------------------------------------------------------------------------
# Files: the chief writes, other workers write into a private temporary directory.


def worker_directory(strategy, output_dir):
  """The directory this process writes the run into: `output_dir` on the chief, a fresh temporary one elsewhere.

  A non-chief worker's directory starts as a copy of what the chief's `output_dir` already holds (progress file,
  models, checkpoints), so that resuming a run resumes every worker at the same point (this assumes the workers
  share a filesystem or were started with the same output directory contents, like TensorFlow's own restore).
  Remove it with `remove_worker_directory` when the run ends.
  """
  if is_chief(strategy):
    return output_dir
  task_type, task_index, _ = _task(strategy)
  private = tempfile.mkdtemp(prefix=f"tfrobprune-{task_type}{task_index}-")
  if os.path.isdir(output_dir):
    for name in ("progress.json", "models", "checkpoints"):
      source = os.path.join(output_dir, name)
      if os.path.isdir(source):
        shutil.copytree(source, os.path.join(private, name))
      elif os.path.isfile(source):
        shutil.copy2(source, private)
  return private


def check_workers_agree(strategy, fingerprint, what):
  """Raises on every worker unless all workers of a multi-worker run hold the same `fingerprint` (an int).

  Workers that disagree about where a run stands (one resuming, another starting afresh) would train different
  weights, or run different numbers of steps and wait for each other forever; this compares them first. Every
  worker gathers all workers' values and compares the smallest with the largest, so all of them reach the same
  verdict (comparing one's own value with the mean would let a worker whose value is the mean go on alone and
  hang). A no-op on a single worker.

  Raises:
    ValueError: the workers' fingerprints differ; `what` names what they describe.
  """
  if describe(strategy)["workers"] < 2:
    return
  values = _gather_over_replicas(strategy, float(fingerprint % 2**31))
  if values.min() != values.max():
    raise ValueError(f"The workers disagree about {what} (this worker, {describe(strategy)['task']}, is one of "
                     f"{len(set(values.tolist()))} different states among {len(values)} replicas). Start every "
                     "worker with the same --output_dir contents (a shared filesystem), or --overwrite on all of "
                     "them.")


def any_worker(strategy, flag):
  """True on every worker if `flag` is True on any worker (`flag` itself on a single worker).

  The training loop asks this after each step whether to stop, so that a signal to one worker of a multi-worker
  run stops all of them after the same step (a worker that stopped alone would leave the others waiting).
  """
  if describe(strategy)["workers"] < 2:
    return flag
  return _mean_over_replicas(strategy, float(flag)) > 0


_MEAN_FNS = {}
_GATHER_FNS = {}


def _mean_over_replicas(strategy, value):
  """The mean over all replicas (of all workers) of a number each worker gives; a collective operation."""
  if strategy not in _MEAN_FNS:
    _MEAN_FNS[strategy] = tf.function(lambda v: strategy.reduce(
        tf.distribute.ReduceOp.MEAN, strategy.run(lambda: tf.identity(v)), axis=None))
  return float(_MEAN_FNS[strategy](tf.constant(value, tf.float64)))


def _gather_over_replicas(strategy, value):
  """Every replica's copy (of every worker) of a number each worker gives, as a numpy array; a collective."""
  if strategy not in _GATHER_FNS:

    def gather(v):
      return strategy.gather(strategy.run(lambda: tf.reshape(v, [1])), axis=0)

    _GATHER_FNS[strategy] = tf.function(gather)
  return _GATHER_FNS[strategy](tf.constant(value, tf.float64)).numpy()


def remove_worker_directory(strategy, directory):
  """Deletes a non-chief worker's private directory (the chief's output directory is kept)."""
  if not is_chief(strategy):
    shutil.rmtree(directory, ignore_errors=True)
