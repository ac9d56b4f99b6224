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
import jax.numpy as jnp
import numpy as np

from jaxbio import checkpoint, nets, train
from launch.configs import bartunov

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed saves per model.")


def _models():
  fmnist = bartunov.get_config("mnist,fc,bp")
  fmnist.dataset.name = "fashion_mnist"
  fmnist.model.widths = (256, 256)
  conv = bartunov.get_config("mnist,conv,bp")
  conv.dataset.name = "cifar10"
  conv.model.update(dict(arch="convnet", activation="relu", pool="max_pool:2:2",
                         convs=((128, 3, 1), (256, 3, 1), (512, 3, 1), (1024, 3, 1)),
                         dense=(512,)))
  conv.batch_size = 32
  return {"Fashion-MNIST MLP 784-256-256-10": (fmnist, 20),
          "conv net (CIFAR-10 shape)": (conv, 2)}


def main(argv):
  del argv
  print("| model | parameters | state MB (params + Adam) | ms per call (no save) | "
        "save() blocks ms | write done ms | stall per save ms |")
  print("|---|---|---|---|---|---|---|")
  for name, (config, steps) in _models().items():
    config.steps_per_call = steps
    shape = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}[config.dataset.name]
    n = config.batch_size * steps
    exp = train.build_experiment(config, n)
    mesh = train.make_mesh(jax.devices())
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    chunk = train.make_train_chunk(exp, config, mesh)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (n, *shape), np.uint8), rep)
    labels = jax.device_put(rng.integers(0, 10, (n,), np.int32), rep)
    idx = jax.device_put(np.arange(n, dtype=np.int32).reshape(steps, -1), rep)
    k = jax.device_put(np.int32(steps), rep)
    state = jax.jit(lambda: train.init_state(exp, 0), out_shardings=rep)()
    n_params = nets.num_params(state.params)
    mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2 ** 20

    def call(s):
      s, sums, _, _ = chunk(s, images, labels, idx, k)
      jax.block_until_ready(sums)
      return s

    state = call(state)  # compile.
    plain = []
    for _ in range(_REPEATS.value):
      t = time.perf_counter()
      state = call(state)
      plain.append(time.perf_counter() - t)
    workdir = tempfile.mkdtemp()
    ckpt = checkpoint.Checkpointer(workdir, keep=2)
    ckpt.save(0, state, {}, force=True)  # compiles the checksum function.
    ckpt.wait()
    blocks, done, with_save = [], [], []
    for i in range(_REPEATS.value):
      t = time.perf_counter()
      state = call(state)
      t_save = time.perf_counter()
      ckpt.save(i + 1, state, {}, force=True)
      blocks.append(time.perf_counter() - t_save)
      ckpt.wait()
      done.append(time.perf_counter() - t_save)
      with_save.append(t_save - t)
    # The stall: calls with an asynchronous save after each, not waiting.
    stalled = []
    for i in range(_REPEATS.value):
      t = time.perf_counter()
      state = call(state)
      ckpt.save(100 + i, state, {}, force=True)
      stalled.append(time.perf_counter() - t)
    ckpt.close()
    shutil.rmtree(workdir)
    med = statistics.median
    print(f"| {name} | {n_params:,} | {mb:.1f} | {1e3 * med(plain):.1f} | "
          f"{1e3 * med(blocks):.1f} | {1e3 * med(done):.1f} | "
          f"{1e3 * (med(stalled) - med(plain)):.1f} |")


if __name__ == "__main__":
  app.run(main)
