"""Target propagation (TP, DTP, SDTP, AO-SDTP): the rule's exact and statistical oracles.

The FA/DFA reductions and the locally connected layer's convolution and transpose
identities the LC inverses rely on are in tests/test_rules.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbio import nets, rules
from jaxbio.rules import target_prop as tpm


def _batch(n_in, n=16, classes=10, seed=1, dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"image": jax.random.normal(k1, (n, n_in), dtype),
          "label": jax.random.randint(k2, (n,), 0, classes)}


def _spec(top="gradient", difference=True, alpha=0.1, sigma=0.1, inverse_loss="denoising",
          n_z=0):
  return tpm._Spec("test", top, difference, alpha, sigma, inverse_loss, n_z)  # pylint: disable=protected-access


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _per_example_grad_wrt_hidden(net, params, hs, labels, i):
  """∂ℓ_n/∂h_i for every example: backprop from block i's output (sum of per-example losses)."""
  def loss_from(h):
    for block, p in zip(net.blocks[i + 1:], params[i + 1:]):
      h = tpm._activation(block)(block.linear(p, h))  # pylint: disable=protected-access
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(h, labels))
  return jax.grad(loss_from)(hs[i])


def _mean_ce_grads(net, params, batch):
  bp = rules.backprop(net)
  return jax.jit(lambda p, b: bp.update(p, tuple({} for _ in net.blocks), None, b, None).grads
                 )(params, batch)


# ---------------------------------------------------------------------------
# 1. The difference rule's fixed point is exact.


@pytest.mark.parametrize("dtype", [pytest.param("float64", marks=pytest.mark.slow),
                                   pytest.param("float32", marks=pytest.mark.slow)])
def test_difference_rule_fixed_point_is_bitwise(dtype):
  with jax.enable_x64(dtype == "float64"):
    net = nets.mlp((12,), [10, 9, 8], 10, dtype=dtype)
    params, _ = net.init(jax.random.key(0))
    batch = _batch(12, n=64, dtype=jnp.dtype(dtype))
    makers = (tpm.sdtp,) + ((lambda n: tpm.ao_sdtp(n, n_z=7)),) * (dtype == "float32")
    for make in makers:
      rule = make(net)
      state = rule.init(jax.random.key(1), params)
      spec = _spec(top="label", n_z=7 if state.aux is not None else 0)

      @jax.jit
      def fixed_point(params, state, batch):
        hs = tpm.forward_activities(net, params, batch["image"])
        acts, _ = tpm.compute_targets(net, spec, params, state, hs, batch["label"])
        inv = [None] + [lambda y, i=i: tpm.apply_inverse(net, i, state.inverse[i], y)
                        for i in range(1, 4)]
        return hs, tpm.propagate_targets(acts, 3, acts[3], inv)  # ĥ_L := h_L

      hs, targets = fixed_point(params, state, batch)
      for i in range(3):
        np.testing.assert_array_equal(targets[i], hs[i])
    # Consequence: DTP with α = 0 gives exactly zero hidden-layer updates, and the
    # output layer's delta rule is exactly backprop's.
    rule = tpm.dtp(net, alpha=0.0, schedule="parallel")
    state = rule.init(jax.random.key(1), params)
    grads = jax.jit(rule.update)(params, tuple({} for _ in net.blocks), state, batch,
                                 jax.random.key(2)).grads
    for g in grads[:-1]:
      assert not np.any(np.asarray(g["kernel"])) and not np.any(np.asarray(g["bias"]))
    bp = _mean_ce_grads(net, params, batch)
    np.testing.assert_allclose(grads[-1]["kernel"], bp[-1]["kernel"],
                               rtol=1e-12 if dtype == "float64" else 1e-6)
    if dtype == "float32":  # the test can fail: Lee's order h - g(h) + g(ĥ) is not bitwise.
      inv1 = lambda y: tpm.apply_inverse(net, 2, state.inverse[2], y)
      lee = hs[1] - inv1(hs[2]) + inv1(hs[2])
      assert np.any(np.asarray(lee) != np.asarray(hs[1]))


