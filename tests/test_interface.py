"""The rule interface's mechanisms, each through the real trainer, with small rules written here.

* passes: a pass that trains only the rule state leaves the parameters and the
  main optimiser's state bitwise unchanged, and a resume in the middle of a
  pass ends bit-identical to an uninterrupted run;
* epoch phases: keyed by seed and epoch, run once per epoch (or before the
  first only), never re-run after a resume, logged as ``phase/...``;
* a rule's own optimiser, built from a config subtree with a schedule over
  the run's total steps, its state in the rule state;
* a rule's own loss (evaluation) and references for alignment metrics;
* ``after_step`` gets a fresh key and the new parameters.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxbio import checkpoint, registry, rules, train
from jaxbio.data import testing as data_testing
from jaxbio.experiment import build_experiment, init_state
from launch.configs import bartunov

N_TRAIN = 256  # 8 steps per pass at batch 32.


# ---------------------------------------------------------------------------
# Rules written for these tests.


class StatsState(NamedTuple):
  seen: jax.Array      # examples counted by the "stats" pass.
  pixel_sum: jax.Array


def two_pass_rule(net):
  """Backprop, after a pass that only counts the examples it sees (rule state only)."""
  bp = rules.backprop(net)

  def init(key, params):
    del key, params
    return StatsState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

  def stats_update(params, net_state, rule_state, batch, key):
    del key
    grads = jax.tree.map(jnp.ones_like, params)  # must be ignored: the pass trains no params.
    new = StatsState(rule_state.seen + batch["image"].shape[0],
                     rule_state.pixel_sum + jnp.sum(batch["image"]))
    return rules.RuleOutput(grads, new, net_state, {"loss": jnp.float32(1.0)})

  def train_update(params, net_state, rule_state, batch, key):
    out = bp.update(params, net_state, rules.EmptyState(), batch, key)
    return out._replace(rule_state=rule_state)

  return rules.LearningRule("test_two_pass", init, train_update,
                            passes=(rules.Pass("stats", stats_update, trains_params=False),
                                    rules.Pass("train", train_update)))


class PhaseState(NamedTuple):
  runs: jax.Array
  draws: jax.Array  # one uniform draw per phase run, from the phase's key.


def phased_rule(net, *, every_epoch: bool = True):
  """Backprop plus an epoch phase that records a random draw from its key."""
  bp = rules.backprop(net)

  def init(key, params):
    del key, params
    return PhaseState(jnp.zeros((), jnp.int32), jnp.zeros((8,), jnp.float32))

  def run(params, net_state, rule_state, key):
    del params, net_state
    draw = jax.random.uniform(key)
    new = PhaseState(rule_state.runs + 1, rule_state.draws.at[rule_state.runs].set(draw))
    return new, {"draw": draw, "runs": new.runs.astype(jnp.float32)}

  def update(params, net_state, rule_state, batch, key):
    return bp.update(params, net_state, rules.EmptyState(), batch, key)._replace(
        rule_state=rule_state)

  return rules.LearningRule("test_phased", init, update,
                            phases=(rules.Phase("probe", run, every_epoch=every_epoch),))


class OwnOptState(NamedTuple):
  theta: jax.Array
  opt_state: optax.OptState


def own_optimizer_rule(net, *, state_optimizer: optax.GradientTransformation, target: float = 3.0):
  """Backprop, while the rule's own optimiser pulls a rule-state vector toward ``target``."""
  bp = rules.backprop(net)

  def init(key, params):
    del key, params
    theta = jnp.zeros((4,), jnp.float32)
    return OwnOptState(theta, state_optimizer.init(theta))

  def update(params, net_state, rule_state, batch, key):
    out = bp.update(params, net_state, rules.EmptyState(), batch, key)
    grad = rule_state.theta - target  # of 1/2 |theta - target|^2.
    upd, opt_state = state_optimizer.update(grad, rule_state.opt_state, rule_state.theta)
    return out._replace(rule_state=OwnOptState(optax.apply_updates(rule_state.theta, upd),
                                               opt_state))

  return rules.LearningRule("test_own_optimizer", init, update)


def _mse_eval(net):
  def evaluate(params, net_state, rule_state, x, y):
    del rule_state
    out, _ = net.apply(params, net_state, x, train=False)
    t = jax.nn.one_hot(y, out.shape[-1])
    return 0.5 * jnp.sum((jax.nn.sigmoid(out) - t) ** 2, -1), jnp.argmax(out, -1) == y
  return evaluate


