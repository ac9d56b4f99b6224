"""Training: ``train_and_evaluate(config, workdir)``.

A run has three parts, each in its own module:

* **assembly** (:mod:`jaxbio.experiment`): the config becomes an
  :class:`~jaxbio.experiment.Experiment` (network, rule, references,
  optimiser, the epoch's passes) and an initial
  :class:`~jaxbio.experiment.TrainState`;
* **compiled steps** (:mod:`jaxbio.steps`): a training chunk per pass (up to
  ``steps_per_call`` steps in one ``lax.fori_loop``, with the dataset on the
  devices, batches gathered, augmented and normalised on device, sharded on
  the ``data`` axis of a 1-D mesh), evaluation, periodic metrics, epoch phases;
* **the loop** (here): it runs chunks and, between them, a list of periodic
  actions, each with its own cadence from the config: alignment metrics,
  TensorBoard points, console progress, the epoch's evaluation and record,
  checkpoints, and preemption; before an epoch, the rule's epoch phases.

A non-finite loss, update or state, or a training loss over
``config.divergence_factor`` times the run's first loss, stops the run with
the step and the quantity, and the last good state is saved. SIGTERM and
Ctrl-C save the current step and stop (:class:`Interrupted`).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import operator
import os
import signal
import time
from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxbio
from jaxbio import checkpoint, data, registry, replicas, steps, workdir as workdirs
from jaxbio.experiment import Experiment, TrainState, build_experiment, init_state  # noqa: F401
from jaxbio.experiment import check_replicas
from jaxbio.experiment import make_preprocess  # noqa: F401  (part of this module's API)
from jaxbio.log import logger as logging
from jaxbio.preemption import PreemptionFlag
from jaxbio.steps import Bad, ChunkOut, make_eval, make_train_chunk  # noqa: F401

CONFIG_VERSION = registry.CONFIG_VERSION
validate = registry.validate


class NonFiniteError(FloatingPointError):
  """A non-finite value appeared during training, or the loss exploded."""


class Interrupted(Exception):
  """The run was stopped by SIGTERM or Ctrl-C after saving its current step.

  Attributes:
    signum: the signal received.
    step: the step saved.
    checkpoints: the directory the checkpoint went to.
  """

  def __init__(self, signum: int, step: int, checkpoints: str):
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    super().__init__(f"interrupted ({name}): saved step {step} to {checkpoints}; run the same "
                     "command to resume")
    self.signum, self.step, self.checkpoints = signum, step, checkpoints


def _json_safe(record: dict) -> dict:
  """``record`` with non-finite floats as None, so it is strict JSON (``null``)."""
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
          for k, v in record.items()}


class _Writers:
  """metrics.jsonl and TensorBoard event files in the workdir (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # TensorBoard logging is optional.
        logging.warning("tensorboardX is not installed; no TensorBoard event files")

  def write(self, step: int, record: dict[str, float], tb_prefix: str = "") -> None:
    """Appends an epoch record to metrics.jsonl and logs its scalars to TensorBoard.

    ``tb_prefix`` goes before every TensorBoard tag (a replica's ``replica3/``).
    """
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **_json_safe(record)}, allow_nan=False) + "\n")
    self._jsonl.flush()
    self.scalars(step, {f"{tb_prefix}{k}": v for k, v in record.items()})

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """Logs scalars to TensorBoard only (the every-``log_every``-steps values)."""
    if not self.enabled or self._tb is None:
      return
    for k, v in values.items():
      if isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _process_batch_slice(sharding, shape) -> tuple[int, int]:
  """The contiguous range of the batch axis (axis 1) this process's devices hold."""
  ranges = [idx[1] for idx in sharding.addressable_devices_indices_map(shape).values()]
  lo = min(r.start or 0 for r in ranges)
  hi = max(shape[1] if r.stop is None else r.stop for r in ranges)
  return lo, hi