# ---------------------------------------------------------------------------
# 2. Exact inverses: DTP equals TP, and the targets are consistent.


def test_exact_inverse_makes_dtp_equal_tp_and_targets_consistent():
  with jax.enable_x64(True):
    d = 8
    net = nets.mlp((d,), [d, d, d], 10, dtype="float64")
    params, _ = net.init(jax.random.key(3))
    params = [dict(p, bias=0.1 * jax.random.normal(jax.random.key(10 + i), p["bias"].shape,
                                                   jnp.float64)) for i, p in enumerate(params)]
    for i in (1, 2):  # square, invertible and well conditioned
      m = jax.random.normal(jax.random.key(30 + i), (d, d), jnp.float64)
      params[i]["kernel"] = 0.8 * jnp.linalg.qr(m)[0] + 0.1 * m
    params = tuple(params)
    batch = _batch(d, n=32, dtype=jnp.float64)
    batch["image"] = 0.5 * batch["image"]
    hs = tpm.forward_activities(net, params, batch["image"])

    def exact_inverse(i):  # g(h) = W^-1 (atanh h - b), in row layout.
      k_inv = jnp.linalg.inv(params[i]["kernel"])
      return lambda y: (jnp.arctanh(y) - params[i]["bias"]) @ k_inv

    inv = [None] + [exact_inverse(i) for i in (1, 2)]
    top = tpm.gradient_top_target(net, params, hs[2], batch["label"], 0.02)
    dtp_t = tpm.propagate_targets(hs, 2, top, inv, difference=True)
    tp_t = tpm.propagate_targets(hs, 2, top, inv, difference=False)
    for i in range(3):
      assert float(jnp.max(jnp.abs(dtp_t[i]))) < 1  # inside (-1, 1)
      assert _rel(dtp_t[i], tp_t[i]) < 1e-10, i
      assert _rel(dtp_t[i], hs[i]) > 1e-4  # the targets did move.
    for i in (1, 2):  # f_{i}(ĥ_{i-1}) = ĥ_i
      f = jnp.tanh(net.blocks[i].linear(params[i], dtp_t[i - 1]))
      assert _rel(f, dtp_t[i]) < 1e-10, i


# ---------------------------------------------------------------------------
# 3. Linear network with g_l = W_l^T: DTP is backprop; negative control W^-1.


def _linear_net_case(orthogonal):
  net = nets.mlp((6,), [8, 8, 8], 4, activation="identity", dtype="float64")
  params, _ = net.init(jax.random.key(4))
  params = [dict(p, bias=jnp.zeros_like(p["bias"])) for p in params]
  for i in (1, 2):
    m = jax.random.normal(jax.random.key(20 + i), (8, 8), jnp.float64)
    params[i]["kernel"] = jnp.linalg.qr(m)[0] if orthogonal else m + 2 * jnp.eye(8)
  params = tuple(params)
  rule = tpm.dtp(net, alpha=0.1, schedule="parallel")
  state = rule.init(jax.random.key(5), params)
  inverse = list(state.inverse)
  for i in (1, 2):
    k = params[i]["kernel"]
    # g(y) = y @ V^T: V = K gives W^T; V = K^-T gives W^-1.
    inverse[i] = {"kernel": k if orthogonal else jnp.linalg.inv(k).T,
                  "bias": jnp.zeros_like(inverse[i]["bias"])}
  return net, params, rule, state._replace(inverse=tuple(inverse))


