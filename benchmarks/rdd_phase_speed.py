"""Speed and alignment of one RDD spiking feedback phase on the CIFAR-10 net's fc shapes.

Drives 1600 -> 384, 384 -> 192 and 192 -> 10 in turn, ``--seconds`` simulated
seconds each (30 by default: a whole 90 s phase, 90,000 steps), from random
W and Y ~ U(+-1/sqrt(n_in)), fits from 0, Y rewritten every 10 s. Reports
the compile time, the median wall time of the whole phase over
``--repeats`` runs, simulated seconds per wall second per pair (each pair
timed on its own, 1/3 of the steps), the authors' code's figures for
comparison (about 17 min per phase; 18.5 / 1.7 / 14.5 ms per simulated ms),
and each layer's angle between Y and W^T and sign agreement after the phase
(the authors' code: 68.5 / 51.3 / 41.6 degrees, 63 / 74 / 80 %).

    python -m benchmarks.rdd_phase_speed --dtype=float32 --repeats=3 --seeds=0,1,2

``--pair_seeds`` adds the table of single pairs driven longer (1600 -> 384,
384 -> 192, 192 -> 10 and 100 -> 10, each for ``--pair_seconds`` from fits at
0, W and Y ~ U(+-1/sqrt(n_in))): the angle and sign agreement after 10, 30,
60 and 90 s, mean over the seeds, beside the authors' code's (seed 0);
``--pairs_only`` skips the rest:

    python -m benchmarks.rdd_phase_speed --pairs_only --pair_seeds=0,1,2
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

_SECONDS = flags.DEFINE_integer("seconds", 30, "Simulated seconds per layer (multiple of 10).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Dtype of the phase.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of the whole phase (median).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds for the alignment statistics.")
_PAIR_SEEDS = flags.DEFINE_list("pair_seeds", [], "Seeds for the single-pair table (none: skip).")
_PAIR_SECONDS = flags.DEFINE_integer("pair_seconds", 90, "Simulated seconds per pair (table).")
_PAIRS_ONLY = flags.DEFINE_boolean("pairs_only", False, "Only the single-pair table.")

SHAPES = ((1600, 384), (384, 192), (192, 10))
REFERENCE_MS_PER_STEP = (18.5, 1.7, 14.5)
REFERENCE_ALIGNMENT = ((68.5, 63.1), (51.3, 74.3), (41.6, 80.4))


def _setup(seed, dtype):
  keys = jax.random.split(jax.random.key(seed), 7)
  lim = lambda s: 1 / np.sqrt(s[0])
  ws = [jax.random.uniform(keys[i], s, dtype, -lim(s), lim(s)) for i, s in enumerate(SHAPES)]
  ys = [jax.random.uniform(keys[3 + i], s, dtype, -lim(s), lim(s)) for i, s in enumerate(SHAPES)]
  return ws, ys, keys[6]


PAIRS = ((1600, 384), (384, 192), (192, 10), (100, 10))
PAIR_TIMES = (10, 30, 60, 90)
# The authors' code, seed 0: angle (deg), sign agreement (%) at 10, 30, 60, 90 s.
REFERENCE_PAIRS = (((77.1, 57.8), (68.5, 63.1), (61.2, 67.8), (56.5, 70.8)),
                   ((64.9, 65.3), (51.0, 74.3), (41.6, 80.5), (36.3, 83.5)),
                   ((54.9, 71.3), (39.6, 81.5), (31.6, 86.5), (26.9, 89.4)),
                   ((50.4, 76.8), (32.5, 88.0), (25.3, 90.9), (21.2, 93.8)))


def pair_table(dtype):
  """Prints the single-pair table (see the module docstring)."""
  from jaxbio.metrics.alignment import angle_degrees  # pylint: disable=g-import-not-at-top
  from jaxbio.rules import spiking_feedback as sf  # pylint: disable=g-import-not-at-top
  steps = _PAIR_SECONDS.value * 1000
  every = sf.RDDConstants().y_update_every // 1000
  cols = [t for t in PAIR_TIMES if t <= _PAIR_SECONDS.value]
  print(f"\nsingle pairs, {_PAIR_SECONDS.value} s each, mean over seeds "
        f"{','.join(_PAIR_SEEDS.value)} (authors' code, seed 0, in brackets):")
  print("| pair | " + " | ".join(f"{t} s" for t in cols) + " | wall per seed (with compile) |")
  print("|---|" + "---|" * (len(cols) + 1))
  for (n, k), ref in zip(PAIRS, REFERENCE_PAIRS):
    lim = 1 / np.sqrt(n)

    def run(seed):
      keys = jax.random.split(jax.random.key(seed), 3)
      w = jax.random.uniform(keys[0], (n, k), dtype, -lim, lim)
      y0 = jax.random.uniform(keys[1], (n, k), dtype, -lim, lim)
      _, _, ys = sf.pair_phase(sf.init_pair(n, k, dtype=dtype), y0, jnp.std(y0),
                               sf.scaled_forward(w), keys[2], steps=steps)
      return (jax.vmap(lambda y: angle_degrees(y, w))(ys),
              100 * jax.vmap(lambda y: sf.sign_agreement(y, w))(ys))

    t = time.perf_counter()
    out = [jax.block_until_ready(jax.jit(run)(seed)) for seed in map(int, _PAIR_SEEDS.value)]
    wall = (time.perf_counter() - t) / len(out)
    angle = np.mean([np.asarray(a) for a, _ in out], axis=0)
    sign = np.mean([np.asarray(s) for _, s in out], axis=0)
    cells = [f"{angle[t // every - 1]:.1f}° / {sign[t // every - 1]:.1f} % "
             f"({ref[i][0]}° / {ref[i][1]} %)" for i, t in enumerate(cols)]
    print(f"| {n} -> {k} | " + " | ".join(cells) + f" | {wall:.0f} s |")


def _timed(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main(argv):
  del argv
  if _DTYPE.value == "float64":
    jax.config.update("jax_enable_x64", True)
  from jaxbio.metrics.alignment import angle_degrees  # pylint: disable=g-import-not-at-top
  from jaxbio.rules import spiking_feedback as sf  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(_DTYPE.value)
  if _PAIRS_ONLY.value:
    pair_table(dtype)
    return
  steps = _SECONDS.value * 1000

  def phase(ws, ys, key):
    fits = [sf.zero_fits(*w.shape, dtype) for w in ws]
    return sf.feedback_phase(ws, ys, fits, [jnp.std(y) for y in ys], key, steps_per_layer=steps)

  ws, ys, key = _setup(0, dtype)
  t = time.perf_counter()
  compiled = jax.jit(phase).lower(ws, ys, key).compile()
  print(f"device: {jax.devices()[0].device_kind}, dtype {_DTYPE.value}, "
        f"{3 * _SECONDS.value} s phase ({3 * steps} steps)")
  print(f"compile: {time.perf_counter() - t:.1f} s")
  wall = _timed(compiled, ws, ys, key, repeats=_REPEATS.value)
  ref_s = sum(REFERENCE_MS_PER_STEP) * steps / 1000
  print(f"whole phase: {wall:.2f} s wall (median of {_REPEATS.value}); authors' code at "
        f"{'/'.join(map(str, REFERENCE_MS_PER_STEP))} ms per step: {ref_s / 60:.1f} min, "
        f"{ref_s / wall:.0f}x")
  for l, shape in enumerate(SHAPES):
    one = jax.jit(lambda w, y, k: sf.feedback_phase(
        [w], [y], [sf.zero_fits(*w.shape, dtype)], [jnp.std(y)], k, steps_per_layer=steps))
    pw = _timed(one, ws[l], ys[l], key, repeats=_REPEATS.value)
    print(f"pair {shape[0]}->{shape[1]}: {pw:.2f} s for {_SECONDS.value} s simulated = "
          f"{_SECONDS.value / pw:.1f} sim-s per wall-s, {1e3 * pw / steps:.4f} ms per step "
          f"(authors' code {REFERENCE_MS_PER_STEP[l]} ms, {REFERENCE_MS_PER_STEP[l] * steps / 1e3 / pw:.0f}x)")
  rows = []
  for seed in map(int, _SEEDS.value):
    ws, ys, key = _setup(seed, dtype)
    res = compiled(ws, ys, key)
    rows.append([(float(angle_degrees(y, w)), 100 * float(sf.sign_agreement(y, w)))
                 for w, y in zip(ws, res.feedback)])
    print(f"seed {seed}: " + ", ".join(f"{SHAPES[l][0]}->{SHAPES[l][1]} {a:.1f} deg / {s:.1f} %"
                                       for l, (a, s) in enumerate(rows[-1])))
  mean = np.mean(np.array(rows), axis=0)
  for l, ((a, s), (ra, rs)) in enumerate(zip(mean, REFERENCE_ALIGNMENT)):
    print(f"mean over {len(rows)} seed(s), {SHAPES[l][0]}->{SHAPES[l][1]}: {a:.1f} deg / {s:.1f} % "
          f"(authors' code {ra} deg / {rs} %)")
  if _PAIR_SEEDS.value:
    pair_table(dtype)


if __name__ == "__main__":
  app.run(main)
