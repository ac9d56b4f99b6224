"""Shared pieces of the speed benchmarks: the trainer's compiled loop on random data."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxbio import train


class ChunkRunner:
  """The trainer's compiled chunk (``steps_per_call`` steps) on random data of the real shape.

  ``pass_index`` picks the pass of a rule with several (e.g. target
  propagation's alternating schedule: 0 inverse, 1 forward).
  ``runner()`` runs one call and blocks until it is done; ``runner.state`` is
  the current train state. ``trace_seconds`` and ``compile_seconds`` are the
  times taken to trace and lower the chunk and to compile it (XLA).
  """

  def __init__(self, config, image_shape, devices=None, seed: int = 0, pass_index: int = 0,
               replicas: int = 1):
    devices = devices or jax.devices()
    self.steps = config.steps_per_call
    n = config.batch_size * self.steps
    self.exp = train.build_experiment(config, n)
    mesh = train.make_mesh(devices)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rng = np.random.default_rng(seed)
    put = lambda x: jax.device_put(x, rep)
    data = (put(rng.integers(0, 256, (n, *image_shape), np.uint8)),
            put(rng.integers(0, 10, (n,), np.int32)))
    self.replicas = replicas
    if replicas == 1:  # the plain single-run program.
      self._chunk = train.make_train_chunk(self.exp, config, mesh, pass_index=pass_index)
      self._args = (*data, put(np.arange(n, dtype=np.int32).reshape(self.steps, -1)),
                    put(np.int32(self.steps)), put(np.float32(np.nan)))
      self.state = jax.jit(lambda: train.init_state(self.exp, seed), out_shardings=rep)()
      lead = ()
    else:  # `replicas` seeds in one vmapped program, each with its own data order.
      from jaxbio import experiment, replicas as replicas_lib  # pylint: disable=g-import-not-at-top
      config = config.copy_and_resolve_references()
      config.replicas.seeds = replicas
      plan = replicas_lib.plan(config)
      self._chunk = train.make_train_chunk(self.exp, config, mesh, pass_index=pass_index,
                                           plan=plan)
      values = {k: put(v.astype(np.float32)) for k, v in plan.hparams.items()}
      idx = np.stack([rng.permutation(n).reshape(self.steps, -1) for _ in range(replicas)])
      self.state = jax.jit(lambda v: experiment.init_replicas(self.exp, config, plan, v),
                           out_shardings=rep)(values)
      self._args = (*data, put(idx.astype(np.int32)), put(np.int32(self.steps)),
                    put(np.full((replicas,), np.nan, np.float32)),
                    put(np.zeros((replicas,), np.int32)))
      lead = (values,)
    self._lead = lead
    t = time.perf_counter()
    lowered = self._chunk.lower(*lead, self.state, *self._args)
    self.trace_seconds = time.perf_counter() - t
    t = time.perf_counter()
    self._compiled = lowered.compile()
    self.compile_seconds = time.perf_counter() - t

  def __call__(self) -> None:
    out = self._compiled(*self._lead, self.state, *self._args)
    self.state = out.state
    jax.block_until_ready(out.sums)
    assert not np.any(np.asarray(out.bad)), "non-finite values in the benchmark run"


def median_seconds(fn: Callable[[], None], repeats: int, warmup: int = 1) -> float:
  """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_rate(m: int, k: int, n: int, repeats: int = 7, chain: int = 20) -> float:
  """Measured float32 FLOP/s of ``chain`` dependent (m, k) @ (k, n) products."""
  a = jax.random.normal(jax.random.key(0), (m, k))
  b = jax.random.normal(jax.random.key(1), (k, n)) / np.sqrt(k)

  @jax.jit
  def run(a, b):
    def body(x, _):
      y = x @ b
      return (y[:, :k] if n >= k else jnp.pad(y, ((0, 0), (0, k - n)))), None
    return jax.lax.scan(body, a, None, length=chain)[0]

  t = median_seconds(lambda: run(a, b).block_until_ready(), repeats)
  return 2.0 * m * k * n * chain / t


def train_fresh(config, workdir: str) -> tuple[list[dict], float]:
  """Trains ``config`` in an emptied ``workdir`` as the launcher would; ``(records, wall s)``.

  ``records`` are the run's ``metrics.jsonl`` rows, one per epoch.
  """
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.time()
  train.train_and_evaluate(config, workdir)
  wall = time.time() - start
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f], wall