def _bp_mismatch(net, params, rule, state, alpha=0.1):
  """Largest relative deviation from ĥ_l - h_l = -α ∂ℓ_n/∂h_l and ∇_{W_l} L_l = 2α ∂ℓ/∂W_l."""
  batch = _batch(6, n=20, classes=4, dtype=jnp.float64)

  @jax.jit
  def compute(params, state, batch):
    hs = tpm.forward_activities(net, params, batch["image"])
    _, targets = tpm.compute_targets(net, _spec(alpha=alpha), params, state, hs, batch["label"])
    gs = [_per_example_grad_wrt_hidden(net, params, hs, batch["label"], i) for i in range(3)]
    grads = rule.update(params, tuple({} for _ in net.blocks), state, batch,
                        jax.random.key(0)).grads
    return hs, targets, gs, grads

  hs, targets, gs, grads = compute(params, state, batch)
  errs = [_rel(targets[i] - hs[i], -alpha * gs[i]) for i in range(3)]
  bp = _mean_ce_grads(net, params, batch)
  for i in range(3):
    errs.append(_rel(grads[i]["kernel"], 2 * alpha * bp[i]["kernel"]))
  errs.append(_rel(grads[3]["kernel"], bp[3]["kernel"]))
  return max(errs)


def test_orthogonal_linear_network_dtp_is_backprop_and_the_negative_control_is_not():
  with jax.enable_x64(True):
    case = _linear_net_case(orthogonal=True)
    assert _bp_mismatch(*case) < 1e-10
    # Negative control: a non-orthogonal W with its exact inverse g = W^-1.
    net, params, rule, state = _linear_net_case(orthogonal=False)
    for i in (1, 2):  # g really is the exact inverse ...
      y = jax.random.normal(jax.random.key(7), (5, 8), jnp.float64)
      g = tpm.apply_inverse(net, i, state.inverse[i], y)
      np.testing.assert_allclose(net.blocks[i].linear(params[i], g), y, rtol=1e-10, atol=1e-10)
    # ... and the displacements follow W^-1, not W^T: the BP equality fails.
    assert _bp_mismatch(net, params, rule, state) > 0.05


# ---------------------------------------------------------------------------
# 4. The linearised-inverse identity: targets are -α times the backprop gradients.


def test_linearised_inverses_give_backprop_targets_and_updates():
  with jax.enable_x64(True):
    net = nets.mlp((9,), [7, 6, 5], 10, dtype="float64")
    params, _ = net.init(jax.random.key(8))
    batch = _batch(9, n=24, dtype=jnp.float64)
    alpha = 0.07

    @jax.jit
    def compute(params, batch):
      hs = tpm.forward_activities(net, params, batch["image"])

      def linearised(i):  # v -> J_i^T v, with J_i = ∂h_i/∂h_{i-1} at each example's h_{i-1}.
        f = lambda h: jnp.tanh(net.blocks[i].linear(params[i], h))
        _, vjp = jax.vjp(f, hs[i - 1])
        return lambda v: vjp(v)[0]

      inv = [None] + [linearised(i) for i in (1, 2)]
      top = tpm.gradient_top_target(net, params, hs[2], batch["label"], alpha)
      targets = tpm.propagate_targets(hs, 2, top, inv)
      gs = [_per_example_grad_wrt_hidden(net, params, hs, batch["label"], i) for i in range(3)]
      local = lambda p: [tpm._sum_mean(h - t)  # pylint: disable=protected-access
                         for h, t in zip(tpm.forward_activities(net, p, batch["image"]), targets)]
      gws = [jax.grad(lambda p, i=i: local(p)[i])(params)[i]["kernel"] for i in range(3)]
      return hs, targets, gs, gws

    hs, targets, gs, gws = compute(params, batch)
    bp = _mean_ce_grads(net, params, batch)
    for i in range(3):
      assert _rel(targets[i] - hs[i], -alpha * gs[i]) < 1e-10, i
      assert _rel(gws[i], 2 * alpha * bp[i]["kernel"]) < 1e-10, i


# ---------------------------------------------------------------------------
# 5. Small-step linearity of DTP's displacements in α.


