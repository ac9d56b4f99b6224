"""Speed of one hEP training step on the Fashion-MNIST MLP.

Reciprocal MLP 784-256-256-10 (+10×10 readout), batch 50, T1 = 150, T2 = 20,
random data of the real shape, float32 on CPU. For each configuration: the
compile time of the jitted train step (rule + optimiser update) and the median
time per step, interleaved over rounds because shared CPUs drift. Also measured
in the same run: the dense-matmul FLOP rate (a dependent chain of
50×256·256×256 products, the shape of one free-phase iteration, and 1024³
products), and each step's FLOP rate from the analytic MAC count below.

Reference: the authors' code (github.com/Laborieux-Axel/generalized-holo-ep,
unrolled loops), measured by the jaxbio project on a 2-vCPU Intel Xeon VM
(jax 0.10.2 CPU, median of 30 interleaved steps): 0.165 s/step (N = 2),
0.185 s/step (N = 4), 0.175 s/step (N = 0 + homeostasis), 0.164 s/step
(truncated BPTT); 35–41 s compile.

Usage (from the repository root): ``python -m benchmarks.hep_speed [--rounds 6] [--steps 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

from benchmarks import common
import jaxbio.recurrent as rec
from jaxbio.rules.base import with_penalty

B, T1, T2 = 50, 150, 20
REFERENCE_S = {"hEP N=2": 0.165, "hEP N=4": 0.185, "hEP N=0 + homeo": 0.175, "BPTT": 0.164}

# Analytic MAC counts of the MLP (1 MAC = 2 FLOP).
IN_MACS = 784 * 256                            # input projection, hoisted: once per phase.
ITER_MACS = 2 * 256 * 256 + 2 * 256 * 10 + 100  # one recurrent iteration (+ readout in nudges).
GRAD_MACS = 784 * 256 + 2 * 256 * 256 + 2 * 256 * 10 + 100  # weight-gradient outer products.
NUDGE_EQUIV = {"hEP N=2": 2 * T2, "hEP N=4": 6 * T2, "hEP N=0 + homeo": 2 * T2, "BPTT": 3 * T2}
HOMEO_EQUIV = 5 * 5  # 5 probes × ≈ 5 matvec-equivalents (two JVPs and their reverse pass).


def step_flops(name: str) -> float:
  iters = T1 + NUDGE_EQUIV[name] + (HOMEO_EQUIV if "homeo" in name else 0)
  return 2.0 * B * (IN_MACS + iters * ITER_MACS + GRAD_MACS)


def configurations():
  """``name -> (net, rule, optimiser)`` for the benchmarked settings.

  Hyperparameters from the authors' run.sh: Table 1 (N = 2, 4), Fig. 4a–d
  (N = 0, AdamW, λ = 1) and Fig. 3 (bp).
  """
  sym = rec.make_network("hep_mlp", (28, 28, 1), 10, angle_deg=0.0, t_free=T1)
  asym = rec.make_network("hep_mlp", (28, 28, 1), 10, angle_deg=90.0, t_free=T1)
  sgd = optax.sgd(0.01, momentum=0.9)
  homeo = with_penalty(rec.make_rule("hep", asym, n_points=0, t_nudge=T2),
                       rec.homeostasis_penalty(asym, num_probes=5), 1.0, name="homeostasis")
  return {
      "hEP N=2": (sym, rec.make_rule("hep", sym, n_points=2, beta=0.05, t_nudge=T2), sgd),
      "hEP N=4": (sym, rec.make_rule("hep", sym, n_points=4, beta=0.05, t_nudge=T2), sgd),
      "hEP N=0 + homeo": (asym, homeo, optax.adamw(1e-4)),
      "BPTT": (sym, rec.make_rule("bptt", sym, t_nudge=T2), sgd),
  }


def make_step(rule, tx):
  def step(params, opt_state, batch, key):
    out = rule.update(params, (), (), batch, key)
    updates, opt_state = tx.update(out.grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, out.metrics
  return jax.jit(step, donate_argnums=(0, 1))


def matmul_rates() -> tuple[float, float]:
  """GFLOP/s of a dependent 50×256·256×256 chain (one free-phase iteration's
  product) and of 1024³ products."""
  chain = common.matmul_rate(B, 256, 256, chain=T1)
  big = common.matmul_rate(1024, 1024, 1024)
  return chain / 1e9, big / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()

  key = jax.random.key(0)
  batch = {"image": jax.random.uniform(key, (B, 28, 28, 1)),
           "label": jax.random.randint(jax.random.key(1), (B,), 0, 10)}
  state, compile_s, times = {}, {}, {}
  for name, (net, rule, tx) in configurations().items():
    params, _ = net.init(jax.random.key(0))
    opt_state = tx.init(params)
    step = make_step(rule, tx)
    t = time.perf_counter()
    compiled = step.lower(params, opt_state, batch, key).compile()
    compile_s[name] = time.perf_counter() - t
    params, opt_state, _ = compiled(params, opt_state, batch, key)  # warm-up
    jax.block_until_ready(params)
    state[name] = [compiled, params, opt_state]
    times[name] = []

  for r in range(args.rounds):
    for name, entry in state.items():
      compiled, params, opt_state = entry
      for s in range(args.steps):
        k = jax.random.fold_in(key, r * 1000 + s)
        t = time.perf_counter()
        params, opt_state, metrics = compiled(params, opt_state, batch, k)
        jax.block_until_ready((params, metrics))
        times[name].append(time.perf_counter() - t)
      entry[1:] = [params, opt_state]

  small, big = matmul_rates()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s); "
        f"B={B}, T1={T1}, T2={T2}, float32; median of {args.rounds}x{args.steps} steps")
  print(f"dense matmul: {small:.0f} GFLOP/s (dependent 50x256 @ 256x256 chain), "
        f"{big:.0f} GFLOP/s (1024^3)")
  header = (f"{'config':<18}{'compile s':>10}{'ms/step':>9}{'p25-p75 ms':>14}{'GFLOP':>7}"
            f"{'GFLOP/s':>9}{'% chain':>8}{'ref s/step':>11}{'speed-up':>9}")
  print(header)
  print("-" * len(header))
  for name, ts in times.items():
    ts = sorted(ts)
    med = statistics.median(ts)
    q = statistics.quantiles(ts, n=4)
    flops = step_flops(name)
    rate = flops / med / 1e9
    ref = REFERENCE_S[name]
    print(f"{name:<18}{compile_s[name]:>10.2f}{med * 1e3:>9.1f}"
          f"{q[0] * 1e3:>7.1f}-{q[2] * 1e3:<6.1f}{flops / 1e9:>7.2f}{rate:>9.1f}"
          f"{100 * rate / small:>7.0f}%{ref:>11.3f}{ref / med:>8.1f}x")
  print("reference compile (authors' code, unrolled loops, 2-vCPU CPU): 35-41 s per train step")


if __name__ == "__main__":
  main()
