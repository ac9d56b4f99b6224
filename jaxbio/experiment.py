"""Experiment assembly: from a config to the network, rule, optimiser and initial state.

:func:`build_experiment` checks the whole config and builds everything a run
needs (nothing here touches data or the file system); :func:`init_state` draws
the initial :class:`TrainState`; :func:`make_preprocess` is the on-device
input transform. The compiled steps are in :mod:`jaxbio.steps`, the loop in
:mod:`jaxbio.train`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbio import build, data, optim, registry, replicas
from jaxbio.rules.base import LearningRule, Pass


class TrainState(NamedTuple):
  """Everything a run carries between steps (a pytree, checkpointed whole).

  Attributes:
    step: training steps taken, over every pass of every epoch.
    params: the trained parameters.
    net_state: network state (batch-norm statistics).
    opt_state: the main optimiser's state.
    rule_state: the rule's state (feedback weights, its own optimisers' state...).
    key: raw uint32 key data, so checkpoints need no key handling.
    phase_epoch: the last epoch whose epoch phases have run (-1: none yet).
  """
  step: jax.Array
  params: Any
  net_state: Any
  opt_state: Any
  rule_state: Any
  key: jax.Array
  phase_epoch: jax.Array


class Experiment(NamedTuple):
  """The pieces a config describes, built and checked.

  Attributes:
    net: the network.
    rule: the learning rule (with any penalties composed in).
    references: the rules alignment metrics compare against.
    tx: the main optimiser, for the trained parameters.
    dataset: the dataset's :class:`jaxbio.data.DatasetSpec`.
    steps_per_pass: training steps of one pass (one sweep of the training set).
    total_steps: steps of the whole run (epochs x passes x steps_per_pass).
  """
  net: Any
  rule: LearningRule
  references: tuple[LearningRule, ...]
  tx: optax.GradientTransformation
  dataset: data.DatasetSpec
  steps_per_pass: int
  total_steps: int

  @property
  def passes(self) -> tuple[Pass, ...]:
    """The data passes of one epoch (the rule's)."""
    return self.rule.epoch_passes()

  @property
  def steps_per_epoch(self) -> int:
    """Training steps of one epoch (all its passes)."""
    return self.steps_per_pass * len(self.passes)

  def position(self, step: int) -> tuple[int, int, int]:
    """``(epoch, pass index, step within the pass)`` of global step ``step``."""
    epoch, within = divmod(step, self.steps_per_epoch)
    p, pos = divmod(within, self.steps_per_pass)
    return epoch, p, pos


def build_experiment(config, num_train: int) -> Experiment:
  """Builds network, rule, references and optimiser; checks the whole config first.

  Args:
    config: an experiment config (see ``launch/configs``).
    num_train: the number of training examples (fixes the steps per epoch).

  Raises:
    ValueError: one line naming the bad value and the valid choices.
  """
  registry.validate(config)
  spec = data.DATASETS[config.dataset.name]
  net = build.build_network(config.model, spec.image_shape, spec.num_classes)
  steps_per_pass = num_train // config.batch_size
  if steps_per_pass < 1:
    raise ValueError(f"config.batch_size {config.batch_size} is larger than the training set "
                     f"({num_train} examples)")
  # The rule is built twice: first to learn its passes (they fix the run's
  # total steps, which schedules of its own optimisers need).
  passes = build.build_rule(config.rule, net).epoch_passes()
  total_steps = steps_per_pass * len(passes) * config.num_epochs
  rule = build.build_rule(config.rule, net, total_steps)
  rule = build.add_penalties(rule, net, config)
  tx = optim.make_optimizer(config.optimizer, total_steps)
  # Errors that would otherwise surface only when the step is traced.
  jax.eval_shape(tx.init, jax.eval_shape(net.init, jax.random.key(0))[0])
  return Experiment(net, rule, build.build_references(rule, net, config.rule), tx, spec,
                    steps_per_pass, total_steps)


def init_state(exp: Experiment, seed: int) -> TrainState:
  """The run's initial state, drawn from ``seed``."""
  key = jax.random.key(seed)
  k_net, k_rule, k_run = jax.random.split(key, 3)
  params, net_state = exp.net.init(k_net)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, net_state=net_state,
                    opt_state=exp.tx.init(params), rule_state=exp.rule.init(k_rule, params),
                    key=jax.random.key_data(k_run), phase_epoch=jnp.full((), -1, jnp.int32))


