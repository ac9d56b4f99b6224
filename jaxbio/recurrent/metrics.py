"""Diagnostics for convergent recurrent networks: residual, jac_sym, weight angle, error alignment.

These are meant to be called every few hundred steps by the trainer (jitted or
not), never inside the train step: the exact Jacobian metric alone costs as
much as a free phase for the MLP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbio.recurrent import dynamics
from jaxbio.recurrent import homeostasis

SYMMETRY_METHODS = ("exact", "hutchinson")


def fixed_point_residual(net, params: dict, x: jax.Array, u: dict) -> jax.Array:
  """‖F(u)‖₂ = ‖H(σ(u), x) − u‖₂ per example at β = 0; shape ``(B,)``."""
  x = x.astype(dynamics.real_dtype(params))
  return dynamics.residual_norm(net, params, net.field.drive(params, x), u)


def jacobian_symmetry(net, params: dict, x: jax.Array, u: dict, *, method: str = "exact",
                      key: jax.Array | None = None, num_probes: int = 16) -> jax.Array:
  """jac_sym = ‖S‖_F/(‖S‖_F + ‖A‖_F) of J_h at σ(u), mean over the batch.

  S and A are the symmetric and antisymmetric parts of the homeostasis
  Jacobian J_h. 1 means a symmetric Jacobian, 0.5 equal parts. The authors'
  code logs the same ``jac_sym``, from the full Jacobian at every step.

  Args:
    net, params: the network and its parameters.
    x: the input batch (J_h does not depend on it; kept for the interface).
    u: the state (usually the free fixed point u1).
    method: ``exact`` (full Jacobian by ``jacfwd``; small nets) or
      ``hutchinson``: ‖S‖² = ½(‖J‖² + tr J²), ‖A‖² = ½(‖J‖² − tr J²) with
      ‖J‖² ≈ E‖Jε‖² and tr J² ≈ E⟨ε, J²ε⟩ (a ratio of estimates: slightly
      biased, for large nets).
    key: PRNG key for ``hutchinson``.
    num_probes: probes per example for ``hutchinson``.
  """
  del x
  if method not in SYMMETRY_METHODS:
    raise ValueError(f"unknown method {method!r}; valid choices: {', '.join(SYMMETRY_METHODS)}")
  if method == "exact":
    jac = homeostasis.full_jacobian(net, params, u)
    jt = jnp.swapaxes(jac, -1, -2)
    s = jnp.sqrt(jnp.sum((0.5 * (jac + jt)) ** 2, axis=(-2, -1)))
    a = jnp.sqrt(jnp.sum((0.5 * (jac - jt)) ** 2, axis=(-2, -1)))
  else:
    if key is None:
      raise ValueError("method 'hutchinson' needs a PRNG key, got key=None")
    eps, w1, w2 = homeostasis.hutchinson_products(net, params, u, key, num_probes)
    sq = jnp.mean(homeostasis.per_example_sum(jax.tree.map(lambda w: w * w, w1)), axis=0)
    tr = jnp.mean(homeostasis.per_example_sum(jax.tree.map(lambda e, w: e * w, eps, w2)), axis=0)
    s = jnp.sqrt(jnp.maximum(0.5 * (sq + tr), 0.0))
    a = jnp.sqrt(jnp.maximum(0.5 * (sq - tr), 0.0))
  return jnp.mean(s / (s + a))


def weight_angle(net, params: dict) -> jax.Array:
  """Forward/feedback angle in degrees, pooled over reciprocal pairs (the authors' metric).

  θ = arccos[Σ_pairs ⟨K_fwd, K_bwdᵀ⟩ / √(Σ‖K_fwd‖² Σ‖K_bwd‖²)] (convs: no
  transpose). Computed as 2·atan2(‖f̂ − b̂‖, ‖f̂ + b̂‖) on the unit-normalised
  concatenations f̂, b̂, which is exact to rounding near 0° (arccos of a
  float32 cosine is off by up to ≈ 0.03° there). NaN for a network without
  reciprocal pairs (the loop MLP).
  """
  pairs = net.field.pairs
  if not pairs:
    return jnp.asarray(jnp.nan, jnp.float32)
  fwd = [params[f]["kernel"] for f, _, _ in pairs]
  bwd = [params[b]["kernel"].T if t else params[b]["kernel"] for _, b, t in pairs]
  nf = jnp.sqrt(sum(jnp.sum(k * k) for k in fwd))
  nb = jnp.sqrt(sum(jnp.sum(k * k) for k in bwd))
  diff = jnp.sqrt(sum(jnp.sum((f / nf - b / nb) ** 2) for f, b in zip(fwd, bwd)))
  plus = jnp.sqrt(sum(jnp.sum((f / nf + b / nb) ** 2) for f, b in zip(fwd, bwd)))
  return jnp.degrees(2.0 * jnp.arctan2(diff, plus))


def _cosine(a, b):
  axes = tuple(range(1, a.ndim))
  num = jnp.sum(a * b, axis=axes)
  den = jnp.sqrt(jnp.sum(a * a, axis=axes) * jnp.sum(b * b, axis=axes))
  return num / den


def error_alignment(net, params: dict, x: jax.Array, labels: jax.Array, *, n_points: int = 0,
                    beta: float = 0.05, t_nudge: int = 20, t_rbp: int | None = None,
                    t_free: int | None = None, u: dict | None = None) -> dict[str, jax.Array]:
  """Per-layer cosine between the hEP neuronal error v and the RBP adjoint δ.

  Both are computed at the free state u1 (or ``u``): v by the N-point
  estimator with T2 = ``t_nudge``, δ by ``t_rbp`` (default ``t_nudge``) RBP
  iterations. Returns ``{layer: mean over examples of cos(v_layer, δ_layer)}``
  and ``"all"`` for the whole state. The authors' code logs this once per
  epoch, on the last training batch. For a contractive net v → −J⁻¹c and
  δ → −J⁻ᵀc, so the cosine is 1 iff the Jacobian is symmetric.
  """
  x = x.astype(dynamics.real_dtype(params))
  if u is None:
    u = dynamics.free_phase(net, params, x, t_free=t_free)
  drive = net.field.drive(params, x)
  y = dynamics.one_hot(net, labels, x.dtype)
  v = dynamics.neuronal_error(net, params, drive, u, y, n_points=n_points, beta=beta,
                              t_nudge=t_nudge)
  delta = dynamics.rbp_adjoint(net, params, drive, u, labels,
                               t_nudge=t_nudge if t_rbp is None else t_rbp)
  out = {k: jnp.mean(_cosine(v[k], delta[k])) for k in v}
  flat = lambda t: jnp.concatenate([t[k].reshape(t[k].shape[0], -1) for k in sorted(t)], -1)
  out["all"] = jnp.mean(_cosine(flat(v), flat(delta)))
  return out


def diagnostics(net, params: dict, x: jax.Array, labels: jax.Array, key: jax.Array, *,
                n_points: int = 0, beta: float = 0.05, t_nudge: int = 20,
                t_free: int | None = None, exact_limit: int = 1024,
                jacobian_examples: int = 8) -> dict[str, jax.Array]:
  """The per-N-steps diagnostics of a convergent network, as a flat dict.

  ``jac_sym`` (exact for nets of at most ``exact_limit`` neurons, Hutchinson
  otherwise; on the first ``jacobian_examples`` examples), ``weight_angle``
  (degrees), ``log10_residual`` (mean log10 ‖F(u1)‖ of the free phase) and
  ``error_cos/<layer>``: the cosine between the hEP neuronal error v (the
  N-point estimate with ``n_points``, ``beta`` and T2 = ``t_nudge``) and the
  T2-step RBP adjoint δ, both at the free state u1 after T1 = ``t_free``
  steps (default ``net.t_free``). Pass the run's own N, β and T2 (the trainer
  does, through :func:`jaxbio.build.build_diagnostics`), so that cos(v, δ)
  measures the v the rule trains with. The trainer calls this every
  ``alignment_every`` steps, never inside the training step.
  """
  u = dynamics.free_phase(net, params, x, t_free=t_free)
  sub = lambda t: jax.tree.map(lambda a: a[:jacobian_examples], t)
  method = "exact" if net.num_neurons <= exact_limit else "hutchinson"
  out = {
      "jac_sym": jacobian_symmetry(net, params, x[:jacobian_examples], sub(u), method=method,
                                   key=key),
      "weight_angle": weight_angle(net, params),
      "log10_residual": jnp.mean(jnp.log10(fixed_point_residual(net, params, x, u) + 1e-30)),
  }
  for layer, cos in error_alignment(net, params, x, labels, n_points=n_points, beta=beta,
                                    t_nudge=t_nudge, u=u).items():
    out[f"error_cos/{layer}"] = cos
  return out
