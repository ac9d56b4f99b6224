"""Jacobian homeostasis (Laborieux & Zenke, ICLR 2024).

The homeostasis Jacobian J_h = ∂[H(a, x) − a]/∂a at a = σ(u1), β = 0
(activation bypassed) has the same antisymmetric part as the network Jacobian
J = W − D⁻¹, i.e. exactly the part that makes hEP's neuronal error
v = −J⁻¹c = J⁻¹Jᵀδ differ from the true adjoint δ = −J⁻ᵀc (c = ∂ℓ/∂a_out, at a
contractive fixed point). The auxiliary loss is

    L_homeo = ½‖J_h − J_hᵀ‖²_F / n,          n = total number of state units,

estimated without forming J_h (Hutchinson): per example and probe
ε ~ N(0, I_n), w₁ = J_h ε and w₂ = J_h w₁ (two forward-mode JVPs), and

    ℓ_h = (‖w₁‖² − ⟨ε, w₂⟩)/n,     E ℓ_h = (‖J_h‖²_F − tr J_h²)/n = ½‖J_h − J_hᵀ‖²_F/n.

The gradient flows through the two JVPs with u1 held constant. The division by
n follows the authors' code (the paper's formula reportedly lacks it; unverified).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from jaxbio.recurrent import dynamics

METHODS = ("hutchinson", "exact", "closed_form")


def _jh_fn(net, params, u):
  """a ↦ H(a) − a (input drive omitted: it does not change J_h) and a = σ(u)."""
  a = dynamics.activity(net, lax.stop_gradient(u))
  field = net.field.h

  def g(aa):
    h = field(params, aa, None)
    return {k: h[k] - aa[k] for k in aa}

  return g, a


def hutchinson_products(net, params: dict, u: dict, key: jax.Array, num_probes: int):
  """Probes ε ~ N(0, I_n) and w₁ = J_h ε, w₂ = J_h w₁ (two JVPs); u held constant.

  Returns:
    ``(ε, w₁, w₂)``, state dicts with leaves ``(num_probes, B, *shape)``;
    probes are independent per example and per probe.
  """
  g, a = _jh_fn(net, params, u)
  # One draw for the whole state: separate per-layer draws compile much slower.
  names = sorted(a)
  batch = a[names[0]].shape[0]
  sizes = [math.prod(a[k].shape[1:]) for k in names]
  flat = jax.random.normal(key, (num_probes, batch, sum(sizes)), a[names[0]].dtype)
  eps, offset = {}, 0
  for k, size in zip(names, sizes):
    eps[k] = flat[..., offset:offset + size].reshape((num_probes,) + a[k].shape)
    offset += size
  jvp = lambda t: jax.jvp(g, (a,), (t,))[1]
  w1 = jax.vmap(jvp)(eps)
  w2 = jax.vmap(jvp)(w1)
  return eps, w1, w2


def per_example_sum(tree):
  """Sums (P, B, ...) leaves over their feature axes → (P, B)."""
  return sum(jnp.sum(v, axis=tuple(range(2, v.ndim))) for v in jax.tree.leaves(tree))


def homeostasis_loss(net, params: dict, x: jax.Array, fixed_point: dict, key: jax.Array,
                     num_probes: int = 5) -> jax.Array:
  """The Hutchinson estimate of ½‖J_h − J_hᵀ‖²_F/n, mean over examples and probes.

  Args:
    net: a :class:`jaxbio.recurrent.HEPNetwork`.
    params: parameters (differentiate w.r.t. these).
    x: the input batch (unused by J_h; kept for the interface).
    fixed_point: u1, a state dict; held constant (stop-gradient).
    key: PRNG key; probes are independent per example and per probe.
    num_probes: probes per example (5 in the reference).
  """
  del x  # J_h does not depend on the input: H's input term is additive.
  if not isinstance(num_probes, int) or num_probes < 1:
    raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}")
  eps, w1, w2 = hutchinson_products(net, params, fixed_point, key, num_probes)
  sq = per_example_sum(jax.tree.map(lambda w: w * w, w1))
  quad = per_example_sum(jax.tree.map(lambda e, w: e * w, eps, w2))
  return jnp.mean(sq - quad) / net.num_neurons


def full_jacobian(net, params: dict, fixed_point: dict) -> jax.Array:
  """J_h per example, ``(B, n, n)``, via ``jacfwd`` (small networks only)."""
  g, a = _jh_fn(net, params, fixed_point)

  def one(a_ex):
    flat, unravel = ravel_pytree(a_ex)
    single = lambda v: ravel_pytree(
        jax.tree.map(lambda t: t[0], g(jax.tree.map(lambda t: t[None], unravel(v)))))[0]
    return jax.jacfwd(single)(flat)

  return jax.vmap(one)(a)


def exact_homeostasis_loss(net, params: dict, x: jax.Array, fixed_point: dict,
                           key: jax.Array | None = None, num_probes: int | None = None
                           ) -> jax.Array:
  """½‖J_h − J_hᵀ‖²_F/n from the full Jacobian, mean over the batch (small nets).

  ``key`` and ``num_probes`` are accepted and ignored, so this can replace
  :func:`homeostasis_loss` anywhere.
  """
  del x, key, num_probes
  jac = full_jacobian(net, params, fixed_point)
  anti = jac - jnp.swapaxes(jac, -1, -2)
  return 0.5 * jnp.mean(jnp.sum(anti * anti, axis=(-2, -1))) / net.num_neurons


def closed_form_homeostasis_loss(net, params: dict) -> jax.Array:
  """½‖J_h − J_hᵀ‖²_F/n in closed form for MLPs: Σ_{pairs {p,q}} ‖W_qp − W_pqᵀ‖²_F / n.

  A one-way recurrent connection contributes ‖W_qp‖²_F; input weights never
  enter. Exact for the (linear-recurrent) MLPs, whose J_h = W − I is state
  independent; raises for the CNN.
  """
  if net.field.arch not in ("hep_mlp", "hep_loop_mlp"):
    raise ValueError(f"the closed-form homeostasis loss needs an MLP arch "
                     f"(hep_mlp, hep_loop_mlp), got {net.field.arch!r}")
  recurrent = {c.name: c for c in net.field.connections if c.src != "in"}
  total, seen = 0.0, set()
  for name, c in recurrent.items():
    if name in seen:
      continue
    k = params[name]["kernel"]
    rev = f"{c.dst}-{c.src}"
    if rev in recurrent:
      seen.add(rev)
      d = k - params[rev]["kernel"].T
    else:
      d = k
    seen.add(name)
    total = total + jnp.sum(d * d)
  return total / net.num_neurons


def homeostasis_penalty(net, num_probes: int = 5, method: str = "hutchinson"):
  """A penalty ``(params, batch, aux, key) -> L_homeo`` for :func:`with_penalty`.

  Uses ``aux["fixed_point"]`` (u1, held constant) and ``batch["image"]``.

  Args:
    net: the network.
    num_probes: Hutchinson probes per example.
    method: ``hutchinson`` (reference), ``exact`` (full Jacobian; small nets)
      or ``closed_form`` (MLPs only; deterministic and cheap).
  """
  if method not in METHODS:
    raise ValueError(f"unknown homeostasis method {method!r}; valid choices: {', '.join(METHODS)}")
  if not isinstance(num_probes, int) or num_probes < 1:
    raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}")
  if method == "closed_form":
    if net.field.arch not in ("hep_mlp", "hep_loop_mlp"):
      raise ValueError(f"method 'closed_form' needs an MLP arch (hep_mlp, hep_loop_mlp), "
                       f"got {net.field.arch!r}")

  def penalty(params, batch, aux, key):
    if method == "closed_form":
      return closed_form_homeostasis_loss(net, params)
    x = batch["image"]
    u = aux["fixed_point"]
    if method == "exact":
      return exact_homeostasis_loss(net, params, x, u)
    return homeostasis_loss(net, params, x, u, key, num_probes)

  return penalty