def rebuild(exp: Experiment, config, values: dict[str, Any]) -> Experiment:
  """``exp`` with its rule, references and optimiser built from ``config`` with ``values``.

  ``values`` maps config fields (``"optimizer.learning_rate"``,
  ``"rule.sigma"``, ...) to values, traced arrays included: this is how each
  replica of a :mod:`jaxbio.replicas` run gets its own hyperparameters inside
  one compiled program. The network, dataset and step counts are ``exp``'s
  (fields that would change them cannot be drawn). No values: ``exp`` itself.
  """
  if not values:
    return exp
  c = replicas.with_values(config, values)
  rule = build.build_rule(c.rule, exp.net, exp.total_steps)
  rule = build.add_penalties(rule, exp.net, c)
  tx = optim.make_optimizer(c.optimizer, exp.total_steps)
  return exp._replace(rule=rule, references=build.build_references(rule, exp.net, c.rule),
                      tx=tx)


def check_replicas(config, num_train: int) -> replicas.ReplicaPlan | None:
  """The run's replica plan, with every replica's own config checked; one-line ValueErrors.

  Each replica's config (its seed and drawn values) is built as a single run
  would be, so a drawn value the rule or optimiser refuses (a negative
  learning rate, say) is reported with the replica's index.
  """
  plan = replicas.plan(config)
  if plan is None:
    return None
  seen = set()
  for r in range(plan.size):
    key = tuple(sorted(plan.values(r).items()))
    if key in seen:
      continue
    seen.add(key)
    try:
      build_experiment(replicas.config_for(config, plan, r), num_train)
    except ValueError as e:
      raise ValueError(f"replica {r} ({_describe(plan.values(r))}): {e}") from None
  return plan


def _describe(values: dict[str, float]) -> str:
  return ", ".join(f"{k}={v:.4g}" for k, v in values.items()) or "no drawn fields"


def replica_values(plan: replicas.ReplicaPlan, dtype=jnp.float32) -> dict[str, jax.Array]:
  """The drawn fields' per-replica values, as arrays (leading axis: replicas)."""
  return {k: jnp.asarray(v, dtype) for k, v in plan.hparams.items()}


def init_replicas(exp: Experiment, config, plan: replicas.ReplicaPlan, values) -> TrainState:
  """The replicas' initial states, stacked (replica ``r``: ``init_state`` of its seed, values)."""
  seeds = jnp.asarray(plan.seeds, jnp.uint32)
  return jax.vmap(lambda seed, v: init_state(rebuild(exp, config, v), seed))(seeds, values)


def make_preprocess(config, spec):
  """Returns ``preprocess(key, uint8_images, train) -> float32 images``."""
  augment = config.dataset.augment
  mode = config.dataset.normalize
  # Optional dataset.mean / dataset.std replace the spec's; the hEP CNN runs divide
  # by 1.5x the std (Laborieux & Zenke 2024).
  mean, std = config.dataset.get("mean") or spec.mean, config.dataset.get("std") or spec.std
  stats = (tuple(mean), tuple(config.dataset.get("std_multiplier", 1.0) * s for s in std))

  def preprocess(key, images, train):
    x = images.astype(jnp.float32)
    if train and augment != "none":
      x = data.random_crop_flip(key, x, pad=config.dataset.crop_padding,
                                crop=augment in ("crop_flip", "crop"),
                                flip=augment in ("crop_flip", "flip"))
    return data.normalize(x, stats, mode)

  return preprocess
