"""hEP networks: parameter counts of the authors' nets, activations, loops, interface."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbio.recurrent as rec
from jaxbio.recurrent import dynamics


def _count(net):
  params, state = jax.eval_shape(net.init, jax.random.key(0))
  assert state == ()
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def test_parameter_counts_and_state_sizes():
  mlp = rec.make_network("hep_mlp", (28, 28, 1), 10)
  loop = rec.make_network("hep_loop_mlp", (28, 28, 1), 10)
  cnn = rec.make_network("hep_cnn", (32, 32, 3), 10)
  assert _count(mlp) == 337_528
  assert _count(loop) == 271_992
  assert _count(cnn) == 7_677_706  # shape only: nothing is allocated.
  assert _count(rec.make_network("hep_cnn", (32, 32, 3), 100)) == 7_723_876
  assert mlp.num_neurons == loop.num_neurons == 522
  assert cnn.num_neurons == 57_856
  params, _ = jax.eval_shape(cnn.init, jax.random.key(0))
  feedback = [math.prod(params[k]["kernel"].shape) for k in ("conv2-conv1", "conv3-conv2",
                                                             "out-conv3")]
  assert feedback == [294_912, 1_179_648, 2_359_296]
  assert all("bias" not in params[k] for k in ("conv2-conv1", "conv3-conv2", "out-conv3"))


def test_activation_facts():
  sig, dsilu = rec.hard_sigmoid, rec.dsilu
  assert float(sig(0.5)) == 0.5
  assert float(jax.grad(sig)(0.5)) == pytest.approx(1.0, abs=1e-6)
  assert float(dsilu(1.0)) == pytest.approx(0.5, abs=1e-6)
  assert float(jax.grad(dsilu)(1.0)) == pytest.approx(0.4277, abs=1e-4)
  assert float(dsilu(-20.0)) == pytest.approx(0.0, abs=1e-6)
  assert float(dsilu(20.0)) == pytest.approx(1.0, abs=1e-6)
  with jax.enable_x64(True):  # complex step: Im σ(z + ih)/h → σ′(z).
    z, h = jnp.linspace(-2.0, 3.0, 11), 1e-20
    for f in (sig, dsilu):
      np.testing.assert_allclose(jnp.imag(f(z + 1j * h)) / h, jax.vmap(jax.grad(f))(z),
                                 rtol=1e-12)


def test_rolled_free_phase_equals_unrolled_python_loop_bitwise():
  net = rec.make_network("hep_mlp", (28, 28, 1), 10, angle_deg=30.0)
  params, _ = net.init(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  steps = 8
  rolled = jax.jit(lambda p, x: rec.free_phase(net, p, x, t_free=steps))(params, x)

  def unrolled(p, x):
    drive = net.field.drive(p, x)
    u = dynamics.zeros_state(net, (x.shape[0],), jnp.float32)
    for _ in range(steps):
      u = dynamics.step(net, p, drive, u)
    return u

  loop = jax.jit(unrolled)(params, x)
  for k in rolled:
    np.testing.assert_array_equal(rolled[k], loop[k])


def test_apply_flattens_images_and_validates_input():
  net = rec.make_network("hep_mlp", (28, 28, 1), 10, t_free=5)
  flat = rec.make_network("hep_mlp", (784,), 10, t_free=5)
  params, state = net.init(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  logits, new_state = net.apply(params, state, x, train=True)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32 and new_state == ()
  np.testing.assert_allclose(logits, flat.apply(params, state, x.reshape(3, 784))[0], rtol=1e-6)
  assert net.input_shape == (28, 28, 1)
  with pytest.raises(ValueError, match="expects"):
    net.apply(params, state, x.reshape(3, 784))


def test_bad_arguments_raise_one_line_value_errors():
  net = rec.make_network("hep_mlp", (12,), 5, hidden=(8, 8))
  cases = [
      lambda: rec.make_network("hep_rnn", (12,), 5),
      lambda: rec.make_network("hep_mlp", (12,), 5, free_dtype="float8"),
      lambda: rec.make_network("hep_cnn", (28, 28, 1), 10),
      lambda: rec.make_rule("eqprop", net),
      lambda: rec.make_rule("hep", net, n_point=2),
      lambda: rec.make_rule("hep", net, n_points=-1),
      lambda: rec.make_rule("hep", net, n_points=2, beta=0.0),
      lambda: rec.make_rule("hep", net, n1_reference="end"),
      lambda: rec.make_rule("hep_online", net, n_points=1),
      lambda: rec.homeostasis_penalty(net, method="svd"),
      lambda: rec.jacobian_symmetry(net, {}, None, {}, method="svd"),
  ]
  for case in cases:
    with pytest.raises(ValueError) as info:
      case()
    assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="valid choices: hep_mlp, hep_loop_mlp, hep_cnn"):
    rec.make_network("hep_rnn", (12,), 5)


def test_weight_angle_follows_rotation():
  def angle(alpha, arch="hep_mlp"):
    net = rec.make_network(arch, (784,), 10, angle_deg=alpha)
    return float(rec.weight_angle(net, net.init(jax.random.key(3))[0]))

  assert angle(0.0) < 1e-3
  assert 88.0 < angle(90.0) < 92.0
  # Kernel scales differ, so θ ≠ α: cos θ = cos α √S_f / √(sin²α S_b + cos²α S_f),
  # with expected squared norms S_f = 266 (forward), S_b = 512 (feedback).
  a = math.radians(45.0)
  expected = math.degrees(math.acos(math.cos(a) * math.sqrt(266) / math.sqrt(
      math.sin(a) ** 2 * 512 + math.cos(a) ** 2 * 266)))
  assert angle(45.0) == pytest.approx(expected, abs=1.0)
  assert math.isnan(angle(None, "hep_loop_mlp"))


def test_float16_free_phase_is_cast_back():
  net = rec.make_network("hep_mlp", (12,), 5, hidden=(8, 8), t_free=20)
  params, _ = net.init(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (4, 12))
  u32, u16 = jax.jit(lambda p, x: (rec.free_phase(net, p, x),
                                   rec.free_phase(net, p, x, free_dtype="float16")))(params, x)
  for k in u32:
    assert u16[k].dtype == jnp.float32
    np.testing.assert_allclose(u16[k], u32[k], atol=2e-2)


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_small_cnn_runs_and_is_symmetric_at_angle_zero():
  def setup(alpha):
    net = rec.make_network("hep_cnn", (32, 32, 3), 10, channels=(4, 4, 4, 4), t_free=4,
                           angle_deg=alpha)
    return net, net.init(jax.random.key(0))[0]

  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  batch = {"image": x, "label": jnp.array([1, 7])}
  net, params = setup(0.0)
  net90, params90 = setup(90.0)
  assert 0.0 <= float(rec.weight_angle(net, params)) < 1e-3
  rule = rec.make_rule("hep", net90, n_points=2, beta=0.1, t_nudge=3)

  @jax.jit
  def run(params, params90, key):
    u = rec.free_phase(net, params, x)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, params90)
    sym, asym = jax.vmap(lambda p: rec.homeostasis_loss(net, p, x, u, key))(both)
    return u, sym, asym, rule.update(params90, (), (), batch, key)

  u, sym, asym, out = run(params, params90, jax.random.key(2))
  assert u["conv1"].shape == (2, 16, 16, 4) and u["out"].shape == (2, 1, 1, 4)
  # H = ∇Φ at α = 0, so J_h is symmetric and every Hutchinson term vanishes.
  assert float(asym) > 1e-3
  assert abs(float(sym)) < 1e-5 * float(asym)
  assert jax.tree.structure(out.grads) == jax.tree.structure(params90)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(out.grads))
  assert float(jnp.abs(out.grads["out-conv3"]["kernel"]).sum()) > 0
