"""Free and nudged phases, the readout and the neuronal-error estimators of generalized hEP.

Dynamics: a plain fixed-point iteration with no leak and no dt (the "convergent
RNN" setting of Ernoult et al. 2019), all layers synchronous,

    u_{t+1} = H(σ(u_t), x) + β P_out c(σ(u_t,out)),    c(a_out) = ∂ℓ/∂a_out = Rᵀ(softmax(z) − y),

from u = 0 (free phase, β = 0, T1 steps, giving u1) or from u1 (nudged phases,
T2 steps at constant β). Every time loop is a ``lax.fori_loop``.

Sign convention (the authors' code's; many EP papers nudge with −β instead):
the nudge is **+β c**, so a positive real β pushes the output *up* the loss and
v = dσ(u*_β)/dβ|₀ yields the estimate **+∇_θ L**, which the optimiser descends.
All estimators divide by β, so β's sign only matters through the higher-order
bias.

Every function is batched: states are dicts ``{layer: (B, *shape)}``; the
per-example loss gradient ``c`` is *not* divided by B (updates divide once).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbio.recurrent.vector_fields import real_linear
from jaxbio.rules.base import concrete

FREE_DTYPES = ("float32", "float16", "bfloat16")
N1_REFERENCES = ("start", "f0")

# Bound on |Im u| along the complex nudged trajectories. The MLP activation
# σ(z) = 1/(1 + e^{−(4z−2)}) has its poles nearest the real axis at
# z = ½ ± iπ/4, so f(β) = σ(u_{T2}(β)) is holomorphic, and the Cauchy estimate's
# bias O(|β|^N) holds, only while every state keeps |Im u| < π/4. (The CNN's
# σ(z) = ½[SiLU(z) − SiLU(z − 2)] has its nearest poles at |Im z| = π: there
# π/4 is a conservative bound.) The hEP rules report max |Im u| as
# ``metrics["max_abs_imag_u"]``.
IMAG_BOUND = math.pi / 4


def cast(tree: Any, dtype) -> Any:
  """Casts every array leaf of ``tree`` to ``dtype``."""
  return jax.tree.map(lambda a: a.astype(dtype), tree)


def real_dtype(params: Any):
  """The (real) floating dtype of the parameters."""
  return jnp.result_type(*jax.tree.leaves(params))


def complex_dtype(dtype):
  """complex64 for ≤ float32 parameters, complex128 for float64 (x64 mode)."""
  return jnp.result_type(dtype, jnp.complex64)


def activity(net, u: dict) -> dict:
  """a = σ(u), layer by layer."""
  return {k: net.field.activation(v) for k, v in u.items()}


def activation_slope(net, u: dict) -> dict:
  """D = σ′(u), layer by layer (forward-mode, so it is exact for any σ)."""
  sigma = net.field.activation
  return {k: jax.jvp(sigma, (v,), (jnp.ones_like(v),))[1] for k, v in u.items()}


def zeros_state(net, batch_shape: tuple[int, ...], dtype) -> dict:
  return {name: jnp.zeros(tuple(batch_shape) + shape, dtype) for name, shape in net.field.layers}


# ---------------------------------------------------------------------------
# Readout and loss; c = ∂ℓ/∂a_out is taken through the readout at the current state.


def logits(net, params: dict, a_out: jax.Array) -> jax.Array:
  """Readout z = R a_out + r on the flattened out layer (not part of the dynamics)."""
  n = len(net.field.out_shape)
  flat = a_out.reshape(a_out.shape[:a_out.ndim - n] + (-1,))
  r = params["readout"]
  z = real_linear(lambda k, h: h @ k, r["kernel"], flat)
  return z + r["bias"].astype(z.dtype)


def _softmax(z: jax.Array) -> jax.Array:
  # Holomorphic softmax: the (real) max is a constant stabiliser.
  m = lax.stop_gradient(jnp.max(jnp.real(z), axis=-1, keepdims=True))
  e = jnp.exp(z - m)
  return e / jnp.sum(e, axis=-1, keepdims=True)


def loss_grad_out(net, params: dict, a_out: jax.Array, y: jax.Array) -> jax.Array:
  """c(a_out) = ∂ℓ/∂a_out = Rᵀ(softmax(z) − y), per example, holomorphic in a_out."""
  z = logits(net, params, a_out)
  g = real_linear(lambda k, e: e @ k.T, params["readout"]["kernel"], _softmax(z) - y)
  return g.reshape(a_out.shape)


def cross_entropy(z: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over the batch of ℓ = −log softmax(z)_label (real logits)."""
  logp = jax.nn.log_softmax(z)
  return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def one_hot(net, labels: jax.Array, dtype) -> jax.Array:
  return jax.nn.one_hot(labels, net.field.num_classes, dtype=dtype)


