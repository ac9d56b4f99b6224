"""Checkpoint cost: seconds per save, and the stall a save adds to training.

For each model, trains with the real compiled loop (``steps_per_call`` steps a
call) and measures, in one run: the time a call takes with no checkpointing,
the time of ``Checkpointer.save`` (the part that blocks training: copying the
state off the devices; writing continues in the background), the time until
the write has finished, and the extra time per call when a save follows every
call (the stall training actually sees).

    python -m benchmarks.checkpoint_cost
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time

from absl import app, flags
import jax

from benchmarks import common
from jaxbio import checkpoint, nets
from launch.configs import hep_conv, hep_fmnist

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed saves per model.")


def _models():
  fmnist = hep_fmnist.get_config("fig4_reciprocal,1.0")
  cnn = hep_conv.get_config("cifar10,table2_n0")
  # Short dynamics and a small batch keep one call short on a CPU; the state
  # (parameters, optimiser and rule state) is the full 7.7 M-parameter one.
  cnn.update(dict(batch_size=2))
  cnn.model.t_free, cnn.rule.t_nudge, cnn.homeostasis.num_probes = 3, 2, 1
  return {"hEP Fashion-MNIST MLP (SGD momentum)": (fmnist, 20, (28, 28, 1)),
          "hEP CIFAR-10 ConvNet (SGD momentum)": (cnn, 1, (32, 32, 3))}


def main(argv):
  del argv
  print("| model | parameters | state MB | ms per call (no save) | save() blocks ms | "
        "write done ms | stall per save ms |")
  print("|---|---|---|---|---|---|---|")
  for name, (config, steps, shape) in _models().items():
    config.steps_per_call = steps
    runner = common.ChunkRunner(config, shape)
    n_params = nets.num_params(runner.state.params)
    mb = sum(x.nbytes for x in jax.tree.leaves(runner.state)) / 2 ** 20
    plain = common.median_seconds(runner, _REPEATS.value)
    workdir = tempfile.mkdtemp()
    ckpt = checkpoint.Checkpointer(workdir, keep=2)
    ckpt.save(0, runner.state, {}, force=True)  # compiles the checksum function.
    ckpt.wait()
    blocks, done = [], []
    for i in range(_REPEATS.value):
      runner()
      t = time.perf_counter()
      ckpt.save(i + 1, runner.state, {}, force=True)
      blocks.append(time.perf_counter() - t)
      ckpt.wait()
      done.append(time.perf_counter() - t)
    # The stall training sees: a call plus an asynchronous save, not waited for.
    stalled = []
    for i in range(_REPEATS.value):
      t = time.perf_counter()
      runner()
      ckpt.save(100 + i, runner.state, {}, force=True)
      stalled.append(time.perf_counter() - t)
    ckpt.close()
    shutil.rmtree(workdir)
    med = statistics.median
    print(f"| {name} | {n_params:,} | {mb:.1f} | {1e3 * plain:.1f} | {1e3 * med(blocks):.1f} | "
          f"{1e3 * med(done):.1f} | {1e3 * (med(stalled) - plain):.1f} |")


if __name__ == "__main__":
  app.run(main)
