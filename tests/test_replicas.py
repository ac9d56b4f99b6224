"""Replicas (seeds, hyperparameter draws) trained together: plans, equality, divergence, resume."""

import json
import os

import jax
import numpy as np
import pytest

from jaxbio import checkpoint, replicas, train
from jaxbio.data import testing as data_testing
from jaxbio.experiment import init_replicas, replica_values
from launch.configs import bartunov, hep_fmnist


def _small(config, n_train=640):
  config.dataset.train_split = f"train[:{n_train}]"
  config.dataset.test_split = "test[:300]"
  config.batch_size = 32
  config.num_epochs = 1
  config.steps_per_call = 7
  config.alignment_every = 8
  return config


def _with_replicas(config, **fields):
  config.replicas.update({k: json.dumps(v) if isinstance(v, dict) else v
                          for k, v in fields.items()})
  return config


# -- Plans.

def test_plan_orders_draws_by_seeds_and_keeps_single_runs_plain():
  c = bartunov.get_config("mnist,fc,bp")
  assert replicas.plan(c) is None
  c.seed = 7
  p = replicas.plan(_with_replicas(c, seeds=3, hparams={"optimizer.learning_rate": [1e-3, 2e-3]}))
  assert p.size == 6 and p.num_draws == 2 and p.num_seeds == 3
  assert p.seeds == (7, 8, 9, 7, 8, 9) and p.draw == (0, 0, 0, 1, 1, 1)
  np.testing.assert_array_equal(p.hparams["optimizer.learning_rate"], [1e-3] * 3 + [2e-3] * 3)
  single = replicas.config_for(c, p, 4)
  assert single.seed == 8 and single.optimizer.learning_rate == 2e-3
  assert replicas.plan(single) is None
  c2 = bartunov.get_config("mnist,fc,bp")
  assert replicas.plan(_with_replicas(c2, seed_list=(3, 5))).seeds == (3, 5)


def test_random_search_draws_are_reproducible_and_inside_the_space():
  c = bartunov.get_config("mnist,fc,dtp")
  space = {"optimizer.learning_rate": {"log_uniform": [1e-5, 3e-4]},
           "optimizer.b2": {"choice": [0.99, 0.999]},
           "rule.alpha": {"uniform": [0.01, 0.2]}}
  p = replicas.plan(_with_replicas(c, search=space, draws=50, search_seed=3))
  q = replicas.plan(_with_replicas(bartunov.get_config("mnist,fc,dtp"), search=space, draws=50,
                                   search_seed=3))
  for k in space:
    np.testing.assert_array_equal(p.hparams[k], q.hparams[k])
  lr = p.hparams["optimizer.learning_rate"]
  assert p.size == 50 and lr.min() >= 1e-5 and lr.max() <= 3e-4
  # Log-uniform: about half the draws below the geometric midpoint.
  assert 15 <= np.sum(lr < np.sqrt(1e-5 * 3e-4)) <= 35
  assert set(p.hparams["optimizer.b2"]) == {0.99, 0.999}
  assert 0.01 <= p.hparams["rule.alpha"].min() <= p.hparams["rule.alpha"].max() <= 0.2


@pytest.mark.parametrize("fields,message", [
    (dict(hparams={"model.widths": [1, 2]}), "'model.widths'"),
    (dict(hparams={"rule.t_nudge": [10, 20]}), "'rule.t_nudge'"),
    (dict(hparams={"batch_size": [16, 32]}), "'batch_size'"),
    (dict(hparams={"optimizer.nope": [1.0]}), "no field 'optimizer.nope'"),
    (dict(hparams={"optimizer.learning_rate": [1e-3, 2e-3], "optimizer.b1": [0.9]}),
     "one length"),
    (dict(search={"optimizer.learning_rate": {"uniform": [1e-3, 1e-4]}}, draws=2), "lo <= hi"),
    (dict(search={"optimizer.learning_rate": {"normal": [0, 1]}}, draws=2), "must be one of"),
    (dict(search={"optimizer.learning_rate": {"uniform": [0, 1]}}), "replicas.draws > 0"),
    (dict(seeds=0), "replicas.seeds must be a positive integer"),
    (dict(seeds=2, seed_list=(1, 2)), "both set"),
    (dict(hparams={"homeostasis.weight": [0.0, 1.0]}), "mixes 0"),
    (dict(hparams="{oops"), "JSON object"),
])
def test_bad_replica_fields_are_one_line_errors(fields, message):
  c = hep_fmnist.get_config("table1,2,0.05") if "t_nudge" in str(fields) else \
      bartunov.get_config("mnist,fc,bp")
  with pytest.raises(ValueError, match=message) as e:
    train.validate(_with_replicas(c, **fields))
  assert "\n" not in str(e.value)