# ---------------------------------------------------------------------------
# Dynamics.


def step(net, params: dict, drive: dict, u: dict, beta=None, y=None) -> dict:
  """One iteration u ← H(σ(u), x) + β P_out c(σ(u_out)) (β = None: free)."""
  a = activity(net, u)
  h = net.field.h(params, a, drive)
  if beta is not None:
    h["out"] = h["out"] + beta * loss_grad_out(net, params, a["out"], y)
  return h


def run(net, params: dict, drive: dict, u0: dict, steps: int, beta=None, y=None) -> dict:
  """``steps`` iterations of :func:`step` from ``u0`` (a ``lax.fori_loop``)."""
  if steps == 0:
    return u0
  return lax.fori_loop(0, int(steps), lambda t, u: step(net, params, drive, u, beta, y), u0)


def max_abs_imag(u: dict) -> jax.Array:
  """max |Im u| over all layers, examples and neurons (a real scalar; NaN if any is NaN)."""
  return jnp.max(jnp.stack([jnp.max(jnp.abs(jnp.imag(v))) for v in jax.tree.leaves(u)]))


def run_max_imag(net, params: dict, drive: dict, u0: dict, steps: int, beta=None,
                 y=None) -> tuple[dict, jax.Array]:
  """:func:`run`, also returning m = max_{1 ≤ t ≤ steps} max |Im u_t| (0 for real states).

  One |Im u| reduction per step (cheap next to the step itself). A trajectory
  that became non-finite gives m = +inf: it left the analytic region.
  """
  u0 = jax.tree.map(jnp.asarray, u0)
  m0 = jnp.zeros((), jnp.real(jax.tree.leaves(u0)[0]).dtype)
  if steps == 0:
    return u0, m0

  def body(t, carry):
    u, m = carry
    u = step(net, params, drive, u, beta, y)
    return u, jnp.maximum(m, max_abs_imag(u))

  u, m = lax.fori_loop(0, int(steps), body, (u0, m0))
  return u, jnp.where(jnp.isnan(m), jnp.inf, m)


def free_phase(net, params: dict, x: jax.Array, *, t_free: int | None = None,
               free_dtype: str | None = None) -> dict:
  """The free phase: T1 iterations from u = 0 at β = 0; returns u1.

  Args:
    net: a :class:`jaxbio.recurrent.HEPNetwork`.
    params: network parameters.
    x: input batch ``(B, *input_shape)``.
    t_free: T1 (default ``net.t_free``).
    free_dtype: ``float32`` (the parameters' own precision), ``float16`` or
      ``bfloat16`` (computed in that dtype and cast back, as the reference CNN
      runs do). Default ``net.free_dtype``.
  """
  t_free = net.t_free if t_free is None else int(t_free)
  free_dtype = net.free_dtype if free_dtype is None else free_dtype
  if free_dtype not in FREE_DTYPES:
    raise ValueError(f"unknown free_dtype {free_dtype!r}; valid choices: {', '.join(FREE_DTYPES)}")
  dtype = real_dtype(params)
  run_dtype = dtype if free_dtype == "float32" else jnp.dtype(free_dtype)
  p = params if run_dtype == dtype else cast(params, run_dtype)
  x = x.astype(run_dtype)
  drive = net.field.drive(p, x)
  u0 = zeros_state(net, x.shape[:1], run_dtype)
  u1 = run(net, p, drive, u0, t_free)
  return u1 if run_dtype == dtype else cast(u1, dtype)


