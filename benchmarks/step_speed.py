"""Milliseconds per training step of feedforward rules, against the matmul floor.

Times the trainer's own compiled loop (``steps_per_call`` steps per call, data
on device) for Bartunov et al.'s MNIST net (784 -> 256 x 5 -> 10, tanh), and,
in the same run, the machine's dense float32 matmul rate, on two workloads:
a large 1024^3 product (peak rate) and the step's own matmul shapes (a forward
and backward chain at the same batch). The floor of a step is its FLOP count
divided by the measured rate.

    python -m benchmarks.step_speed --rules=bp,fa,dfa,kp,sign_symmetry --batch_size=128

It also reports each rule's trace and XLA compile times.
"""

from __future__ import annotations

from absl import app, flags
import jax

from benchmarks import common
from launch.configs import bartunov

_RULES = flags.DEFINE_list("rules", ["bp", "fa", "dfa", "kp", "sign_symmetry"], "Rules to time.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_STEPS = flags.DEFINE_integer("steps_per_call", 100, "Training steps per compiled call.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per rule (median reported).")


def step_flops(widths, batch: int) -> float:
  """FLOPs of one backprop step on an MLP: forward, input and weight gradients."""
  macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
  return 2.0 * 3 * batch * macs


def main(argv):
  del argv
  batch = _BATCH.value
  widths = [784] + [256] * 5 + [10]
  peak = common.matmul_rate(1024, 1024, 1024)
  # The step's own shapes: (B, 784) @ (784, 256) and (B, 256) @ (256, 256).
  shaped = (step_flops(widths, batch) /
            (step_flops([784, 256], batch) / common.matmul_rate(batch, 784, 256) +
             step_flops([256] * 5 + [10], batch) / common.matmul_rate(batch, 256, 256)))
  flops = step_flops(widths, batch)
  print(f"devices: {jax.devices()}")
  print(f"matmul rate, 1024^3 products: {peak / 1e9:.1f} GFLOP/s; "
        f"the step's shapes at batch {batch}: {shaped / 1e9:.1f} GFLOP/s")
  print(f"backprop step: {flops / 1e6:.1f} MFLOP; floor {1e3 * flops / peak:.3f} ms at the "
        f"peak rate, {1e3 * flops / shaped:.3f} ms at the step-shape rate\n")
  print("| rule | ms/step | x floor (peak) | x floor (step shapes) | fraction of peak "
        "| trace s | compile s |")
  print("|---|---|---|---|---|---|---|")
  for rule in _RULES.value:
    config = bartunov.get_config("mnist,fc,bp")
    config.rule.name = rule
    config.batch_size = batch
    config.steps_per_call = _STEPS.value
    runner = common.ChunkRunner(config, (28, 28, 1))
    ms = 1e3 * common.median_seconds(runner, _REPEATS.value) / _STEPS.value
    print(f"| {rule} | {ms:.3f} | {ms / (1e3 * flops / peak):.2f} | "
          f"{ms / (1e3 * flops / shaped):.2f} | {flops / (ms / 1e3) / peak:.2f} | "
          f"{runner.trace_seconds:.2f} | {runner.compile_seconds:.2f} |")


if __name__ == "__main__":
  app.run(main)