def make_mesh(devices) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh whose sharding XLA propagates automatically."""
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def _lock_workdir(workdir: str, shown: str) -> workdirs.WorkdirLock:
  """Process 0 locks the workdir; every process stops if it could not."""
  lock = workdirs.WorkdirLock(workdir, shown)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except workdirs.WorkdirBusyError as e:
      error = e
  if not checkpoint.all_processes_agree(error is None):
    raise error or workdirs.WorkdirBusyError(
        f"workdir {shown} is in use by another jaxbio run (process 0 names it)")
  return lock


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains ``config``'s rule and network on its dataset; logs to ``workdir``.

  Args:
    config: an experiment ``ConfigDict`` (see ``launch/configs``).
    workdir: where ``metrics.jsonl``, TensorBoard events, plots and
      checkpoints go; relative paths are taken from the current directory.
      A run already there is resumed; a run still going there is an error.

  With ``config.replicas`` asking for several seeds or hyperparameter draws
  (:mod:`jaxbio.replicas`), they all train together in one program
  (:mod:`jaxbio.train_replicas`).

  Returns:
    The last epoch's record (train/test loss and accuracy, alignment, timing);
    for a replica run, ``{"epoch", "step", "replicas": [one record per
    replica], "test/error_pct_mean", "test/error_pct_se"}``.

  Raises:
    ValueError: a bad config, dataset or workdir (one-line messages), or a
      workdir in use by another run (:class:`jaxbio.workdir.WorkdirBusyError`).
    NonFiniteError: training diverged; the last good state is saved.
    Interrupted: SIGTERM or Ctrl-C; the current step is saved.
  """
  jaxbio.log.setup()
  t_begin = time.time()
  shown, workdir = workdir, workdirs.resolve(workdir)
  # Every config error surfaces before data are looked for or anything is written.
  build_experiment(config, num_train=config.batch_size)
  check_replicas(config, num_train=config.batch_size)
  workdirs.check(workdir, shown)
  data_dir = config.dataset.get("data_dir") or None
  if data_dir:
    data_dir = workdirs.resolve(data_dir)
  train_ds = data.load(config.dataset.name, config.dataset.train_split, data_dir)
  test_ds = data.load(config.dataset.name, config.dataset.test_split, data_dir)
  val_split = config.dataset.get("validation_split", "")
  val_ds = data.load(config.dataset.name, val_split, data_dir) if val_split else None
  logging.info("data: %s %s (%d examples) and %s (%d)%s ready in %.1f s", config.dataset.name,
               config.dataset.train_split, len(train_ds.labels), config.dataset.test_split,
               len(test_ds.labels), f", validation {val_split} ({len(val_ds.labels)})"
               if val_ds else "", time.time() - t_begin)
  exp = build_experiment(config, len(train_ds.labels))
  plan = replicas.plan(config)  # (checked above)
  devices = jax.devices()
  if config.batch_size % len(devices):
    raise ValueError(f"config.batch_size {config.batch_size} is not divisible by the "
                     f"{len(devices)} devices")
  workdirs.create(workdir, shown)
  lock = _lock_workdir(workdir, shown)
  try:
    if plan is None:
      run = _Run(config, exp, train_ds, test_ds, make_mesh(devices), workdir, shown, val_ds)
    else:
      from jaxbio.train_replicas import ReplicaRun  # pylint: disable=g-import-not-at-top
      run = ReplicaRun(config, exp, train_ds, test_ds, make_mesh(devices), workdir, shown,
                       val_ds, plan)
    return run.loop(t_begin)
  finally:
    lock.release()


class Action(NamedTuple):
  """A periodic action of the training loop, run between chunks when due.

  Attributes:
    name: for reading the loop.
    run: ``() -> None``, reading and updating the run's state.
    every: run every this many steps (0: not by step count); chunks end on
      these steps.
    at_epoch_end: run when an epoch (its last pass) ends.
    each_chunk: run after every chunk (the action decides itself, e.g. by time).
    at_end: run after the run's last step.
  """
  name: str
  run: Callable[[], None]
  every: int = 0
  at_epoch_end: bool = False
  each_chunk: bool = False
  at_end: bool = False

  def due(self, step: int, epoch_end: bool, end: bool) -> bool:
    return (self.each_chunk or (self.every > 0 and step % self.every == 0)
            or (self.at_epoch_end and epoch_end) or (self.at_end and end))


