"""Milliseconds per target-propagation training step on MNIST-FC, with jaxbio's BP in the same run.

Times the trainer's own compiled loop (``steps_per_call`` steps per call, data
on device, no alignment or diagnostics) for ``launch/configs/bartunov.py``'s
``mnist,fc,<rule>[,parallel]`` configs (784-256x5-10, tanh, batch 128, Table 5
optimisers) on random data of MNIST's shape: every TP rule under both
schedules, and backprop. For the alternating schedule each pass is timed on
its own: ``inverse`` (only the inverses learn) and ``forward`` (only the
forward weights); their sum is the cost of one batch in one epoch, which is
one step of the parallel schedule. In the same run the machine's float32
matmul rate is measured on the step's own shapes; the floor is the step's
matmul FLOP count divided by that rate.

The reference is the Meulemans et al. (NeurIPS 2020) PyTorch code, "DTP"
network type, on the same net, batch 128, float32, parallel schedule, one
thread, on a shared 2-vCPU CPU: DTP 21.5 ms and BP 9.8 ms per step (medians).
To compare on one thread:

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        python -m benchmarks.tp_speed

``--nets=cifar10_fc,mnist_lc,cifar10_lc`` times the other Table 3 nets the
same way (the given ``--rules`` and BP, on random data of the dataset's
shape), without the floor column; the reference has CIFAR-FC (DTP 163.9 ms,
BP 142.8 ms per step, float32, one thread).
"""

from __future__ import annotations

from absl import app, flags
import jax

from benchmarks import common
from launch.configs import bartunov

_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_STEPS = flags.DEFINE_integer("steps_per_call", 100, "Training steps per compiled call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median reported).")
_RULES = flags.DEFINE_list("rules", ["dtp", "sdtp", "ao_sdtp", "tp"], "TP rules to time.")
_NETS = flags.DEFINE_list("nets", ["mnist_fc"], "Table 3 nets, <dataset>_<fc|lc>: mnist_fc, "
                          "cifar10_fc, mnist_lc, cifar10_lc.")

REFERENCE_MS = {"dtp": 21.5, "bp": 9.8}
# The reference on the other nets it has (Meulemans et al.'s code, same conditions).
OTHER_REFERENCE_MS = {"cifar10_fc": {"dtp": 163.9, "bp": 142.8}}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
WIDTHS = (784, 256, 256, 256, 256, 256, 10)


def step_products(rule: str, schedule_pass: str, n_z: int = 512) -> list[tuple[int, int]]:
  """The (n_in, n_out) shapes of one step's matrix products (each costs 2 B n_in n_out FLOPs).

  Forward pass and forward weight gradients: every layer once each. Targets
  (forward passes): DTP's top gradient through ``W_L``, then two inverse
  evaluations per difference step (one for vanilla TP). Inverse training:
  ``f_l(h̃)``, ``g_l`` and ``g_l``'s kernel gradient, per inverse.
  """
  layers = list(zip(WIDTHS[:-1], WIDTHS[1:]))
  top = rule in ("sdtp", "ao_sdtp")
  inverses = layers[1:] if top else layers[1:-1]
  if rule == "ao_sdtp":
    inverses = inverses[:-1] + [(WIDTHS[-2], WIDTHS[-1] + n_z)]
  products = list(layers)  # forward
  if schedule_pass == "bp":
    return products + layers + layers[1:]  # forward, weight and input gradients.
  if schedule_pass in ("forward", "parallel"):
    if rule == "ao_sdtp":
      products.append((WIDTHS[-2], n_z))  # z
    if not top:
      products.append(layers[-1])
    products += inverses * (1 if rule == "tp" else 2) + layers
  if schedule_pass in ("inverse", "parallel"):
    products += inverses * 3
  return products


_RATES: dict = {}  # measured once per shape in a run, so every row uses the same rates.


def floor_ms(products, batch: int) -> float:
  seconds = 0.0
  for a, b in products:
    if (batch, a, b) not in _RATES:
      _RATES[(batch, a, b)] = common.matmul_rate(batch, a, b)
    seconds += 2.0 * batch * a * b / _RATES[(batch, a, b)]
  return 1e3 * seconds