def residual_norm(net, params: dict, drive: dict, u: dict) -> jax.Array:
  """‖F(u)‖₂ per example at β = 0, over all state layers; shape ``(B,)``."""
  h = step(net, params, drive, u)
  sq = [jnp.sum(jnp.abs(h[k] - u[k]) ** 2, axis=tuple(range(1, u[k].ndim))) for k in u]
  return jnp.sqrt(sum(sq))


# ---------------------------------------------------------------------------
# Neuronal-error estimators of v = dσ(u*_β)/dβ at β = 0.


def nudged_activity(net, params, drive, u1, y, beta, t_nudge: int) -> dict:
  """f(β) = σ(u_{T2}(β)): T2 nudged iterations from u1 at constant β."""
  return activity(net, run(net, params, drive, u1, t_nudge, beta, y))


def check_estimator(n_points, beta, t_nudge, n1_reference):
  if not isinstance(n_points, int) or isinstance(n_points, bool) or n_points < 0:
    raise ValueError(f"n_points must be an integer >= 0 (0 = exact forward mode), got {n_points!r}")
  if n_points > 0 and isinstance(beta, (int, float)) and not (
      math.isfinite(float(beta)) and float(beta) != 0.0):
    raise ValueError(f"beta must be a finite nonzero number for n_points >= 1, got {beta!r}")
  if not isinstance(t_nudge, int) or t_nudge < 1:
    raise ValueError(f"t_nudge must be an integer >= 1, got {t_nudge!r}")
  if n1_reference not in N1_REFERENCES:
    raise ValueError(f"unknown n1_reference {n1_reference!r}; valid choices: "
                     f"{', '.join(N1_REFERENCES)}")


