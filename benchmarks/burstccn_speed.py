"""Milliseconds per BurstCCN training step, against the matmul floor and the authors' code.

Times the trainer's own compiled loop (``steps_per_call`` steps per call, data
on device, no alignment or reference-gradient logging) for a config of
``launch/configs/burstccn.py`` (default ``mnist``: MLP 784-500-500-500-10,
batch 32, Q̂ learning on), and, in the same run, the machine's float32 matmul
rate on the step's own shapes. The floor is the step's FLOP count (forward,
apical pathway, weight and Q̂ updates) divided by that rate.

    python -m benchmarks.burstccn_speed --experiment=mnist --batch_size=32
"""

from __future__ import annotations

import math

from absl import app, flags
import jax

from benchmarks import common
from jaxbio import data
from launch.configs import burstccn

_EXPERIMENT = flags.DEFINE_string("experiment", "mnist", "Experiment of burstccn.py.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_STEPS = flags.DEFINE_integer("steps_per_call", 200, "Training steps per compiled call.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls (median reported).")

REFERENCE_MS = {"mnist": 17.6, "cifar10_random": 164.0, "cifar10_tied": 164.0}
"""The authors' code's median ms/step on a 2-vCPU CPU, 1 thread, batch 32 (lowest figure)."""


def mlp_step_flops(widths, batch: int, q_learning: bool) -> float:
  """FLOPs of one BurstCCN step on an MLP (matmuls only).

  Forward ``W e``, weight update ``δb eᵀ`` (each a full layer product); per
  hidden layer the apical potential ``Ŷ b - Q̂ e`` (two products with the next
  layer's shape) and, when Q̂ learns, ``u eᵀ`` (one).
  """
  layers = [a * b for a, b in zip(widths[:-1], widths[1:])]
  products = 2 * sum(layers) + (2 + q_learning) * sum(layers[1:])
  return 2.0 * batch * products


def main(argv):
  del argv
  config = burstccn.get_config(_EXPERIMENT.value)
  config.batch_size = _BATCH.value
  config.steps_per_call = _STEPS.value
  spec = data.DATASETS[config.dataset.name]
  runner = common.ChunkRunner(config, spec.image_shape)
  ms = 1e3 * common.median_seconds(runner, _REPEATS.value) / _STEPS.value
  print(f"devices: {jax.devices()}")
  print(f"experiment {_EXPERIMENT.value}, batch {_BATCH.value}, {_STEPS.value} steps per call; "
        f"trace {runner.trace_seconds:.2f} s, compile {runner.compile_seconds:.2f} s")
  line = f"BurstCCN: {ms:.3f} ms/step"
  if config.model.arch == "mlp":
    widths = [math.prod(spec.image_shape), *config.model.widths, spec.num_classes]
    flops = mlp_step_flops(widths, _BATCH.value, bool(config.rule.get("q_lr", 0)))
    seconds = sum(mlp_step_flops([a, b], _BATCH.value, False) / 2 /
                  common.matmul_rate(_BATCH.value, a, b) for a, b in zip(widths[:-1], widths[1:]))
    rate = flops / (4 * seconds)  # an average over the layers' shapes.
    floor = 1e3 * flops / rate
    line += (f"; {flops / 1e6:.1f} MFLOP, matmul rate on the step's shapes "
             f"{rate / 1e9:.1f} GFLOP/s, floor {floor:.3f} ms, x floor {ms / floor:.2f}")
  ref = REFERENCE_MS.get(_EXPERIMENT.value)
  if ref:
    line += f"; the authors' code {ref} ms/step: {ref / ms:.1f}x faster"
  print(line)


if __name__ == "__main__":
  app.run(main)