def mse_rule(net):
  """Backprop on 1/2 |sigmoid(out) - t|^2, with that loss for evaluation and its own reference."""

  def loss(params, net_state, batch):
    out, new_state = net.apply(params, net_state, batch["image"], train=True)
    t = jax.nn.one_hot(batch["label"], out.shape[-1])
    return jnp.mean(0.5 * jnp.sum((jax.nn.sigmoid(out) - t) ** 2, -1)), (out, new_state)

  def update(params, net_state, rule_state, batch, key):
    del key
    (value, (out, new_state)), grads = jax.value_and_grad(loss, has_aux=True)(
        params, net_state, batch)
    return rules.RuleOutput(grads, rule_state, new_state,
                            {"loss": value, "accuracy": rules.accuracy(out, batch["label"])})

  reference = rules.LearningRule("bp_mse", lambda key, params: rules.EmptyState(), update)
  return rules.LearningRule("test_mse", lambda key, params: rules.EmptyState(), update,
                            evaluate=_mse_eval(net),
                            references=(reference, rules.backprop(net)))


class KeyState(NamedTuple):
  draws: jax.Array
  step: jax.Array
  kernel_sum: jax.Array


def key_rule(net):
  """Backprop whose after_step records a draw from its key and the new parameters' sum."""
  bp = rules.backprop(net)

  def init(key, params):
    del key, params
    return KeyState(jnp.zeros((64,), jnp.float32), jnp.zeros((), jnp.int32),
                    jnp.zeros((), jnp.float32))

  def update(params, net_state, rule_state, batch, key):
    return bp.update(params, net_state, rules.EmptyState(), batch, key)._replace(
        rule_state=rule_state)

  def after_step(rule_state, params, new_params, updates, key):
    del params, updates
    return KeyState(rule_state.draws.at[rule_state.step].set(jax.random.uniform(key)),
                    rule_state.step + 1, jnp.sum(new_params[0]["kernel"])), new_params

  return rules.LearningRule("test_key", init, update, after_step=after_step)


@pytest.fixture(autouse=True, scope="module")
def _registered_test_rules():
  """Registers this file's rules by name for its tests only (the registry is global)."""
  entries = [registry.register_rule(registry.RuleEntry(name, "feedforward",
                                                       f"{__name__}:{factory}", optimizers=opts))
             for name, factory, opts in (
                 ("test_two_pass", "two_pass_rule", ()),
                 ("test_phased", "phased_rule", ()),
                 ("test_own_optimizer", "own_optimizer_rule", ("state_optimizer",)),
                 ("test_mse", "mse_rule", ()),
                 ("test_key", "key_rule", ()))]
  yield
  for entry in entries:
    del registry.RULE_ENTRIES[(entry.family, entry.name)]


# ---------------------------------------------------------------------------
# Helpers.


def _config(rule, epochs=2, **rule_fields):
  config = bartunov.get_config("mnist,fc,bp")
  config.dataset.train_split = f"train[:{N_TRAIN}]"
  config.dataset.test_split = "test[:64]"
  config.batch_size = 32
  config.model.widths = (8,)
  config.num_epochs = epochs
  config.steps_per_call = 5
  config.alignment_every = 0
  config.optimizer.learning_rate = 1e-2
  config.rule = ml_collections.ConfigDict(dict(name=rule, **rule_fields))
  return config


def _train(config, workdir):
  with data_testing.mock_data(N_TRAIN):
    config.dataset.data_dir = str(workdir) + "_tfds"
    return train.train_and_evaluate(config, str(workdir))


def _final(config, workdir):
  exp = build_experiment(config, N_TRAIN)
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
  state, _, step = ckpt.restore_latest(jax.eval_shape(lambda: init_state(exp, config.seed)))
  ckpt.close()
  return state, step


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _interrupt_at(monkeypatch, step_to_stop):
  """Makes the loop see a SIGTERM once it reaches ``step_to_stop``."""
  from jaxbio import preemption  # pylint: disable=g-import-not-at-top
  original = preemption.PreemptionFlag.agreed
  seen = {"step": None}

  def agreed(self):
    if seen["step"] == step_to_stop:
      self.signum = 15
      return True
    return original(self)

  orig_chunk = train._Run.train_chunk  # pylint: disable=protected-access

  def train_chunk(self):
    orig_chunk(self)
    seen["step"] = self.step

  monkeypatch.setattr(preemption.PreemptionFlag, "agreed", agreed)
  monkeypatch.setattr(train._Run, "train_chunk", train_chunk)  # pylint: disable=protected-access


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------
# Passes.