def neuronal_error(net, params: dict, drive: dict, u1: dict, y: jax.Array, *,
                   n_points: int, beta: float, t_nudge: int, n1_reference: str = "start",
                   fold_conjugates: bool = True, return_max_imag: bool = False):
  """The hEP estimate of v = dσ(u*_β)/dβ at β = 0, by the number of points N.

  With f(β) = σ(u_{T2}(β)) started from u1:

  * N = 0: the exact forward-mode derivative f′(0) (one JVP through T2 steps).
  * N = 1: [f(β) − σ(u1)]/β (``n1_reference="start"``, the reference code) or
    [f(β) − f(0)]/β (``"f0"``); bias O(β).
  * N ≥ 2: the Cauchy sum (1/N) Σ_k f(β_k)/β_k with β_k = βω^k, ω = e^{2πi/N};
    bias O(|β|^N). Real θ and x make phases k and N − k conjugate, so they are
    folded into 2 Re[f(β_k)/β_k] (``fold_conjugates``): phases k = 0 and (N even)
    k = N/2 run in real arithmetic, k = 1 … ⌈N/2⌉ − 1 in complex (complex64,
    or complex128 for float64 parameters; θ stays real and each real-weight
    product runs as one real product on [Re; Im], the same numbers as casting
    θ). ``fold_conjugates=False`` runs all N phases in complex (a check of the
    folding).

  Args:
    net: the network; params: its parameters; drive: ``net.field.drive(params, x)``.
    u1: the free state; y: one-hot labels (real).
    n_points, beta, t_nudge, n1_reference, fold_conjugates: as above.
    return_max_imag: also return m = max |Im u_t| over every step t = 1 … T2
      of every complex nudged phase, all examples and neurons: the trajectories
      stay in σ's analytic region, where the O(|β|^N) bias bound holds, iff
      m < :data:`IMAG_BOUND` (π/4 for the MLP). m = 0 exactly when no phase
      is complex (N ≤ 2: real β only; N = 0 nudges in forward mode). Phases
      k and N − k are conjugate, so folding does not change m.

  Returns:
    v, shaped like the state (real); ``(v, m)`` with ``return_max_imag``.
  """
  check_estimator(n_points, beta, t_nudge, n1_reference)
  dtype = real_dtype(params)
  no_imag = jnp.zeros((), dtype)
  done = (lambda v, m=no_imag: (v, m)) if return_max_imag else (lambda v, m=None: v)

  def f(b, p=params, d=drive, u=u1, yy=y):
    return nudged_activity(net, p, d, u, yy, b, t_nudge)

  def f_complex(b, d, u, yy):
    """f(b) for a complex phase, with its max |Im u_t| (when asked for)."""
    if not return_max_imag:
      return f(b, params, d, u, yy), no_imag
    uu, m = run_max_imag(net, params, d, u, t_nudge, b, yy)
    return activity(net, uu), m.astype(dtype)

  if n_points == 0:
    zero, one = jnp.zeros((), dtype), jnp.ones((), dtype)
    return done(jax.jvp(f, (zero,), (one,))[1])
  beta = jnp.asarray(beta, dtype)  # may be traced.
  if n_points == 1:
    ref = activity(net, u1) if n1_reference == "start" else f(jnp.zeros((), dtype))
    fb = f(beta)
    return done(jax.tree.map(lambda a, r: (a - r) / beta, fb, ref))

  n = n_points
  cdt = complex_dtype(dtype)
  if not fold_conjugates:
    ks = jnp.arange(n)
    betas = beta * jnp.exp(2j * jnp.pi * ks / n).astype(cdt)
    cd, cu, cy = cast(drive, cdt), cast(u1, cdt), y.astype(cdt)
    fs, ms = jax.vmap(lambda b: f_complex(b, cd, cu, cy))(betas)
    return done(jax.tree.map(lambda s: jnp.real(jnp.tensordot(1.0 / betas, s, axes=1)) / n, fs),
                jnp.max(ms))

  rb = jnp.stack([beta, -beta]) if n % 2 == 0 else beta[None]
  fr = jax.vmap(f)(rb)
  total = jax.tree.map(lambda s: jnp.tensordot(1.0 / rb, s, axes=1), fr)
  n_complex = (n + 1) // 2 - 1
  max_imag = no_imag
  if n_complex > 0:
    ks = jnp.arange(1, n_complex + 1)
    betas = beta * jnp.exp(2j * jnp.pi * ks / n).astype(cdt)
    cd, cu, cy = cast(drive, cdt), cast(u1, cdt), y.astype(cdt)
    fc, ms = jax.vmap(lambda b: f_complex(b, cd, cu, cy))(betas)
    max_imag = jnp.max(ms)
    total = jax.tree.map(lambda t, s: t + 2.0 * jnp.real(jnp.tensordot(1.0 / betas, s, axes=1)),
                         total, fc)
  return done(jax.tree.map(lambda t: (t / n).astype(dtype), total), max_imag)


def loss_grad_state(net, params: dict, u: dict, labels: jax.Array) -> dict:
  """∂ℓ/∂u = D P_out c per example (zero outside the out layer)."""
  def total_loss(uu):
    z = logits(net, params, net.field.activation(uu["out"]))
    return cross_entropy(z, labels) * labels.shape[0]
  return jax.grad(total_loss)(u)


def rbp_adjoint(net, params: dict, drive: dict, u1: dict, labels: jax.Array, *,
                t_nudge: int, neumann: bool = False) -> dict:
  """Recurrent backprop (Almeida–Pineda) adjoint at u1 (the authors' ``rec_bp``).

  Iterates δ ← δ + (∂F/∂u)ᵀδ + ∂ℓ/∂u = (WD)ᵀδ + D P_out c from δ = 0 for T2
  steps (``neumann=True``: T2 + 1 steps, δ = Σ_{k=0}^{T2} ((I + ∂F/∂u)ᵀ)^k ∂ℓ/∂u).
  For a contractive iteration δ → (D⁻¹ − Wᵀ)⁻¹c = −J⁻ᵀc (the implicit-function
  adjoint).
  """
  if not isinstance(t_nudge, int) or t_nudge < 1:
    raise ValueError(f"t_nudge must be an integer >= 1, got {t_nudge!r}")
  _, vjp = jax.vjp(lambda u: net.field.h(params, activity(net, u), drive), u1)
  g = loss_grad_state(net, params, u1, labels)
  steps = t_nudge + (1 if neumann else 0)

  def body(t, delta):
    back = vjp(delta)[0]
    return jax.tree.map(jnp.add, back, g)

  return lax.fori_loop(0, steps, body, jax.tree.map(jnp.zeros_like, g))


