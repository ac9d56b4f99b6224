"""BurstCCN: parity with the authors' code (golden traces) and the rule's oracles."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbio import nets
from jaxbio.metrics.alignment import angle_degrees
from jaxbio.rules import burst as bc

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "golden",
                      "burstccn")


def _trace(name):
  path = os.path.join(GOLDEN, f"trace_{name}.npz")
  if not os.path.exists(path):
    pytest.skip(f"golden trace {path} not available")
  return np.load(path)


def _net(widths, n_in, n_out, dtype="float32"):
  return nets.mlp((n_in,), widths, n_out, activation="sigmoid", output_activation="sigmoid",
                  kernel_init="glorot_normal", init_gain=3.6, dtype=dtype)


def _state_from_trace(d, k, suffix="pre"):
  params = tuple({"kernel": jnp.asarray(d[f"W{l}_{suffix}"][k].T),
                  "bias": jnp.asarray(d[f"c{l}_{suffix}"][k])} for l in (1, 2, 3))
  state = bc.BurstState(tuple(jnp.asarray(d[f"Y{l}_{suffix}"][k].T) for l in (1, 2)),
                        tuple(jnp.asarray(d[f"Q{l}_{suffix}"][k].T) for l in (1, 2)))
  return params, state


def _rule_for(name, net):
  if name == "A":
    return bc.burstccn(net, y_mode="random", y_scale=0.5, q_mode="symmetric_init",
                       q_lr=0.000731)
  return bc.burstccn(net, y_mode="tied", y_scale=1.0, q_mode="tied")


def _step(rule, tx, params, opt_state, state, x, labels):
  out = rule.update(params, (), state, {"image": x, "label": labels}, jax.random.key(0))
  updates, opt_state = tx.update(out.grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  state, new = rule.after_step(out.rule_state, params, new, updates, jax.random.key(1))
  return new, opt_state, state, updates, out


def _close(a, ref, what):
  ref = np.asarray(ref)
  err = float(np.max(np.abs(np.asarray(a) - ref)))
  scale = max(float(np.max(np.abs(ref))), 1e-3)
  assert err <= 1e-12 * scale + 1e-15, f"{what}: max error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", ["A", "B"])
@pytest.mark.parametrize("free_running", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_matches_the_authors_code_step_by_step(name, free_running):
  d = _trace(name)
  cfg = json.loads(str(d["config_json"]))
  assert cfg  # the trace's configuration is readable.
  with jax.enable_x64(True):
    net = _net([15, 12], 20, 10, dtype="float64")
    rule = _rule_for(name, net)
    tx = optax.sgd(0.3)
    params, state = _state_from_trace(d, 0)
    opt_state = tx.init(params)
    burst_pass = jax.jit(lambda p, s, x, l: bc.burst_pass(net, p, s, x, l))
    step = jax.jit(lambda *args: _step(rule, tx, *args))
    for k in range(d["x"].shape[0]):
      if not free_running:
        params, state = _state_from_trace(d, k)
      x, labels = jnp.asarray(d["x"][k]), jnp.asarray(d["labels"][k], jnp.int32)
      act = burst_pass(params, state, x, labels)
      for l in (1, 2, 3):
        for q in ("e", "p", "b", "db"):
          _close(getattr(act, q)[l - 1], d[f"{q}{l}"][k], f"step {k} {q}{l}")
      for l in (1, 2):
        _close(act.u[l - 1], d[f"u{l}"][k], f"step {k} u{l}")
      params, opt_state, state, updates, out = step(params, opt_state, state, x, labels)
      for l in (1, 2, 3):
        _close(updates[l - 1]["kernel"].T, d[f"dW{l}"][k], f"step {k} dW{l}")
        _close(updates[l - 1]["bias"], d[f"dc{l}"][k], f"step {k} dc{l}")
        _close(params[l - 1]["kernel"].T, d[f"W{l}_post"][k], f"step {k} W{l}_post")
        _close(params[l - 1]["bias"], d[f"c{l}_post"][k], f"step {k} c{l}_post")
      for l in (1, 2):
        _close(state.y[l - 1].T, d[f"Y{l}_post"][k], f"step {k} Y{l}_post")
        _close(state.q[l - 1].T, d[f"Q{l}_post"][k], f"step {k} Q{l}_post")
        if name == "A":
          pre_q = d[f"Q{l}_pre"][k] if not free_running else None
          if pre_q is not None:
            _close(state.q[l - 1].T - pre_q, d[f"dQ{l}"][k], f"step {k} dQ{l}")
      np.testing.assert_allclose(float(out.metrics["loss"]), d["loss"][k], rtol=1e-12)
    if name == "A":  # fixed random feedback never changes.
      np.testing.assert_array_equal(np.asarray(state.y[0]).T, d["Y1_pre"][0])
    else:  # tied: exactly the re-copy of the updated weights.
      for l in (1, 2):
        np.testing.assert_array_equal(state.y[l - 1], params[l]["kernel"])
        np.testing.assert_array_equal(state.q[l - 1], 0.5 * state.y[l - 1])


@pytest.mark.parametrize("name", ["A", "B"])
def test_references_and_angles_match_the_authors_code(name):
  d = _trace(name)
  with jax.enable_x64(True):
    net = _net([15, 12], 20, 10, dtype="float64")
    rule = _rule_for(name, net)
    grads = jax.jit(lambda p, s, b: tuple(r.update(p, ({},) * 3, s, b, None).grads
                                          for r in (*rule.references, rule)))
    for k in range(d["x"].shape[0]):
      params, state = _state_from_trace(d, k)
      batch = {"image": jnp.asarray(d["x"][k]), "label": jnp.asarray(d["labels"][k], jnp.int32)}
      g_bp, g_fa, own = grads(params, state, batch)
      for l in (1, 2, 3):
        _close(g_bp[l - 1]["kernel"].T, d[f"gW_bp{l}"][k], f"gW_bp{l}")
        _close(g_bp[l - 1]["bias"], d[f"gc_bp{l}"][k], f"gc_bp{l}")
        _close(g_fa[l - 1]["kernel"].T, d[f"gW_fa{l}"][k], f"gW_fa{l}")
        angle = float(angle_degrees(own[l - 1]["kernel"], g_bp[l - 1]["kernel"]))
        ref = d["angle_bp"][k, l - 1]
        assert abs(angle - ref) <= (1e-9 if ref > 1 else 1e-4), (k, l, angle, ref)
      for l in (1, 2):
        angle = float(angle_degrees(state.q[l - 1], state.y[l - 1]))
        assert abs(angle - d["angle_QY"][k, l - 1]) <= (1e-9 if angle > 1 else 1e-4)
        angle = float(angle_degrees(state.y[l - 1], params[l]["kernel"]))
        ref = d["angle_WY"][k, l - 1]
        assert abs(angle - ref) <= (1e-9 if ref > 1 else 1e-4), (k, l, angle, ref)


# ---------------------------------------------------------------------------
# Oracles.


def _sparse(key, shape, density=0.15):
  """Sparse inputs: 15 % of pixels on, values U(0.5, 1) (dense ones saturate gain-3.6 nets)."""
  k1, k2 = jax.random.split(key)
  return jnp.where(jax.random.uniform(k1, shape) < density,
                   jax.random.uniform(k2, shape, minval=0.5, maxval=1.0), 0.0)


def _setup(widths=(15, 12), n_in=20, n_out=10, batch=32, seed=0, dtype="float32", **hyper):
  net = _net(list(widths), n_in, n_out, dtype=dtype)
  rule = bc.burstccn(net, **hyper)
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  params, _ = net.init(k1)
  state = rule.init(k2, params)
  x = _sparse(k3, (batch, n_in)).astype(net.param_dtype)
  labels = jax.random.randint(k4, (batch,), 0, n_out)
  return net, rule, params, state, x, labels


@jax.enable_x64(True)
def test_output_layer_error_is_exactly_the_scaled_backprop_delta():
  net, rule, params, state, x, labels = _setup(y_scale=0.5, dtype="float64")
  act = bc.burst_pass(net, params, state, x, labels)
  e, t = act.e[-1], jax.nn.one_hot(labels, 10, dtype=x.dtype)
  np.testing.assert_allclose(act.db[-1], 0.5 * (t - e) * e * (1 - e), rtol=1e-12, atol=1e-16)
  assert float(act.p[-1].min()) >= 0.375 and float(act.p[-1].max()) <= 1.0
  batch = {"image": x, "label": labels}
  own = rule.update(params, ({},) * 3, state, batch, None).grads
  bp = rule.references[0].update(params, ({},) * 3, state, batch, None).grads
  assert float(angle_degrees(own[-1]["kernel"], bp[-1]["kernel"])) < 1e-6
  np.testing.assert_allclose(own[-1]["kernel"], 0.5 * bp[-1]["kernel"], rtol=1e-12,
                             atol=1e-16)


def test_silence_without_teacher_in_the_qy_symmetric_state():
  net, rule, params, state, x, labels = _setup(y_scale=0.5, q_mode="symmetric_init",
                                               q_lr=0.1, y_lr=0.1, teacher=False)
  act = jax.jit(lambda p, s: bc.burst_pass(net, p, s, x, labels, teacher=False))(params, state)
  for u, p, db in zip(act.u, act.p, act.db):
    assert not np.any(np.asarray(u)) and np.all(np.asarray(p) == 0.5) and not np.any(db)
  assert not np.any(np.asarray(act.db[-1]))
  out = jax.jit(lambda p, s: rule.update(p, ({},) * 3, s, {"image": x, "label": labels},
                                         None))(params, state)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(out.grads))
  for new, old in zip(jax.tree.leaves(out.rule_state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(new, old)


def _limit_ratios(y_mode, seed):
  """r(ε) = ‖ΔW_l − ½ΔW_l^ref‖ / ‖½ΔW_l^ref‖ for ε = 0.2, 0.1, 0.05, 0.025, per layer."""
  net, rule, params, state, x, labels = _setup(seed=seed, dtype="float64", y_mode=y_mode,
                                               y_scale=1.0 if y_mode == "tied" else 0.5,
                                               q_mode="tied")
  feedback = None if y_mode == "tied" else (None, *state.y)
  e_out = net.apply(params, ({},) * 3, x)[0]
  t = jax.nn.one_hot(labels, 10, dtype=x.dtype)
  rs = []
  for eps in (0.2, 0.1, 0.05, 0.025):
    target = e_out + eps * (t - e_out)
    act = bc.burst_pass(net, params, state, x, labels, target=target)
    own = bc.forward_grads(net, params, act)

    def half_mse(p):
      out = net.apply(p, ({},) * 3, x, feedback=feedback)[0]
      return 0.5 * jnp.mean(jnp.sum((out - target) ** 2, -1))

    ref = jax.grad(half_mse)(params)
    rs.append([float(jnp.linalg.norm(o["kernel"] - 0.5 * r["kernel"]) /
                     jnp.linalg.norm(0.5 * r["kernel"])) for o, r in zip(own, ref)])
  return np.array(rs)


@pytest.mark.parametrize("y_mode", ["tied", "random"])
def test_backprop_and_fa_limits_error_is_cubic_in_the_teacher(y_mode):
  with jax.enable_x64(True):
    for seed in (0, 1):
      r = _limit_ratios(y_mode, seed)
      assert np.all(r[:, -1] < 1e-13), r[:, -1]  # the output layer: exact.
      ratios = r[:-1, :-1] / r[1:, :-1]  # hidden layers, each halving of ε.
      assert np.all((ratios > 3.8) & (ratios < 4.2)), ratios


def test_paper_sign_convention_gives_identical_numbers():
  net, rule, params, state, x, labels = _setup(y_scale=0.5, q_mode="random", q_scale=0.3,
                                               q_lr=0.01)
  act = bc.burst_pass(net, params, state, x, labels)
  out = rule.update(params, ({},) * 3, state, {"image": x, "label": labels}, None)
  # The paper's form: Y = -Ŷ, Q = -Q̂ (math layout n_l x n_{l+1}), u = Q e - Y b.
  ys = [-y for y in state.y]
  qs = [-q for q in state.q]
  e = list(act.e)
  b = [None, None, act.p[-1] * e[-1]]
  us, ps = [None, None], [None, None, act.p[-1]]
  for l in (1, 0):
    nxt = net.blocks[l + 1]  # its transpose: the same operator the rule uses.
    us[l] = nxt.transpose(qs[l], e[l + 1]) - nxt.transpose(ys[l], b[l + 1])
    ps[l] = jax.nn.sigmoid(4.0 * us[l] * (1 - e[l]))
    b[l] = ps[l] * e[l]
  # u, p and b are bitwise the same numbers; so are the weight updates they give.
  for l in (0, 1):
    np.testing.assert_array_equal(us[l], act.u[l])
    np.testing.assert_array_equal(ps[l], act.p[l])
  paper = act._replace(u=tuple(us), p=tuple(ps), b=tuple(b),
                       db=tuple((p - 0.5) * ee for p, ee in zip(ps, e)))
  for a, c in zip(jax.tree.leaves(bc.forward_grads(net, params, paper)),
                  jax.tree.leaves(out.grads)):
    np.testing.assert_array_equal(a, c)
  # The paper's Q rule, ΔQ = -η u eᵀ, is the negative of ΔQ̂.
  corr = bc.feedback_correlation(net, act, state.q)
  for l in (0, 1):
    d_q_paper = -0.01 * (us[l].T @ e[l + 1]) / x.shape[0]
    np.testing.assert_allclose(0.01 * corr[l], -d_q_paper, rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(out.rule_state.q[l], state.q[l] + 0.01 * corr[l])


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_batch_update_is_the_mean_of_per_example_updates():
  net, rule, params, state, x, labels = _setup(y_scale=0.5, q_lr=0.01)

  def one(xi, li):
    out = rule.update(params, ({},) * 3, state, {"image": xi[None], "label": li[None]}, None)
    return out.grads, out.rule_state.q

  grads, qs = jax.vmap(one)(x, labels)
  out = rule.update(params, ({},) * 3, state, {"image": x, "label": labels}, None)
  for a, b in zip(jax.tree.leaves(out.grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b.mean(0), rtol=1e-5, atol=1e-7)
  for a, b in zip(out.rule_state.q, qs):
    np.testing.assert_allclose(a, b.mean(0), rtol=1e-6, atol=1e-9)


def _cnn(dtype="float32"):
  # The CIFAR CNN's geometry, shrunk: strided unpadded convolutions, then dense layers.
  return nets.convnet((13, 13, 2), [(3, 5, 2, "VALID"), (4, 3, 2, "VALID")], [6], 5,
                      activation="sigmoid", output_activation="sigmoid", pool=None,
                      kernel_init="glorot_normal", init_gain=3.6, dtype=dtype)


def test_conv_feedback_is_the_exact_adjoint_of_the_next_strided_convolution():
  net = _cnn()
  rule = bc.burstccn(net, y_scale=0.5)
  params, _ = net.init(jax.random.key(0))
  state = rule.init(jax.random.key(1), params)
  x = _sparse(jax.random.key(2), (4, 13, 13, 2))
  labels = jnp.arange(4) % 5
  act = jax.jit(lambda p, s: bc.burst_pass(net, p, s, x, labels))(params, state)
  # u_0 = Ŷ_0 b_1 - Q̂_0 e_1 with the dense matrix of conv 2's transpose, column by column.
  n_in = 5 * 5 * 3
  basis = jnp.eye(n_in).reshape(n_in, 5, 5, 3)
  conv2 = net.blocks[1]
  mat_y = conv2.op(state.y[0], basis).reshape(n_in, -1)
  mat_q = conv2.op(state.q[0], basis).reshape(n_in, -1)
  u = (act.b[1].reshape(4, -1) @ mat_y.T - act.e[1].reshape(4, -1) @ mat_q.T).reshape(4, 5, 5, 3)
  np.testing.assert_allclose(act.u[0], u, rtol=1e-5, atol=1e-6)
  # A stride-2 unpadded 3x3 convolution of a 5x5 map reads rows and columns 0..4; a 13x13
  # map's stride-2 5x5 convolution never reads its last row and column: u = 0 there.
  assert act.u[0].shape == (4, 5, 5, 3)
  assert float(jnp.min(jnp.abs(act.u[0]))) > 0
  # The last conv layer's feedback is dense (the next layer is fully connected).
  assert state.y[1].shape == (2 * 2 * 4, 6)


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_conv_q_learning_is_gradient_descent_on_the_apical_potential():
  net = _cnn()
  rule = bc.burstccn(net, y_scale=0.5, q_mode="random", q_scale=0.3, q_lr=0.1, y_lr=0.05)
  params, _ = net.init(jax.random.key(0))
  state = rule.init(jax.random.key(1), params)
  batch = {"image": _sparse(jax.random.key(2), (4, 13, 13, 2)), "label": jnp.arange(4) % 5}

  def half_u2(q):
    act = bc.burst_pass(net, params, state._replace(q=q), batch["image"], batch["label"])
    return sum(0.5 * jnp.sum(u ** 2) for u in act.u) / 4

  # ΔQ̂ = -η_Q ∂/∂Q̂ ⟨½‖u‖²⟩ with b_{l+1} held fixed: u is linear in Q̂ given the layer above.
  act = bc.burst_pass(net, params, state, batch["image"], batch["label"])
  grad_q = []
  for l in range(2):
    nxt = net.blocks[l + 1]
    f = lambda q: 0.5 * jnp.sum((nxt.transpose(state.y[l], act.b[l + 1]) -
                                 nxt.transpose(q, act.e[l + 1])) ** 2) / 4
    grad_q.append(jax.grad(f)(state.q[l]))
  del half_u2
  out = rule.update(params, ({},) * 3, state, batch, None)
  for l in range(2):
    np.testing.assert_allclose(out.rule_state.q[l] - state.q[l], -0.1 * grad_q[l], rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(out.rule_state.y[l] - state.y[l], 0.05 * grad_q[l], rtol=1e-4,
                               atol=1e-7)


def test_bad_settings_are_one_line_errors():
  net = _net([6], 5, 3)
  for kwargs, match in [
      (dict(p_baseline=0.2), "valid choices: apical='paper' or 'journal'"),
      (dict(apical="bogus"), "valid choices: code, paper, journal"),
      (dict(y_mode="bogus"), "valid choices: random, symmetric_init, tied"),
      (dict(q_mode="bogus"), "valid choices: symmetric_init, tied, random, w_symmetric_init"),
      (dict(y_mode="tied", y_lr=0.1), "y_lr must be 0 with y_mode='tied'"),
      (dict(q_mode="tied", q_lr=0.1), "q_lr must be 0 with q_mode='tied'"),
      (dict(weight_decay=1.5), r"weight_decay must be in \[0, 1\)"),
  ]:
    with pytest.raises(ValueError, match=match):
      bc.burstccn(net, **kwargs)
  with pytest.raises(ValueError, match="layer 0 has post-operations"):
    bc.burstccn(nets.mlp((5,), [6], 3, activation="tanh", output_activation="sigmoid"))


@pytest.mark.parametrize("apical", ["paper", "journal"])
def test_generalised_nonlinearities_rest_at_the_baseline_with_unit_slope(apical):
  f = bc.apical_nonlinearity(apical, 0.2)
  e = jnp.full((3,), 0.0)  # h = 1 - e = 1.
  np.testing.assert_allclose(f(jnp.zeros(3), e), 0.2, rtol=1e-6)
  slope = jax.grad(lambda u: f(u, e[:1])[0])(jnp.zeros(1))
  np.testing.assert_allclose(slope, 1.0, rtol=1e-5)


def test_weight_decay_acts_on_the_pre_update_weights_and_not_on_the_feedback():
  net, rule, params, state, x, labels = _setup(y_scale=0.5, q_lr=0.01, weight_decay=0.1)
  tx = optax.sgd(0.3)
  new, _, new_state, updates, _ = _step(rule, tx, params, tx.init(params), state, x, labels)
  for p, n, u in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(updates)):
    np.testing.assert_allclose(n, p + u - 0.1 * p, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(new_state.y[0], state.y[0])


def test_q_learning_without_teacher_aligns_q_with_y_and_silences_the_apical_dendrite():
  # Fig. 4 without teacher: W and Ŷ fixed, Q̂ from random; sparse random inputs.
  net = _net([64, 48], 100, 10)
  rule = bc.burstccn(net, y_scale=0.5, q_mode="random", q_scale=0.5, q_lr=0.06, teacher=False,
                     train_weights=False)
  assert [p.trains_params for p in rule.epoch_passes()] == [False]
  params, _ = net.init(jax.random.key(0))
  state = rule.init(jax.random.key(1), params)
  update = jax.jit(lambda s, b: rule.update(params, ({},) * 3, s, b, None).rule_state)
  diag = jax.jit(lambda s, b: rule.diagnostics(params, ({},) * 3, s, b, None))
  probe = {"image": _sparse(jax.random.key(99), (256, 100)), "label": jnp.zeros(256, jnp.int32)}
  start = diag(state, probe)
  for i in range(300):
    x = _sparse(jax.random.fold_in(jax.random.key(2), i), (32, 100))
    state = update(state, {"image": x, "label": jnp.zeros(32, jnp.int32)})
  end = diag(state, probe)
  # |u| falls fast; the Q-Y angle slowly (Q̂ first learns along the inputs' main directions).
  for l in (1, 2):
    assert end[f"qy_angle/layer{l}"] < start[f"qy_angle/layer{l}"] - 5, (start, end)
  for l in (0, 1):
    assert end[f"apical_abs/layer{l}"] < 0.5 * start[f"apical_abs/layer{l}"], (start, end)


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_reference_state_angles_on_the_mnist_mlp():
  # Notebook settings: random Ŷ (0.5), Q̂ symmetric, batch 32, sparse MNIST-shaped inputs.
  net = _net([500, 500, 500], 784, 10)
  rule = bc.burstccn(net, y_scale=0.5, q_lr=0.000731)
  params, _ = net.init(jax.random.key(0))
  state = rule.init(jax.random.key(1), params)
  bp, fa = rule.references
  tx = optax.sgd(0.3)
  opt_state = tx.init(params)
  ns = ({},) * 4

  @jax.jit
  def angles_and_step(params, opt_state, state, batch):
    own = rule.update(params, ns, state, batch, None).grads
    g_bp = bp.update(params, ns, state, batch, None).grads
    g_fa = fa.update(params, ns, state, batch, None).grads
    hidden = jnp.stack([angle_degrees(own[l]["kernel"], g_bp[l]["kernel"]) for l in range(3)])
    flat = lambda g: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(g)])
    whole_fa = angle_degrees(flat(own), flat(g_fa))
    new, opt_state, state, _, _ = _step(rule, tx, params, opt_state, state, batch["image"],
                                        batch["label"])
    return hidden, whole_fa, new, opt_state, state

  for i in range(20):
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(5), i))
    batch = {"image": _sparse(k1, (32, 784)), "label": jax.random.randint(k2, (32,), 0, 10)}
    hidden, whole_fa, params, opt_state, state = angles_and_step(params, opt_state, state,
                                                                 batch)
    assert np.all((np.asarray(hidden) > 80) & (np.asarray(hidden) < 100)), (i, hidden)
    if i == 0:
      assert float(whole_fa) < 5, whole_fa


# ---------------------------------------------------------------------------
# Through the launcher.


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_launcher_trains_burstccn_on_real_mnist(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from jaxbio import data  # pylint: disable=g-import-not-at-top
  shared = data.shared_data_dir()
  if shared is None:
    pytest.skip("../shared/data/tfds (real MNIST) not present")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "launch.main", "--config=launch/configs/burstccn.py:mnist",
         f"--workdir={tmp_path}", f"--config.dataset.data_dir={shared}",
         "--config.dataset.train_split=train[:6400]", "--config.dataset.test_split=test[:2000]",
         "--config.num_epochs=2", "--config.alignment_every=100", "--config.steps_per_call=50"]
  proc = subprocess.run(cmd, cwd=repo, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  last = records[-1]
  assert last["test/accuracy"] > 0.5, last["test/accuracy"]  # 400 steps: 62 % measured.
  assert 0 < last["test/loss"] < 0.1  # the mean squared error against the one-hot label.
  for key in ("align/update_angle/all", "align/update_angle_fa/all",
              "align/feedback_angle/layer1", "align/qy_angle/layer1", "align/apical_abs/layer0",
              "align/apical_abs/layer2"):
    assert np.isfinite(last[key]), key
  # The output layer's update is exactly p^b times the backprop one: 0 degrees.
  assert last["align/update_angle/3.kernel"] < 0.1


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_cifar_cnn_trains_on_mock_data(tmp_path):
  from jaxbio import train  # pylint: disable=g-import-not-at-top
  from jaxbio.data import testing as data_testing  # pylint: disable=g-import-not-at-top
  from launch.configs import burstccn  # pylint: disable=g-import-not-at-top
  for experiment in ("cifar10_random", "cifar10_tied"):
    config = burstccn.get_config(experiment + ",runlocal")
    config.steps_per_call = 4
    config.alignment_every = 4
    with data_testing.mock_data(64):
      config.dataset.data_dir = str(tmp_path / "tfds")
      record = train.train_and_evaluate(config, str(tmp_path / experiment))
    assert record["epoch"] == 1 and np.isfinite(record["test/loss"])
    assert np.isfinite(record["align/qy_angle/layer1"])


# ---------------------------------------------------------------------------
# Burstprop.


def _bp_setup(seed=0, dtype="float32", batch=32, **hyper):
  net = _net([15, 12], 20, 10, dtype=dtype)
  rule = bc.burstprop(net, **hyper)
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  params, _ = net.init(k1)
  state = rule.init(k2, params)
  x = _sparse(k3, (batch, 20)).astype(net.param_dtype)
  labels = jax.random.randint(k4, (batch,), 0, 10)
  return net, rule, params, state, x, labels


def test_burstprop_without_teacher_has_no_error_signal():
  net, rule, params, state, x, labels = _bp_setup(teacher=False)
  act = bc.burstprop_pass(net, params, state, x, labels, teacher=False)
  for d in act.delta:
    assert not np.any(np.asarray(d))
  assert np.all(np.asarray(act.p_ref[-1]) == np.float32(0.2))
  out = rule.update(params, ({},) * 3, state, {"image": x, "label": labels}, None)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(out.grads))


@jax.enable_x64(True)
def test_burstprop_weak_teacher_limit_is_backprop_with_the_apical_gains():
  # δ_l -> σ'(ā_l) e_l (1 - e_l) Ŷ_l δ_{l+1}, with error quadratic in the teacher's strength.
  net, rule, params, state, x, labels = _bp_setup(dtype="float64", y_mode="tied")
  e_out = net.apply(params, ({},) * 3, x)[0]
  t = jax.nn.one_hot(labels, 10, dtype=x.dtype)
  errs = []
  for eps in (0.2, 0.1, 0.05, 0.025):
    target = e_out + eps * (t - e_out)
    act = bc.burstprop_pass(net, params, state, x, labels, target=target)
    lin = [None, None, 0.2 * (target - e_out) * e_out * (1 - e_out)]
    for l in (1, 0):
      gain = jax.nn.sigmoid(act.a_ref[l]) * (1 - jax.nn.sigmoid(act.a_ref[l]))
      e = act.e[l]
      lin[l] = gain * e * (1 - e) * (lin[l + 1] @ state.y[l].T)
    np.testing.assert_allclose(act.delta[-1], lin[-1], rtol=1e-10, atol=1e-18)
    errs.append([float(jnp.linalg.norm(act.delta[l] - lin[l]) / jnp.linalg.norm(lin[l]))
                 for l in (0, 1)])
  errs = np.array(errs)
  ratios = errs[:-1] / errs[1:]
  assert np.all((ratios > 1.8) & (ratios < 2.2)), ratios


def test_burstprop_mean_and_sum_and_the_recurrent_rule():
  mean = _bp_setup(batch_reduction="mean", r_lr=0.1)
  total = _bp_setup(batch_reduction="sum", r_lr=0.1)
  net, rule, params, state, x, labels = mean
  batch = {"image": x, "label": labels}
  out_mean = rule.update(params, ({},) * 3, state, batch, None)
  out_sum = total[1].update(params, ({},) * 3, state, batch, None)
  for a, b in zip(jax.tree.leaves(out_mean.grads), jax.tree.leaves(out_sum.grads)):
    np.testing.assert_allclose(32 * a, b, rtol=1e-5, atol=1e-7)
  # R: a batch sum of ā b̃ᵀ in both reductions, gradient descent on ½‖ā‖².
  act = bc.burstprop_pass(net, params, state, x, labels)
  for l in (0, 1):
    expected = state.r[l] + 0.1 * act.a_ref[l].T @ act.b_tilde[l]
    np.testing.assert_allclose(out_mean.rule_state.r[l], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out_mean.rule_state.r[l], out_sum.rule_state.r[l])

    def half_a2(r, l=l):
      a = act.a_ref[l] + act.b_tilde[l] @ state.r[l].T - act.b_tilde[l] @ r.T
      return 0.5 * jnp.sum(a ** 2)

    np.testing.assert_allclose(out_mean.rule_state.r[l] - state.r[l],
                               -0.1 * jax.grad(half_a2)(state.r[l]), rtol=1e-4, atol=1e-7)


def test_burstprop_feedback_learning_is_kolen_pollack():
  net, rule, params, state, x, labels = _bp_setup(learn_feedback=True, weight_decay=0.05)
  tx = optax.sgd(0.1, momentum=0.8)
  opt_state = tx.init(params)
  gaps = []
  for i in range(4):
    gaps.append([float(jnp.linalg.norm(state.y[l] - params[l + 1]["kernel"])) for l in (0, 1)])
    params, opt_state, state, _, _ = _step(rule, tx, params, opt_state, state, x, labels)
  gaps = np.array(gaps)
  np.testing.assert_allclose(gaps[1:] / gaps[:-1], 0.95, rtol=1e-4)