# Evaluation batches per host chunk of a streamed split.
_EVAL_CHUNK_BATCHES = 8


class _Prefetch:
  """One chunk's host batches, decoded on a background thread ahead of use.

  ``hits`` counts the chunks served from the background thread.
  """

  def __init__(self):
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxbio-prefetch")
    self.idx, self.future = None, None
    self.hits = 0

  def start(self, idx: np.ndarray, load: Callable) -> None:
    self.idx, self.future = idx, self.pool.submit(load, idx)

  def take(self, idx: np.ndarray, load: Callable):
    """``load(idx)``: the prefetched result if it was started for these indices."""
    future, ahead = self.future, self.idx
    self.idx = self.future = None
    if future is not None and np.array_equal(ahead, idx):
      self.hits += 1
      return future.result()
    return load(idx)

  def close(self) -> None:
    self.pool.shutdown(wait=False, cancel_futures=True)


class _Run:
  """One run's state between chunks, and the loop over them."""

  def __init__(self, config, exp: Experiment, train_ds, test_ds, mesh, workdir: str, shown: str,
               val_ds=None):
    self.config, self.exp, self.train_ds, self.test_ds = config, exp, train_ds, test_ds
    self.val_ds = val_ds
    self.shown = shown
    self.replicated = NamedSharding(mesh, P())
    self.placement = config.data_placement
    if self.placement == "device":
      # The split is on every device; each device gathers its slice of every batch
      # inside the compiled step.
      self.train_images, self.train_labels = self.put(train_ds.images), self.put(train_ds.labels)
    # A streamed split (too large for memory) is evaluated chunk by chunk instead
    # (None here: see eval_sums); the training batches of the next chunk are
    # decoded while the current one runs.
    self.test_images, self.test_labels = self.whole_split(test_ds)
    if val_ds is not None:
      self.val_images, self.val_labels = self.whole_split(val_ds)
    self.prefetch = _Prefetch() if isinstance(train_ds.images, data.StreamedImages) else None
    self.perm_cache = (None, None)
    self.mesh = mesh
    self.compile()
    self.ckpt_every = config.checkpoint.every_steps or exp.steps_per_epoch
    self.ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                        keep=config.checkpoint.keep)
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    # Training metrics of the epoch under way, the latest periodic and phase
    # metrics, the run's first-step loss (the divergence guard's reference) and
    # the training time so far: saved with every checkpoint, so a resumed run
    # logs what an uninterrupted one would.
    self.loop_state = {"epoch_sums": {}, "epoch_steps": {}, "last_align": {}, "phase": {},
                       "first_loss": {}, "elapsed_s": 0.0}
    restored = self.ckpt.restore_latest(self.state)
    if restored is not None:
      self.state, meta, _ = restored
      _check_resumable(meta.get("config", {}), json.loads(config.to_json()), shown)
      self.loop_state.update(meta.get("loop", {}))
    self.primary = jax.process_index() == 0
    self.step = self.run_step()
    if restored is not None:
      logging.info("resuming from the checkpoint of step %d", self.step)
    if self.primary:
      _truncate_metrics(self.metrics_path, self.step)
    self.writers = _Writers(workdir, self.primary)
    self.t_start, self.t_last_log, self.steps_at_start = time.time(), 0.0, self.step
    self.elapsed_before = float(self.loop_state["elapsed_s"])
    self.window = {"loss": 0.0, "accuracy": 0.0, "steps": 0, "t": time.time()}
    self.record = _last_record(self.metrics_path)
    self.chunk_sums: dict[str, float] = {}
    self.chunk_rows = None
    self.preemption = PreemptionFlag((signal.SIGTERM, signal.SIGINT))
    self.actions = (
        Action("alignment", self.align, every=config.alignment_every,
               at_epoch_end=bool(config.alignment_every)),
        Action("tensorboard", self.log_points, every=config.get("log_every", 0)),
        Action("console", self.log_progress, each_chunk=True),
        Action("evaluate", self.end_of_epoch, at_epoch_end=True),
        Action("checkpoint", self.periodic_save, every=self.ckpt_every, at_end=True),
        Action("preemption", self.check_preemption, each_chunk=True),
    )
    n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(exp.net.init,
                                                                 jax.random.key(0))[0]))
    logging.info("%s on %s with %s (%d parameters): %d epochs x %d steps%s, batch %d, "
                 "%d device(s)%s", config.rule.name, config.dataset.name, config.model.arch,
                 n_params, config.num_epochs, exp.steps_per_pass,
                 "" if len(exp.passes) == 1 else f" x {len(exp.passes)} passes "
                 f"({', '.join(p.name for p in exp.passes)})", config.batch_size,
                 len(mesh.devices.flat), self.describe())

  def compile(self) -> None:
    """The initial state and the compiled steps (a subclass trains replicas)."""
    config, exp, mesh = self.config, self.exp, self.mesh
    self.rows_sharding = NamedSharding(mesh, P(None, "data"))
    self.local_rows = _process_batch_slice(self.rows_sharding,
                                           (config.steps_per_call, config.batch_size))
    self.state = jax.jit(lambda: init_state(exp, config.seed), out_shardings=self.replicated)()
    self.chunks = [make_train_chunk(exp, config, mesh, self.placement, p)
                   for p in range(len(exp.passes))]
    self.eval_fn = make_eval(exp, config, mesh)
    self.periodic_fn = steps.make_periodic(exp, config, mesh)
    self.phase_fn = steps.make_phase(exp, mesh)

  def run_step(self) -> int:
    """The run's step, read from the state."""
    return int(self.state.step)

  def describe(self) -> str:
    return ""

  # -- Helpers.

  def put(self, x):
    return jax.make_array_from_process_local_data(self.replicated, np.asarray(x))

  def whole_split(self, ds):
    """A split's images and labels on device, or ``(None, None)`` if it is streamed."""
    if isinstance(ds.images, data.StreamedImages):
      return None, None
    return self.put(ds.images), self.put(ds.labels)

  def eval_sums(self, evaluate, ds, images, labels):
    """``evaluate(images, labels)``'s sums over a split: at once, or in chunks if streamed."""
    if images is not None:
      return evaluate(images, labels)
    size = self.config.eval_batch_size * _EVAL_CHUNK_BATCHES
    total = None
    for start in range(0, len(ds.labels), size):
      rows = np.arange(start, min(start + size, len(ds.labels)))
      out = evaluate(self.put(ds.images[rows]), self.put(ds.labels[rows]))
      total = out if total is None else jax.tree.map(operator.add, total, out)
    return total

  def elapsed(self) -> float:
    return self.elapsed_before + time.time() - self.t_start

  def epoch_done(self) -> bool:
    return self.step % self.exp.steps_per_epoch == 0

  def save(self, force: bool = False) -> None:
    self.loop_state["elapsed_s"] = self.elapsed()
    meta = {"config": json.loads(self.config.to_json()), "step": self.step,
            "epoch": self.step // self.exp.steps_per_epoch, "loop": self.loop_state,
            "jaxbio_version": jaxbio.__version__}
    self.ckpt.save(self.step, self.state, meta, force=force)

  def _host_batches(self, idx, n: int):
    """This process's slice of every batch of the chunk, as one global array."""
    load = lambda i: self._host_rows(i, n)
    images, labels = self.prefetch.take(idx, load) if self.prefetch else load(idx)
    make = lambda a: jax.make_array_from_process_local_data(
        self.rows_sharding, a, (idx.shape[0], self.config.batch_size) + a.shape[2:])
    return make(images), make(labels)

  def _host_rows(self, idx, n: int):
    """This process's rows of the chunk's ``n`` batches (decoded, if streamed), on the host.

    The padding batches past ``n``, which the compiled chunk skips, are zeros.
    """
    lo, hi = self.local_rows
    local = idx[:n, lo:hi]
    pad = lambda a: np.pad(a, ((0, idx.shape[0] - n),) + ((0, 0),) * (a.ndim - 1))
    return pad(self.train_ds.images[local]), pad(self.train_ds.labels[local])

  def permutation(self, epoch: int, p: int) -> np.ndarray:
    """The data order of pass ``p`` of ``epoch``."""
    if self.perm_cache[0] != (epoch, p):
      self.perm_cache = ((epoch, p), np.asarray(data.epoch_permutation(
          self.config.seed, epoch * len(self.exp.passes) + p, len(self.train_ds.labels))))
    return self.perm_cache[1]

  def chunk_indices(self, step: int):
    """``(pass, steps, idx, last batch's rows)`` of the chunk that starts at ``step``.

    ``idx`` is ``(steps_per_call, batch)``, padded past ``steps`` with row 0.
    """
    exp, bs = self.exp, self.config.batch_size
    epoch, p, pos = exp.position(step)
    perm = self.permutation(epoch, p)
    n = self.chunk_length(pos, step)
    idx = perm[pos * bs:(pos + n) * bs].reshape(n, bs)
    # A fixed shape: one compilation.
    idx = np.pad(idx, ((0, self.config.steps_per_call - n), (0, 0)))
    return p, n, idx, perm[(pos + n - 1) * bs:(pos + n) * bs]

  # -- The loop.

  def loop(self, t_begin: float) -> dict:
    """Runs the remaining steps; returns the last epoch's record."""
    try:
      with self.preemption:
        if self.step and self.epoch_done() and self.record.get("step") != self.step:
          self.end_of_epoch()  # stopped between its checkpoint and its record.
        while self.step < self.exp.total_steps:
          self.maybe_run_phase()
          self.train_chunk()
          epoch_end, end = self.epoch_done(), self.step == self.exp.total_steps
          for action in self.actions:
            if action.due(self.step, epoch_end, end):
              action.run()
        self.ckpt.wait()
        latest = self.ckpt.latest_step()
    finally:
      if self.prefetch:
        self.prefetch.close()
      self.writers.close()
      self.ckpt.close()
    if self.primary:
      self.summary(time.time() - self.t_start, time.time() - t_begin, latest)
    return self.record

  def summary(self, train_s: float, wall_s: float, latest: int | None) -> None:
    _summary(self.config, self.metrics_path, self.shown, self.step - self.steps_at_start,
             train_s, wall_s, latest)

  def chunk_length(self, pos: int, step: int | None = None) -> int:
    """Steps of the chunk at ``step`` (default: now): to the pass's end or the next due action."""
    step = self.step if step is None else step
    n = min(self.config.steps_per_call, self.exp.steps_per_pass - pos)
    for action in self.actions:
      if action.every:
        n = min(n, action.every - step % action.every)
    return n

  def train_chunk(self) -> None:
    exp = self.exp
    if self.step % exp.steps_per_epoch == 0:  # kept until here, so the epoch-end checkpoint holds them.
      self.loop_state.update(epoch_sums={}, epoch_steps={})
    passes = len(exp.passes)
    p, n, idx, self.chunk_rows = self.chunk_indices(self.step)  # rows: the chunk's last batch.
    images, labels = ((self.train_images, self.train_labels) if self.placement == "device"
                      else self._host_batches(idx, n))
    # The next chunk's rows, found before this chunk is queued (a new pass's permutation
    # is computed on device), are decoded while this chunk runs.
    ahead = (self.chunk_indices(self.step + n)[1:3]
             if self.prefetch and self.step + n < exp.total_steps else None)
    first = self.loop_state["first_loss"].get(str(p))
    out = self.chunks[p](self.state, images, labels, self.put(idx), self.put(np.int32(n)),
                         self.put(np.float32(np.nan if first is None else first)))
    if ahead is not None:
      next_n, next_idx = ahead
      self.prefetch.start(next_idx, lambda i: self._host_rows(i, next_n))
    self.state = out.state
    if first is None and math.isfinite(float(out.first_loss)):
      self.loop_state["first_loss"][str(p)] = float(out.first_loss)
    if int(out.bad):
      self.step = int(self.state.step)
      self.diverged(out, p)
    self.step += n
    sums = {k: float(v) for k, v in out.sums.items()}
    prefix = "train" if p == passes - 1 else f"train_{exp.passes[p].name}"
    epoch_sums = self.loop_state["epoch_sums"]
    for k, v in sums.items():
      epoch_sums[f"{prefix}/{k}"] = epoch_sums.get(f"{prefix}/{k}", 0.0) + v
    self.loop_state["epoch_steps"][prefix] = self.loop_state["epoch_steps"].get(prefix, 0) + n
    self.chunk_sums, self.chunk_steps = sums, n
    self.window.update(loss=self.window["loss"] + sums["loss"], steps=self.window["steps"] + n,
                       accuracy=self.window["accuracy"] + sums.get("accuracy", 0.0))

  def diverged(self, out: ChunkOut, p: int) -> None:
    code, at = Bad(int(out.bad)), int(out.bad_step)
    if code == Bad.STATE:  # found by the end-of-chunk check: no good state to save here.
      raise NonFiniteError(f"non-finite {code.describe()} within steps {self.step + 1}-{at}; "
                           "the checkpoints saved before are kept")
    self.save(force=True)  # the state stopped at the last good step.
    if code == Bad.EXPLODED:
      raise NonFiniteError(
          f"training loss {float(out.bad_value):.4g} at step {at} is over "
          f"{self.config.divergence_factor:g}x the first step's loss "
          f"{self.loop_state['first_loss'][str(p)]:.4g} (config.divergence_factor; 0 disables "
          f"this check): the run diverged; the state of step {at - 1} is kept")
    raise NonFiniteError(f"non-finite {code.describe()} at step {at}; the state of step "
                         f"{at - 1} is kept")

  def maybe_run_phase(self) -> None:
    """Runs the rule's epoch phases before an epoch that has not had them yet."""
    exp = self.exp
    epoch, p, pos = exp.position(self.step)
    if self.phase_fn is None or p or pos or int(self.state.phase_epoch) >= epoch:
      return
    if epoch and not any(ph.every_epoch for ph in exp.rule.phases):
      return
    t = time.time()
    # Blocked on, so that the wall time is the phase's (not just its dispatch).
    self.state, metrics = jax.block_until_ready(self.phase_fn(
        self.state, self.put(steps.phase_key(self.config.seed, epoch)), epoch == 0))
    self.state = self.state._replace(phase_epoch=self.put(np.int32(epoch)))
    wall = time.time() - t
    self.loop_state["phase"] = {**{f"phase/{k}": float(v) for k, v in metrics.items()},
                                "phase/wall_s": wall}
    logging.info("epoch %d: %s phase done in %.1f s", epoch + 1,
                 "+".join(ph.name for ph in exp.rule.phases), wall)
    self.save(force=True)
    self.check_preemption()

  # -- Periodic actions.

  def align(self) -> None:
    rows = self.chunk_rows
    self.loop_state["last_align"] = {k: float(v) for k, v in self.periodic_fn(
        self.state, self.put(self.train_ds.images[rows]), self.put(self.train_ds.labels[rows]),
        self.put(jax.random.key_data(jax.random.key(self.step)))).items()}

  def log_points(self) -> None:
    w, now = self.window, time.time()
    self.writers.scalars(self.step, {
        "train_step/loss": w["loss"] / w["steps"],
        "train_step/accuracy": w["accuracy"] / w["steps"],
        "time/steps_per_s": w["steps"] / max(now - w["t"], 1e-9)})
    w.update(loss=0.0, accuracy=0.0, steps=0, t=now)

  def log_progress(self) -> None:
    now, total = time.time(), self.exp.total_steps
    if now - self.t_last_log <= self.config.log_every_secs and self.step != total:
      return
    rate = (self.step - self.steps_at_start) / max(now - self.t_start, 1e-9)
    epoch, p, _ = self.exp.position(self.step - 1)
    where = f"epoch {epoch + 1}" + ("" if len(self.exp.passes) == 1
                                    else f", {self.exp.passes[p].name} pass")
    n = self.chunk_steps
    logging.info("step %d/%d (%s) %.1f steps/s ETA %s train loss %.4f acc %.4f", self.step,
                 total, where, rate, _fmt_time((total - self.step) / max(rate, 1e-9)),
                 self.chunk_sums["loss"] / n, self.chunk_sums.get("accuracy", float("nan")) / n)
    self.t_last_log = now

  def end_of_epoch(self) -> None:
    exp, lp = self.exp, self.loop_state
    loss_sum, correct = self.eval_sums(self.evaluate, self.test_ds, self.test_images,
                                       self.test_labels)
    n_test = len(self.test_ds.labels)
    sums, counts = lp["epoch_sums"], lp["epoch_steps"]
    record = {"epoch": self.step // exp.steps_per_epoch,
              **{k: v / counts[k.split("/", 1)[0]] for k, v in sums.items()},
              "test/loss": float(loss_sum) / n_test,
              "test/accuracy": float(correct) / n_test,
              "test/error_pct": 100.0 * (1 - float(correct) / n_test),
              **self.validation(),
              **{f"align/{k}": v for k, v in lp["last_align"].items()},
              **lp["phase"],
              "time/elapsed_s": self.elapsed(),
              "time/steps_per_s": (self.step - self.steps_at_start)
                                  / max(time.time() - self.t_start, 1e-9)}
    angle = lp["last_align"].get("update_angle/all")
    logging.info("epoch %d: train loss %.4f acc %.4f | test loss %.4f acc %.4f%s",
                 record["epoch"], record.get("train/loss", float("nan")),
                 record.get("train/accuracy", float("nan")), record["test/loss"],
                 record["test/accuracy"],
                 "" if angle is None else f" | update angle to {exp.references[0].name} "
                 f"{angle:.1f} deg")
    warn_recurrent(record)
    self.writers.write(self.step, record)
    self.record = record

  def evaluate(self, images, labels):
    return self.eval_fn(self.state.params, self.state.net_state, self.state.rule_state,
                        images, labels)

  def validation(self) -> dict[str, float]:
    """Loss, accuracy and error on ``dataset.validation_split`` (empty without one)."""
    if self.val_ds is None:
      return {}
    loss_sum, correct = self.eval_sums(self.evaluate, self.val_ds, self.val_images,
                                       self.val_labels)
    n = len(self.val_ds.labels)
    return {"val/loss": float(loss_sum) / n, "val/accuracy": float(correct) / n,
            "val/error_pct": 100.0 * (1 - float(correct) / n)}

  def periodic_save(self) -> None:
    self.save(force=self.step == self.exp.total_steps)

  def check_preemption(self) -> None:
    if not self.preemption.agreed():
      return
    signum = self.preemption.signum
    logging.warning("%s: saving step %d before exit", "interrupted (Ctrl-C)"
                    if signum == signal.SIGINT else "preempted (SIGTERM)", self.step)
    self.save(force=True)
    self.ckpt.wait()
    raise Interrupted(signum, self.step, os.path.join(self.shown, "checkpoints"))