# ---------------------------------------------------------------------------
# Online variant ("online_hvf" in the authors' code).


def online_phase(net, params: dict, x: jax.Array, y: jax.Array, *, n_points: int, beta: float,
                 t_free: int, t_nudge: int, skip_rounds: int = 0,
                 return_max_imag: bool = False) -> tuple:
  """Online hEP: q = ⌊T1/T2⌋ complex rounds from u = 0, no separate free phase.

  Round r runs T2 steps at β_r = βe^{2πir/N}, carrying the state over; with
  u_r the state at the end of round r, ū = Re Σ_r u_r / q' and
  v̂ = Re Σ_r σ(u_r)/β_r / q' over the rounds r ≥ ``skip_rounds`` (q' of them;
  0 is the reference, which keeps the round-0 transient).

  With ``return_max_imag``, also m = max |Im u_t| over every step of every
  round (skipped ones included: they set the later rounds' start), examples
  and neurons; the trajectory stays in σ's analytic region iff
  m < :data:`IMAG_BOUND`.

  Returns:
    ``(ū, v̂)``, real, shaped like the state; ``(ū, v̂, m)`` with
    ``return_max_imag``.
  """
  if not isinstance(n_points, int) or n_points < 2:
    raise ValueError(f"online hEP needs n_points >= 2, got {n_points!r}")
  if concrete(beta) and not (math.isfinite(float(beta)) and float(beta) != 0.0):
    raise ValueError(f"beta must be a finite nonzero number, got {beta!r}")
  q = int(t_free) // int(t_nudge)
  if t_nudge < 1 or q - skip_rounds < 1 or skip_rounds < 0:
    raise ValueError(f"online hEP needs t_nudge >= 1 and 0 <= skip_rounds < t_free // t_nudge, "
                     f"got t_free={t_free}, t_nudge={t_nudge}, skip_rounds={skip_rounds}")
  dtype = real_dtype(params)
  cdt = complex_dtype(dtype)
  cd = cast(net.field.drive(params, x.astype(dtype)), cdt)
  cy = y.astype(cdt)
  u0 = zeros_state(net, x.shape[:1], cdt)
  zero = jax.tree.map(jnp.zeros_like, u0)

  def body(r, carry):
    u, su, sv, m = carry
    beta_r = (beta * jnp.exp(2j * jnp.pi * r / n_points)).astype(cdt)
    if return_max_imag:
      u, m_r = run_max_imag(net, params, cd, u, t_nudge, beta_r, cy)
      m = jnp.maximum(m, m_r.astype(dtype))
    else:
      u = run(net, params, cd, u, t_nudge, beta_r, cy)
    keep = (r >= skip_rounds).astype(dtype)
    su = jax.tree.map(lambda s, a: s + keep * a, su, u)
    sv = jax.tree.map(lambda s, a: s + keep * a / beta_r, sv, activity(net, u))
    return u, su, sv, m

  _, su, sv, m = lax.fori_loop(0, q, body, (u0, zero, zero, jnp.zeros((), dtype)))
  count = q - skip_rounds
  ubar = jax.tree.map(lambda s: (jnp.real(s) / count).astype(dtype), su)
  vhat = jax.tree.map(lambda s: (jnp.real(s) / count).astype(dtype), sv)
  return (ubar, vhat, m) if return_max_imag else (ubar, vhat)