def test_a_pass_without_params_leaves_params_and_adam_state_bitwise_unchanged(tmp_path):
  config = _config("test_two_pass")
  exp = build_experiment(config, N_TRAIN)
  assert [p.name for p in exp.passes] == ["stats", "train"]
  assert exp.steps_per_pass == 8 and exp.steps_per_epoch == 16 and exp.total_steps == 32
  mesh = train.make_mesh(jax.devices())
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  put = lambda x: jax.device_put(x, rep)
  images = put(np.random.default_rng(0).integers(0, 256, (N_TRAIN, 28, 28, 1), np.uint8))
  labels = put(np.arange(N_TRAIN, dtype=np.int32) % 10)
  idx = put(np.arange(5 * 32, dtype=np.int32).reshape(5, 32))
  state = jax.jit(lambda: init_state(exp, 0), out_shardings=rep)()
  # A few Adam steps of the training pass first, so the moments are non-zero.
  train_chunk = train.make_train_chunk(exp, config, mesh, pass_index=1)
  state = train_chunk(state, images, labels, idx, put(np.int32(5)), put(np.float32(np.nan))).state
  before = jax.device_get((state.params, state.opt_state))
  stats_chunk = train.make_train_chunk(exp, config, mesh, pass_index=0)
  out = stats_chunk(state, images, labels, idx, put(np.int32(5)), put(np.float32(np.nan)))
  assert int(out.bad) == 0 and int(out.state.step) == 10
  _assert_trees_equal(before, (out.state.params, out.state.opt_state))
  assert int(out.state.rule_state.seen) == 5 * 32


def test_two_pass_epochs_resume_mid_pass_bit_identical(tmp_path, monkeypatch):
  config = _config("test_two_pass")
  _train(config, tmp_path / "ref")
  ref, step = _final(config, tmp_path / "ref")
  assert step == 32
  assert int(ref.rule_state.seen) == 2 * N_TRAIN  # one stats pass per epoch.
  records = _records(tmp_path / "ref")
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[0]["train_stats/loss"] == 1.0 and "train/loss" in records[0]
  # Interrupted in the middle of epoch 2's second pass (step 16 + 8 + 5 = 29: a
  # chunk boundary, chunks being 5 and 3 steps of each 8-step pass), then resumed.
  with monkeypatch.context() as m:
    _interrupt_at(m, 29)
    with pytest.raises(train.Interrupted, match="saved step 29"):
      _train(config, tmp_path / "cut")
  _train(config, tmp_path / "cut")
  cut, step = _final(config, tmp_path / "cut")
  assert step == 32
  _assert_trees_equal(ref, cut)
  for a, b in zip(_records(tmp_path / "ref"), _records(tmp_path / "cut")):
    assert {k: v for k, v in a.items() if not k.startswith("time/")} == {
        k: v for k, v in b.items() if not k.startswith("time/")}


# ---------------------------------------------------------------------------
# Epoch phases.


