"""Steps per second per replica for 1, 5 and 20 replicas trained together.

Times the trainer's own compiled chunk (``steps_per_call`` steps per call,
data on device, random data of the real shape) with one replica (the plain
single-run program) and with R seeds in one ``jax.vmap``-ed program
(``config.replicas.seeds = R``), for Bartunov et al.'s MNIST-FC BP and FA
configs and the hEP Fashion-MNIST config (Laborieux & Zenke, N = 2,
beta = 0.05), all in one run, so the cost ratios share the machine's load.

    python -m benchmarks.replica_speed
    python -m benchmarks.replica_speed --replicas=1,5,20 --configs=bp,fa,hep

"cost" is the time of one call with R replicas over the time with one: R
replicas trained one after another would cost R. A second table times a
chain of 20 dependent matmuls of the nets' shapes, single and batched over
R (``jnp.einsum`` with a replica axis), to show what the backend's batched
matmul gives by itself.
"""

from __future__ import annotations

from absl import app, flags
import jax
import jax.numpy as jnp

from benchmarks import common
from launch.configs import bartunov, hep_fmnist

CONFIGS = {
    "bp": ("Bartunov MNIST-FC BP", lambda: bartunov.get_config("mnist,fc,bp"), (28, 28, 1), 100),
    "fa": ("Bartunov MNIST-FC FA", lambda: bartunov.get_config("mnist,fc,fa"), (28, 28, 1), 100),
    "hep": ("hEP Fashion-MNIST (N=2)", lambda: hep_fmnist.get_config("table1,2,0.05"),
            (28, 28, 1), 5),
}
_REPLICAS = flags.DEFINE_list("replicas", ["1", "5", "20"], "Replica counts to time.")
_CONFIGS = flags.DEFINE_list("configs", list(CONFIGS), f"Configs: {', '.join(CONFIGS)}.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per setting (median reported).")


def batched_matmul_ms(r: int, m: int, k: int, n: int, chain: int = 20) -> float:
  """Milliseconds of ``chain`` dependent (r, m, k) x (r, k, n) products (r = 1: plain)."""
  x = jax.random.normal(jax.random.key(0), (r, m, k))
  w = jax.random.normal(jax.random.key(1), (r, k, n)) / k ** 0.5

  @jax.jit
  def run(x, w):
    def body(c, _):
      y = jnp.tanh(jnp.einsum("rmk,rkn->rmn", c, w))
      return (y[..., :k] if n >= k else jnp.pad(y, ((0, 0), (0, 0), (0, k - n)))), None
    return jax.lax.scan(body, x, None, length=chain)[0]

  return 1e3 * common.median_seconds(lambda: run(x, w).block_until_ready(), 7)


def main(argv):
  del argv
  counts = [int(r) for r in _REPLICAS.value]
  if counts[0] != 1:
    raise app.UsageError(f"--replicas must start with 1 (the baseline), got {_REPLICAS.value}")
  print(f"devices: {jax.devices()}")
  print("| config | batch | steps/call | replicas | ms/call | steps/s per replica "
        "| cost vs 1 replica | compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for name in _CONFIGS.value:
    if name not in CONFIGS:
      raise app.UsageError(f"unknown config {name!r}; valid choices: {', '.join(CONFIGS)}")
    label, make, shape, steps = CONFIGS[name]
    base = None
    for r in counts:
      config = make()
      config.steps_per_call = steps
      runner = common.ChunkRunner(config, shape, replicas=r)
      t = common.median_seconds(runner, _REPEATS.value)
      base = t if base is None else base
      print(f"| {label} | {config.batch_size} | {steps} | {r} | {1e3 * t:.1f} | "
            f"{steps / t:.1f} | {t / base:.2f} | {runner.compile_seconds:.1f} |", flush=True)
  print("\n| matmul chain (20 products) | replicas | ms | cost vs 1 replica |")
  print("|---|---|---|---|")
  for m, k, n in ((128, 784, 256), (128, 256, 256), (50, 256, 256)):
    base = None
    for r in counts:
      ms = batched_matmul_ms(r, m, k, n)
      base = ms if base is None else base
      print(f"| ({m}, {k}) x ({k}, {n}) | {r} | {ms:.2f} | {ms / base:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
