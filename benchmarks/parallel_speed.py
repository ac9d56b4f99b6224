"""Steps/s of the sharded training step on 1 versus 8 devices at equal global batch.

On a CPU the 8 devices are fake (``--xla_force_host_platform_device_count``)
and share the same cores, so this measures the overhead of the sharded path
(partitioned gathers, all-reduces, 8 small matmuls instead of one), not a
speed-up. On a machine with several accelerators it measures the scaling.

    python -m benchmarks.parallel_speed
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8")

import importlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import statistics  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxbio import train  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median reported).")

RUNS = [("BP, MNIST-FC, batch 128", "bartunov", "mnist,fc,bp", {}),
        ("FA, MNIST-FC, batch 128", "bartunov", "mnist,fc,fa", {}),
        ("hEP N=2, FMNIST MLP, batch 48", "hep_fmnist", "table1,2,0.05",
         {"batch_size": 48, "steps_per_call": 10})]


def _time(config, devices, shape):
  steps = config.steps_per_call
  n = config.batch_size * steps
  exp = train.build_experiment(config, n)
  mesh = train.make_mesh(devices)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  chunk = train.make_train_chunk(exp, config, mesh)
  rng = np.random.default_rng(0)
  put = lambda x: jax.device_put(x, rep)
  images = put(rng.integers(0, 256, (n, *shape), np.uint8))
  labels = put(rng.integers(0, 10, (n,), np.int32))
  idx = put(np.arange(n, dtype=np.int32).reshape(steps, -1))
  k = put(np.int32(steps))
  state = [jax.jit(lambda: train.init_state(exp, 0), out_shardings=rep)()]

  def call():
    state[0], sums, _, _ = chunk(state[0], images, labels, idx, k)
    jax.block_until_ready(sums)

  call()
  times = []
  for _ in range(_REPEATS.value):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
  return steps / statistics.median(times)


def main(argv):
  del argv
  print(f"{jax.device_count()} devices: {jax.devices()[0].platform}")
  print("| run | steps/s, 1 device | steps/s, 8 devices | 8-device / 1-device |")
  print("|---|---|---|---|")
  for label, module, arg, overrides in RUNS:
    config = importlib.import_module(f"launch.configs.{module}").get_config(arg)
    config.update(overrides)
    one = _time(config, jax.devices()[:1], (28, 28, 1))
    eight = _time(config, jax.devices()[:8], (28, 28, 1))
    print(f"| {label} | {one:.1f} | {eight:.1f} | {eight / one:.2f} |")


if __name__ == "__main__":
  app.run(main)
