"""Runs each rule for a few steps on a 1-device and an 8-device mesh; prints JSON.

Used by tests/test_parallel.py in a subprocess, because the fake CPU device
count must be set before JAX starts.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxbio import train  # pylint: disable=g-import-not-at-top,wrong-import-position




def run(config, devices, images, labels, steps):
  exp = train.build_experiment(config, images.shape[0])
  mesh = train.make_mesh(devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.jit(lambda: train.init_state(exp, 0), out_shardings=replicated)()
  idx = np.arange(steps * config.batch_size, dtype=np.int32).reshape(steps, -1)
  put = lambda x: jax.device_put(x, replicated)
  for p in range(len(exp.passes)):  # every pass of the epoch (e.g. TP's inverse, then forward)
    chunk = train.make_train_chunk(exp, config, mesh, pass_index=p)
    out = chunk(state, put(images), put(labels), put(idx), put(np.int32(steps)),
                put(np.float32(np.nan)))
    assert int(out.bad) == 0
    state = out.state
  return jax.device_get((state.params, state.rule_state, state.net_state))


def main():
  cases = json.loads(sys.argv[1])  # [(name, config_module, config_arg, overrides)]
  import importlib  # pylint: disable=g-import-not-at-top
  assert len(jax.devices()) == 8
  results = {}
  for name, module, arg, overrides in cases:
    config = importlib.import_module(module).get_config(arg)
    for k, v in overrides.items():
      target = config
      *path, leaf = k.split(".")
      for p in path:
        target = target[p]
      target[leaf] = v
    rng = np.random.default_rng(0)
    shape = (config.batch_size * 3,) + tuple(overrides.get("_shape", (28, 28, 1)))
    images = rng.integers(0, 256, shape, np.uint8)
    labels = rng.integers(0, 10, shape[:1], np.int32)
    one = run(config, jax.devices()[:1], images, labels, 3)
    eight = run(config, jax.devices(), images, labels, 3)
    diffs = [float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
             for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight))]
    results[name] = max(diffs)
  print("RESULT " + json.dumps(results))


if __name__ == "__main__":
  main()