def test_dtp_displacements_are_linear_in_small_alpha():
  with jax.enable_x64(True):
    net = nets.mlp((10,), [9, 8, 7, 6], 10, dtype="float64")
    params, _ = net.init(jax.random.key(9))
    rule = tpm.dtp(net)
    state = rule.init(jax.random.key(10), params)
    batch = _batch(10, n=32, dtype=jnp.float64)
    hs = tpm.forward_activities(net, params, batch["image"])
    targets = jax.jit(lambda a: tpm.compute_targets(net, _spec(alpha=1.0)._replace(alpha=a),
                                                    params, state, hs, batch["label"])[1])
    disp = lambda a: [t - h for t, h in zip(targets(a), hs)]
    ratio = lambda a, i: float(jnp.linalg.norm(disp(2 * a)[i] - 2 * disp(a)[i]) /
                               jnp.linalg.norm(disp(a)[i]))
    alpha = 0.2
    for i in range(3):  # layers l <= L-2: the ratio is O(α).
      r1, r2 = ratio(alpha, i), ratio(alpha / 2, i)
      assert r1 > 1e-6 and 1.6 < r1 / r2 < 2.4, (i, r1, r2)
    assert ratio(alpha, 3) < 1e-12  # layer L-1: exactly linear.


# ---------------------------------------------------------------------------
# 6. The inverse losses' minimisers.


def _fit_linear_inverse(inverse_loss, sigma, d=6, n=100_000):
  """Minimise the rule's inverse loss over V (quadratic, so one Newton step) for f(h) = h K."""
  net = nets.sequential((d,), [dict(kind="dense", features=d, post=("identity",), bias=False),
                               dict(kind="dense", features=d, post=("identity",), bias=False),
                               dict(kind="dense", features=3)], dtype="float64")
  params, _ = net.init(jax.random.key(11))
  k1, k2 = jax.random.split(jax.random.key(12))
  scales = jnp.linspace(0.5, 1.5, d)
  h0 = jnp.tanh(scales * jax.random.normal(k1, (n, d), jnp.float64))  # tanh-shaped activities
  hs = (h0, None, None)
  spec = _spec(sigma=sigma, inverse_loss=inverse_loss)
  noise = tpm.inverse_noise(k2, hs, (1,), sigma)
  loss = lambda v: tpm.inverse_loss(net, spec, (None, {"kernel": v.reshape(d, d)}, None), params,
                                    None, hs, noise)[0]
  v0 = jnp.zeros(d * d, jnp.float64)
  v = jax.jit(lambda v0: v0 - jnp.linalg.solve(jax.hessian(loss)(v0), jax.grad(loss)(v0)))(v0)
  return params[1]["kernel"], v.reshape(d, d), h0, jax.jit(loss)(v)


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_inverse_loss_minimisers_match_their_closed_forms():
  with jax.enable_x64(True):
    sigma = 0.3
    k, v, h0, residual = _fit_linear_inverse("noise_preserving", sigma)
    # Noise-preserving: g = f^-1 at zero loss (row layout: h K V^T = h).
    np.testing.assert_allclose(k @ v.T, np.eye(6), atol=1e-9)
    assert float(residual) < 1e-12
    k, v, h0, _ = _fit_linear_inverse("denoising", sigma)
    c = h0.T @ h0 / h0.shape[0]  # the sample second moment
    # De-noising: V* W = C (C + σ² I)^-1 in math layout, i.e. K V^T = (C + σ² I)^-1 C.
    wiener = jnp.linalg.solve(c + sigma ** 2 * jnp.eye(6), c)
    assert _rel(k @ v.T, wiener) < 0.01
    assert _rel(k @ v.T, np.eye(6)) > 0.05  # the test can tell the two apart.
    # At σ = 0 the two losses coincide.
    net = nets.mlp((4,), [4, 4], 3, dtype="float64")
    params, _ = net.init(jax.random.key(0))
    state = tpm.dtp(net).init(jax.random.key(1), params)
    hs = tpm.forward_activities(net, params, jax.random.normal(jax.random.key(2), (50, 4),
                                                               jnp.float64))
    noise = tpm.inverse_noise(jax.random.key(3), hs, (1,), 0.0)
    values = [tpm.inverse_loss(net, _spec(inverse_loss=m), state.inverse, params, None, hs,
                               noise)[0] for m in tpm.INVERSE_LOSSES]
    assert float(values[0]) == float(values[1]) > 0


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_inverse_noise_is_fresh_per_example_and_per_step():
  hs = (jnp.zeros((4096, 3)), jnp.zeros((4096, 5)))
  a = tpm.inverse_noise(jax.random.key(0), hs, (1,), 0.25)[1]
  b = tpm.inverse_noise(jax.random.key(1), hs, (1,), 0.25)[1]
  assert not np.any(np.asarray(a[0]) == np.asarray(a[1]))  # examples differ
  assert not np.any(np.asarray(a) == np.asarray(b))  # steps (keys) differ
  np.testing.assert_allclose(float(jnp.std(a)), 0.25, rtol=0.03)
  # The rule draws from its step key: two keys give two different inverse updates.
  net = nets.mlp((6,), [5, 5], 3)
  params, _ = net.init(jax.random.key(0))
  rule = tpm.sdtp(net, sigma=0.2)
  state = rule.init(jax.random.key(1), params)
  batch = _batch(6, n=8, classes=3)
  inv_pass = rule.passes[0]._replace(update=jax.jit(rule.passes[0].update))
  s1 = inv_pass.update(params, ({},) * 3, state, batch, jax.random.key(2)).rule_state
  s2 = inv_pass.update(params, ({},) * 3, state, batch, jax.random.key(3)).rule_state
  assert not np.allclose(s1.inverse[1]["kernel"], s2.inverse[1]["kernel"])