def test_a_drawn_value_the_optimiser_refuses_names_the_replica():
  c = _with_replicas(bartunov.get_config("mnist,fc,bp"),
                     hparams={"optimizer.learning_rate": [1e-3, -1.0]})
  with pytest.raises(ValueError, match=r"replica 1 \(optimizer.learning_rate=-1\).*> 0"):
    train.check_replicas(c, 640)


# -- Each replica trains as the single run with its seed and values.

def _final(workdir, config, plan=None):
  exp = train.build_experiment(config, 640)
  if plan is None:
    target = jax.eval_shape(lambda: train.init_state(exp, 0))
  else:
    target = jax.eval_shape(lambda v: init_replicas(exp, config, plan, v), replica_values(plan))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _, _ = ckpt.restore_latest(target)
  ckpt.close()
  return state


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _tiny_mlp(config):
  config.model.widths = (16, 16)
  return config


CASES = {
    "bp": lambda: _tiny_mlp(bartunov.get_config("mnist,fc,bp")),
    "fa": lambda: _tiny_mlp(bartunov.get_config("mnist,fc,fa")),
    "kp": lambda: _tiny_mlp(bartunov.get_config("mnist,fc,kp")),
    # Two passes per epoch and an optimiser of the rule's own (the inverses').
    "dtp": lambda: _tiny_mlp(bartunov.get_config("mnist,fc,dtp,alternating")),
}
DRAWN = {
    "bp": {"optimizer.learning_rate": [1e-3, 3e-4]},
    "fa": {"optimizer.learning_rate": [1e-3, 3e-4], "optimizer.eps": [1e-8, 1e-4]},
    "kp": {"optimizer.learning_rate": [1e-3, 3e-4], "rule.weight_decay": [0.0, 1e-3]},
    "dtp": {"rule.inverse_optimizer.learning_rate": [1e-3, 5e-3], "rule.sigma": [0.1, 0.3],
            "rule.alpha": [0.1, 0.2]},
}


def _check_equal_to_single_runs(tmp_path, make, drawn, n_train=640, check=(0, 3)):
  config = _small(make(), n_train)
  config = _with_replicas(config, seeds=2, hparams=drawn)
  plan = replicas.plan(config)
  with data_testing.mock_data(n_train):
    config.dataset.data_dir = str(tmp_path / "tfds")
    train.train_and_evaluate(config, str(tmp_path / "replicas"))
    states = _final(tmp_path / "replicas", config, plan)
    rows = [r for r in _records(tmp_path / "replicas") if r["epoch"] == 1]
    assert [r["replica"] for r in rows] == list(range(plan.size))
    for r in check:
      single = replicas.config_for(config, plan, r)
      train.train_and_evaluate(single, str(tmp_path / f"single{r}"))
      state = _final(tmp_path / f"single{r}", single)
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(states)):
        np.testing.assert_allclose(np.asarray(b)[r], np.asarray(a), rtol=2e-4, atol=2e-6)
      ref = _records(tmp_path / f"single{r}")[-1]
      assert rows[r]["seed"] == single.seed and rows[r]["hparams"] == plan.values(r)
      for key in ("test/loss", "train/loss", "align/update_angle/all"):
        np.testing.assert_allclose(rows[r][key], ref[key], rtol=1e-4, atol=1e-4)
      assert rows[r]["test/accuracy"] == pytest.approx(ref["test/accuracy"], abs=2 / 300)


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_dtp_replicas_equal_the_single_runs_with_their_seeds_and_values(tmp_path):
  # Two passes per epoch, the rule's own optimiser and its scalar hyperparameters drawn.
  _check_equal_to_single_runs(tmp_path, CASES["dtp"], DRAWN["dtp"], check=(3,))


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
@pytest.mark.parametrize("rule", ["bp", "fa", "kp"])
def test_each_replica_equals_the_single_run_with_its_seed_and_values(tmp_path, rule):
  _check_equal_to_single_runs(tmp_path, CASES[rule], DRAWN[rule])


def _small_hep():
  c = hep_fmnist.get_config("table1,2,0.05")
  c.model.t_free = 20
  c.rule.t_nudge = 8
  c.model.hidden = (16,)
  return c


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_hep_replicas_with_homeostasis_equal_single_runs(tmp_path):
  _check_equal_to_single_runs(tmp_path, _small_hep,
                              {"optimizer.learning_rate": [0.01, 0.03],
                               "homeostasis.weight": [0.5, 0.1], "rule.beta": [0.05, 0.2]},
                              n_train=200, check=(2,))


# -- A diverged replica is frozen, the others go on; checkpoints resume exactly.

