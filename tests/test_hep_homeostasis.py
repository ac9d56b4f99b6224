"""Jacobian homeostasis and the hEP diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbio.recurrent as rec
from jaxbio.rules.base import with_penalty


def _fmnist_setup(arch, angle, batch=2, seed=0):
  net = rec.make_network(arch, (784,), 10, angle_deg=angle, t_free=10)
  params = net.init(jax.random.key(seed))[0]
  x = jax.random.uniform(jax.random.key(seed + 1), (batch, 784))
  return net, params, x


def _tiny(angle, arch="hep_mlp", t_free=60):
  net = rec.make_network(arch, (12,), 5, hidden=(16, 12), angle_deg=angle, t_free=t_free)
  params = net.init(jax.random.key(2))[0]
  x = jax.random.uniform(jax.random.key(12), (8, 12))
  return net, params, {"image": x, "label": jnp.arange(8) % 5}


@pytest.mark.parametrize("arch,angle,expected", [
    ("hep_mlp", 0.0, 0.0),
    ("hep_mlp", 45.0, 0.534),    # [(1 − cos α)² S_f + sin²α S_b]/n, S_f = 266, S_b = 512.
    ("hep_mlp", 90.0, 1.490),    # (S_f + S_b)/n = 778/522.
    ("hep_loop_mlp", None, 1.0),  # Σ‖K‖²/n.
])
def test_closed_form_equals_full_jacobian(arch, angle, expected):
  net, params, x = _fmnist_setup(arch, angle)

  @jax.jit
  def losses(params, x, key):
    u = rec.free_phase(net, params, x)
    return (rec.closed_form_homeostasis_loss(net, params),
            rec.exact_homeostasis_loss(net, params, x, u),
            rec.homeostasis_loss(net, params, x, u, key))

  closed, exact, hutch = (float(v) for v in losses(params, x, jax.random.key(5)))
  if expected == 0.0:
    assert closed == 0.0 and exact == 0.0 and abs(hutch) < 1e-6
  else:
    assert exact == pytest.approx(closed, rel=1e-5)
    assert closed == pytest.approx(expected, rel=0.03)
    assert hutch == pytest.approx(closed, rel=0.25)


def test_hutchinson_estimator_is_unbiased():
  """The mean of 40 five-probe estimates lies within 3 s.e. of the exact value."""
  net, params, x = _fmnist_setup("hep_mlp", 90.0, batch=8)
  u = jax.jit(lambda p, x: rec.free_phase(net, p, x))(params, x)
  keys = jax.random.split(jax.random.key(7), 40)
  est = jax.jit(jax.vmap(lambda k: rec.homeostasis_loss(net, params, x, u, k, num_probes=5)))
  samples = np.asarray(est(keys), np.float64)
  exact = float(rec.closed_form_homeostasis_loss(net, params))
  se = samples.std(ddof=1) / np.sqrt(len(samples))
  assert abs(samples.mean() - exact) < 3 * se
  assert samples.std(ddof=1) / exact < 0.1  # ≈ 3–5 % per B = 8 estimate.


@pytest.mark.parametrize("arch", ["hep_mlp", "hep_loop_mlp"])
def test_gradient_matches_closed_form(arch):
  """∇L_homeo = 2(W_qp − W_pqᵀ)/n (pairs), 2W_qp/n (one-way), 0 elsewhere."""
  net, params, batch = _tiny(45.0 if arch == "hep_mlp" else None, arch)
  n = net.num_neurons
  expected = jax.tree.map(jnp.zeros_like, params)
  recurrent = {c.name: c for c in net.field.connections if c.src != "in"}
  for name, c in recurrent.items():
    rev = f"{c.dst}-{c.src}"
    k = params[name]["kernel"]
    diff = k - params[rev]["kernel"].T if rev in recurrent else k
    expected[name]["kernel"] = 2 * diff / n

  @jax.jit
  def grads(params, key):
    u = rec.free_phase(net, params, batch["image"])
    exact = jax.grad(rec.exact_homeostasis_loss, argnums=1)(net, params, batch["image"], u)
    hutch = jax.grad(lambda p: rec.homeostasis_loss(net, p, batch["image"], u, key,
                                                    num_probes=400))(params)
    return exact, hutch

  exact, hutch = grads(params, jax.random.key(3))
  penalty = rec.homeostasis_penalty(net, method="closed_form")
  assert float(penalty(params, batch, {}, None)) == pytest.approx(
      float(rec.closed_form_homeostasis_loss(net, params)))
  flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree.leaves(t)])
  np.testing.assert_allclose(flat(exact), flat(expected), atol=1e-6)
  e, h = flat(expected), flat(hutch)
  assert np.dot(e, h) / (np.linalg.norm(e) * np.linalg.norm(h)) > 0.98


def test_homeostasis_training_raises_jacobian_symmetry():
  net, params, batch = _tiny(90.0, t_free=60)
  rule = rec.make_rule("hep", net, n_points=0, t_nudge=20)
  rule = with_penalty(rule, rec.homeostasis_penalty(net, num_probes=5), 5.0, name="homeostasis")
  lr = 0.1

  @jax.jit
  def train(params, key):
    def step(carry, key):
      p = carry
      out = rule.update(p, (), (), batch, key)
      p = jax.tree.map(lambda w, g: w - lr * g, p, out.grads)
      return p, out.metrics["homeostasis"]
    return jax.lax.scan(step, params, jax.random.split(key, 30))

  def symmetry(p):
    u = rec.free_phase(net, p, batch["image"])
    return float(rec.jacobian_symmetry(net, p, batch["image"], u))

  before = symmetry(params)
  trained, penalty = train(params, jax.random.key(0))
  after = symmetry(trained)
  assert after > before + 0.05, (before, after)
  assert float(penalty[-1]) < 0.5 * float(penalty[0])
  assert float(rec.weight_angle(net, trained)) < float(rec.weight_angle(net, params))


def test_jacobian_symmetry_and_error_alignment_metrics():
  net0, params0, batch = _tiny(0.0, t_free=500)
  net90, params90, _ = _tiny(90.0, t_free=500)
  x, labels = batch["image"], batch["label"]

  def metrics(net, params, key):
    u = rec.free_phase(net, params, x)
    return (rec.jacobian_symmetry(net, params, x, u),
            rec.jacobian_symmetry(net, params, x, u, method="hutchinson", key=key,
                                  num_probes=2000),
            rec.error_alignment(net, params, x, labels, n_points=0, t_nudge=100, u=u),
            rec.fixed_point_residual(net, params, x, u))

  sym0, _, align0, res0 = jax.jit(lambda p, k: metrics(net0, p, k))(params0, jax.random.key(0))
  sym90, hut90, align90, _ = jax.jit(lambda p, k: metrics(net90, p, k))(params90,
                                                                       jax.random.key(0))
  assert float(sym0) == pytest.approx(1.0, abs=1e-6)
  assert 0.5 < float(sym90) < 0.95
  assert float(hut90) == pytest.approx(float(sym90), abs=0.03)
  assert res0.shape == (8,) and float(jnp.max(res0)) < 1e-3
  assert all(float(v) > 0.999 for v in align0.values()), align0
  assert float(align90["all"]) < 0.95


def test_update_angle_is_of_the_rule_and_total_angle_includes_homeostasis():
  # with_penalty adds λ∇L_homeo to the hEP update; update_angle/... must be the
  # angle of the hEP update itself to RBP, update_angle_total/... that of the sum.
  from jaxbio.metrics import alignment_metrics  # pylint: disable=g-import-not-at-top
  net, params, batch = _tiny(90.0)
  hep = rec.make_rule("hep", net, n_points=0, t_nudge=20)
  wrapped = with_penalty(hep, rec.homeostasis_penalty(net, 2), 1e3, name="homeostasis")
  ref = rec.make_rule("rbp", net, t_nudge=20)
  key = jax.random.key(3)
  # hEP ignores its key, so the wrapped rule's own update is the plain one's.
  metrics = lambda rule: jax.jit(
      lambda p, b: alignment_metrics(rule, ref, p, (), (), b, key))(params, batch)
  plain, both = metrics(hep), metrics(wrapped)
  own = {k: v for k, v in both.items() if k.startswith("update_angle/")}
  assert own and own.keys() == {k for k in plain if k.startswith("update_angle/")}
  for k, v in own.items():
    assert float(v) == float(plain[k]), k
  assert not any(k.startswith("update_angle_total/") for k in plain)
  total = {k[len("update_angle_total/"):]: v for k, v in both.items()
           if k.startswith("update_angle_total/")}
  assert set(total) == {k[len("update_angle/"):] for k in own}
  # A large λ turns the recurrent kernels' total update toward the penalty's gradient.
  assert abs(float(total["all"]) - float(own["update_angle/all"])) > 1.0
  assert abs(float(total["l2-l1.kernel"]) - float(own["update_angle/l2-l1.kernel"])) > 1.0
  # The readout gets no homeostatic gradient: the same angle either way.
  assert float(total["readout.kernel"]) == float(own["update_angle/readout.kernel"])
  own_grads, grads = jax.jit(lambda p, b: (wrapped.update(p, (), (), b, key).aux["rule_grads"],
                                            hep.update(p, (), (), b, key).grads))(params, batch)
  for a, b in zip(jax.tree.leaves(own_grads), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(a, b)