# ---------------------------------------------------------------------------
# 7. Gradient isolation.


@pytest.mark.parametrize("name", [pytest.param("ao_sdtp", marks=pytest.mark.slow),
                                  pytest.param("dtp", marks=pytest.mark.slow),
                                  pytest.param("sdtp", marks=pytest.mark.slow),
                                  pytest.param("tp", marks=pytest.mark.slow)])
def test_gradients_are_isolated(name):
  with jax.enable_x64(True):
    net = nets.mlp((7,), [6, 5, 4], 10, dtype="float64")
    params, _ = net.init(jax.random.key(13))
    kw = {"n_z": 5} if name == "ao_sdtp" else {}
    rule = rules.FEEDFORWARD_RULES[name](net, schedule="parallel", **kw)
    state = rule.init(jax.random.key(14), params)
    batch = _batch(7, n=12, dtype=jnp.float64)
    spec = _spec(top="gradient" if name in ("dtp", "tp") else "label", difference=name != "tp",
                 n_z=5 if name == "ao_sdtp" else 0)
    x, y = batch["image"], batch["label"]

    @jax.jit
    def compute(params, state):
      # ∇_λ of the forward losses.
      g_inv = jax.grad(lambda inv: tpm.forward_loss(
          net, spec, params, state._replace(inverse=inv), x, y)[0])(state.inverse)
      # ∇_θ of the inverse losses.
      hs = tpm.forward_activities(net, params, x)
      noise = tpm.inverse_noise(jax.random.key(0), hs, tpm.inverse_layers(net, spec.top), 0.1)
      g_fwd = jax.grad(lambda p: tpm.inverse_loss(net, spec, state.inverse, p, state.aux,
                                                  tpm.forward_activities(net, p, x), noise)[0]
                       )(params)
      out = rule.update(params, ({},) * 4, state, batch, jax.random.key(0))
      _, targets = tpm.compute_targets(net, spec, params, state, hs, y)
      return g_inv, g_fwd, out, hs, targets

    g_inv, g_fwd, out, hs, targets = compute(params, state)
    assert all(not np.any(np.asarray(l)) for l in jax.tree.leaves(g_inv))  # exactly 0
    assert all(not np.any(np.asarray(l)) for l in jax.tree.leaves(g_fwd))  # exactly 0
    # No gradient flows through ĥ: each hidden update is 2[(h - ĥ) ⊙ (1 - h²)] h_{l-1}^T / B.
    grads = out.grads
    inputs = (x,) + hs[:-1]
    for i in range(3):
      delta = 2 * (hs[i] - targets[i]) * (1 - hs[i] ** 2)
      np.testing.assert_allclose(grads[i]["kernel"], inputs[i].T @ delta / x.shape[0],
                                 rtol=1e-12, atol=1e-15)
    if name == "ao_sdtp":
      new = out.rule_state
      for a, b in zip(jax.tree.leaves(new.aux), jax.tree.leaves(state.aux)):
        np.testing.assert_array_equal(a, b)  # W_z, b_z are never trained.
      assert not np.allclose(new.inverse[3]["kernel"], state.inverse[3]["kernel"])
      # Both g_L calls get the same z: ĥ_{L-1} - h_{L-1} = g_L([y; z]) - g_L([o; z]).
      z = tpm.auxiliary_outputs(state.aux, hs[2])
      g = lambda v: tpm.apply_inverse(net, 3, state.inverse[3], v)
      onehot = jax.nn.one_hot(y, 10, dtype=jnp.float64)
      want = g(jnp.concatenate([onehot, z], -1)) - g(tpm.top_activity(hs[3], z))
      np.testing.assert_allclose(targets[2] - hs[2], want, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# Schedules, locally connected inverses, precision, errors.


def test_schedules_update_the_right_parts():
  net = nets.mlp((6,), [5, 5], 3)
  params, _ = net.init(jax.random.key(0))
  batch = _batch(6, n=8, classes=3)
  alt = tpm.dtp(net)
  assert [(p.name, p.trains_params) for p in alt.passes] == [("inverse", False),
                                                              ("forward", True)]
  state = alt.init(jax.random.key(1), params)
  fwd = jax.jit(alt.passes[1].update)(params, ({},) * 3, state, batch, jax.random.key(2))
  for a, b in zip(jax.tree.leaves(fwd.rule_state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)  # the forward pass leaves λ frozen.
  inv = jax.jit(alt.passes[0].update)(params, ({},) * 3, state, batch, jax.random.key(2))
  assert not np.allclose(inv.rule_state.inverse[1]["kernel"], state.inverse[1]["kernel"])
  assert "inverse_loss" in inv.metrics and "target_loss" in fwd.metrics
  par = tpm.dtp(net, schedule="parallel")
  assert par.passes == ()
  out = jax.jit(par.update)(params, ({},) * 3, state, batch, jax.random.key(2))
  # Parallel: the same forward update as the forward pass, and the inverse pass's λ step.
  for a, b in zip(jax.tree.leaves(out.grads), jax.tree.leaves(fwd.grads)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(out.rule_state), jax.tree.leaves(inv.rule_state)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_locally_connected_inverse_is_the_explicit_transpose_of_its_own_kernel():
  net = nets.convnet((6, 6, 2), [(3, 3, 2), (4, 3, 1)], [], 10, local=True, pool=None,
                     activation="identity")
  block = net.blocks[1]  # (3, 3, 3) -> (3, 3, 4)
  a = jax.random.normal(jax.random.key(0), block.kernel_shape)
  n_in = 3 * 3 * 3
  dense = block.op(a, jnp.eye(n_in).reshape(n_in, 3, 3, 3)).reshape(n_in, -1)
  y = jax.random.normal(jax.random.key(1), (2, 3, 3, 4))
  got = tpm.apply_inverse(net, 1, {"kernel": a}, y)
  np.testing.assert_allclose(got.reshape(2, -1), y.reshape(2, -1) @ dense.T, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_sdtp_trains_locally_connected_inverses():
  # The rule trains on a locally connected tanh net: the inverse kernels move, the
  # forward update is finite and the inverses keep the forward kernels' shapes.
  net = nets.convnet((6, 6, 2), [(3, 3, 2), (4, 3, 1)], [8], 10, local=True, pool=None,
                     activation="tanh")
  params, _ = net.init(jax.random.key(2))
  rule = tpm.sdtp(net, schedule="parallel")
  state = rule.init(jax.random.key(3), params)
  batch = {"image": jax.random.normal(jax.random.key(4), (4, 6, 6, 2)),
           "label": jnp.arange(4)}
  out = jax.jit(rule.update)(params, ({},) * 4, state, batch, jax.random.key(5))
  assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(out.grads))
  for i in (1, 2):
    assert state.inverse[i]["kernel"].shape == params[i]["kernel"].shape
    assert not np.allclose(out.rule_state.inverse[i]["kernel"], state.inverse[i]["kernel"])


def test_table3_networks_and_inverse_parameter_counts():
  from jaxbio import train  # pylint: disable=g-import-not-at-top
  from launch.configs import bartunov  # pylint: disable=g-import-not-at-top
  counts = {("mnist", "fc"): 466_698, ("mnist", "lc"): 4_191_562,
            ("cifar10", "fc"): 5_256_202, ("cifar10", "lc"): 50_039_818,
            ("imagenet", "lc"): 259_859_368}
  for (dataset, arch), want in counts.items():
    rule = "sdtp,parallel" if dataset == "imagenet" else "sdtp"  # Table 2's ImageNet rows
    exp = train.build_experiment(bartunov.get_config(f"{dataset},{arch},{rule}"), 1280)
    params = jax.eval_shape(exp.net.init, jax.random.key(0))[0]
    assert nets.num_params(params) == want, (dataset, arch)
    state = jax.eval_shape(exp.rule.init, jax.random.key(1), params)
    # SDTP has an inverse for every layer but the first: kernels of the forward
    # kernels' shapes, biases of their inputs' shapes.
    first = params[0]
    inv = nets.num_params(state.inverse)
    assert inv == want - first["kernel"].size - first["bias"].size - sum(
        p["bias"].size for p in params[1:]) + sum(
            int(np.prod(b.in_shape)) for b in exp.net.blocks[1:]), (dataset, arch)


def test_matmuls_run_at_highest_precision():
  net = nets.mlp((6,), [5, 5], 3)
  params, _ = net.init(jax.random.key(0))
  rule = tpm.ao_sdtp(net, n_z=4, schedule="parallel")
  state = rule.init(jax.random.key(1), params)
  batch = _batch(6, n=8, classes=3)
  jaxpr = str(jax.make_jaxpr(rule.update)(params, ({},) * 3, state, batch, jax.random.key(2)))
  dots = jaxpr.count("dot_general")
  assert dots > 10 and jaxpr.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == dots


@pytest.mark.parametrize("make,message", [
    (lambda n: tpm.dtp(n, schedule="both"),
     "unknown dtp schedule 'both'; valid choices: alternating, parallel"),
    (lambda n: tpm.sdtp(n, inverse_loss="l1"),
     "unknown sdtp inverse_loss 'l1'; valid choices: noise_preserving, denoising"),
    (lambda n: tpm.tp(n, top="logits"), "unknown tp top 'logits'; valid choices: gradient, label"),
    (lambda n: tpm.dtp(n, alpha=-1.0), "dtp alpha must be a finite number >= 0"),
    (lambda n: tpm.sdtp(n, sigma=float("nan")), "sdtp sigma must be a finite number >= 0"),
    (lambda n: tpm.ao_sdtp(n, n_z=0), "ao_sdtp n_z must be a positive integer"),
    (lambda n: tpm.dtp(nets.mlp((6,), [5], 3, batch_norm=True)),
     "dtp needs exactly one activation after every hidden layer"),
    (lambda n: tpm.dtp(nets.convnet((8, 8, 1), [(2, 3, 1)], [], 3, local=True)),
     r"dtp needs exactly one activation .* layer 0 has post-operations \('relu', 'max_pool:2:2'\)"),
])
def test_bad_hyperparameters_are_one_line_errors(make, message):
  with pytest.raises(ValueError, match=message) as e:
    make(nets.mlp((6,), [5], 3))
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------
# End to end.


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_launcher_trains_dtp_on_real_mnist(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from jaxbio import data  # pylint: disable=g-import-not-at-top
  shared = data.shared_data_dir()
  if shared is None:
    pytest.skip("../shared/data/tfds (real MNIST) not present")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "launch.main", "--config=launch/configs/bartunov.py:mnist,fc,dtp",
         f"--workdir={tmp_path}", f"--config.dataset.data_dir={shared}",
         "--config.dataset.train_split=train[:6400]", "--config.dataset.test_split=test[:2000]",
         "--config.num_epochs=2", "--config.alignment_every=100", "--config.steps_per_call=50"]
  proc = subprocess.run(cmd, cwd=repo, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  last = records[-1]
  assert last["test/accuracy"] > 0.8, last["test/accuracy"]
  for key in ("align/update_angle/all", "align/target_displacement/layer0",
              "align/target_displacement/layer4", "align/reconstruction_error/layer1",
              "align/reconstruction_error/layer4", "align/feedback_angle/layer1",
              "train_inverse/inverse_loss", "train/target_loss"):
    assert np.isfinite(last[key]), key
  assert "align/reconstruction_error/layer5" not in last  # DTP has no top inverse.
  # The output layer learns by the delta rule: exactly backprop's direction.
  assert last["align/update_angle/5.kernel"] < 0.1
  # The inverses learn during the inverse passes.
  assert last["train_inverse/inverse_loss"] < records[0]["train_inverse/inverse_loss"]


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_resume_inside_the_forward_pass_of_an_alternating_epoch_is_bit_identical(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from jaxbio import checkpoint, data, train  # pylint: disable=g-import-not-at-top
  from launch.configs import bartunov  # pylint: disable=g-import-not-at-top
  shared = data.shared_data_dir()
  if shared is None:
    pytest.skip("../shared/data/tfds (real MNIST) not present")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = ["--config=launch/configs/bartunov.py:mnist,fc,dtp", f"--config.dataset.data_dir={shared}",
           "--config.dataset.train_split=train[:2560]", "--config.dataset.test_split=test[:500]",
           "--config.batch_size=32", "--config.model.widths=(32,32)", "--config.num_epochs=1",
           "--config.steps_per_call=10", "--config.checkpoint.every_steps=10",
           "--config.checkpoint.keep=100", "--config.alignment_every=40"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)
  run = lambda w: subprocess.run([sys.executable, "-m", "launch.main", f"--workdir={w}", *flags],
                                 cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
  ref = run(tmp_path / "ref")
  assert ref.returncode == 0, ref.stderr[-2000:]
  # 80 steps per pass: steps 0-79 train the inverses, 80-159 the forward weights.
  work = tmp_path / "resumed"
  shutil.copytree(tmp_path / "ref", work)
  for d in (work / "checkpoints").iterdir():
    if d.name.isdigit() and int(d.name) > 120:
      shutil.rmtree(d)
  (work / "metrics.jsonl").unlink()
  resumed = run(work)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resuming from the checkpoint of step 120" in resumed.stderr
  config = bartunov.get_config("mnist,fc,dtp")
  config.batch_size, config.model.widths = 32, (32, 32)
  exp = train.build_experiment(config, 2560)
  target = jax.eval_shape(lambda: train.init_state(exp, 0))
  states = []
  for w in (tmp_path / "ref", work):
    ckpt = checkpoint.Checkpointer(str(w / "checkpoints"))
    state, _, step = ckpt.restore_latest(target)
    ckpt.close()
    assert step == 160
    states.append(state)
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  got = json.loads((work / "metrics.jsonl").read_text().splitlines()[-1])
  want = json.loads((tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()[-1])
  for k in ("train/loss", "train_inverse/inverse_loss", "test/loss"):
    assert got[k] == pytest.approx(want[k], rel=1e-9), k
