"""Every experiment config builds (network, rule, optimiser), and its errors are one line."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxbio import optim, train
from launch.configs import bartunov, hep_conv, hep_fmnist

ALL = ([(bartunov, f"{d},{a},{r}") for d in ("mnist", "cifar10") for a in ("fc", "lc", "conv")
        for r in bartunov.RULES] +
       [(hep_fmnist, a) for a in ("table1,1,0.05", "table1,4,0.5", "online", "fig3,bptt,45",
                                  "fig3,hep,90", "fig4_reciprocal,0", "fig4_reciprocal,1.0",
                                  "fig4_loop,0.1")] +
       [(hep_conv, f"{d},{e}") for d in ("cifar10", "cifar100")
        for e in ("table2_n0", "table2_n2", "table2_bp", "table2_bp_nohomeo", "fig4")] +
       [(hep_conv, "imagenet32,imagenet")])


@pytest.mark.parametrize("module,arg", ALL, ids=[f"{m.__name__.split('.')[-1]}:{a}" for m, a in ALL])
def test_config_builds(module, arg):
  config = module.get_config(arg)
  exp = train.build_experiment(config, 50_000)
  params, _ = jax.eval_shape(exp.net.init, jax.random.key(0))
  opt_state = jax.eval_shape(exp.tx.init, params)
  assert jax.tree.leaves(opt_state)
  assert exp.total_steps == config.num_epochs * (50_000 // config.batch_size)


def test_paper_hyperparameters_are_carried():
  c = bartunov.get_config("cifar10,lc,dfa")
  assert (c.optimizer.learning_rate, c.optimizer.b2, c.optimizer.eps) == (0.000040, 0.999, 1e-8)
  assert c.dataset.augment == "crop_flip" and c.model.convs[0] == (64, 5, 2)
  c = hep_conv.get_config("cifar100,table2_n2")
  assert c.rule.n_points == 2 and c.rule.beta == 1.0 and c.homeostasis.weight == 15.0
  assert c.optimizer.lr_multipliers["in-conv1"] == 25.0 and c.dataset.std_multiplier == 1.5
  c = hep_fmnist.get_config("fig4_reciprocal,1.0")
  assert c.model.angle_deg == 90.0 and c.optimizer.name == "adamw"


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
