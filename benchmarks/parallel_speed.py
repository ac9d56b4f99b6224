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

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median reported).")

RUNS = [("BP, MNIST-FC, batch 128", "bartunov", "mnist,fc,bp", {}),
        ("FA, MNIST-FC, batch 128", "bartunov", "mnist,fc,fa", {}),
        ("hEP N=2, FMNIST MLP, batch 48", "hep_fmnist", "table1,2,0.05",
         {"batch_size": 48, "steps_per_call": 10})]


def _steps_per_second(config, devices, shape):
  runner = common.ChunkRunner(config, shape, devices)
  return runner.steps / common.median_seconds(runner, _REPEATS.value)


def main(argv):
  del argv
  print(f"{jax.device_count()} devices: {jax.devices()[0].platform}")
  print("| run | steps/s, 1 device | steps/s, 8 devices | 8-device / 1-device |")
  print("|---|---|---|---|")
  for label, module, arg, overrides in RUNS:
    config = importlib.import_module(f"launch.configs.{module}").get_config(arg)
    config.update(overrides)
    one = _steps_per_second(config, jax.devices()[:1], (28, 28, 1))
    eight = _steps_per_second(config, jax.devices()[:8], (28, 28, 1))
    print(f"| {label} | {one:.1f} | {eight:.1f} | {eight / one:.2f} |")


if __name__ == "__main__":
  app.run(main)
