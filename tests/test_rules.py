"""Exactness tests for backprop and the feedback-alignment family."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbio import nets, rules
from jaxbio.metrics import alignment_metrics, angle_degrees


def _batch(shape, n=6, classes=10, seed=1):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"image": jax.random.normal(k1, (n, *shape)),
          "label": jax.random.randint(k2, (n,), 0, classes)}


def _nets():
  return {
      "mlp": nets.mlp((5, 4, 1), [7, 6], 3),
      "conv": nets.convnet((8, 8, 2), [(4, 3, 1), (3, 3, 1, "VALID")], [5], 3,
                           batch_norm=True),
      "lc": nets.convnet((8, 8, 2), [(4, 3, 2), (3, 3, 1)], [5], 3, local=True, pool=None,
                         activation="tanh"),
  }


def _close(a, b, tol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# The conv case in CI's slow run (see setup.cfg).
@pytest.mark.parametrize("arch", ["mlp", pytest.param("conv", marks=pytest.mark.slow), "lc"])
def test_backprop_equals_jax_grad(arch):
  net = _nets()[arch]
  params, state = net.init(jax.random.key(0))
  batch = _batch(net.input_shape, classes=3)
  out = rules.backprop(net).update(params, state, (), batch, jax.random.key(0))

  def loss(p):
    logits, _ = net.apply(p, state, batch["image"], train=True)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))

  _close(out.grads, jax.grad(loss)(params), 0)
  np.testing.assert_allclose(out.metrics["loss"], loss(params), rtol=1e-6)


# The conv case in CI's slow run (see setup.cfg).
@pytest.mark.parametrize("arch", ["mlp", pytest.param("conv", marks=pytest.mark.slow), "lc"])
def test_fa_with_transposed_feedback_is_backprop(arch):
  net = _nets()[arch]
  params, state = net.init(jax.random.key(0))
  batch = _batch(net.input_shape, classes=3)
  fa = rules.feedback_alignment(net)
  fb_state = rules.FeedbackState(tuple(None if i == 0 else p["kernel"] for i, p in enumerate(params)))
  bp = rules.backprop(net).update(params, state, (), batch, None)
  out = fa.update(params, state, fb_state, batch, None)
  _close(out.grads, bp.grads, 1e-6)


def test_fa_backward_signal_is_feedback_times_delta():
  net = nets.mlp((5,), [7, 6], 3, activation="tanh")
  params, state = net.init(jax.random.key(0))
  batch = _batch((5,), classes=3)
  fa = rules.feedback_alignment(net)
  rule_state = fa.init(jax.random.key(3), params)
  out = fa.update(params, state, rule_state, batch, None)
  # Manual FA: delta_L = (softmax - y) / B; delta_l = (delta_{l+1} B_{l+1}^T) * tanh'.
  x, y = batch["image"], jax.nn.one_hot(batch["label"], 3)
  k = [p["kernel"] for p in params]
  b = [p["bias"] for p in params]
  h1 = jnp.tanh(x @ k[0] + b[0])
  h2 = jnp.tanh(h1 @ k[1] + b[1])
  logits = h2 @ k[2] + b[2]
  d3 = (jax.nn.softmax(logits) - y) / x.shape[0]
  fb = rule_state.feedback
  d2 = (d3 @ fb[2].T) * (1 - h2 ** 2)
  d1 = (d2 @ fb[1].T) * (1 - h1 ** 2)
  for g, (inp, d) in zip(out.grads, [(x, d1), (h1, d2), (h2, d3)]):
    np.testing.assert_allclose(g["kernel"], inp.T @ d, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g["bias"], d.sum(0), rtol=1e-5, atol=1e-7)
  # The feedback weights are untouched, and differ from the forward ones.
  assert out.rule_state is rule_state
  assert fb[0] is None
  assert not np.allclose(fb[1], k[1])


@pytest.mark.parametrize("kind", ["conv", "local"])
def test_feedback_linear_input_cotangent_uses_feedback_kernel(kind):
  net = _nets()["conv" if kind == "conv" else "lc"]
  block = net.blocks[1]
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  kernel = jax.random.normal(k1, block.kernel_shape)
  fb = jax.random.normal(k2, block.kernel_shape)
  x = jax.random.normal(k3, (2, *block.in_shape))
  y, vjp = jax.vjp(block.feedback_op, kernel, fb, x)
  g = jax.random.normal(k4, y.shape)
  dk, dfb, dx = vjp(g)
  _, vjp_fb = jax.vjp(lambda xx: block.op(fb, xx), x)
  _, vjp_k = jax.vjp(lambda kk: block.op(kk, x), kernel)
  np.testing.assert_allclose(dx, vjp_fb(g)[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, vjp_k(g)[0], rtol=1e-5, atol=1e-5)
  assert not np.any(dfb)
  np.testing.assert_allclose(y, block.op(kernel, x), rtol=1e-6)


def test_dfa_projects_output_error_directly():
  net = nets.mlp((5,), [7, 6], 3, activation="tanh")
  params, state = net.init(jax.random.key(0))
  batch = _batch((5,), classes=3)
  dfa = rules.direct_feedback_alignment(net)
  rule_state = dfa.init(jax.random.key(4), params)
  out = dfa.update(params, state, rule_state, batch, None)
  x, y = batch["image"], jax.nn.one_hot(batch["label"], 3)
  k = [p["kernel"] for p in params]
  b = [p["bias"] for p in params]
  h1 = jnp.tanh(x @ k[0] + b[0])
  h2 = jnp.tanh(h1 @ k[1] + b[1])
  e = (jax.nn.softmax(h2 @ k[2] + b[2]) - y) / x.shape[0]
  fb = rule_state.feedback
  assert [f.shape for f in fb] == [(3, 7), (3, 6)]
  d1 = (e @ fb[0]) * (1 - h1 ** 2)
  d2 = (e @ fb[1]) * (1 - h2 ** 2)
  for g, (inp, d) in zip(out.grads, [(x, d1), (h1, d2), (h2, e)]):
    np.testing.assert_allclose(g["kernel"], inp.T @ d, rtol=1e-5, atol=1e-7)


def test_dfa_one_hidden_layer_with_transposed_feedback_is_backprop():
  net = nets.mlp((5,), [7], 3)
  params, state = net.init(jax.random.key(0))
  batch = _batch((5,), classes=3)
  out = rules.direct_feedback_alignment(net).update(
      params, state, rules.FeedbackState((params[1]["kernel"].T,)), batch, None)
  _close(out.grads, rules.backprop(net).update(params, state, (), batch, None).grads, 1e-6)


@pytest.mark.parametrize("tx", [optax.sgd(0.1), optax.adam(1e-3)], ids=["sgd", "adam"])
def test_kolen_pollack_feedback_mirrors_forward_updates(tx):
  net = nets.mlp((5,), [7, 6], 3)
  params, state = net.init(jax.random.key(0))
  decay = 0.05
  kp = rules.kolen_pollack(net, weight_decay=decay)
  opt_state, rule_state = tx.init(params), kp.init(jax.random.key(1), params)
  gap0 = [float(jnp.linalg.norm(p["kernel"] - fb))
          for p, fb in zip(params[1:], rule_state.feedback[1:])]
  steps = 8
  for t in range(steps):
    out = kp.update(params, state, rule_state, _batch((5,), classes=3, seed=t), None)
    updates, opt_state = tx.update(out.grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    rule_state, params = kp.after_step(out.rule_state, params, new_params, updates, None)
  for g0, p, fb in zip(gap0, params[1:], rule_state.feedback[1:]):
    np.testing.assert_allclose(jnp.linalg.norm(p["kernel"] - fb), (1 - decay) ** steps * g0,
                               rtol=1e-4)
  # Without decay both pathways take exactly the optimiser's step: the gap is fixed.
  kp0 = rules.kolen_pollack(net)
  rs = kp0.init(jax.random.key(1), params)
  out = kp0.update(params, state, rs, _batch((5,), classes=3), None)
  updates, _ = tx.update(out.grads, opt_state, params)
  new_rs, _ = kp0.after_step(out.rule_state, params, optax.apply_updates(params, updates),
                             updates, None)
  np.testing.assert_allclose(new_rs.feedback[1] - rs.feedback[1], updates[1]["kernel"],
                             atol=1e-7)
  assert float(jnp.max(jnp.abs(updates[1]["kernel"]))) > 0
  assert kp0.update(params, state, rs, _batch((5,), classes=3), None).rule_state is rs


def test_sign_symmetry_uses_scaled_sign_of_forward_weights():
  net = nets.mlp((5,), [7], 3)
  params, state = net.init(jax.random.key(0))
  batch = _batch((5,), classes=3)
  k = params[1]["kernel"]
  fb = jnp.mean(jnp.abs(k)) * jnp.sign(k)
  expected = rules.feedback_alignment(net).update(params, state, rules.FeedbackState((None, fb)),
                                                  batch, None)
  ss = rules.sign_symmetry(net)
  out = ss.update(params, state, (), batch, None)
  _close(out.grads, expected.grads, 1e-6)
  (b, w), = ss.feedback(params, ()).values()
  assert np.all(np.sign(b) == np.sign(w))
  with pytest.raises(ValueError, match="valid choices: mean_abs, unit"):
    rules.sign_symmetry(net, scale="bogus")


def test_locally_connected_tied_kernel_is_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  conv_k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  for stride in (1, 2):
    conv = nets.sequential((9, 9, 3), [dict(kind="conv", features=4, kernel_size=3,
                                            stride=stride)])
    y_conv = conv.blocks[0].op(conv_k, x)
    out_hw = y_conv.shape[1:3]
    local_k = nets.layers.tie_local_kernel(conv_k, out_hw)
    local = nets.sequential((9, 9, 3), [dict(kind="local", features=4, kernel_size=3,
                                             stride=stride)])
    y_local = local.blocks[0].op(local_k, x)
    np.testing.assert_allclose(y_local, y_conv, rtol=1e-5, atol=1e-5)


def test_locally_connected_vjp_is_explicit_transpose():
  block = nets.sequential((5, 5, 2), [dict(kind="local", features=3, kernel_size=3,
                                           stride=2)]).blocks[0]
  kernel = jax.random.normal(jax.random.key(0), block.kernel_shape)
  n_in = 5 * 5 * 2
  # The dense matrix of the operator, column by column.
  basis = jnp.eye(n_in).reshape(n_in, 5, 5, 2)
  dense = block.op(kernel, basis).reshape(n_in, -1)  # (n_in, n_out)
  g = jax.random.normal(jax.random.key(1), (1, 3, 3, 3))
  _, vjp = jax.vjp(lambda x: block.op(kernel, x), jnp.zeros((1, 5, 5, 2)))
  np.testing.assert_allclose(vjp(g)[0].reshape(-1), dense @ g.reshape(-1), rtol=1e-5,
                             atol=1e-5)
  # Every output location sees only its 3x3 window: 9 * 2 non-zero inputs at most.
  assert int(jnp.max(jnp.sum(dense != 0, axis=0))) <= 18


def test_bartunov_parameter_counts():
  fc = nets.mlp((28, 28, 1), [256] * 5, 10)
  lc = nets.convnet((28, 28, 1), [(32, 3, 2), (64, 3, 2)], [1024], 10, local=True, pool=None,
                    activation="tanh")
  count = lambda net: nets.num_params(jax.eval_shape(net.init, jax.random.key(0))[0])
  assert count(fc) == 466_698
  assert count(lc) == 4_191_562
  assert [b.out_shape for b in lc.blocks] == [(14, 14, 32), (7, 7, 64), (1024,), (10,)]


def test_with_penalty_adds_weighted_gradient():
  net = nets.mlp((5,), [7], 3)
  params, state = net.init(jax.random.key(0))
  batch = _batch((5,), classes=3)
  penalty = lambda p, b, aux, key: sum(jnp.sum(q["kernel"] ** 2) for q in p)
  rule = rules.with_penalty(rules.backprop(net), penalty, 0.5, name="l2")
  out = rule.update(params, state, (), batch, jax.random.key(0))
  base = rules.backprop(net).update(params, state, (), batch, None)
  for g, g0, p in zip(out.grads, base.grads, params):
    np.testing.assert_allclose(g["kernel"], g0["kernel"] + p["kernel"], rtol=1e-5, atol=1e-7)
  assert "l2" in out.metrics
  with pytest.raises(ValueError, match="weight must be >= 0"):
    rules.with_penalty(rules.backprop(net), penalty, -1.0)


def test_alignment_metrics():
  net = nets.mlp((5,), [7, 6], 3)
  params, state = net.init(jax.random.key(0))
  batch = _batch((5,), classes=3)
  bp = rules.backprop(net)
  m = alignment_metrics(bp, bp, params, state, (), batch, jax.random.key(0))
  assert float(m["update_angle/all"]) < 0.05
  fa = rules.feedback_alignment(net)
  rs = fa.init(jax.random.key(1), params)
  m = alignment_metrics(fa, bp, params, state, rs, batch, jax.random.key(0))
  b, w = rs.feedback[1], params[1]["kernel"]
  cos = jnp.sum(b * w) / jnp.linalg.norm(b) / jnp.linalg.norm(w)
  np.testing.assert_allclose(m["feedback_angle/layer1"], jnp.degrees(jnp.arccos(cos)), rtol=1e-4)
  np.testing.assert_allclose(m["feedback_sign_agreement/layer1"],
                             jnp.mean(jnp.sign(b) == jnp.sign(w)), rtol=1e-6)
  # The output layer's FA update is exact: its angle to backprop is 0.
  assert float(m["update_angle/2.kernel"]) < 0.05
  assert float(m["update_angle/0.kernel"]) > 1.0
  np.testing.assert_allclose(angle_degrees(jnp.array([1.0, 0]), jnp.array([0, 2.0])), 90.0)


def test_angle_degrees_is_accurate_near_0_and_180():
  # arccos of a float32 cosine returns 0 below ~0.03 deg (1 - cos < 1 ulp of 1):
  # the atan2 form keeps small angles and gives exact 0 and 180.
  x = jax.random.normal(jax.random.key(0), (1000,))
  assert float(angle_degrees(x, x)) == 0.0
  assert float(angle_degrees(x, -x)) == 180.0
  for deg in (1e-3, 1e-2, 0.5):
    t = np.radians(deg)
    a = jnp.array([1.0, 0.0, 0.0])
    b = jnp.array([np.cos(t), np.sin(t), 0.0], jnp.float32)
    # The float32 b is exactly at atan(b1 / b0) from a.
    exact = np.degrees(np.arctan2(np.float64(b[1]), np.float64(b[0])))
    np.testing.assert_allclose(float(angle_degrees(a, b)), exact, rtol=1e-5)
    np.testing.assert_allclose(float(angle_degrees(a, -b)), 180.0 - exact, rtol=1e-6)
  np.testing.assert_allclose(angle_degrees(jnp.array([1.0, 0]), jnp.array([0, 2.0])), 90.0)
  # Tiny and huge vectors: no underflow or overflow in the norms.
  np.testing.assert_allclose(angle_degrees(jnp.array([1e-30, 0.0]), jnp.array([1e-30, 1e-30])),
                             45.0, rtol=1e-6)
  np.testing.assert_allclose(angle_degrees(jnp.array([1e30, 0.0]), jnp.array([1e30, 1e30])),
                             45.0, rtol=1e-6)
  # By convention the angle to a zero vector is 90.
  assert float(angle_degrees(x, jnp.zeros_like(x))) == 90.0
  assert float(angle_degrees(jnp.zeros(3), jnp.zeros(3))) == 90.0


def test_wrong_input_shape_is_a_one_line_error():
  net = nets.mlp((28, 28, 1), [8], 10)
  params, state = net.init(jax.random.key(0))
  batch = {"image": jnp.zeros((4, 32, 32, 3)), "label": jnp.zeros((4,), jnp.int32)}
  for rule in (rules.backprop(net), rules.feedback_alignment(net),
               rules.direct_feedback_alignment(net)):
    with pytest.raises(ValueError, match=r"batch\['image'\] has shape \(4, 32, 32, 3\), but the "
                                         r"network expects \(batch, 28, 28, 1\)"):
      rule.update(params, state, rule.init(jax.random.key(1), params), batch, None)


@pytest.mark.parametrize("batch,message", [
    ({"image": jnp.zeros((4, 784)), "label": jnp.array([0, 3, 10, 1])},
     r"batch\['label'\] has 1 label\(s\) outside \[0, 10\), e.g. 10; labels must be class "
     r"indices 0..9$"),
    ({"image": jnp.zeros((4, 784)), "label": jnp.array([0, -1, 2, 1])}, r"outside \[0, 10\), e.g. -1"),
    ({"image": jnp.zeros((4, 784)), "label": jnp.zeros((3,), jnp.int32)},
     r"batch\['label'\] has shape \(3,\); expected \(4,\): one integer class per image$"),
    ({"image": jnp.zeros((4, 784)), "label": jnp.zeros((4,))},
     r"batch\['label'\] has dtype float32; expected integer class indices in \[0, 10\)$"),
    ({"image": jnp.zeros((4, 784))}, r"batch must be a dict with keys 'image' and 'label', got "
                                     r"\['image'\]$"),
])
def test_bad_labels_are_one_line_errors(batch, message):
  net = nets.mlp((784,), [8], 10)
  params, state = net.init(jax.random.key(0))
  for rule in (rules.backprop(net), rules.feedback_alignment(net),
               rules.direct_feedback_alignment(net)):
    rule_state = rule.init(jax.random.key(1), params)
    with pytest.raises(ValueError, match=message):  # an eager call: values are checked.
      rule.update(params, state, rule_state, batch, None)
    with pytest.raises(ValueError, match=message):  # the host-side check users call.
      rules.check_batch(net, batch)
  if "label" in batch and batch["label"].shape == (4,) and batch["label"].dtype == jnp.int32:
    # Inside jit, label values are unknown: only their shape and dtype are checked,
    # and the check is free (at trace time).
    out = jax.jit(rules.backprop(net).update)(params, state, (), batch, None)
    assert out.grads is not None
  else:  # (under jit, JAX appends a note to the message: match its first line.)
    with pytest.raises(ValueError, match=message.rstrip("$") + "\n"):
      jax.jit(rules.backprop(net).update)(params, state, (), batch, None)


def test_transpose_op_is_the_adjoint_of_every_layer_kind():
  key = jax.random.key(0)
  net = nets.sequential((9, 9, 2), [dict(kind="conv", features=3, kernel_size=3, stride=2,
                                         padding="VALID"),
                                    dict(kind="local", features=2, kernel_size=3, stride=2),
                                    dict(kind="dense", features=4)])
  params, _ = net.init(key)
  h = jax.random.normal(jax.random.key(1), (2, 9, 9, 2))
  for block, p in zip(net.blocks, params):
    x = h.reshape((2, *block.in_shape))
    y = block.op(p["kernel"], x)
    g = jax.random.normal(jax.random.key(2), y.shape)
    back = block.transpose(p["kernel"], g)
    assert back.shape == x.shape
    # <A x, g> == <x, A^T g>, and A^T g equals the VJP of the operator.
    np.testing.assert_allclose(jnp.vdot(y, g), jnp.vdot(x, back), rtol=1e-5)
    np.testing.assert_allclose(back, jax.vjp(lambda v: block.op(p["kernel"], v), x)[1](g)[0],
                               rtol=1e-6, atol=1e-6)
    h = y
  # A strided VALID convolution of a 10x10 map never reads its last row and column
  # (windows start at 0, 2, 4, 6): its transpose gives them 0.
  conv = nets.sequential((10, 10, 2), [dict(kind="conv", features=3, kernel_size=3, stride=2,
                                            padding="VALID")])
  kernel = conv.init(key)[0][0]["kernel"]
  back = conv.blocks[0].transpose(kernel, jnp.ones((1, 4, 4, 3)))
  assert back.shape == (1, 10, 10, 2)
  assert float(jnp.max(jnp.abs(back[:, 9]))) == 0.0 == float(jnp.max(jnp.abs(back[:, :, 9])))
  assert float(jnp.min(jnp.abs(back[:, :9, :9]))) > 0


def test_float64_networks_train_with_exact_float64_gradients():
  code = r'''
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jaxbio import nets, rules
net = nets.mlp((6,), [5], 3, dtype="float64")
params, state = net.init(jax.random.key(0))
assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
batch = {"image": jax.random.normal(jax.random.key(1), (4, 6), jnp.float64),
         "label": jnp.array([0, 1, 2, 1])}
for rule in (rules.backprop(net), rules.feedback_alignment(net)):
  rs = rule.init(jax.random.key(2), params)
  assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(rs))
  out = rule.update(params, state, rs, batch, None)
  assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(out.grads))
def loss(p):
  logits, _ = net.apply(p, state, batch["image"])
  return rules.cross_entropy(logits, batch["label"])
exact = jax.grad(loss)(params)
got = rules.backprop(net).update(params, state, rules.EmptyState(), batch, None).grads
for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(exact)):
  np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
# Finite differences agree to float64 precision (float32 would give ~1e-3).
eps = 1e-6
w = params[0]["kernel"]
bump = lambda d: [dict(params[0], kernel=w.at[0, 0].add(d)), params[1]]
fd = (loss(bump(eps)) - loss(bump(-eps))) / (2 * eps)
assert abs(float(fd) - float(exact[0]["kernel"][0, 0])) < 1e-8, (fd, exact[0]["kernel"][0, 0])
print("ok")
'''
  import subprocess, sys, os  # pylint: disable=g-import-not-at-top,multiple-imports
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.stdout.strip() == "ok", proc.stderr[-3000:]
  with pytest.raises(ValueError, match="a float64 network needs 64-bit JAX"):
    nets.mlp((6,), [5], 3, dtype="float64")
  with pytest.raises(ValueError, match="unknown network dtype 'float16'; valid choices: float32, "
                                       "float64"):
    nets.mlp((6,), [5], 3, dtype="float16")


def test_kolen_pollack_feedback_update_never_reads_the_forward_weights():
  net = nets.mlp((5,), [7, 6], 3)
  params, state = net.init(jax.random.key(0))
  kp = rules.kolen_pollack(net, weight_decay=0.1)
  rs = kp.init(jax.random.key(1), params)
  updates = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
  new_params = optax.apply_updates(params, updates)
  fb, _ = kp.after_step(rs, params, new_params, updates, None)
  # Any other forward weights (same update): the same feedback.
  other = jax.tree.map(lambda p: p + 100.0, params)
  fb_other, _ = kp.after_step(rs, other, optax.apply_updates(other, updates), updates, None)
  for a, b, b0, u in zip(fb.feedback[1:], fb_other.feedback[1:], rs.feedback[1:], updates[1:]):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, 0.9 * b0 + u["kernel"], rtol=1e-6)
  # With a zero update, B only decays (toward 0, not toward W).
  zero = jax.tree.map(jnp.zeros_like, params)
  fb0, w0 = kp.after_step(rs, params, params, zero, None)
  for a, b0 in zip(fb0.feedback[1:], rs.feedback[1:]):
    np.testing.assert_allclose(a, 0.9 * b0, rtol=1e-6)
  for p_new, p in zip(w0[1:], params[1:]):
    np.testing.assert_allclose(p_new["kernel"], 0.9 * p["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(w0[0]["kernel"], params[0]["kernel"])  # no feedback: no decay.


def test_network_blocks_compute_with_their_flax_layers():
  import flax.linen as nn
  net = nets.sequential((6, 6, 2), [
      dict(kind="conv", features=3, kernel_size=3, post=("bn", "relu")),
      dict(kind="local", features=2, kernel_size=3, stride=2),
      dict(kind="dense", features=4)])
  assert [type(b.layer) for b in net.blocks] == [nn.Conv, nn.ConvLocal, nn.Dense]
  assert isinstance(net.blocks[0].norm, nn.BatchNorm) and net.blocks[1].norm is None
  params, _ = net.init(jax.random.key(0))
  h = jax.random.normal(jax.random.key(1), (2, 6, 6, 2))
  for block, p in zip(net.blocks, params):
    x = h.reshape((2, *block.in_shape))
    y = block.layer.apply({"params": {"kernel": p["kernel"]}}, x)
    np.testing.assert_array_equal(block.op(p["kernel"], x), y)
    h = y
