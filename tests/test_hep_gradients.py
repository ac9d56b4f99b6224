"""hEP estimators against exact references: closed forms, Cauchy bias, sign, online.

Small float64 networks: the oracles are identities of exact arithmetic at an
exact fixed point, so they are tested far below float32 rounding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbio.recurrent as rec
from jaxbio.recurrent import dynamics

B = 8


def _flat(tree):
  return np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(tree)])


def _state_vec(state):
  return jnp.concatenate([state[k].reshape(state[k].shape[0], -1) for k in sorted(state)], -1)


def _cos(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _setup(angle, t_free=500, dtype=jnp.float64):
  """A small reciprocal MLP (12 → 16 → 12 → 5) whose free phase converges in float64."""
  net = rec.make_network("hep_mlp", (12,), 5, hidden=(16, 12), angle_deg=angle, t_free=t_free)
  params = dynamics.cast(net.init(jax.random.key(2))[0], dtype)
  x = jax.random.uniform(jax.random.key(12), (B, 12), dtype)
  labels = jnp.arange(B) % 5
  return net, params, {"image": x, "label": labels}


def _updates(net, params, batch, rules):
  """Runs several ``(name, kwargs)`` rules in one jit (one compilation is cheaper)."""
  rules = [rec.make_rule(name, net, **kw) for name, kw in rules]
  return jax.jit(lambda p, b: [r.update(p, (), (), b, jax.random.key(0)) for r in rules])(
      params, batch)


def test_symmetric_weights_hep_n0_equals_bptt_and_rbp():
  with jax.enable_x64(True):
    net, params, batch = _setup(0.0)
    out, bptt, rbp = _updates(net, params, batch, [("hep", dict(n_points=0, t_nudge=20)),
                                                    ("bptt", dict(t_nudge=20)),
                                                    ("rbp", dict(t_nudge=20))])
    assert float(out.metrics["log10_residual"]) < -12  # converged u1.
    g_hep, g_bptt, g_rbp = _flat(out.grads), _flat(bptt.grads), _flat(rbp.grads)
  assert _cos(g_hep, g_bptt) > 0.999 and _cos(g_hep, g_rbp) > 0.999
  assert _rel(g_hep, g_bptt) < 1e-9 and _rel(g_hep, g_rbp) < 1e-9


def test_asymmetric_closed_forms():
  """v = −J⁻¹c, δ = −J⁻ᵀc and v = J⁻¹Jᵀδ with J = W − D⁻¹."""
  with jax.enable_x64(True):
    net, params, batch = _setup(90.0, t_free=200)

    @jax.jit
    def closed_forms(params, x, labels):
      u1 = rec.free_phase(net, params, x)
      drive = net.field.drive(params, x)
      y = dynamics.one_hot(net, labels, x.dtype)
      v = _state_vec(rec.neuronal_error(net, params, drive, u1, y, n_points=0, beta=0.0,
                                        t_nudge=200))
      delta = _state_vec(rec.rbp_adjoint(net, params, drive, u1, labels, t_nudge=200))
      jh = rec.full_jacobian(net, params, u1)  # J_h = W − I for the MLP.
      n = jh.shape[-1]
      slope = _state_vec(dynamics.activation_slope(net, u1))
      jac = jh + jnp.eye(n) - jax.vmap(jnp.diag)(1.0 / slope)
      a1 = dynamics.activity(net, u1)
      c = _state_vec({**jax.tree.map(jnp.zeros_like, a1),
                      "out": dynamics.loss_grad_out(net, params, a1["out"], y)})
      v_ref = -jnp.linalg.solve(jac, c[..., None])[..., 0]
      d_ref = -jnp.linalg.solve(jnp.swapaxes(jac, 1, 2), c[..., None])[..., 0]
      v_delta = jnp.linalg.solve(jac, jnp.einsum("bji,bj->bi", jac, delta)[..., None])[..., 0]
      return v, delta, v_ref, d_ref, v_delta

    v, delta, v_ref, d_ref, v_from_delta = closed_forms(params, batch["image"], batch["label"])
    assert _rel(v, v_ref) < 1e-10
    assert _rel(delta, d_ref) < 1e-10
    assert _rel(v, v_from_delta) < 1e-10
    # The asymmetry bias is real: v and δ point in clearly different directions.
    assert max(_cos(a, b) for a, b in zip(v, delta)) < 0.95


@pytest.mark.parametrize("n_points,ratio", [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)])
def test_cauchy_bias_shrinks_as_beta_to_the_n(n_points, ratio):
  """Error vs N = 0 at the same u1 and T2 shrinks by 2^N per halving of β (complex128)."""
  with jax.enable_x64(True):
    net, params, batch = _setup(0.0)

    @jax.jit
    def estimates(params, x, labels):
      u1 = rec.free_phase(net, params, x)
      drive = net.field.drive(params, x)
      y = dynamics.one_hot(net, labels, x.dtype)
      est = functools.partial(rec.neuronal_error, net, params, drive, u1, y, t_nudge=20)
      v0 = _state_vec(est(n_points=0, beta=0.0))
      return v0, [_state_vec(est(n_points=n_points, beta=b)) for b in (0.05, 0.025, 0.0125)]

    v0, vs = estimates(params, batch["image"], batch["label"])
    errs = [_rel(v, v0) for v in vs]
  for e1, e2 in zip(errs[:-1], errs[1:]):
    assert e1 / e2 == pytest.approx(ratio, rel=0.1)


def test_conjugate_folding_equals_full_cauchy_sum():
  with jax.enable_x64(True):
    net, params, batch = _setup(90.0, t_free=100)

    @jax.jit
    def both(params, x, labels):
      u1 = rec.free_phase(net, params, x)
      drive = net.field.drive(params, x)
      y = dynamics.one_hot(net, labels, x.dtype)
      out = []
      for n in (4, 5):  # real + complex phases; two complex phases.
        kw = dict(n_points=n, beta=0.3, t_nudge=10)
        out.append((_state_vec(rec.neuronal_error(net, params, drive, u1, y, **kw)),
                    _state_vec(rec.neuronal_error(net, params, drive, u1, y,
                                                  fold_conjugates=False, **kw))))
      return out

    for folded, full in both(params, batch["image"], batch["label"]):
      assert _rel(folded, full) < 1e-12


def test_batch_update_is_mean_of_per_example_updates_and_readout_is_autodiff():
  net, params, batch = _setup(60.0, t_free=30, dtype=jnp.float32)
  update = rec.make_rule("hep", net, n_points=2, beta=0.1, t_nudge=10).update

  @jax.jit
  def batched_and_single(params, batch):
    out = update(params, (), (), batch, jax.random.key(0))
    one = lambda b: update(params, (), (), jax.tree.map(lambda a: a[None], b),
                           jax.random.key(0)).grads
    return out, jax.tree.map(lambda g: jnp.mean(g, 0), jax.lax.map(one, batch))

  out, mean = batched_and_single(params, batch)
  np.testing.assert_allclose(_flat(out.grads), _flat(mean), rtol=1e-4, atol=1e-6)
  u1 = out.aux["fixed_point"]
  readout = jax.grad(lambda r: dynamics.cross_entropy(
      dynamics.logits(net, {"readout": r}, rec.hard_sigmoid(u1["out"])), batch["label"]))(
          params["readout"])
  np.testing.assert_allclose(_flat(out.grads["readout"]), _flat(readout), rtol=1e-6)


def test_update_is_a_descent_direction_at_angle_zero():
  """⟨g_hEP, ∇L⟩ > 0 with ∇L by autodiff through the whole free phase."""
  with jax.enable_x64(True):
    net, params, batch = _setup(0.0)
    update = rec.make_rule("hep", net, n_points=2, beta=0.05, t_nudge=60).update
    loss = lambda p: dynamics.cross_entropy(net.apply(p, (), batch["image"])[0], batch["label"])
    g_hep, true = jax.jit(lambda p: (update(p, (), (), batch, None).grads, jax.grad(loss)(p)))(
        params)
    g_hep = _flat(g_hep)
  assert float(jnp.vdot(g_hep, _flat(true))) > 0
  assert _cos(g_hep, _flat(true)) > 0.99


def test_online_variant_equals_cauchy_estimate_once_settled():
  """Settled rounds, first period dropped: v̂ = N-point Cauchy estimate."""
  with jax.enable_x64(True):
    net, params, batch = _setup(90.0, t_free=200)

    @jax.jit
    def online_and_cauchy(params, x, labels):
      y = dynamics.one_hot(net, labels, x.dtype)
      ubar, vhat = rec.online_phase(net, params, x, y, n_points=4, beta=0.05, t_free=800,
                                    t_nudge=100, skip_rounds=4)
      u1 = rec.free_phase(net, params, x)
      v4 = rec.neuronal_error(net, params, net.field.drive(params, x), u1, y, n_points=4,
                              beta=0.05, t_nudge=100)
      return _state_vec(ubar), _state_vec(vhat), _state_vec(u1), _state_vec(v4)

    ubar, vhat, u1, v4 = online_and_cauchy(params, batch["image"], batch["label"])
  assert _rel(vhat, v4) < 1e-10
  assert _rel(ubar, u1) < 1e-4  # ū = u1 + O(|β|^N).


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_every_rule_runs_jitted_and_reports_convergence():
  net, params, batch = _setup(90.0, t_free=40, dtype=jnp.float32)
  rules = [("ep", dict(symmetric=True)), ("hep", dict(n_points=1, n1_reference="f0")),
           ("hep", dict(n_points=6, beta=0.2)), ("hep_online", dict(t_free=120, t_nudge=10)),
           ("rbp", dict(neumann=True)), ("bptt", dict(t_nudge=5)), ("hep", dict(t_free=1))]
  outs = _updates(net, params, batch, rules)
  for (name, _), out in zip(rules, outs):
    assert jax.tree.structure(out.grads) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(out.grads)), name
    for k in ("loss", "accuracy", "log10_residual", "unsettled", "unsettled_frac", "nonfinite"):
      assert k in out.metrics, (name, k)
    assert set(out.aux["fixed_point"]) == {"l1", "l2", "out"}
  assert rec.make_rule("hep", net).init(jax.random.key(0), params) == ()
  fb = rec.make_rule("hep", net).feedback(params, ())
  assert list(fb) == ["l2-l1", "out-l2"]
  b, k = fb["l2-l1"]
  np.testing.assert_array_equal(b, params["l2-l1"]["kernel"].T)
  np.testing.assert_array_equal(k, params["l1-l2"]["kernel"])
  # One free step cannot settle: reported, not silent.
  assert float(outs[-1].metrics["unsettled_frac"]) == 1.0
  assert float(outs[-1].metrics["unsettled"]) == B
  assert float(outs[0].metrics["unsettled_frac"]) == 0.0


def test_nonfinite_updates_are_counted_and_optionally_zeroed():
  net, params, batch = _setup(90.0, t_free=10, dtype=jnp.float32)
  params["l2-l1"]["kernel"] = params["l2-l1"]["kernel"].at[0, 0].set(jnp.nan)
  raw, zeroed = _updates(net, params, batch, [("hep", dict(n_points=2, t_nudge=5)),
                                               ("hep", dict(n_points=2, t_nudge=5,
                                                            zero_nonfinite=True))])
  assert float(raw.metrics["nonfinite"]) > 0
  assert float(zeroed.metrics["nonfinite"]) == float(raw.metrics["nonfinite"])
  out = zeroed
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(out.grads))


def test_negative_beta_is_the_other_teaching_sign():
  # Nudging with -beta (toward lower loss, the convention of many EP papers)
  # estimates the same dsigma(u*)/dbeta: the update stays +grad L, no flip.
  with jax.enable_x64(True):
    net, params, batch = _setup(0.0)
    plus2, minus2, plus1, minus1, exact = _updates(net, params, batch, [
        ("hep", dict(n_points=2, beta=0.05)), ("hep", dict(n_points=2, beta=-0.05)),
        ("hep", dict(n_points=1, beta=0.01)), ("hep", dict(n_points=1, beta=-0.01)),
        ("hep", dict(n_points=0))])
    # N = 2 samples {beta, -beta}: the same set either way.
    np.testing.assert_allclose(_flat(minus2.grads), _flat(plus2.grads), rtol=1e-12, atol=1e-14)
    # N = 1 is one-sided: the two signs err by O(beta) in opposite directions.
    g0 = _flat(exact.grads)
    assert _cos(_flat(minus1.grads), g0) > 0.999 and _cos(_flat(plus1.grads), g0) > 0.999
    mid = 0.5 * (_flat(plus1.grads) + _flat(minus1.grads))
    assert _rel(mid, g0) < 0.2 * min(_rel(_flat(plus1.grads), g0), _rel(_flat(minus1.grads), g0))


def _max_imag_direct(net, params, x, labels, u0, betas, steps, carry=False):
  """max |Im u_t| over t = 1..steps of each phase at each beta, step by step.

  Each phase starts from u0 (``carry``: from the previous phase's end, as the
  online rounds do).
  """
  cdt = dynamics.complex_dtype(dynamics.real_dtype(params))
  drive = dynamics.cast(net.field.drive(params, x), cdt)
  y = dynamics.one_hot(net, labels, cdt)
  step = jax.jit(lambda u, b: dynamics.step(net, params, drive, u, b, y))
  m, u = 0.0, dynamics.cast(u0, cdt)
  for b in betas:
    u = u if carry else dynamics.cast(u0, cdt)
    for _ in range(steps):
      u = step(u, jnp.asarray(b, cdt))
      m = max(m, max(float(jnp.max(jnp.abs(jnp.imag(v)))) for v in u.values()))
  return m


def test_max_abs_imag_u_of_the_complex_nudged_phases():
  assert rec.IMAG_BOUND == pytest.approx(np.pi / 4)
  with jax.enable_x64(True):
    net, params, batch = _setup(90.0, t_free=200)
    x, labels = batch["image"], batch["label"]
    n6, n6_unfolded, n2, n0, online = _updates(net, params, batch, [
        ("hep", dict(n_points=6, beta=1.0, t_nudge=10)),
        ("hep", dict(n_points=6, beta=1.0, t_nudge=10, fold_conjugates=False)),
        ("hep", dict(n_points=2, beta=1.0, t_nudge=10)),
        ("hep", dict(n_points=0, t_nudge=10)),
        ("hep_online", dict(n_points=4, beta=0.5, t_free=40, t_nudge=10))])
    u1 = rec.free_phase(net, params, x)
    # N = 6 folded: complex phases k = 1, 2 (k = 0, 3 are real; k = 4, 5 their conjugates).
    direct = _max_imag_direct(net, params, x, labels, u1,
                              [np.exp(2j * np.pi * k / 6) for k in (1, 2)], 10)
    # Online: from u = 0, 4 rounds of 10 steps at 0.5 e^{2 pi i r / 4}, state carried over.
    direct_online = _max_imag_direct(net, params, x, labels,
                                     dynamics.zeros_state(net, (B,), jnp.float64),
                                     [0.5 * np.exp(2j * np.pi * r / 4) for r in range(4)], 10,
                                     carry=True)
  m6 = float(n6.metrics["max_abs_imag_u"])
  assert m6 > rec.IMAG_BOUND  # |beta| = 1 leaves the analytic region of sigma here.
  np.testing.assert_allclose(m6, direct, rtol=1e-10)
  # Phases k and N - k are conjugate: folding does not change the maximum.
  np.testing.assert_allclose(float(n6_unfolded.metrics["max_abs_imag_u"]), m6, rtol=1e-10)
  assert float(online.metrics["max_abs_imag_u"]) > 0.05
  np.testing.assert_allclose(float(online.metrics["max_abs_imag_u"]), direct_online, rtol=1e-10)
  # Real nudges (N = 2) and forward mode (N = 0): no complex phase, exactly 0.
  assert float(n2.metrics["max_abs_imag_u"]) == 0.0
  assert float(n0.metrics["max_abs_imag_u"]) == 0.0