def warn_recurrent(record: dict, who: str = "") -> None:
  """Warnings on an epoch record of a recurrent rule: unsettled free phases, large |Im u|."""
  unsettled = record.get("train/unsettled_frac") or 0.0
  if unsettled > 0:
    logging.warning("epoch %d%s: %.1f%% of training examples did not settle in the free "
                    "phase (residual above the rule's threshold); consider a longer t_free",
                    record["epoch"], who, 100 * unsettled)
  imag = record.get("train/max_abs_imag_u")
  if imag is not None and imag > jaxbio.recurrent.IMAG_BOUND:
    logging.warning("epoch %d%s: complex nudged phases reached max |Im u| = %.2f (epoch mean of "
                    "the per-step maxima), past pi/4: outside sigma's analytic region the "
                    "O(|beta|^N) bias bound fails; consider a smaller |beta|",
                    record["epoch"], who, imag)


def _summary(config, metrics_path: str, shown: str, steps_run: int, train_s: float,
             wall_s: float, latest: int | None) -> None:
  """Writes the run's plots and logs a short end-of-run summary."""
  records = [r for r in _read_records(metrics_path) if r.get("test/error_pct") is not None]
  plots = []
  try:
    from jaxbio import plot  # pylint: disable=g-import-not-at-top
    plots = plot.plot_runs([os.path.dirname(metrics_path)],
                           os.path.join(os.path.dirname(metrics_path), "plots"))
  except Exception as e:  # pylint: disable=broad-except  (a plot never fails a run)
    logging.warning("could not write plots: %s", str(e).splitlines()[0] if str(e) else e)
  lines = [f"done: {config.rule.name} on {config.dataset.name}, {steps_run} steps in "
           f"{_fmt_time(wall_s)} ({steps_run / max(train_s, 1e-9):.1f} steps/s in training)"]
  if records:
    last = records[-1]
    best = min(records, key=lambda r: r["test/error_pct"])
    lines.append(f"test error: final {last['test/error_pct']:.2f} % (epoch {last['epoch']}), "
                 f"best {best['test/error_pct']:.2f} % (epoch {best['epoch']})")
  lines.append(f"metrics: {os.path.join(shown, 'metrics.jsonl')}, TensorBoard: "
               f"{os.path.join(shown, 'tensorboard')}")
  if plots:
    lines.append(f"plots: {', '.join(os.path.join(shown, 'plots', os.path.basename(p)) for p in plots)}")
  lines.append(f"checkpoints: {os.path.join(shown, 'checkpoints')}"
               + (f" (latest: step {latest})" if latest is not None else ""))
  for line in lines:
    logging.info("%s", line)


