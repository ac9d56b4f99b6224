"""Generalized holomorphic EP and its baselines as jaxbio learning rules.

Laborieux & Zenke, "Improving equilibrium propagation without weight symmetry
through Jacobian homeostasis", ICLR 2024. One training step (every gradient
uses the pre-update θ):

    u1 ← T1 free iterations from u = 0 (β = 0)
    v  ← estimator(N) from u1            (ep / hep / rbp; online: the rounds)
    g  = (1/B) Σ_batch (∂F/∂θ |_{u1, β=0})ᵀ v  +  ∇_{R,r} (1/B) Σ_batch ℓ(σ(u1_out))

The first term is one VJP of the vector field w.r.t. θ at the free fixed
point; for a dense connection p→q it is the local rule mean_batch v_q σ(u1_p)ᵀ.
``g`` is in gradient convention (the nudge is +βc, as in the authors' code),
so the optimiser descends it. Forward and feedback weights get different
updates and are never tied. Homeostasis is added with :func:`jaxbio.rules.base.with_penalty` and
:func:`jaxbio.recurrent.homeostasis.homeostasis_penalty`, which read
``aux["fixed_point"]``.

Metrics (all of the free-phase state u1): ``loss`` and ``accuracy`` of the
readout, ``log10_residual`` = mean log10‖F(u1)‖, ``unsettled`` /
``unsettled_frac`` = examples with ‖F(u1)‖ > ``residual_threshold`` (so
non-convergence is reported, not silent) and ``nonfinite`` = non-finite
entries of the update (zeroed only with ``zero_nonfinite=True``, the
reference code's behaviour). The hEP rules (``ep``, ``hep``, ``hep_online``)
also report ``max_abs_imag_u`` = max |Im u_t| over every step of the complex
nudged phases (rounds), examples and neurons: the Cauchy estimate's
O(|β|^N) bias bound needs f(β) = σ(u_{T2}(β)) holomorphic on the circle |β|,
i.e. |Im u| below σ's nearest pole, :data:`jaxbio.recurrent.IMAG_BOUND`
= π/4 for the MLP; it is 0 exactly when no phase is complex (N ≤ 2, whose
nudges are real, and N = 0, forward mode); +inf if a trajectory became
non-finite.

Example::

    net = make_network("hep_mlp", (28, 28, 1), 10, angle_deg=90.0)
    rule = make_rule("hep", net, n_points=0, t_nudge=20)
    rule = with_penalty(rule, homeostasis_penalty(net), 1.0, name="homeostasis")
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxbio.recurrent import dynamics
from jaxbio.rules.base import EmptyState, LearningRule, RuleOutput, accuracy, check_batch
from jaxbio.rules.base import concrete

RESIDUAL_THRESHOLD = 1e-3

# ---------------------------------------------------------------------------
# Shared pieces.


def _prepare(net, params, batch):
  check_batch(net, batch)
  return batch["image"].astype(dynamics.real_dtype(params)), batch["label"]


def vector_field_grads(net, params: dict, x: jax.Array, u: dict, err: dict,
                       labels: jax.Array):
  """The generalized-EP update at the state ``u`` with neuronal error ``err``.

  g_θ = (1/B) Σ_batch (∂F/∂θ|_u)ᵀ err + ∇_{R,r} (1/B) Σ_batch ℓ(σ(u_out)),
  with ``u`` and ``err`` held constant. ∂F/∂θ = ∂H/∂θ, so this is the VJP of
  θ ↦ H(σ(u), x; θ) (input drive included) with cotangent ``err``.

  Returns:
    ``(grads, logits)``: grads with the tree of ``params``; readout logits at u.
  """
  a = dynamics.activity(net, lax.stop_gradient(u))
  err = lax.stop_gradient(err)
  batch = x.shape[0]

  def objective(p):
    h = net.field.h(p, a, net.field.drive(p, x))
    surrogate = sum(jnp.sum(h[k] * err[k]) for k in h) / batch
    z = dynamics.logits(net, p, a["out"])
    return surrogate + dynamics.cross_entropy(z, labels), z

  grads, z = jax.grad(objective, has_aux=True)(params)
  return grads, z


def _metrics(net, params, x, u, z, labels, threshold) -> dict:
  drive = net.field.drive(params, x)
  res = dynamics.residual_norm(net, params, drive, u)
  unsettled = ~(res <= threshold)  # NaN counts as unsettled.
  return {
      "loss": dynamics.cross_entropy(z, labels),
      "accuracy": accuracy(z, labels),
      "log10_residual": jnp.mean(jnp.log10(res + jnp.finfo(res.dtype).tiny)),
      "unsettled": jnp.sum(unsettled).astype(jnp.float32),
      "unsettled_frac": jnp.mean(unsettled.astype(jnp.float32)),
  }


def _finish(grads, metrics, zero_nonfinite: bool):
  bad = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(grads))
  metrics = {**metrics, "nonfinite": bad.astype(jnp.float32)}
  if zero_nonfinite:
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grads)
  return grads, metrics


def _feedback_fn(net) -> Callable:
  """Feedback kernels paired with the forward kernels they should mirror.

  Returns ``{"<backward>": (B, K)}`` for every reciprocal pair, the
  backward kernel brought into the forward kernel's layout (transposed for
  dense connections), so ``B == K`` means symmetric weights. The loop MLP has
  no reciprocal pairs, hence an empty dict.
  """

  def feedback(params, rule_state):
    del rule_state
    out = {}
    for fwd, bwd, transpose in net.field.pairs:
      k = params[bwd]["kernel"]
      out[bwd] = (k.T if transpose else k, params[fwd]["kernel"])
    return out

  return feedback


def _init(key, params):
  del key, params
  return EmptyState()


def _check_int(name, value, minimum):
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_common(net, t_free, residual_threshold):
  t_free = net.t_free if t_free is None else t_free
  _check_int("t_free", t_free, 1)
  if concrete(residual_threshold) and not residual_threshold > 0:
    raise ValueError(f"residual_threshold must be > 0, got {residual_threshold!r}")
  return t_free


# ---------------------------------------------------------------------------
# Rules.


def hep(net, *, n_points: int = 2, beta: float = 0.05, t_nudge: int = 20,
        t_free: int | None = None, n1_reference: str = "start", fold_conjugates: bool = True,
        zero_nonfinite: bool = False, residual_threshold: float = RESIDUAL_THRESHOLD,
        name: str = "hep") -> LearningRule:
  """Generalized holomorphic EP (Laborieux & Zenke, ICLR 2024).

  Args:
    net: a :class:`jaxbio.recurrent.HEPNetwork`.
    n_points: N. 0: exact forward-mode dσ(u_{T2})/dβ (one JVP); 1: one-sided
      [f(β) − σ(u1)]/β; 2: [f(β) − f(−β)]/(2β); ≥ 3: Cauchy sum on the circle
      |β|, conjugate phases folded (bias O(|β|^N)).
    beta: β (ignored for N = 0). For N ≥ 3 keep |Im u| < π/4 (MLP poles;
      reported as ``metrics["max_abs_imag_u"]``).
      The nudge is +β·c (the authors' sign), which pushes the output up the
      loss. A negative β is the other teaching sign (toward lower loss, as many EP
      papers nudge): the estimators divide by the signed β, so v is still
      dσ(u*)/dβ and the update is still +∇L, with no sign to flip. Only N = 1
      (one-sided) and odd N sample different points for ±β.
    t_nudge: T2, steps per nudged phase from u1.
    t_free: T1 (default ``net.t_free``).
    n1_reference: N = 1 reference point, ``start`` (σ(u1), reference code) or
      ``f0`` (f(0), cancels an unconverged u1).
    fold_conjugates: fold phases k and N − k (False: all N complex phases).
    zero_nonfinite: zero non-finite update entries (reference behaviour);
      they are counted in ``metrics["nonfinite"]`` either way.
    residual_threshold: ‖F(u1)‖ above which an example counts as unsettled.
    name: the rule's name.
  """
  t_free = _check_common(net, t_free, residual_threshold)
  dynamics.check_estimator(n_points, beta, t_nudge, n1_reference)

  def update(params, net_state, rule_state, batch, key):
    del key
    x, labels = _prepare(net, params, batch)
    u1 = dynamics.free_phase(net, params, x, t_free=t_free)
    drive = net.field.drive(params, x)
    y = dynamics.one_hot(net, labels, x.dtype)
    v, max_imag = dynamics.neuronal_error(net, params, drive, u1, y, n_points=n_points,
                                          beta=beta, t_nudge=t_nudge, n1_reference=n1_reference,
                                          fold_conjugates=fold_conjugates, return_max_imag=True)
    grads, z = vector_field_grads(net, params, x, u1, v, labels)
    metrics = {**_metrics(net, params, x, u1, z, labels, residual_threshold),
               "max_abs_imag_u": max_imag}
    grads, metrics = _finish(grads, metrics, zero_nonfinite)
    return RuleOutput(grads, rule_state, net_state, metrics, {"fixed_point": u1})

  return LearningRule(name=name, init=_init, update=update, feedback=_feedback_fn(net))


def ep(net, *, beta: float = 0.05, symmetric: bool = False, t_nudge: int = 20,
       t_free: int | None = None, zero_nonfinite: bool = False,
       residual_threshold: float = RESIDUAL_THRESHOLD) -> LearningRule:
  """Classical EP with a real nudge (Scellier & Bengio 2017; Laborieux et al. 2021).

  One-sided: v = [f(β) − σ(u1)]/β (bias O(β)); ``symmetric=True``:
  v = [f(β) − f(−β)]/(2β) (bias O(β²)). The update is the vector-field form
  (∂F/∂θ)ᵀv of generalized EP, which for symmetric weights equals the
  energy-based contrastive EP update to first order in β.
  """
  return hep(net, n_points=2 if symmetric else 1, beta=beta, t_nudge=t_nudge, t_free=t_free,
             zero_nonfinite=zero_nonfinite, residual_threshold=residual_threshold, name="ep")


def hep_online(net, *, n_points: int = 4, beta: float = 0.5, t_free: int = 1200,
               t_nudge: int = 60, skip_rounds: int = 0, zero_nonfinite: bool = False,
               residual_threshold: float = RESIDUAL_THRESHOLD) -> LearningRule:
  """Online hEP ("online_hvf" in the authors' code): no separate free phase.

  From u = 0, q = ⌊T1/T2⌋ complex rounds of T2 steps, round r at
  β_r = βe^{2πir/N}; ū = Re Σ u_r/q stands in for u1 and v̂ = Re Σ σ(u_r)/β_r/q
  for v; the update is (1/B) Σ (∂F/∂θ|_ū)ᵀ v̂ plus the readout gradient at ū.
  Reference settings: N = 4, β = 0.5, T1 = 1200, T2 = 60, ``skip_rounds=0``
  (round-0 transient included; ``skip_rounds=N`` drops the first period).
  The metrics and ``aux["fixed_point"]`` refer to ū, except
  ``max_abs_imag_u``: max |Im u| over every step of every round.
  """
  _check_common(net, t_free, residual_threshold)
  _check_int("n_points", n_points, 2)
  _check_int("t_nudge", t_nudge, 1)
  _check_int("skip_rounds", skip_rounds, 0)
  if t_free // t_nudge <= skip_rounds:
    raise ValueError(f"online hEP needs skip_rounds < t_free // t_nudge = {t_free // t_nudge}, "
                     f"got skip_rounds={skip_rounds}")
  if concrete(beta) and not (math.isfinite(float(beta)) and float(beta) != 0.0):
    raise ValueError(f"beta must be a finite nonzero number, got {beta!r}")

  def update(params, net_state, rule_state, batch, key):
    del key
    x, labels = _prepare(net, params, batch)
    y = dynamics.one_hot(net, labels, x.dtype)
    ubar, vhat, max_imag = dynamics.online_phase(net, params, x, y, n_points=n_points,
                                                 beta=beta, t_free=t_free, t_nudge=t_nudge,
                                                 skip_rounds=skip_rounds, return_max_imag=True)
    grads, z = vector_field_grads(net, params, x, ubar, vhat, labels)
    metrics = {**_metrics(net, params, x, ubar, z, labels, residual_threshold),
               "max_abs_imag_u": max_imag}
    grads, metrics = _finish(grads, metrics, zero_nonfinite)
    return RuleOutput(grads, rule_state, net_state, metrics, {"fixed_point": ubar})

  return LearningRule(name="hep_online", init=_init, update=update, feedback=_feedback_fn(net))


def rbp(net, *, t_nudge: int = 20, neumann: bool = False, t_free: int | None = None,
        zero_nonfinite: bool = False,
        residual_threshold: float = RESIDUAL_THRESHOLD) -> LearningRule:
  """Recurrent backprop at the free fixed point ("rec_bp"/"neu_rbp" in the authors' code).

  δ ← (WD)ᵀδ + D P_out c for T2 steps from 0 (``neumann``: one more term), then
  g = (1/B) Σ (∂F/∂θ)ᵀδ + readout gradient. Converges to the implicit-function
  gradient δ = −J⁻ᵀc for a contractive iteration.
  """
  t_free = _check_common(net, t_free, residual_threshold)
  _check_int("t_nudge", t_nudge, 1)

  def update(params, net_state, rule_state, batch, key):
    del key
    x, labels = _prepare(net, params, batch)
    u1 = dynamics.free_phase(net, params, x, t_free=t_free)
    drive = net.field.drive(params, x)
    delta = dynamics.rbp_adjoint(net, params, drive, u1, labels, t_nudge=t_nudge,
                                 neumann=neumann)
    grads, z = vector_field_grads(net, params, x, u1, delta, labels)
    metrics = _metrics(net, params, x, u1, z, labels, residual_threshold)
    grads, metrics = _finish(grads, metrics, zero_nonfinite)
    return RuleOutput(grads, rule_state, net_state, metrics, {"fixed_point": u1})

  return LearningRule(name="rbp", init=_init, update=update, feedback=lambda p, s: {})


def bptt(net, *, t_nudge: int = 20, t_free: int | None = None, zero_nonfinite: bool = False,
         residual_threshold: float = RESIDUAL_THRESHOLD) -> LearningRule:
  """Truncated BPTT ("bp" in the authors' code): u1 held constant, T2 more steps at β = 0.

  g = ∇_θ (1/B) Σ ℓ(σ(u_{T2}(θ))) by exact reverse mode, readout included
  (the readout gradient is taken at u_{T2}). Metrics are those of u1.
  """
  t_free = _check_common(net, t_free, residual_threshold)
  _check_int("t_nudge", t_nudge, 1)

  def update(params, net_state, rule_state, batch, key):
    del key
    x, labels = _prepare(net, params, batch)
    u1 = lax.stop_gradient(dynamics.free_phase(net, params, x, t_free=t_free))

    def objective(p):
      u = dynamics.run(net, p, net.field.drive(p, x), u1, t_nudge)
      z = dynamics.logits(net, p, net.field.activation(u["out"]))
      return dynamics.cross_entropy(z, labels)

    grads = jax.grad(objective)(params)
    z1 = dynamics.logits(net, params, net.field.activation(u1["out"]))
    metrics = _metrics(net, params, x, u1, z1, labels, residual_threshold)
    grads, metrics = _finish(grads, metrics, zero_nonfinite)
    return RuleOutput(grads, rule_state, net_state, metrics, {"fixed_point": u1})

  return LearningRule(name="bptt", init=_init, update=update, feedback=lambda p, s: {})


RULES = {"ep": ep, "hep": hep, "hep_online": hep_online, "rbp": rbp, "bptt": bptt}


def make_rule(name: str, net, **kwargs) -> LearningRule:
  """Builds the rule ``name`` (ep, hep, hep_online, rbp, bptt) for ``net``.

  Keyword arguments are the factory's (e.g. ``n_points``, ``beta``,
  ``t_nudge``); an unknown one raises a ValueError listing the valid ones.
  """
  if name not in RULES:
    raise ValueError(f"unknown rule {name!r}; valid choices: {', '.join(RULES)}")
  factory = RULES[name]
  valid = [p for p in inspect.signature(factory).parameters if p not in ("net", "name")]
  for k in kwargs:
    if k not in valid:
      raise ValueError(f"unknown argument {k!r} for rule {name!r}; valid choices: "
                       f"{', '.join(valid)}")
  return factory(net, **kwargs)