@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_a_diverging_replica_is_frozen_and_the_others_train_on(tmp_path):
  config = _small(CASES["bp"]())
  config = _with_replicas(config, hparams={"optimizer.learning_rate": [1e-3, 1e4]})
  with data_testing.mock_data(640):
    config.dataset.data_dir = str(tmp_path / "tfds")
    train.train_and_evaluate(config, str(tmp_path / "run"))
  rows = _records(tmp_path / "run")
  assert "diverged_step" in rows[1] and "diverged_step" not in rows[0]
  states = _final(tmp_path / "run", config, replicas.plan(config))
  assert np.asarray(states.step).tolist() == [20, rows[1]["diverged_step"] - 1]
  for leaf in jax.tree.leaves(states.params):
    assert np.isfinite(np.asarray(leaf)).all()


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_every_replica_diverging_stops_the_run(tmp_path):
  config = _small(CASES["bp"]())
  config = _with_replicas(config, hparams={"optimizer.learning_rate": [1e4, 3e4]})
  with data_testing.mock_data(640):
    config.dataset.data_dir = str(tmp_path / "tfds")
    with pytest.raises(train.NonFiniteError, match="every replica diverged"):
      train.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_replica_checkpoints_resume_exactly(tmp_path):
  def config(epochs):
    c = _small(CASES["fa"](), 320)
    c.num_epochs = epochs
    return _with_replicas(c, seeds=2, hparams={"optimizer.learning_rate": [1e-3, 3e-4]})

  with data_testing.mock_data(320):
    for name, plan_epochs in (("straight", (2,)), ("resumed", (1, 2))):
      for epochs in plan_epochs:
        c = config(epochs)
        c.dataset.data_dir = str(tmp_path / "tfds")
        train.train_and_evaluate(c, str(tmp_path / name))
  c = config(2)
  plan = replicas.plan(c)
  a, b = _final(tmp_path / "straight", c, plan), _final(tmp_path / "resumed", c, plan)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ra, rb = _records(tmp_path / "straight"), _records(tmp_path / "resumed")
  assert [r["test/loss"] for r in ra] == [r["test/loss"] for r in rb]
  assert len(ra) == 2 * plan.size


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_replicas_on_8_devices_equal_1_device(tmp_path):
  # The batch axis stays sharded over the devices; host placement on 8, device on 1.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rows = {}
  for devices, placement in ((1, "device"), (8, "host")):
    code = (
        "import sys, json; from jaxbio import train; from jaxbio.data import testing as t\n"
        "from launch.configs import bartunov\n"
        "c = bartunov.get_config('mnist,fc,fa'); c.model.widths = (16,)\n"
        "c.dataset.train_split, c.dataset.test_split = 'train[:640]', 'test[:200]'\n"
        "c.batch_size, c.num_epochs, c.steps_per_call = 32, 1, 7\n"
        f"c.data_placement = '{placement}'\n"
        "c.replicas.seeds = 2\n"
        "c.replicas.hparams = json.dumps({'optimizer.learning_rate': [1e-3, 3e-4]})\n"
        "with t.mock_data(640):\n"
        f"  c.dataset.data_dir = {str(tmp_path / 'tfds')!r}\n"
        f"  train.train_and_evaluate(c, {str(tmp_path / str(devices))!r})\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{devices} device(s)" in proc.stderr
    rows[devices] = _records(tmp_path / str(devices))
  assert len(rows[1]) == len(rows[8]) == 4
  for a, b in zip(rows[1], rows[8]):
    for key in ("train/loss", "test/loss", "align/update_angle/all"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)


def test_best_draw_is_chosen_on_validation_and_reports_its_test_error():
  from jaxbio.train_replicas import best_draw, draws_table  # pylint: disable=g-import-not-at-top
  # Two draws x two seeds, two epochs; draw 1 has the lower test error but the higher
  # validation error, so validation picks draw 0 and reports its test error at the
  # epoch of its best validation error.
  val = {(0, 0): (3.0, 2.0), (0, 1): (3.0, 2.2), (1, 0): (2.5, 2.6), (1, 1): (2.5, 2.8)}
  test = {(0, 0): (3.1, 2.4), (0, 1): (2.9, 2.6), (1, 0): (1.0, 1.1), (1, 1): (1.2, 1.3)}
  records = [{"epoch": e + 1, "replica": 2 * d + s, "seed": s, "draw": d,
              "hparams": {"optimizer.learning_rate": [1e-3, 1e-4][d]},
              "val/error_pct": val[d, s][e], "test/error_pct": test[d, s][e]}
             for d in (0, 1) for s in (0, 1) for e in (0, 1)]
  best = best_draw(records)
  assert best["draw"] == 0 and best["selected_by"] == "validation"
  assert best["select_mean"] == pytest.approx(2.1)
  assert best["test_mean"] == pytest.approx(2.5) and best["test_se"] == pytest.approx(0.1)
  no_val = [{k: v for k, v in r.items() if k != "val/error_pct"} for r in records]
  by_test = best_draw(no_val)
  assert by_test["draw"] == 1 and by_test["selected_by"].startswith("test")
  assert [d["seeds"] for d in draws_table(records)] == [2, 2]