# Fields whose change would alter the data order or the meaning of the step count.
_RESUME_FIELDS = (("seed",), ("batch_size",), ("dataset", "name"), ("dataset", "train_split"),
                  ("replicas",))


def _check_resumable(saved: dict, current: dict, workdir: str) -> None:
  """Refuses to resume a run whose data order would change; warns on other changes."""
  for path in _RESUME_FIELDS:
    a, b = saved, current
    for k in path:
      a, b = (a or {}).get(k), (b or {}).get(k)
    if path == ("replicas",):  # saved before replicas existed, or a config without them.
      one = json.loads(replicas.default_config().to_json())
      a, b = a or one, b or one
    if a != b:
      name = ".".join(path)
      raise ValueError(f"workdir {workdir} holds a run with {name}={a!r}; this config has "
                       f"{name}={b!r}, which would change the data order: use another --workdir")
  if saved != current:
    logging.warning("resuming %s with a config that differs from the saved one", workdir)


def _read_records(path: str) -> list[dict]:
  """The records of ``metrics.jsonl``; a torn last line (a killed writer) is skipped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          logging.warning("skipping an unreadable line of %s", path)
  return records


def _last_record(path: str) -> dict:
  records = _read_records(path)
  return records[-1] if records else {}


def _truncate_metrics(path: str, step: int) -> None:
  """Drops records after ``step`` (logged by a run that was later resumed)."""
  if not os.path.exists(path):
    return
  records = [r for r in _read_records(path) if r["step"] <= step]
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  os.replace(tmp, path)
