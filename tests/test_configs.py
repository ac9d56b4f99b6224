"""Every experiment config builds (network, rule, optimiser), and its errors are one line."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxbio import optim, train
from launch.configs import bartunov, burstccn, hep_conv, hep_fmnist, rdd

ALL = ([(bartunov, f"{d},{a},{r}") for d in ("mnist", "cifar10") for a in ("fc", "lc", "conv")
        for r in bartunov.RULES] +
       [(bartunov, f"{d},{a},{r},parallel") for d in ("mnist", "cifar10") for a in ("fc", "lc")
        for r in bartunov.TP_RULES] +
       [(bartunov, f"imagenet,{a}") for a in ("lc,dtp", "lc,dtp,parallel", "lc,sdtp,parallel",
                                              "lc,fa", "lc,bp", "conv,bp")] +
       [(hep_fmnist, a) for a in ("table1,1,0.05", "table1,4,0.5", "online", "fig3,bptt,45",
                                  "fig3,hep,90", "fig4_reciprocal,0", "fig4_reciprocal,1.0",
                                  "fig4_loop,0.1")] +
       [(hep_conv, f"{d},{e}") for d in ("cifar10", "cifar100")
        for e in ("table2_n0", "table2_n2", "table2_bp", "table2_bp_nohomeo", "fig4")] +
       [(hep_conv, "imagenet32,imagenet")] +
       [(rdd, f"{d},{r}") for d in rdd.DATASETS for r in rdd.RULES] +
       [(burstccn, e) for e in burstccn.EXPERIMENTS])


@pytest.mark.parametrize("module,arg", ALL, ids=[f"{m.__name__.split('.')[-1]}:{a}" for m, a in ALL])
def test_config_builds(module, arg):
  config = module.get_config(arg)
  exp = train.build_experiment(config, 50_000)
  state = jax.eval_shape(lambda: train.init_state(exp, 0))
  assert jax.tree.leaves(state.params)  # the rule state initialised too (eval_shape).
  if config.optimizer.name != "sgd" or config.optimizer.get("momentum"):
    assert jax.tree.leaves(state.opt_state)  # plain SGD alone keeps no state.
  assert exp.total_steps == config.num_epochs * len(exp.passes) * (50_000 // config.batch_size)


def test_paper_hyperparameters_are_carried():
  c = bartunov.get_config("cifar10,lc,dfa")
  assert (c.optimizer.learning_rate, c.optimizer.b2, c.optimizer.eps) == (0.000040, 0.999, 1e-8)
  assert c.dataset.augment == "crop_flip" and c.model.convs[0] == (64, 5, 2)
  c = hep_conv.get_config("cifar100,table2_n2")
  assert c.rule.n_points == 2 and c.rule.beta == 1.0 and c.homeostasis.weight == 15.0
  assert c.optimizer.lr_multipliers["in-conv1"] == 25.0 and c.dataset.std_multiplier == 1.5
  c = hep_fmnist.get_config("fig4_reciprocal,1.0")
  assert c.model.angle_deg == 90.0 and c.optimizer.name == "adamw"


def test_burstccn_tuned_configs_change_only_the_searched_fields():
  for base, tuned, fields in (
      ("mnist", "mnist_tuned", {"optimizer.learning_rate": 0.25, "rule.y_scale": 0.92,
                                "rule.q_lr": 0.00012}),
      ("burstprop_mnist", "burstprop_mnist_tuned", {"optimizer.learning_rate": 1.9,
                                                    "rule.y_scale": 2.65, "rule.r_lr": 5e-4})):
    a = _flat(burstccn.get_config(base).to_dict())
    b = _flat(burstccn.get_config(tuned).to_dict())
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == set(fields)
    assert {k: b[k] for k in fields} == fields


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def test_target_prop_table5_hyperparameters_are_carried():
  c = bartunov.get_config("mnist,fc,dtp")
  assert c.rule.schedule == "alternating" and (c.rule.alpha, c.rule.sigma) == (0.231758, 0.220444)
  assert (c.optimizer.learning_rate, c.optimizer.b1, c.optimizer.b2, c.optimizer.eps) == (
      0.000308, 0.99, 0.99, 1e-4)
  inv = c.rule.inverse_optimizer
  assert (inv.name, inv.learning_rate, inv.b1, inv.b2, inv.eps) == ("adam", 0.004593, 0.99,
                                                                   0.999, 1e-4)
  c = bartunov.get_config("cifar10,lc,ao_sdtp,parallel")  # AO-SDTP borrows SDTP's optimum.
  assert c.rule.schedule == "parallel" and c.rule.n_z == 512 and c.rule.sigma == 0.299769
  assert "alpha" not in c.rule and c.optimizer.learning_rate == 0.000020
  assert c.rule.inverse_optimizer.learning_rate == 0.000261 and c.model.pool == ""
  exp = train.build_experiment(bartunov.get_config("mnist,fc,sdtp"), 1280)
  assert [p.name for p in exp.passes] == ["inverse", "forward"]
  with pytest.raises(ValueError, match="a schedule .'parallel'. is only for the target "
                                       "propagation rules: dtp, sdtp, ao_sdtp, tp"):
    bartunov.get_config("mnist,fc,bp,parallel")


@pytest.mark.parametrize("module,arg,message", [
    (bartunov, "svhn,fc,bp", "unknown dataset 'svhn' for this config; valid choices: mnist, cifar10"),
    (hep_fmnist, "table9", "unknown experiment 'table9'; valid choices: table1"),
    (hep_conv, "cifar10,imagenet", "experiment 'imagenet' needs dataset imagenet32"),
    (hep_conv, "cifar10,table2_n0,oops", "expected '<dataset>,<experiment>"),
    (hep_fmnist, "table1,4", r"experiment 'table1' takes 0 or 2 arguments"),
    (hep_fmnist, "fig3,bptt", r"experiment 'fig3' takes 0 or 2 arguments"),
    (bartunov, "mnist,fc", "expected '<dataset>,<arch>,<rule>"),
])
def test_bad_config_args(module, arg, message):
  with pytest.raises(ValueError, match=message):
    module.get_config(arg)


def test_per_group_learning_rate_and_decay_multipliers():
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.01, schedule="constant",
      lr_multipliers={"a": 10.0}, wd_multipliers={"b": 2.0}))
  tx = optim.make_optimizer(cfg, 10)
  params = {k: {"kernel": jnp.ones(3)} for k in "abc"}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["a"]["kernel"], -1.0 * (1 + 0.01), rtol=1e-6)
  np.testing.assert_allclose(updates["b"]["kernel"], -0.1 * (1 + 0.02), rtol=1e-6)
  np.testing.assert_allclose(updates["c"]["kernel"], -0.1 * (1 + 0.01), rtol=1e-6)
  cfg.lr_multipliers = {"zz": 2.0}
  tx = optim.make_optimizer(cfg, 10)
  with pytest.raises(ValueError, match=r"unknown layers \['zz'\]; valid layers: a, b, c"):
    tx.init(params)


def test_recurrent_model_rejects_unknown_parameter():
  c = hep_fmnist.get_config("table1,2,0.05")
  c.model.widths = (3,)
  with pytest.raises(ValueError, match="model 'hep_mlp' does not take parameter 'widths'"):
    train.build_experiment(c, 1000)


def _tiny_hep_config(**rule):
  c = hep_fmnist.get_config("table1,4,0.3")
  c.model.hidden = (16, 12)
  c.model.t_free = 30
  c.rule.update(rule)
  return c


def _batch(n=6):
  x = jax.random.uniform(jax.random.key(1), (n, 28, 28, 1))
  return {"image": x, "label": jnp.arange(n) % 10}


def test_reference_rbp_uses_the_runs_t2_and_t1():
  from jaxbio import build, recurrent  # pylint: disable=g-import-not-at-top
  exp = train.build_experiment(_tiny_hep_config(t_nudge=7), 1000)
  params = exp.net.init(jax.random.key(0))[0]
  batch = _batch()
  grads = lambda rule: jax.jit(lambda p, b: rule.update(p, (), (), b, None).grads)(params, batch)
  ref = grads(exp.references[0])
  for a, b in zip(jax.tree.leaves(ref),
                  jax.tree.leaves(grads(recurrent.make_rule("rbp", exp.net, t_nudge=7)))):
    np.testing.assert_array_equal(a, b)
  default = grads(build.build_reference_rule(exp.net))  # one argument: RBP's own T2 = 20.
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ref),
                                                        jax.tree.leaves(default)))
  # A rule's own T1 (hep_online's) reaches the reference too.
  rule_cfg = ml_collections.ConfigDict(dict(name="hep_online", t_free=90, t_nudge=9))
  own = grads(build.build_reference_rule(exp.net, rule_cfg))
  direct = grads(recurrent.make_rule("rbp", exp.net, t_free=90, t_nudge=9))
  for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(a, b)


def test_diagnostics_error_cos_uses_the_runs_n_beta_and_t2():
  from jaxbio import build, recurrent  # pylint: disable=g-import-not-at-top
  config = _tiny_hep_config(t_nudge=7)
  exp = train.build_experiment(config, 1000)
  params = exp.net.init(jax.random.key(0))[0]
  x, labels = _batch()["image"], _batch()["label"]
  run = lambda fn: jax.jit(fn)(params, x, labels)
  diag = run(lambda p, x, y: build.build_diagnostics(exp.net, config.rule)(p, x, y,
                                                                          jax.random.key(0)))
  direct = run(lambda p, x, y: recurrent.error_alignment(exp.net, p, x, y, n_points=4, beta=0.3,
                                                         t_nudge=7))
  default = run(lambda p, x, y: build.build_diagnostics(exp.net)(p, x, y, jax.random.key(0)))
  for layer, cos in direct.items():
    np.testing.assert_allclose(diag[f"error_cos/{layer}"], cos, rtol=1e-6)
  assert abs(float(diag["error_cos/all"]) - float(default["error_cos/all"])) > 1e-4
  # ep's N comes from `symmetric`.
  ep = ml_collections.ConfigDict(dict(name="ep", beta=0.2, symmetric=True, t_nudge=7))
  diag = run(lambda p, x, y: build.build_diagnostics(exp.net, ep)(p, x, y, jax.random.key(0)))
  direct = run(lambda p, x, y: recurrent.error_alignment(exp.net, p, x, y, n_points=2, beta=0.2,
                                                         t_nudge=7))
  np.testing.assert_allclose(diag["error_cos/all"], direct["all"], rtol=1e-6)


def test_trainer_passes_the_rule_config_to_the_diagnostics(tmp_path, monkeypatch):
  from jaxbio import build  # pylint: disable=g-import-not-at-top
  from jaxbio.data import testing as data_testing  # pylint: disable=g-import-not-at-top

  class Stop(Exception):
    pass

  seen = []

  def record(net, rule_cfg=None):
    seen.append(rule_cfg)
    raise Stop

  monkeypatch.setattr(build, "build_diagnostics", record)
  config = _tiny_hep_config(t_nudge=7)
  config.dataset.train_split, config.dataset.test_split = "train[:100]", "test[:100]"
  with data_testing.mock_data(100), pytest.raises(Stop):
    config.dataset.data_dir = str(tmp_path / "tfds")
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert seen and seen[0].t_nudge == 7 and seen[0].n_points == 4 and seen[0].beta == 0.3


@pytest.mark.parametrize("dataset,mean,std", [
    # The authors' code: CIFAR-10's constants for both CIFAR datasets, std x 1.5.
    ("cifar10", (0.4914, 0.4822, 0.4465), (1.5 * 0.2023, 1.5 * 0.1994, 1.5 * 0.2010)),
    ("cifar100", (0.4914, 0.4822, 0.4465), (1.5 * 0.2023, 1.5 * 0.1994, 1.5 * 0.2010)),
    ("imagenet32", (0.485, 0.456, 0.406), (1.5 * 0.229, 1.5 * 0.224, 1.5 * 0.225)),
])
def test_hep_conv_normalisation_constants(dataset, mean, std):
  from jaxbio import data  # pylint: disable=g-import-not-at-top
  config = hep_conv.get_config(f"{dataset},table2_n0")
  preprocess = train.make_preprocess(config, data.DATASETS[config.dataset.name])
  pixels = np.array([0, 51, 128, 255], np.uint8)
  images = np.broadcast_to(pixels[:, None, None, None], (4, 2, 2, 3))
  x = np.asarray(preprocess(None, images, False))
  expected = (pixels[:, None] / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(x[:, 0, 0, :], expected, rtol=1e-5, atol=1e-6)


def test_dataset_statistics_fall_back_to_the_dataset_spec():
  from jaxbio import data  # pylint: disable=g-import-not-at-top
  config = bartunov.get_config("cifar10,conv,bp")
  config.dataset.normalize = "standardize"
  spec = data.DATASETS["cifar10"]
  x = np.asarray(train.make_preprocess(config, spec)(None, np.zeros((1, 1, 1, 3), np.uint8),
                                                     False))
  np.testing.assert_allclose(x.ravel(), -np.array(spec.mean) / np.array(spec.std), rtol=1e-6)


def test_svhn_rdd_config_crops_without_flips():
  from jaxbio.experiment import make_preprocess  # pylint: disable=g-import-not-at-top
  from launch.configs import rdd as rdd_configs  # pylint: disable=g-import-not-at-top
  c = rdd_configs.get_config("svhn,rdd")
  assert c.dataset.name == "svhn_cropped" and c.dataset.augment == "crop"
  assert rdd_configs.get_config("cifar10,fa").dataset.augment == "crop_flip"
  c.dataset.crop_padding = 0  # a crop of the unpadded image is the image itself.
  spec = train.build_experiment(c, 50_000).dataset
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), np.uint8))
  augmented = make_preprocess(c, spec)(jax.random.key(0), x, True)
  np.testing.assert_array_equal(augmented, make_preprocess(c, spec)(None, x, False))
  c.dataset.augment = "crop_flip"
  flipped = make_preprocess(c, spec)(jax.random.key(0), x, True)
  assert not np.array_equal(flipped, augmented)
