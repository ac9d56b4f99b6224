"""Continuous-time BurstCCN on the online regression task of Greedy et al. (2022), Fig. 3.

Runs the whole schedule (no teacher, teacher, no teacher) for each task/model
seed pair as a jit-compiled ``lax.scan``, and prints the mean squared error of
the output in fixed windows, per seed pair and as the seed mean +- standard
error, beside the released code's figures for its default seeds (one run,
PyTorch random streams, which jax keys cannot reproduce), and the simulation
speed (compile excluded) beside the released code's 0.151 ms per step::

    python -m benchmarks.burstccn_continuous --seeds=1,2,3,4,5

Windows, in steps counted from the start of the run (with the default
``--pre_steps=10000``): the last 1000 no-teacher steps (9k-10k), the first
10^4 teaching steps (10k-20k), teaching steps 40k-50k (50k-60k), the last 10^4
teaching steps, and all of the final no-teacher steps.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags
import jax
import numpy as np

from jaxbio.rules import burstccn_continuous as ct

_SEEDS = flags.DEFINE_list("seeds", None, "Seed pairs (s, s): task seed = model seed = s. "
                           "Overrides --task_seeds and --model_seeds.")
_TASK_SEEDS = flags.DEFINE_list("task_seeds", ["1"], "Task seeds, paired with --model_seeds "
                                "(a single value is used for every pair).")
_MODEL_SEEDS = flags.DEFINE_list("model_seeds", ["1"], "Model seeds, paired with --task_seeds "
                                 "(a single value is used for every pair).")
_PRE = flags.DEFINE_integer("pre_steps", 10_000, "No-teacher steps before training.")
_TRAIN = flags.DEFINE_integer("train_steps", 1_000_000, "Teaching steps.")
_POST = flags.DEFINE_integer("post_steps", 10_000, "No-teacher steps after training.")
_CHUNK = flags.DEFINE_integer("chunk", 100_000, "Steps per compiled call.")

# The released code, default seeds (model 1, task 1), one run.
REFERENCE_MSE = {"9k-10k": "0.153", "10k-20k": "0.028", "50k-60k": "0.0080"}
REFERENCE_MS_PER_STEP = 0.151


def seed_pairs(seeds, task_seeds, model_seeds) -> list[tuple[int, int]]:
  """The (task seed, model seed) pairs the flags describe."""
  if seeds:
    return [(int(s), int(s)) for s in seeds]
  tasks, models = [int(s) for s in task_seeds], [int(s) for s in model_seeds]
  if len(tasks) == 1:
    tasks = tasks * len(models)
  if len(models) == 1:
    models = models * len(tasks)
  if len(tasks) != len(models):
    raise ValueError(f"--task_seeds ({len(tasks)} values) and --model_seeds ({len(models)}) "
                     f"must have the same length, or one of them a single value")
  return list(zip(tasks, models))


def windows(schedule: ct.Schedule) -> dict[str, tuple[int, int, str]]:
  """Name -> (first step, end step, condition) of each reported window that fits the schedule."""
  pre, train = schedule.pre, schedule.train
  name = lambda a, b: f"{a // 1000}k-{b // 1000}k"
  out = {}
  for first, end, cond in [(pre - 1000, pre, "no teacher"),
                           (pre, pre + 10_000, "teacher"),
                           (pre + 40_000, pre + 50_000, "teacher")]:
    if 0 <= first and end <= pre + (train if cond == "teacher" else 0):
      out[name(first, end)] = (first, end, cond)
  if train >= 10_000:
    out["last 10k teacher"] = (pre + train - 10_000, pre + train, "teacher")
  if schedule.post:
    out["post"] = (pre + train, schedule.total, "no teacher")
  return out


def main(argv):
  del argv
  pairs = seed_pairs(_SEEDS.value, _TASK_SEEDS.value, _MODEL_SEEDS.value)
  schedule = ct.Schedule(_PRE.value, _TRAIN.value, _POST.value)
  hyper = ct.Hyper()
  simulate = ct.simulate_fn(hyper)
  spans = windows(schedule)

  # A warm-up run of the first seed pair compiles every call length outside the timed runs.
  t = time.perf_counter()
  jax.block_until_ready(ct.run(*pairs[0], schedule, hyper, chunk=_CHUNK.value, simulate=simulate))
  warmup = time.perf_counter() - t

  print(f"devices: {jax.devices()}; jax {jax.__version__}")
  print(f"schedule: {schedule.pre} no-teacher, {schedule.train} teaching, {schedule.post} "
        f"no-teacher steps; learner 3-50-1, {hyper}")
  print("windows (first step, end step): "
        + "; ".join(f"{k} [{a}, {b}) {c}" for k, (a, b, c) in spans.items()) + "\n")
  print("| task seed | model seed | " + " | ".join(f"MSE {k}" for k in spans)
        + " | wall s | us/step |")
  print("|---|---|" + "---|" * len(spans) + "---|---|")
  rows, us = [], []
  for task_seed, model_seed in pairs:
    t = time.perf_counter()
    _, err = ct.run(task_seed, model_seed, schedule, hyper, chunk=_CHUNK.value, simulate=simulate)
    err = np.asarray(err, np.float64)
    wall = time.perf_counter() - t
    if not np.all(np.isfinite(err)):
      raise FloatingPointError(f"non-finite error in seed pair ({task_seed}, {model_seed}) at "
                               f"step {int(np.argmin(np.isfinite(err)))}")
    rows.append([err[a:b].mean() for a, b, _ in spans.values()])
    us.append(1e6 * wall / schedule.total)
    print(f"| {task_seed} | {model_seed} | " + " | ".join(f"{m:.3g}" for m in rows[-1])
          + f" | {wall:.2f} | {us[-1]:.2f} |", flush=True)
  rows = np.array(rows)
  if len(rows) > 1:
    se = rows.std(axis=0, ddof=1) / np.sqrt(len(rows))
    print(f"| mean +- s.e. (n = {len(rows)}) | | "
          + " | ".join(f"{m:.3g} +- {s:.2g}" for m, s in zip(rows.mean(axis=0), se)) + " | | |")
  print("| released code, seeds 1/1, one run | | "
        + " | ".join(str(REFERENCE_MSE.get(k, "")) for k in spans) + " | | |")
  med = statistics.median(us)
  print(f"\nspeed: median {med:.2f} us/step = {1e6 / med:,.0f} simulated steps/s over "
        f"{len(us)} runs of {schedule.total} steps (compile excluded: the warm-up run took "
        f"{warmup:.1f} s); released code {1e3 * REFERENCE_MS_PER_STEP:.0f} us/step, "
        f"{REFERENCE_MS_PER_STEP * 1e3 / med:.0f}x this")


if __name__ == "__main__":
  app.run(main)
