"""The launcher and train_and_evaluate, end to end, and their bad-input errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxbio import data, registry, train
from jaxbio.data import testing as data_testing
from launch.configs import bartunov

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = data.shared_data_dir()


def _launch(tmp_path, *flags, timeout=1200):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "launch.main", f"--workdir={tmp_path}", *flags]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _small(config):
  config.dataset.train_split = "train[:2560]"
  config.dataset.test_split = "test[:1000]"
  config.num_epochs = 2
  config.steps_per_call = 7
  config.alignment_every = 10
  return config


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
@pytest.mark.skipif(SHARED is None, reason="../shared/data/tfds (real MNIST) not present")
def test_launcher_runs_end_to_end_on_real_mnist(tmp_path):
  proc = _launch(tmp_path, "--config=launch/configs/bartunov.py:mnist,fc,fa",
                 f"--config.dataset.data_dir={SHARED}", "--config.dataset.train_split=train[:2560]",
                 "--config.dataset.test_split=test[:1000]", "--config.num_epochs=2",
                 "--config.alignment_every=10", "--config.optimizer.learning_rate=0.001")
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[-1]["test/accuracy"] > 0.6   # 20 steps of FA on real digits.
  assert "align/feedback_angle/layer1" in records[-1]
  assert "align/update_angle/all" in records[-1]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert "steps/s" in proc.stderr and "ETA" in proc.stderr


@pytest.mark.parametrize("flag,message", [
    ("--config.rule.name=bogus", "unknown rule.name 'bogus'; valid choices: bp, fa, dfa"),
    ("--config.dataset.name=bogus", "unknown dataset.name 'bogus'; valid choices: mnist"),
    ("--config.model.arch=bogus", "unknown model.arch 'bogus'; valid choices: mlp"),
    ("--config.optimizer.learning_rate=-0.1", "learning_rate must be > 0, got -0.1"),
    ("--config.optimizer.name=rmsprop", "unknown optimizer 'rmsprop'; valid choices: sgd"),
    ("--config.model.activation=swish", "unknown activation 'swish'; valid choices:"),
    ("--config.rule.name=hep", "rule 'hep' needs a convergent recurrent network"),
    ("--config.homeostasis.weight=1.0", "homeostasis.weight > 0 needs a convergent recurrent"),
    ("--config.batch_size=0", "config.batch_size must be a positive integer, got 0"),
    ("--config.version=2", "config version 2 is not supported; this jaxbio reads config version 1"),
    ("--config.model.lr=0.1", "unknown config field 'model.lr': model has no field 'lr'; "
                              "valid fields: activation, arch, kernel_init, widths"),
    ("--config.rulez.name=fa", "the config has no field 'rulez'; valid fields: alignment_every"),
])
def test_bad_flags_fail_with_one_line(tmp_path, flag, message):
  proc = _launch(tmp_path / "w", "--config=launch/configs/bartunov.py:mnist,fc,bp",
                 "--config.dataset.data_dir=" + str(tmp_path / "nodata"), flag)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("jaxbio: error:"), proc.stderr[-2000:]
  assert message in last
  assert proc.stderr.count(message) == 1, proc.stderr  # printed once, not also as a log line.


def test_bad_config_argument_is_one_line(tmp_path):
  proc = _launch(tmp_path, "--config=launch/configs/bartunov.py:mnist,fc,bogus")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "jaxbio: error: launch/configs/bartunov.py: unknown rule 'bogus' for this config; "
      "valid choices: bp, fa, dfa, kp, sign_symmetry, dtp, sdtp, ao_sdtp, tp")
  proc = _launch(tmp_path, "--config=launch/configs/nope.py")
  assert proc.stderr.strip().splitlines()[-1] == (
      "jaxbio: error: config file 'launch/configs/nope.py' not found")


def test_missing_dataset_and_bad_workdir(tmp_path):
  proc = _launch(tmp_path / "w", "--config=launch/configs/bartunov.py:mnist,fc,bp",
                 f"--config.dataset.data_dir={tmp_path / 'empty'}")
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert "not found in" in last and str(tmp_path / "empty") in last
  afile = tmp_path / "afile"
  afile.write_text("x")
  config = bartunov.get_config("mnist,fc,bp")
  with pytest.raises(ValueError, match="is not a directory"):
    train.train_and_evaluate(config, str(afile))
  assert afile.read_text() == "x"


def test_process_flags_need_a_coordinator(tmp_path):
  proc = _launch(tmp_path, "--config=launch/configs/bartunov.py:mnist,fc,bp", "--num_processes=2",
                 "--process_id=1")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "jaxbio: error: --num_processes and --process_id need --coordinator_address too "
      "(under Slurm, give none of them)")


def test_unknown_config_field_and_config_arg():
  with pytest.raises(ValueError, match="valid choices: bp, fa, dfa"):
    bartunov.get_config("mnist,fc,hebb")


@pytest.mark.parametrize("rule,arch", [  # (the conv ones in CI's slow run)
    ("dfa", "mlp"), pytest.param("kp", "lcnet", marks=pytest.mark.slow),
    pytest.param("sign_symmetry", "convnet", marks=pytest.mark.slow)])
def test_train_and_evaluate_on_mock_data(tmp_path, rule, arch):
  config = _small(bartunov.get_config("mnist,fc,bp"))
  config.rule.name = rule
  config.model.arch = arch
  if arch != "mlp":
    config.model.convs = ((8, 3, 2),)
    config.model.dense = (16,)
    config.model.activation = "tanh"
    config.model.pool = "" if arch == "lcnet" else "max_pool:2:2"
    del config.model["widths"]
  with data_testing.mock_data(2560):
    config.dataset.data_dir = str(tmp_path / "tfds")
    record = train.train_and_evaluate(config, str(tmp_path))
  assert record["epoch"] == 2
  assert np.isfinite(record["test/loss"])
  assert "align/update_angle/all" in record


def _poisoned(rule, bad_step):
  """Wraps a rule so its updates become NaN at step ``bad_step`` (1-based)."""

  def init(key, params):
    return (rule.init(key, params), jax.numpy.int32(0))

  def update(params, net_state, state, batch, key):
    inner, count = state
    out = rule.update(params, net_state, inner, batch, key)
    scale = jax.numpy.where(count + 1 == bad_step, jax.numpy.nan, 1.0)
    grads = jax.tree.map(lambda g: g * scale, out.grads)
    return out._replace(grads=grads, rule_state=(out.rule_state, count + 1))

  return rule._replace(init=init, update=update)


def test_divergence_stops_at_the_step_and_keeps_last_good_state():
  config = _small(bartunov.get_config("mnist,fc,bp"))
  config.model.widths = (8,)
  exp = train.build_experiment(config, 2560)
  mesh = train.make_mesh(jax.devices())
  rng = np.random.default_rng(0)
  images = jax.numpy.asarray(rng.integers(0, 256, (2560, 28, 28, 1), np.uint8))
  labels = jax.numpy.asarray(rng.integers(0, 10, (2560,), np.int32))
  idx = jax.numpy.arange(7 * 128, dtype=jax.numpy.int32).reshape(7, 128)

  def run(bad_step, n):
    e = exp._replace(rule=_poisoned(exp.rule, bad_step))
    chunk = train.make_train_chunk(e, config, mesh)
    return chunk(train.init_state(e, 0), images, labels, idx, jax.numpy.int32(n), np.nan)

  state, _, bad, bad_step, _, _ = run(bad_step=6, n=7)
  assert train.Bad(int(bad)) == train.Bad.UPDATE and int(bad_step) == 6
  clean, _, ok, _, _, _ = run(bad_step=-1, n=5)
  assert int(ok) == 0 and int(state.step) == 5
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(clean.params)):
    np.testing.assert_array_equal(a, b)


def test_train_chunk_compiles_once_for_every_chunk_length():
  config = _small(bartunov.get_config("mnist,fc,bp"))
  config.model.widths = (8,)
  exp = train.build_experiment(config, 2560)
  mesh = train.make_mesh(jax.devices())
  chunk = train.make_train_chunk(exp, config, mesh)
  images = jax.numpy.zeros((2560, 28, 28, 1), jax.numpy.uint8)
  labels = jax.numpy.zeros((2560,), jax.numpy.int32)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(train.init_state(exp, 0), replicated)
  idx = jax.numpy.zeros((config.steps_per_call, config.batch_size), jax.numpy.int32)
  first = jax.device_put(np.float32(np.nan), replicated)
  for n in (7, 3, 1):
    state, sums, bad, _, _, first = chunk(state, images, labels, idx, jax.numpy.int32(n), first)
  assert int(state.step) == 11 and int(bad) == 0
  assert chunk._cache_size() == 1


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_unrolled_chunk_equals_the_while_loop_chunk():
  # A small MLP with batch norm and KP (after_step), chunks of 3, 1 and 0 steps.
  rng = np.random.default_rng(0)
  images = jax.numpy.asarray(rng.integers(0, 256, (256, 28, 28, 1), np.uint8))
  labels = jax.numpy.asarray(rng.integers(0, 10, (256,), np.int32))
  idx = jax.numpy.asarray(rng.integers(0, 256, (3, 16), np.int32))
  results = {}
  for loop in ("while", "unrolled"):
    config = bartunov.get_config("mnist,fc,kp")
    config.update(dict(batch_size=16, steps_per_call=3, chunk_loop=loop))
    config.model.update(dict(widths=(8, 8), batch_norm=True))
    exp = train.build_experiment(config, 256)
    mesh = train.make_mesh(jax.devices()[:1])
    chunk = train.make_train_chunk(exp, config, mesh)
    state = train.init_state(exp, 0)
    first = np.float32(np.nan)
    for n in (3, 1, 0):
      state, sums, bad, _, _, first = chunk(state, images, labels, idx, jax.numpy.int32(n),
                                            first)
    assert int(state.step) == 4 and int(bad) == 0
    results[loop] = jax.device_get((state, sums, first))
  for a, b in zip(jax.tree.leaves(results["while"]), jax.tree.leaves(results["unrolled"])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="unknown chunk_loop 'bogus'; valid choices: while, unrolled"):
    registry.validate(_with(bartunov.get_config("mnist,fc,bp"), chunk_loop="bogus"))


def _with(config, **fields):
  config.update(fields)
  return config


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
@pytest.mark.skipif(SHARED is None, reason="../shared/data/tfds (real Fashion-MNIST) not present")
def test_hep_with_homeostasis_through_the_launcher(tmp_path):
  proc = _launch(tmp_path, "--config=launch/configs/hep_fmnist.py:fig4_reciprocal,1.0,runlocal",
                 f"--config.dataset.data_dir={SHARED}", "--config.dataset.train_split=train[:500]",
                 "--config.dataset.test_split=test[:500]", "--config.alignment_every=10",
                 "--config.model.t_free=40", "--config.rule.t_nudge=10")
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  for key in ("train/homeostasis", "train/log10_residual", "align/jac_sym", "align/weight_angle",
              "align/error_cos/all", "align/update_angle/all",
              "align/feedback_angle/l2-l1"):
    assert np.isfinite(record[key]), key
  assert 0.5 <= record["align/jac_sym"] <= 1.0
  # The readout is trained by its exact gradient: 0 degrees from RBP.
  assert record["align/update_angle/readout.kernel"] < 0.1


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_hep_cnn_on_mock_cifar(tmp_path):
  from launch.configs import hep_conv  # pylint: disable=g-import-not-at-top
  config = hep_conv.get_config("cifar10,table2_n2,runlocal")
  config.model.channels = (4, 4, 4, 4)
  config.model.t_free = 4
  config.rule.t_nudge = 2
  config.homeostasis.num_probes = 1
  config.alignment_every = 0
  with data_testing.mock_data(16):
    config.dataset.data_dir = str(tmp_path / "tfds")
    record = train.train_and_evaluate(config, str(tmp_path))
  assert record["epoch"] == 1 and np.isfinite(record["test/loss"])
  assert np.isfinite(record["train/homeostasis"])


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_host_and_device_placement_train_identically(tmp_path):
  from jaxbio import checkpoint  # pylint: disable=g-import-not-at-top
  finals = []
  for placement in ("device", "host"):
    config = _small(bartunov.get_config("mnist,fc,fa"))
    config.model.widths = (16,)
    config.data_placement = placement
    with data_testing.mock_data(2560):
      config.dataset.data_dir = str(tmp_path / "tfds")
      train.train_and_evaluate(config, str(tmp_path / placement))
    exp = train.build_experiment(config, 2560)
    ckpt = checkpoint.Checkpointer(str(tmp_path / placement / "checkpoints"))
    finals.append(ckpt.restore_latest(jax.eval_shape(lambda: train.init_state(exp, 0)))[0])
    ckpt.close()
  assert int(finals[0].step) == int(finals[1].step) == 40
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _run_chunk(exp, config, n):
  mesh = train.make_mesh(jax.devices())
  chunk = train.make_train_chunk(exp, config, mesh)
  images = jax.numpy.zeros((2560, 28, 28, 1), jax.numpy.uint8)
  labels = jax.numpy.zeros((2560,), jax.numpy.int32)
  idx = jax.numpy.zeros((7, 128), jax.numpy.int32)
  return chunk(train.init_state(exp, 0), images, labels, idx, jax.numpy.int32(n), np.nan)


def test_nonfinite_rule_state_stops_at_the_step_and_keeps_the_last_good_state():
  config = _small(bartunov.get_config("mnist,fc,bp"))
  config.model.widths = (8,)
  exp = train.build_experiment(config, 2560)
  # A rule whose state never feeds its updates and turns NaN after step 3.
  def after_step(state, params, new_params, updates, key):
    return {"count": state["count"] + 1,
            "baseline": jax.numpy.where(state["count"] >= 3, jax.numpy.nan, 0.0)}, new_params
  rule = exp.rule._replace(
      init=lambda key, params: {"count": jax.numpy.int32(0), "baseline": jax.numpy.zeros(())},
      after_step=after_step)
  state, _, bad, bad_step, _, _ = _run_chunk(exp._replace(rule=rule), config, 6)
  assert train.Bad(int(bad)) == train.Bad.RULE_STATE and int(bad_step) == 4
  assert int(state.step) == 3 and int(state.rule_state["count"]) == 3
  assert np.isfinite(float(state.rule_state["baseline"]))


def test_nonfinite_network_state_is_caught_at_the_end_of_the_chunk():
  config = _small(bartunov.get_config("mnist,fc,bp"))
  config.model.widths = (8,)
  config.model.batch_norm = True
  exp = train.build_experiment(config, 2560)
  bp = exp.rule

  def update(params, net_state, rule_state, batch, key):  # net state is not checked per step.
    out = bp.update(params, net_state, rule_state, batch, key)
    return out._replace(net_state=jax.tree.map(lambda x: x * jax.numpy.nan, out.net_state))

  state, _, bad, bad_step, _, _ = _run_chunk(exp._replace(rule=bp._replace(update=update)),
                                             config, 5)
  assert train.Bad(int(bad)) == train.Bad.STATE
  assert int(bad_step) == int(state.step) == 5


def test_config_errors_come_before_jax_is_imported(tmp_path):
  code = ("import sys; from launch import main\n"
          "try:\n  main.run()\nexcept SystemExit as e:\n  code = e.code\n"
          "print('jax imported:', 'jax' in sys.modules, 'exit:', code)")
  for flag, message in (("--config.rule.name=bogus", "unknown rule.name 'bogus'"),
                        ("--config.steps_per_call=0", "config.steps_per_call must be a positive"),
                        ("--config.model.arch=hep_mlp", "rule 'fa' trains feedforward networks")):
    argv = ["launch.main", "--config=launch/configs/bartunov.py:mnist,fc,fa",
            f"--workdir={tmp_path / 'w'}", flag]
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.argv = {argv!r}\n" + code],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.stdout.strip() == "jax imported: False exit: 1", proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("jaxbio: error: " + message)
  assert not (tmp_path / "w").exists()


def test_registry_names_match_the_factories():
  from jaxbio import recurrent, registry, rules  # pylint: disable=g-import-not-at-top
  assert registry.rules_of("feedforward") == tuple(rules.FEEDFORWARD_RULES)
  assert set(registry.rules_of("recurrent")) == set(recurrent.RULES)
  for name, factory in {**rules.FEEDFORWARD_RULES, **recurrent.RULES}.items():
    family = "feedforward" if name in rules.FEEDFORWARD_RULES else "recurrent"
    assert registry.resolve(registry.RULE_ENTRIES[(family, name)].factory) is factory
  assert set(registry.RECURRENT_ARCHS) == set(recurrent.ARCHS)