def _time(arg: str, pass_index: int = 0):
  config = bartunov.get_config(arg)
  config.batch_size = _BATCH.value
  config.steps_per_call = _STEPS.value
  config.divergence_factor = 0.0  # random labels: no divergence guard in a speed run.
  config.dataset.augment = "none"  # the step alone (CIFAR's crops and flips are on device).
  runner = common.ChunkRunner(config, IMAGE_SHAPES[arg.split(",")[0]], pass_index=pass_index)
  ms = 1e3 * common.median_seconds(runner, _REPEATS.value) / _STEPS.value
  return ms, runner.compile_seconds


def _other_net(net: str) -> None:
  """ms per step of BP and the TP rules on another Table 3 net (no floor)."""
  dataset, arch = net.split("_")
  ref = OTHER_REFERENCE_MS.get(net, {})
  ref_txt = lambda rule, ms: f"{ref[rule]} ms: {ref[rule] / ms:.1f}x faster" if rule in ref else ""
  bp_ms, _ = _time(f"{dataset},{arch},bp")
  print(f"| {net} | bp | - | train | {bp_ms:.2f} | 1.00 | {ref_txt('bp', bp_ms)} |")
  for rule in _RULES.value:
    for schedule in ("parallel", "alternating"):
      arg = f"{dataset},{arch},{rule},{schedule}"
      passes = [("parallel", 0)] if schedule == "parallel" else [("inverse", 0), ("forward", 1)]
      total = 0.0
      for name, index in passes:
        ms, _ = _time(arg, index)
        total += ms
        print(f"| {net} | {rule} | {schedule} | {name} | {ms:.2f} | {ms / bp_ms:.2f} | "
              f"{ref_txt(rule, ms) if name == 'parallel' else ''} |")
      if schedule == "alternating":
        print(f"| {net} | {rule} | alternating | both | {total:.2f} | {total / bp_ms:.2f} | |")


def main(argv):
  del argv
  batch = _BATCH.value
  print(f"devices: {jax.devices()}; batch {batch}, {_STEPS.value} steps per call, median of "
        f"{_REPEATS.value} calls")
  others = [n for n in _NETS.value if n != "mnist_fc"]
  for net in others:
    if net not in ("cifar10_fc", "mnist_lc", "cifar10_lc"):
      raise app.UsageError(f"unknown net {net!r}; valid choices: mnist_fc, cifar10_fc, "
                           "mnist_lc, cifar10_lc")
  if others:
    print("| net | rule | schedule | pass | ms/step | x jaxbio BP | reference |")
    print("|---|---|---|---|---|---|---|")
    for net in others:
      _other_net(net)
  if "mnist_fc" not in _NETS.value:
    return
  bp_ms, comp = _time("mnist,fc,bp")
  bp_floor = floor_ms(step_products("bp", "bp"), batch)
  print(f"| rule | schedule | pass | ms/step | floor ms | x floor | x jaxbio BP | reference |")
  print(f"|---|---|---|---|---|---|---|---|")
  print(f"| bp | - | train | {bp_ms:.3f} | {bp_floor:.3f} | {bp_ms / bp_floor:.2f} | 1.00 | "
        f"{REFERENCE_MS['bp']} ms: {REFERENCE_MS['bp'] / bp_ms:.1f}x faster |")
  for rule in _RULES.value:
    for schedule in ("parallel", "alternating"):
      arg = f"mnist,fc,{rule},{schedule}"
      passes = [("parallel", 0)] if schedule == "parallel" else [("inverse", 0), ("forward", 1)]
      total = total_floor = 0.0
      for name, index in passes:
        ms, comp = _time(arg, index)
        floor = floor_ms(step_products(rule, name), batch)
        total, total_floor = total + ms, total_floor + floor
        ref = REFERENCE_MS.get(rule) if name == "parallel" else None
        ref_txt = f"{ref} ms: {ref / ms:.1f}x faster" if ref else ""
        print(f"| {rule} | {schedule} | {name} | {ms:.3f} | {floor:.3f} | {ms / floor:.2f} | "
              f"{ms / bp_ms:.2f} | {ref_txt} |")
      if schedule == "alternating":
        print(f"| {rule} | alternating | both (one batch, one epoch) | {total:.3f} | "
              f"{total_floor:.3f} | {total / total_floor:.2f} | {total / bp_ms:.2f} | |")


if __name__ == "__main__":
  app.run(main)