# The False case in CI's slow run (see setup.cfg).
@pytest.mark.parametrize("every_epoch", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_epoch_phases_run_once_per_epoch_keyed_by_seed_and_epoch(tmp_path, every_epoch):
  config = _config("test_phased", epochs=3, every_epoch=every_epoch)
  _train(config, tmp_path / "a")
  state, _ = _final(config, tmp_path / "a")
  runs = int(state.rule_state.runs)
  assert runs == (3 if every_epoch else 1)
  assert int(state.phase_epoch) == (2 if every_epoch else 0)
  draws = np.asarray(state.rule_state.draws[:runs])
  assert len(set(draws.tolist())) == runs  # each epoch its own key.
  records = _records(tmp_path / "a")
  assert records[0]["phase/runs"] == 1.0 and records[0]["phase/draw"] == pytest.approx(draws[0])
  assert records[0]["phase/wall_s"] >= 0
  # Another run with the same seed draws the same; another seed, others.
  _train(config, tmp_path / "b")
  np.testing.assert_array_equal(_final(config, tmp_path / "b")[0].rule_state.draws, state.rule_state.draws)
  config.seed = 1
  _train(config, tmp_path / "c")
  assert float(_final(config, tmp_path / "c")[0].rule_state.draws[0]) != float(draws[0])


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_a_finished_phase_is_not_rerun_after_a_resume(tmp_path, monkeypatch):
  config = _config("test_phased", epochs=2)
  # Preempted right after epoch 2's phase (step 8): its checkpoint holds the phase.
  from jaxbio import preemption  # pylint: disable=g-import-not-at-top
  original = preemption.PreemptionFlag.agreed

  def agreed(self):
    if int(jax.device_get(self_run["run"].state.phase_epoch)) == 1:
      self.signum = 15
      return True
    return original(self)

  self_run = {}
  orig_phase = train._Run.maybe_run_phase  # pylint: disable=protected-access

  def maybe_run_phase(self):
    self_run["run"] = self
    orig_phase(self)

  with monkeypatch.context() as m:
    m.setattr(preemption.PreemptionFlag, "agreed", agreed)
    m.setattr(train._Run, "maybe_run_phase", maybe_run_phase)  # pylint: disable=protected-access
    with pytest.raises(train.Interrupted, match="saved step 8"):
      _train(config, tmp_path / "w")
  _train(config, tmp_path / "w")
  state, step = _final(config, tmp_path / "w")
  assert step == 16 and int(state.rule_state.runs) == 2  # not 3: epoch 2's phase ran once.
  _train(config, tmp_path / "ref")
  _assert_trees_equal(_final(config, tmp_path / "ref")[0], state)


# ---------------------------------------------------------------------------
# A rule's own optimiser.


def test_a_rules_own_optimiser_comes_from_its_config_subtree(tmp_path):
  opt = ml_collections.ConfigDict(dict(name="adam", learning_rate=0.05, b1=0.9, b2=0.999,
                                       eps=1e-8, schedule="cosine"))
  config = _config("test_own_optimizer", state_optimizer=opt)
  _train(config, tmp_path)
  state, step = _final(config, tmp_path)
  # The same optimiser by hand, with the cosine schedule over the run's 16 steps.
  tx = optax.adam(optax.cosine_decay_schedule(0.05, 16))
  theta = jnp.zeros((4,), jnp.float32)
  opt_state = tx.init(theta)
  for _ in range(step):
    upd, opt_state = tx.update(theta - 3.0, opt_state, theta)
    theta = optax.apply_updates(theta, upd)
  np.testing.assert_allclose(state.rule_state.theta, theta, rtol=1e-6)
  # Its state lives in the rule state (so in checkpoints), not in the main optimiser's.
  assert int(state.rule_state.opt_state[0].count) == 16
  bad = _config("test_own_optimizer", state_optimizer=opt)
  bad.rule.state_optimizer.name = "rmsprop"
  with pytest.raises(ValueError, match="unknown rule.state_optimizer 'rmsprop'; valid choices"):
    build_experiment(bad, N_TRAIN)


# ---------------------------------------------------------------------------
# A rule's own loss, evaluation and references.


def test_a_rules_evaluation_and_references(tmp_path):
  config = _config("test_mse", epochs=1)
  config.alignment_every = 4
  record = _train(config, tmp_path)
  # Evaluated with the rule's loss: 1/2 |sigmoid(out) - t|^2 is at most K/2 = 5 and
  # differs from the cross-entropy of the same network.
  exp = build_experiment(config, N_TRAIN)
  state, _ = _final(config, tmp_path)
  with data_testing.mock_data(N_TRAIN):
    from jaxbio import data  # pylint: disable=g-import-not-at-top
    test = data.load("mnist", "test[:64]", str(tmp_path) + "_tfds")
  x = train.make_preprocess(config, exp.dataset)(None, jnp.asarray(test.images), False)
  losses, _ = _mse_eval(exp.net)(state.params, state.net_state, None, x, jnp.asarray(test.labels))
  assert record["test/loss"] == pytest.approx(float(jnp.mean(losses)), rel=1e-5)
  # The first reference is the rule itself (backprop on its loss): angle 0; the
  # second (backprop on cross-entropy) is logged under its own name.
  assert record["align/update_angle/all"] == pytest.approx(0.0, abs=1e-2)
  assert record["align/update_angle_bp/all"] > 1.0


# ---------------------------------------------------------------------------
# after_step: a fresh key and the new parameters.


def test_after_step_gets_a_fresh_key_and_the_new_parameters(tmp_path):
  config = _config("test_key", epochs=1)
  _train(config, tmp_path / "a")
  state, step = _final(config, tmp_path / "a")
  draws = np.asarray(state.rule_state.draws[:step])
  assert len(set(draws.tolist())) == step == 8
  assert float(state.rule_state.kernel_sum) == pytest.approx(float(jnp.sum(state.params[0]["kernel"])))
  _train(config, tmp_path / "b")
  np.testing.assert_array_equal(_final(config, tmp_path / "b")[0].rule_state.draws,
                                state.rule_state.draws)
