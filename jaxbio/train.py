"""Training loop: ``train_and_evaluate(config, workdir)``.

Design:

* The datasets that fit in memory live on the devices as uint8 arrays; each
  compiled call runs up to ``steps_per_call`` training steps (a
  ``lax.fori_loop``), gathering, augmenting and normalising its batches on
  device, so the loop is bound neither by Python nor by the input pipeline.
* Training is data parallel over all devices: batches are sharded on the
  ``data`` axis of a 1-D mesh, parameters and rule state are replicated, and
  ``jax.jit`` inserts the gradient reductions.
* A non-finite loss, update or state, or a training loss that exploded past
  ``config.divergence_factor`` times the run's first loss, stops the run with
  the step number and the quantity; the state saved is the last good one.
* Alignment metrics run every ``alignment_every`` steps in their own compiled
  call, so the other steps do not pay for them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxbio
from jaxbio import build, checkpoint, data, optim, registry, workdir as workdirs
from jaxbio.log import logger as logging
from jaxbio.metrics.alignment import alignment_metrics
from jaxbio.rules.base import with_penalty

CONFIG_VERSION = registry.CONFIG_VERSION
# Codes of the quantity that first went wrong.
_NONFINITE = {1: "loss", 2: "update", 3: "parameter, optimizer, rule or network state",
              4: "loss (exploded)"}
_EXPLODED = 4


class TrainState(NamedTuple):
  """Everything a run carries between steps (a pytree)."""
  step: jax.Array
  params: Any
  net_state: Any
  opt_state: Any
  rule_state: Any
  key: jax.Array  # raw uint32 key data, so checkpoints need no key handling.


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


class ChunkOut(NamedTuple):
  """What a compiled training chunk returns."""
  state: TrainState
  sums: dict          # sums of the per-step training metrics over the good steps.
  bad: jax.Array      # 0, or the code (_NONFINITE) of the first quantity that went wrong.
  bad_step: jax.Array  # the step at which it did (-1 if none).
  bad_value: jax.Array  # the loss at that step.
  first_loss: jax.Array  # the run's first-step loss (NaN until step 1 has run).


class Experiment(NamedTuple):
  """The pieces a config describes, built and checked."""
  net: Any
  rule: Any
  reference: Any
  tx: optax.GradientTransformation
  spec: Any
  steps_per_epoch: int
  total_steps: int


def _all_finite(tree, square: bool = False) -> jax.Array:
  """Whether every float in ``tree`` is finite, from one sum per leaf.

  A NaN or infinity anywhere makes the sum non-finite, and a sum fuses with
  the computation that produced the leaf, so this is much cheaper than an
  element-wise test. With ``square``, the sum of squares: it also catches
  values whose square overflows (which would silently zero Adam's steps).
  """
  sums = [jnp.sum(jnp.square(x) if square else x, dtype=jnp.float32)
          for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.isfinite(sum(sums)) if sums else jnp.array(True)


validate = registry.validate


def build_experiment(config, num_train: int) -> Experiment:
  """Builds network, rule, optimiser; validates the whole config first."""
  validate(config)
  spec = data.DATASETS[config.dataset.name]
  net = build.build_network(config.model, spec.image_shape, spec.num_classes)
  rule = build.build_rule(config.rule, net)
  homeo = config.get("homeostasis")
  if homeo is not None and homeo.weight:
    if isinstance(net, build.nets.Network):
      raise ValueError("homeostasis.weight > 0 needs a convergent recurrent network "
                       f"({', '.join(build.RECURRENT_ARCHS)}); got model.arch "
                       f"{config.model.arch!r}")
    from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
    rule = with_penalty(rule, recurrent.homeostasis_penalty(net, homeo.num_probes),
                        homeo.weight, name="homeostasis")
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"config.batch_size {config.batch_size} is larger than the training set "
                     f"({num_train} examples)")
  total_steps = steps_per_epoch * config.num_epochs
  tx = optim.make_optimizer(config.optimizer, total_steps)
  # Errors that would otherwise surface only when the step is traced.
  jax.eval_shape(tx.init, jax.eval_shape(net.init, jax.random.key(0))[0])
  return Experiment(net, rule, build.build_reference_rule(net, config.rule), tx, spec,
                    steps_per_epoch, total_steps)


def init_state(exp: Experiment, seed: int) -> TrainState:
  key = jax.random.key(seed)
  k_net, k_rule, k_run = jax.random.split(key, 3)
  params, net_state = exp.net.init(k_net)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, net_state=net_state,
                    opt_state=exp.tx.init(params), rule_state=exp.rule.init(k_rule, params),
                    key=jax.random.key_data(k_run))


def make_preprocess(config, spec):
  """Returns ``preprocess(key, uint8_images, train) -> float32 images``."""
  augment = config.dataset.augment
  mode = config.dataset.normalize
  # Optional dataset.mean / dataset.std replace the spec's; the hEP CNN runs divide
  # by 1.5x the std (Laborieux & Zenke 2024).
  mean, std = config.dataset.get("mean") or spec.mean, config.dataset.get("std") or spec.std
  stats = (tuple(mean), tuple(config.dataset.get("std_multiplier", 1.0) * s for s in std))

  def preprocess(key, images, train):
    x = images.astype(jnp.float32)
    if train and augment != "none":
      x = data.random_crop_flip(key, x, pad=config.dataset.crop_padding,
                                crop=augment == "crop_flip", flip=True)
    return data.normalize(x, stats, mode)

  return preprocess


_check_placement = registry.check_placement


def make_train_chunk(exp: Experiment, config, mesh, placement: str = "device"):
  """Compiles ``chunk(state, images, labels, idx, num_steps, first_loss) -> ChunkOut``.

  Runs ``num_steps`` (dynamic, <= ``idx.shape[0]``) training steps. With
  ``placement="device"`` the whole split is on every device and step ``i``
  gathers the examples ``idx[i]``; with ``"host"``, ``images`` and ``labels``
  are the chunk's batches, ``(steps, batch, ...)``, already sharded on the
  batch axis, and ``idx`` only gives the number of rows.

  ``first_loss`` is the loss of the run's first step (NaN if it has not run
  yet; the chunk that runs step 1 records it). With ``config.divergence_factor
  = f > 0``, a step whose loss exceeds ``f * first_loss`` counts as bad, like a
  non-finite loss. Once a step is bad the state stops changing, so the state
  returned is the last good one.
  """
  _check_placement(placement)
  preprocess = make_preprocess(config, exp.spec)
  batch_sharding = NamedSharding(mesh, P("data"))
  factor = float(config.get("divergence_factor", 0.0))

  def one_step(state: TrainState, images, labels, row):
    key = jax.random.wrap_key_data(state.key)
    key, k_aug, k_rule = jax.random.split(key, 3)
    x = jax.lax.with_sharding_constraint(images[row], batch_sharding)
    y = jax.lax.with_sharding_constraint(labels[row], batch_sharding)
    batch = {"image": preprocess(k_aug, x, True), "label": y}
    out = exp.rule.update(state.params, state.net_state, state.rule_state, batch, k_rule)
    updates, opt_state = exp.tx.update(out.grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rule_state = exp.rule.after_step(out.state, state.params, updates)
    new = TrainState(state.step + 1, params, out.net_state, opt_state, rule_state,
                     jax.random.key_data(key))
    # Every step: the loss and the sum of squared updates (it also catches values
    # whose square overflows, which would silently zero Adam's steps). With
    # finite gradients, optimiser moments, parameters and the rules' states stay
    # finite; the whole state is checked once per chunk as well.
    checks = jnp.stack([_all_finite(out.metrics["loss"]), _all_finite(out.grads, square=True)])
    bad = jnp.where(jnp.all(checks), 0, jnp.argmin(checks) + 1)
    return new, out.metrics, bad

  def chunk(state: TrainState, images, labels, idx, num_steps, first_loss):
    row = (lambda i: idx[i]) if placement == "device" else (lambda i: i)
    zero_metrics = jax.eval_shape(lambda s: one_step(s, images, labels, row(0))[1], state)
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), zero_metrics)

    def body(i, carry):
      state, sums, bad, bad_step, bad_value, first = carry
      new, metrics, step_bad = one_step(state, images, labels, row(i))
      loss = jnp.asarray(metrics["loss"], jnp.float32)
      first = jnp.where(state.step == 0, loss, first)
      if factor:
        exploded = (step_bad == 0) & (loss > factor * first)
        step_bad = jnp.where(exploded, _EXPLODED, step_bad)
      ok = (bad == 0) & (step_bad == 0)
      state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
      sums = jax.tree.map(lambda s, m: s + jnp.where(ok, m, 0.0), sums, metrics)
      first_bad = (bad == 0) & (step_bad != 0)
      bad_step = jnp.where(first_bad, state.step + 1, bad_step)
      bad_value = jnp.where(first_bad, loss, bad_value)
      bad = jnp.where(first_bad, step_bad, bad)
      return state, sums, bad, bad_step, bad_value, first

    init = (state, sums0, jnp.int32(0), jnp.int32(-1), jnp.float32(jnp.nan),
            jnp.asarray(first_loss, jnp.float32))
    state, sums, bad, bad_step, bad_value, first = jax.lax.fori_loop(0, num_steps, body, init)
    whole = _all_finite((state.params, state.opt_state, state.rule_state, state.net_state))
    late = (bad == 0) & ~whole  # caught only by the end-of-chunk check.
    bad = jnp.where(late, 3, bad)
    bad_step = jnp.where(late, state.step, bad_step)
    return ChunkOut(state, sums, bad, bad_step, bad_value, first)

  replicated = NamedSharding(mesh, P())
  return jax.jit(chunk, donate_argnums=(0,), out_shardings=replicated)


def make_eval(exp: Experiment, config, mesh):
  """Compiles ``evaluate(params, net_state, images, labels) -> (loss_sum, correct)``."""
  preprocess = make_preprocess(config, exp.spec)
  eval_bs = config.eval_batch_size

  def evaluate(params, net_state, images, labels):
    n = images.shape[0]
    num_batches = -(-n // eval_bs)
    pad = num_batches * eval_bs - n
    images = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
    labels = jnp.pad(labels, (0, pad))
    valid = jnp.arange(num_batches * eval_bs) < n

    def one(args):
      x, y, m = args
      logits, _ = exp.net.apply(params, net_state, preprocess(None, x, False), train=False)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      correct = jnp.argmax(logits, -1) == y
      return jnp.sum(jnp.where(m, losses, 0.0)), jnp.sum(correct & m)

    shape = lambda a: a.reshape((num_batches, eval_bs) + a.shape[1:])
    losses, correct = jax.lax.map(one, (shape(images), shape(labels), shape(valid)))
    return jnp.sum(losses), jnp.sum(correct)

  return jax.jit(evaluate, out_shardings=NamedSharding(mesh, P()))


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

  def write(self, step: int, record: dict[str, float]) -> None:
    """Appends an epoch record to metrics.jsonl and logs its scalars to TensorBoard."""
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **_json_safe(record)}, allow_nan=False) + "\n")
    self._jsonl.flush()
    self.scalars(step, record)

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

  Returns:
    The last epoch's record (train/test loss and accuracy, alignment, timing).

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
  workdirs.check(workdir, shown)
  data_dir = config.dataset.get("data_dir") or None
  if data_dir:
    data_dir = workdirs.resolve(data_dir)
  train_ds = data.load(config.dataset.name, config.dataset.train_split, data_dir)
  test_ds = data.load(config.dataset.name, config.dataset.test_split, data_dir)
  logging.info("data: %s %s (%d examples) and %s (%d) ready in %.1f s", config.dataset.name,
               config.dataset.train_split, len(train_ds.labels), config.dataset.test_split,
               len(test_ds.labels), time.time() - t_begin)
  exp = build_experiment(config, len(train_ds.labels))
  devices = jax.devices()
  if config.batch_size % len(devices):
    raise ValueError(f"config.batch_size {config.batch_size} is not divisible by the "
                     f"{len(devices)} devices")
  workdirs.create(workdir, shown)
  lock = _lock_workdir(workdir, shown)
  try:
    return _train(config, exp, train_ds, test_ds, devices, workdir, shown, t_begin)
  finally:
    lock.release()


def _train(config, exp, train_ds, test_ds, devices, workdir, shown, t_begin):
  """The training loop of :func:`train_and_evaluate`, on a locked workdir."""
  mesh = make_mesh(devices)
  replicated = NamedSharding(mesh, P())
  put = lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x))
  placement = config.data_placement
  if placement == "device":
    # The split is on every device; each device gathers its slice of every batch
    # inside the compiled step.
    train_images, train_labels = put(train_ds.images), put(train_ds.labels)
  test_images, test_labels = put(test_ds.images), put(test_ds.labels)
  rows_sharding = NamedSharding(mesh, P(None, "data"))
  lo, hi = _process_batch_slice(rows_sharding, (config.steps_per_call, config.batch_size))

  def host_batches(idx):
    """This process's slice of every batch of the chunk, as one global array."""
    local = idx[:, lo:hi]
    make = lambda a: jax.make_array_from_process_local_data(
        rows_sharding, a[local], (idx.shape[0], config.batch_size) + a.shape[1:])
    return make(train_ds.images), make(train_ds.labels)

  state = jax.jit(lambda: init_state(exp, config.seed), out_shardings=replicated)()
  chunk_fn = make_train_chunk(exp, config, mesh, placement)
  eval_fn = make_eval(exp, config, mesh)
  preprocess = make_preprocess(config, exp.spec)
  diagnostics = build.build_diagnostics(exp.net, config.rule)

  def periodic_metrics(s, x, y, k):
    batch = {"image": preprocess(None, x, False), "label": y}
    key = jax.random.wrap_key_data(k)
    out = alignment_metrics(exp.rule, exp.reference, s.params, s.net_state, s.rule_state,
                            batch, key)
    if diagnostics is not None:
      out.update(diagnostics(s.params, batch["image"], y, key))
    return out

  align_fn = jax.jit(periodic_metrics, out_shardings=replicated)

  bs, spe, total = config.batch_size, exp.steps_per_epoch, exp.total_steps
  ckpt_every = config.checkpoint.every_steps or spe
  align_every, log_every = config.alignment_every, config.get("log_every", 0)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = checkpoint.Checkpointer(ckpt_dir, keep=config.checkpoint.keep)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  # Training metrics of the epoch under way, the latest periodic metrics, the
  # run's first-step loss (the divergence guard's reference) and the training
  # time so far: saved with every checkpoint, so a resumed run logs what an
  # uninterrupted one would.
  loop = {"epoch_sums": {}, "epoch_steps": 0, "last_align": {}, "first_loss": None,
          "elapsed_s": 0.0}
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, meta, _ = restored
    _check_resumable(meta.get("config", {}), json.loads(config.to_json()), shown)
    loop.update(meta.get("loop", {}))
    logging.info("resuming from the checkpoint of step %d", int(state.step))
  primary = jax.process_index() == 0
  if primary:
    _truncate_metrics(metrics_path, int(state.step))
  writers = _Writers(workdir, primary)
  n_train, n_test = len(train_ds.labels), len(test_ds.labels)
  logging.info("%s on %s with %s (%d parameters): %d epochs x %d steps, batch %d, %d device(s)",
               config.rule.name, config.dataset.name, config.model.arch,
               sum(x.size for x in jax.tree.leaves(state.params)), config.num_epochs, spe, bs,
               len(devices))
  step = int(state.step)
  t_start, t_last_log, steps_at_start = time.time(), 0.0, step
  elapsed_before = float(loop["elapsed_s"])
  elapsed = lambda: elapsed_before + time.time() - t_start
  window = {"loss": 0.0, "accuracy": 0.0, "steps": 0, "t": time.time()}
  k_call = config.steps_per_call

  def save(force=False):
    loop["elapsed_s"] = elapsed()
    meta = {"config": json.loads(config.to_json()), "step": step, "epoch": step // spe,
            "loop": loop, "jaxbio_version": jaxbio.__version__}
    ckpt.save(step, state, meta, force=force)

  def end_of_epoch():
    loss_sum, correct = eval_fn(state.params, state.net_state, test_images, test_labels)
    n_steps = loop["epoch_steps"]
    record = {"epoch": step // spe,
              **{f"train/{k}": v / n_steps for k, v in loop["epoch_sums"].items()},
              "test/loss": float(loss_sum) / n_test,
              "test/accuracy": float(correct) / n_test,
              "test/error_pct": 100.0 * (1 - float(correct) / n_test),
              **{f"align/{k}": v for k, v in loop["last_align"].items()},
              "time/elapsed_s": elapsed(),
              "time/steps_per_s": (step - steps_at_start) / max(time.time() - t_start, 1e-9)}
    logging.info("epoch %d: train loss %.4f acc %.4f | test loss %.4f acc %.4f%s",
                 record["epoch"], record.get("train/loss", float("nan")),
                 record.get("train/accuracy", float("nan")), record["test/loss"],
                 record["test/accuracy"],
                 "" if "update_angle/all" not in loop["last_align"] else
                 f" | update angle to {exp.reference.name} "
                 f"{loop['last_align']['update_angle/all']:.1f} deg")
    unsettled = record.get("train/unsettled_frac", 0.0)
    if unsettled > 0:
      logging.warning("epoch %d: %.1f%% of training examples did not settle in the free "
                      "phase (residual above the rule's threshold); consider a longer t_free",
                      record["epoch"], 100 * unsettled)
    writers.write(step, record)
    return record

  def diverged(out: ChunkOut):
    code, at = int(out.bad), int(out.bad_step)
    if code == 3:  # found by the end-of-chunk check: no good state to save here.
      raise NonFiniteError(f"non-finite {_NONFINITE[3]} within steps {step + 1}-{at}; the "
                           "checkpoints saved before are kept")
    save(force=True)  # the state stopped at the last good step.
    if code == _EXPLODED:
      raise NonFiniteError(
          f"training loss {float(out.bad_value):.4g} at step {at} is over "
          f"{config.divergence_factor:g}x the first step's loss {loop['first_loss']:.4g} "
          f"(config.divergence_factor; 0 disables this check): the run diverged; the state "
          f"of step {at - 1} is kept")
    raise NonFiniteError(f"non-finite {_NONFINITE[code]} at step {at}; the state of step "
                         f"{at - 1} is kept")

  record = _last_record(metrics_path)
  preemption = checkpoint.PreemptionFlag((signal.SIGTERM, signal.SIGINT))
  try:
    with preemption:
      if step and step % spe == 0 and record.get("step") != step:
        record = end_of_epoch()  # stopped between its checkpoint and its record.
      while step < total:
        epoch, pos = divmod(step, spe)
        if pos == 0:  # kept until here, so the epoch-end checkpoint holds them.
          loop.update(epoch_sums={}, epoch_steps=0)
        perm = np.asarray(data.epoch_permutation(config.seed, epoch, n_train))
        n = min(k_call, spe - pos, ckpt_every - step % ckpt_every)
        for every in (align_every, log_every):
          if every:
            n = min(n, every - step % every)
        idx = perm[pos * bs:(pos + n) * bs].reshape(n, bs)
        idx = np.pad(idx, ((0, k_call - n), (0, 0)))  # fixed shape: one compilation.
        if placement == "host":
          train_images, train_labels = host_batches(idx)
        first = np.float32(np.nan if loop["first_loss"] is None else loop["first_loss"])
        out = chunk_fn(state, train_images, train_labels, put(idx), put(np.int32(n)),
                       put(first))
        state = out.state
        if loop["first_loss"] is None and math.isfinite(float(out.first_loss)):
          loop["first_loss"] = float(out.first_loss)
        if int(out.bad):
          step = int(state.step)
          diverged(out)
        step += n
        sums = {k: float(v) for k, v in out.sums.items()}
        for k, v in sums.items():
          loop["epoch_sums"][k] = loop["epoch_sums"].get(k, 0.0) + v
        loop["epoch_steps"] += n
        window.update(loss=window["loss"] + sums["loss"], steps=window["steps"] + n,
                      accuracy=window["accuracy"] + sums.get("accuracy", 0.0))
        if align_every and (step % align_every == 0 or step % spe == 0):
          rows = perm[(pos + n - 1) * bs:(pos + n) * bs]
          loop["last_align"] = {k: float(v) for k, v in align_fn(
              state, put(train_ds.images[rows]), put(train_ds.labels[rows]),
              put(jax.random.key_data(jax.random.key(step)))).items()}
        now = time.time()
        if log_every and step % log_every == 0:
          writers.scalars(step, {
              "train_step/loss": window["loss"] / window["steps"],
              "train_step/accuracy": window["accuracy"] / window["steps"],
              "time/steps_per_s": window["steps"] / max(now - window["t"], 1e-9)})
          window.update(loss=0.0, accuracy=0.0, steps=0, t=now)
        if now - t_last_log > config.log_every_secs or step == total:
          rate = (step - steps_at_start) / max(now - t_start, 1e-9)
          logging.info("step %d/%d (epoch %d) %.1f steps/s ETA %s train loss %.4f acc %.4f",
                       step, total, epoch + 1, rate, _fmt_time((total - step) / max(rate, 1e-9)),
                       sums["loss"] / n, sums.get("accuracy", float("nan")) / n)
          t_last_log = now
        if step % spe == 0:
          record = end_of_epoch()
        if step % ckpt_every == 0 or step == total:
          save(force=step == total)
        if preemption.agreed():
          logging.warning("%s: saving step %d before exit",
                          "interrupted (Ctrl-C)" if preemption.signum == signal.SIGINT
                          else "preempted (SIGTERM)", step)
          save(force=True)
          ckpt.wait()
          raise Interrupted(preemption.signum, step, os.path.join(shown, "checkpoints"))
    ckpt.wait()
    latest = ckpt.latest_step()
  finally:
    writers.close()
    ckpt.close()
  if primary:
    _summary(config, metrics_path, shown, step - steps_at_start, time.time() - t_start,
             time.time() - t_begin, latest)
  return record


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
_RESUME_FIELDS = (("seed",), ("batch_size",), ("dataset", "name"), ("dataset", "train_split"))


def _check_resumable(saved: dict, current: dict, workdir: str) -> None:
  """Refuses to resume a run whose data order would change; warns on other changes."""
  for path in _RESUME_FIELDS:
    a, b = saved, current
    for k in path:
      a, b = (a or {}).get(k), (b or {}).get(k)
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
