"""The training loop of several replicas (seeds, hyperparameter draws) in one program.

:class:`ReplicaRun` is :class:`jaxbio.train._Run` with a leading replica axis
on the training state (see :mod:`jaxbio.replicas`): every compiled step is
``jax.vmap``-ed over the replicas, each with its own seed (initialisation,
rule state, data order, epoch-phase keys) and drawn hyperparameters; the
batch axis stays sharded over the devices as in a single run.

What differs from a single run:

* ``metrics.jsonl`` holds, at every epoch end, one record per replica with
  its ``replica`` index, ``seed``, ``draw`` and ``hparams``;
* a replica whose loss or update goes non-finite (or explodes) is frozen at
  its last good state and marked ``diverged_step`` in its records; the
  others go on, and the run stops only when every replica has diverged;
* the end-of-run summary gives mean ± s.e. over seeds of each draw's final
  and best test error, and the best draw, chosen by its best validation
  error when ``dataset.validation_split`` is set (else by test error, and
  labelled as chosen on the test set);
* checkpoints hold every replica and resume exactly.
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbio import data, replicas, steps
from jaxbio.experiment import init_replicas
from jaxbio.log import logger as logging
from jaxbio.steps import Bad, make_eval, make_train_chunk
from jaxbio.train import NonFiniteError, _Run, _fmt_time, _read_records, warn_recurrent

# Errors JAX raises when traced code uses a value to decide what to compute.
_TRACER_ERRORS = (jax.errors.TracerBoolConversionError, jax.errors.ConcretizationTypeError,
                  jax.errors.TracerIntegerConversionError)


class ReplicaRun(_Run):
  """A run of ``plan.size`` replicas trained together."""

  def __init__(self, config, exp, train_ds, test_ds, mesh, workdir, shown, val_ds,
               plan: replicas.ReplicaPlan):
    self.plan = plan
    self.perms_cache = (None, None)
    super().__init__(config, exp, train_ds, test_ds, mesh, workdir, shown, val_ds)
    self.loop_state.setdefault("diverged", {})
    if not isinstance(self.loop_state["last_align"], list):
      self.loop_state["last_align"] = [{} for _ in range(plan.size)]
    if not isinstance(self.loop_state["phase"], list):
      self.loop_state["phase"] = [{} for _ in range(plan.size)]
    self.replica_steps = np.asarray(self.state.step)
    # A resumed run: the last epoch's records, if all of them were written.
    last = [rec for rec in _read_records(self.metrics_path) if rec.get("step") == self.step
            and "replica" in rec]
    by_replica = {rec["replica"]: rec for rec in last}
    self.record = {} if len(by_replica) < plan.size else self._summary_record(
        [by_replica[i] for i in range(plan.size)])

  def _summary_record(self, records: list[dict]) -> dict:
    errors = [rec["test/error_pct"] for rec, ok in zip(records, self.alive()) if ok]
    mean, se = replicas.mean_se(errors)
    return {"epoch": records[0]["epoch"], "step": self.step, "replicas": records,
            "test/error_pct_mean": mean, "test/error_pct_se": se}

  def describe(self) -> str:
    return f", {self.plan.describe()}"

  def compile(self) -> None:
    config, exp, mesh, plan = self.config, self.exp, self.mesh, self.plan
    dtype = "float64" if config.model.get("dtype") == "float64" else "float32"
    self.values = {k: self.put(v.astype(dtype)) for k, v in plan.hparams.items()}
    self.rows_sharding = NamedSharding(mesh, P(None, None, "data"))
    if self.placement == "host":
      ranges = [idx[2] for idx in self.rows_sharding.addressable_devices_indices_map(
          (plan.size, config.steps_per_call, config.batch_size)).values()]
      self.local_rows = (min(r.start or 0 for r in ranges),
                         max(config.batch_size if r.stop is None else r.stop for r in ranges))
    self.state = _guarded(plan, lambda: jax.jit(
        lambda v: init_replicas(exp, config, plan, v), out_shardings=self.replicated)(
            self.values))
    self.chunks = [make_train_chunk(exp, config, mesh, self.placement, p, plan)
                   for p in range(len(exp.passes))]
    self.eval_fn = make_eval(exp, config, mesh, plan)
    self.periodic_fn = steps.make_periodic(exp, config, mesh, plan)
    self.phase_fn = steps.make_phase(exp, mesh, config, plan)
    # Traced now (not compiled), so a drawn field they cannot take fails before training.
    shape = lambda *s, dtype: jax.ShapeDtypeStruct(s, dtype)
    r, bs, spec = plan.size, config.batch_size, exp.dataset
    s = self.state
    test_images, test_labels = (  # a streamed split is evaluated in chunks: trace one.
        (self.test_images, self.test_labels) if self.test_images is not None else
        (shape(config.eval_batch_size, *spec.image_shape, dtype=np.uint8),
         shape(config.eval_batch_size, dtype=np.int32)))
    _guarded(plan, lambda: jax.eval_shape(self.eval_fn, self.values, s.params, s.net_state,
                                          s.rule_state, test_images, test_labels))
    _guarded(plan, lambda: jax.eval_shape(
        self.periodic_fn, self.values, s, shape(r, bs, *spec.image_shape, dtype=np.uint8),
        shape(r, bs, dtype=np.int32), shape(r, 2, dtype=np.uint32)))
    if self.phase_fn is not None:
      _guarded(plan, lambda: jax.eval_shape(
          lambda s, k, v, a: self.phase_fn(s, k, True, v, a), s, shape(r, 2, dtype=np.uint32),
          self.values, shape(r, dtype=bool)))

  def run_step(self) -> int:
    # Diverged replicas stop counting; the run's step is the others'.
    return int(np.max(np.asarray(self.state.step)))

  # -- Helpers.

  def alive(self) -> np.ndarray:
    dead = {int(r) for r in self.loop_state["diverged"]}
    return np.asarray([r not in dead for r in range(self.plan.size)])

  def permutations(self, epoch: int, p: int) -> np.ndarray:
    """Every replica's data order of pass ``p`` of ``epoch`` (its seed's)."""
    key = (epoch, p)
    if self.perms_cache[0] != key:
      passes, n = len(self.exp.passes), len(self.train_ds.labels)
      perms = {s: np.asarray(data.epoch_permutation(s, epoch * passes + p, n))
               for s in set(self.plan.seeds)}
      self.perms_cache = (key, np.stack([perms[s] for s in self.plan.seeds]))
    return self.perms_cache[1]

  def _host_batches(self, idx):
    lo, hi = self.local_rows
    local = idx[:, :, lo:hi]
    make = lambda a: jax.make_array_from_process_local_data(
        self.rows_sharding, a[local], idx.shape + a.shape[1:])
    return make(self.train_ds.images), make(self.train_ds.labels)

  def _mean_alive(self, per_replica, counts) -> float:
    alive = self.alive() & (counts > 0)
    if not alive.any():
      return math.nan
    return float(np.mean(np.asarray(per_replica)[alive] / counts[alive]))

  # -- The loop.

  def train_chunk(self) -> None:
    exp, config, bs, plan = self.exp, self.config, self.config.batch_size, self.plan
    epoch, p, pos = exp.position(self.step)
    if self.step % exp.steps_per_epoch == 0:
      self.loop_state.update(epoch_sums={}, epoch_steps={})
    n = self.chunk_length(pos)
    perms = self.permutations(epoch, p)
    idx = perms[:, pos * bs:(pos + n) * bs].reshape(plan.size, n, bs)
    self.chunk_rows = perms[:, (pos + n - 1) * bs:(pos + n) * bs]
    idx = np.pad(idx, ((0, 0), (0, config.steps_per_call - n), (0, 0)))
    images, labels = ((self.train_images, self.train_labels) if self.placement == "device"
                      else self._host_batches(idx))
    first = self.loop_state["first_loss"].get(str(p)) or [None] * plan.size
    first_arr = np.asarray([np.nan if f is None else f for f in first], np.float32)
    diverged = self.loop_state["diverged"]
    start_bad = np.asarray([diverged[str(r)]["code"] if str(r) in diverged else 0
                            for r in range(plan.size)], np.int32)
    before = self.replica_steps
    out = _guarded(plan, lambda: self.chunks[p](
        self.values, self.state, images, labels, self.put(idx), self.put(np.int32(n)),
        self.put(first_arr), self.put(start_bad)))
    self.state = out.state
    self.replica_steps = np.asarray(self.state.step)
    counts = self.replica_steps - before
    new_first = np.asarray(out.first_loss)
    self.loop_state["first_loss"][str(p)] = [
        f if f is not None else (float(v) if math.isfinite(float(v)) else None)
        for f, v in zip(first, new_first)]
    self.record_divergence(out, p, start_bad)
    self.step += n
    sums = {k: np.asarray(v, np.float64) for k, v in out.sums.items()}
    prefix = "train" if p == len(exp.passes) - 1 else f"train_{exp.passes[p].name}"
    epoch_sums, epoch_steps = self.loop_state["epoch_sums"], self.loop_state["epoch_steps"]
    for k, v in sums.items():
      old = epoch_sums.get(f"{prefix}/{k}", [0.0] * plan.size)
      epoch_sums[f"{prefix}/{k}"] = [a + float(b) for a, b in zip(old, v)]
    old = epoch_steps.get(prefix, [0] * plan.size)
    epoch_steps[prefix] = [a + int(b) for a, b in zip(old, counts)]
    # The console and TensorBoard show the mean over the replicas still training.
    self.chunk_sums = {k: n * self._mean_alive(v, counts) for k, v in sums.items()}
    self.chunk_steps = n
    self.window.update(loss=self.window["loss"] + self.chunk_sums["loss"],
                       steps=self.window["steps"] + n,
                       accuracy=self.window["accuracy"] + self.chunk_sums.get("accuracy", 0.0))

  def record_divergence(self, out, p: int, start_bad: np.ndarray) -> None:
    """Marks replicas that went bad in this chunk; stops when none is left."""
    bad, at, value = (np.asarray(x) for x in (out.bad, out.bad_step, out.bad_value))
    diverged = self.loop_state["diverged"]
    for r in np.flatnonzero((bad != 0) & (start_bad == 0)):
      code = Bad(int(bad[r]))
      step = int(at[r])
      what = (f"training loss {float(value[r]):.4g} over {self.config.divergence_factor:g}x "
              "the first step's" if code == Bad.EXPLODED else f"non-finite {code.describe()}")
      diverged[str(r)] = {"code": int(code), "step": step, "what": what}
      logging.warning("replica %d (%s): %s at step %d; it is frozen at its last good state"
                      "%s, the other replicas go on", r, _values_text(self.plan, r), what, step,
                      "" if code != Bad.STATE else " (non-finite: none was left)")
    if not self.alive().any():
      self.step = self.run_step()  # the latest good step of any replica.
      self.save(force=True)
      raise NonFiniteError(f"every replica diverged (the last at step {int(np.max(at))}); "
                           f"their last good states are saved, labelled step {self.step}")

  def maybe_run_phase(self) -> None:
    exp = self.exp
    epoch, p, pos = exp.position(self.step)
    if self.phase_fn is None or p or pos or int(np.max(self.state.phase_epoch)) >= epoch:
      return
    if epoch and not any(ph.every_epoch for ph in exp.rule.phases):
      return
    t = time.time()
    keys = np.stack([np.asarray(steps.phase_key(s, epoch)) for s in self.plan.seeds])
    alive = self.alive()
    self.state, metrics = jax.block_until_ready(
        self.phase_fn(self.state, self.put(keys), epoch == 0, self.values, self.put(alive)))
    self.state = self.state._replace(
        phase_epoch=self.put(np.full((self.plan.size,), epoch, np.int32)))
    wall = time.time() - t
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    self.loop_state["phase"] = [
        {**{f"phase/{k}": float(v[r]) for k, v in metrics.items()}, "phase/wall_s": wall}
        if alive[r] else old for r, old in enumerate(self.loop_state["phase"])]
    logging.info("epoch %d: %s phase of %d replicas done in %.1f s", epoch + 1,
                 "+".join(ph.name for ph in exp.rule.phases), self.plan.size, wall)
    self.save(force=True)
    self.check_preemption()

  # -- Periodic actions.

  def align(self) -> None:
    rows = self.chunk_rows
    key = np.asarray(jax.random.key_data(jax.random.key(self.step)))
    out = self.periodic_fn(self.values, self.state, self.put(self.train_ds.images[rows]),
                           self.put(self.train_ds.labels[rows]),
                           self.put(np.broadcast_to(key, (self.plan.size,) + key.shape)))
    self.loop_state["last_align"] = [{k: float(np.asarray(v)[r]) for k, v in out.items()}
                                     for r in range(self.plan.size)]

  def evaluate(self, images, labels):
    return self.eval_fn(self.values, self.state.params, self.state.net_state,
                        self.state.rule_state, images, labels)

  def _evaluate(self, ds, images, labels) -> tuple[np.ndarray, np.ndarray]:
    loss_sum, correct = self.eval_sums(self.evaluate, ds, images, labels)
    n = len(ds.labels)
    return np.asarray(loss_sum, np.float64) / n, np.asarray(correct, np.float64) / n

  def end_of_epoch(self) -> None:
    exp, lp, plan = self.exp, self.loop_state, self.plan
    test_loss, test_acc = self._evaluate(self.test_ds, self.test_images, self.test_labels)
    val = None
    if self.val_ds is not None:
      val = self._evaluate(self.val_ds, self.val_images, self.val_labels)
    sums, counts = lp["epoch_sums"], lp["epoch_steps"]
    epoch = self.step // exp.steps_per_epoch
    common = {"time/elapsed_s": self.elapsed(),
              "time/steps_per_s": (self.step - self.steps_at_start)
                                  / max(time.time() - self.t_start, 1e-9)}
    records = []
    for r in range(plan.size):
      record = {"epoch": epoch, "replica": r, "seed": plan.seeds[r], "draw": plan.draw[r],
                "hparams": plan.values(r),
                **{k: (v[r] / counts[k.split("/", 1)[0]][r]
                       if counts[k.split("/", 1)[0]][r] else None) for k, v in sums.items()},
                "test/loss": float(test_loss[r]), "test/accuracy": float(test_acc[r]),
                "test/error_pct": 100.0 * (1 - float(test_acc[r]))}
      if val is not None:
        record.update({"val/loss": float(val[0][r]), "val/accuracy": float(val[1][r]),
                       "val/error_pct": 100.0 * (1 - float(val[1][r]))})
      record.update({f"align/{k}": v for k, v in lp["last_align"][r].items()})
      record.update(lp["phase"][r])
      if str(r) in lp["diverged"]:
        record["diverged_step"] = lp["diverged"][str(r)]["step"]
      record.update(common)
      records.append(record)
    for r, record in enumerate(records):
      self.writers.write(self.step, record, tb_prefix=f"replica{r}/")
      if str(r) not in lp["diverged"]:
        warn_recurrent(record, f", replica {r}")
    self.record = self._summary_record(records)
    errors = [rec["test/error_pct"] for rec, ok in zip(records, self.alive()) if ok]
    mean, se = self.record["test/error_pct_mean"], self.record["test/error_pct_se"]
    logging.info("epoch %d: test error %.2f ± %.2f %% (mean ± s.e. over %d training "
                 "replicas; min %.2f %%)%s", epoch, mean, se, len(errors),
                 min(errors) if errors else math.nan,
                 f", {len(lp['diverged'])} diverged" if lp["diverged"] else "")

  def summary(self, train_s: float, wall_s: float, latest: int | None) -> None:
    steps_run = self.step - self.steps_at_start
    lines = [f"done: {self.config.rule.name} on {self.config.dataset.name}, "
             f"{self.plan.describe()}, {steps_run} steps each in {_fmt_time(wall_s)} "
             f"({steps_run / max(train_s, 1e-9):.1f} steps/s per replica in training)"]
    report = summarize(_read_records(self.metrics_path))
    lines.extend(report)
    plots = []
    try:
      from jaxbio import plot  # pylint: disable=g-import-not-at-top
      run_dir = os.path.dirname(self.metrics_path)
      plots = plot.plot_runs([run_dir], os.path.join(run_dir, "plots"))
    except Exception as e:  # pylint: disable=broad-except  (a plot never fails a run)
      logging.warning("could not write plots: %s", str(e).splitlines()[0] if str(e) else e)
    lines.append(f"metrics (one record per replica and epoch): "
                 f"{os.path.join(self.shown, 'metrics.jsonl')}")
    if plots:
      names = (os.path.join(self.shown, "plots", os.path.basename(p)) for p in plots)
      lines.append(f"plots: {', '.join(names)}")
    lines.append(f"checkpoints (every replica): {os.path.join(self.shown, 'checkpoints')}"
                 + (f" (latest: step {latest})" if latest is not None else ""))
    for line in lines:
      logging.info("%s", line)


def _values_text(plan: replicas.ReplicaPlan, r: int) -> str:
  parts = [f"seed {plan.seeds[r]}"] + [f"{k}={v:.4g}" for k, v in plan.values(r).items()]
  return ", ".join(parts)


def _guarded(plan: replicas.ReplicaPlan, fn):
  """Calls ``fn``, turning a drawn field used to decide what to compute into one line."""
  try:
    return fn()
  except _TRACER_ERRORS:
    fields = ", ".join(plan.hparams) or "none"
    raise ValueError(f"a field drawn per replica ({fields}) decides what the rule or "
                     "optimiser computes, so it cannot differ between replicas of one program; "
                     "run those values as separate runs") from None


def _pm(mean: float, se: float, n: int) -> str:
  return f"{mean:.2f} ± {se:.2f}" if n > 1 else f"{mean:.2f}"


def _rank(d: dict) -> tuple:
  """Sort key of draws: those with no diverged seed first, then by mean selection error."""
  return (d["diverged"] > 0, not math.isfinite(d["select_mean"]), d["select_mean"])


def best_draw(records: list[dict]) -> dict | None:
  """The best draw: lowest mean (over seeds) best validation error, else best test error.

  Draws with a diverged seed rank after every draw without one (a draw that
  diverges is not a good choice, whatever its error before).

  Args:
    records: the records of a run's ``metrics.jsonl`` (a replica run's, or a
      plain run's: one draw, one seed).

  Returns:
    ``{"draw", "hparams", "selected_by", "select_mean", "test_mean", "test_se",
    "final_mean", "final_se", "epochs", "seeds", "diverged"}`` (errors in %;
    ``test_*``: each seed's test error at its epoch of best selection error;
    ``final_*``: at the last epoch), or None if no epoch has ended.
  """
  per_draw = draws_table(records)
  return min(per_draw, key=_rank) if per_draw else None


def draws_table(records: list[dict]) -> list[dict]:
  """One row per draw: its hyperparameters and mean ± s.e. over seeds (see :func:`best_draw`)."""
  replica_records = [r for r in records if "replica" in r]
  if not replica_records:  # a plain run: one replica.
    replica_records = [dict(r, replica=0, draw=0) for r in records
                       if r.get("test/error_pct") is not None]
  if not replica_records:
    return []
  by_replica: dict[int, dict[int, dict]] = {}
  for r in replica_records:
    by_replica.setdefault(r["replica"], {})[r["epoch"]] = r  # the last record of an epoch.
  use_val = any(r.get("val/error_pct") is not None for r in replica_records)
  select = "val/error_pct" if use_val else "test/error_pct"
  rows: dict[int, dict] = {}
  for _, epochs in sorted(by_replica.items()):
    recs = [epochs[e] for e in sorted(epochs)]
    good = [x for x in recs if x.get(select) is not None and math.isfinite(x[select])]
    best = min(good, key=lambda x: x[select]) if good else None
    d = recs[-1]["draw"]
    row = rows.setdefault(d, {"draw": d, "hparams": recs[-1].get("hparams", {}),
                              "selected_by": "validation" if use_val else "test (the paper's "
                              "protocol picks on the test set)", "sel": [], "test": [],
                              "final": [], "epochs": recs[-1]["epoch"], "seeds": 0,
                              "diverged": 0})
    row["seeds"] += 1
    row["diverged"] += int("diverged_step" in recs[-1])
    row["sel"].append(best[select] if best else math.nan)
    row["test"].append(best["test/error_pct"] if best else math.nan)
    final = recs[-1].get("test/error_pct")
    row["final"].append(math.nan if final is None else final)
  out = []
  for d in sorted(rows):
    row = rows[d]
    row["select_mean"], _ = replicas.mean_se(row.pop("sel"))
    row["test_mean"], row["test_se"] = replicas.mean_se(row.pop("test"))
    row["final_mean"], row["final_se"] = replicas.mean_se(row.pop("final"))
    out.append(row)
  return out


def summarize(records: list[dict]) -> list[str]:
  """Summary lines of a replica run: each draw's errors over seeds, and the best draw."""
  table = draws_table(records)
  if not table:
    return ["no epoch has ended yet"]
  lines = []
  shown = sorted(table, key=_rank)[:10]
  for d in shown:
    hp = ", ".join(f"{k}={v:.4g}" for k, v in d["hparams"].items()) or "the config's values"
    diverged = f", {d['diverged']} diverged" if d["diverged"] else ""
    over = f"mean ± s.e. over {d['seeds']} seeds" if d["seeds"] > 1 else "1 seed"
    final, at_best = (_pm(d[f"{k}_mean"], d[f"{k}_se"], d["seeds"]) for k in ("final", "test"))
    lines.append(f"draw {d['draw']} ({hp}): test error final {final} %, at the best "
                 f"{d['selected_by'].split()[0]} epoch {at_best} % ({over}{diverged})")
  if len(table) > len(shown):
    lines.append(f"... and {len(table) - len(shown)} more draws (metrics.jsonl has them all)")
  best = best_draw(records)
  if len(table) > 1:
    diverged = f" ({best['diverged']} seed(s) diverged)" if best["diverged"] else ""
    lines.append(f"best draw by {best['selected_by']}: draw {best['draw']}, test error "
                 f"{_pm(best['test_mean'], best['test_se'], best['seeds'])} %{diverged}")
  return lines
