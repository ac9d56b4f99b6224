"""Milliseconds per training step of feedforward rules, against the matmul floor.

Times the trainer's own compiled loop (``steps_per_call`` steps per call, data
on device) for Bartunov et al.'s MNIST net (784 -> 256 x 5 -> 10, tanh), and,
in the same run, the machine's dense float32 matmul rate, on two workloads:
a large 1024^3 product (peak rate) and the step's own matmul shapes (a forward
and backward chain at the same batch). The floor of a step is its FLOP count
divided by the measured rate.

    python -m benchmarks.step_speed --rules=bp,fa,dfa,kp,sign_symmetry --batch_size=128

With ``--compare_legacy`` it also times, in the same run and alternating call
by call, the same rules on jaxbio's networks as they were before they were
built from Flax layers (``benchmarks/legacy``), and reports both versions'
trace and compile times.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp

from benchmarks import common
from launch.configs import bartunov

_RULES = flags.DEFINE_list("rules", ["bp", "fa", "dfa", "kp", "sign_symmetry"], "Rules to time.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_STEPS = flags.DEFINE_integer("steps_per_call", 100, "Training steps per compiled call.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per rule (median reported).")
_LEGACY = flags.DEFINE_bool("compare_legacy", False,
                            "Also time the hand-written (pre-Flax) networks, side by side.")


def legacy_edit(config):
  """``edit(exp)`` that swaps in the pre-Flax network and rebuilds the rule on it."""
  from benchmarks.legacy import sequential as legacy  # pylint: disable=g-import-not-at-top
  from jaxbio import build, registry  # pylint: disable=g-import-not-at-top

  def edit(exp):
    m = config.model
    net = legacy.mlp(exp.net.input_shape, tuple(m.widths), exp.net.num_outputs,
                     activation=m.activation, kernel_init=m.kernel_init)
    kwargs = {k: v for k, v in config.rule.to_dict().items() if k != "name"}
    factory = registry.resolve(registry.check_rule(config.rule.name, "feedforward").factory)
    return exp._replace(net=net, rule=factory(net, **kwargs))

  return edit


def _median_pair(a, b, repeats: int) -> tuple[float, float]:
  """Median seconds of ``a()`` and ``b()``, timed alternately (one warm-up call each)."""
  a()
  b()
  ta, tb = [], []
  for _ in range(repeats):
    for fn, times in ((a, ta), (b, tb)):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
  return statistics.median(ta), statistics.median(tb)


def compare_legacy(rules, batch: int, steps: int, repeats: int) -> None:
  """Prints ms/step and compile times of the Flax-layer and the pre-Flax networks."""
  print("| rule | ms/step, Flax layers | ms/step, pre-Flax | ratio | trace s (Flax / pre) "
        "| compile s (Flax / pre) | max abs param difference after the calls |")
  print("|---|---|---|---|---|---|---|")
  for rule in rules:
    config = bartunov.get_config("mnist,fc,bp")
    config.rule.name = rule
    config.batch_size = batch
    config.steps_per_call = steps
    new = common.ChunkRunner(config, (28, 28, 1))
    old = common.ChunkRunner(config, (28, 28, 1), edit=legacy_edit(config))
    t_new, t_old = _median_pair(new, old, repeats)
    # Both versions ran the same steps on the same data from the same initial weights.
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(new.state.params), jax.tree.leaves(old.state.params)))
    print(f"| {rule} | {1e3 * t_new / steps:.3f} | {1e3 * t_old / steps:.3f} | "
          f"{t_new / t_old:.3f} | {new.trace_seconds:.2f} / {old.trace_seconds:.2f} | "
          f"{new.compile_seconds:.2f} / {old.compile_seconds:.2f} | {diff:.1e} |")


def step_flops(widths, batch: int) -> float:
  """FLOPs of one backprop step on an MLP: forward, input and weight gradients."""
  macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
  return 2.0 * 3 * batch * macs


def main(argv):
  del argv
  batch = _BATCH.value
  if _LEGACY.value:
    print(f"devices: {jax.devices()}")
    compare_legacy(_RULES.value, batch, _STEPS.value, _REPEATS.value)
    return
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
  print("| rule | ms/step | x floor (peak) | x floor (step shapes) | fraction of peak |")
  print("|---|---|---|---|---|")
  for rule in _RULES.value:
    config = bartunov.get_config("mnist,fc,bp")
    config.rule.name = rule
    config.batch_size = batch
    config.steps_per_call = _STEPS.value
    runner = common.ChunkRunner(config, (28, 28, 1))
    ms = 1e3 * common.median_seconds(runner, _REPEATS.value) / _STEPS.value
    print(f"| {rule} | {ms:.3f} | {ms / (1e3 * flops / peak):.2f} | "
          f"{ms / (1e3 * flops / shaped):.2f} | {flops / (ms / 1e3) / peak:.2f} |")


if __name__ == "__main__":
  app.run(main)
