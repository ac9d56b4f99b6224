"""The compiled pieces of a run: training chunks, evaluation, periodic metrics, epoch phases.

Each is one ``jax.jit`` over a 1-D ``data`` mesh: batches are sharded on the
mesh's axis, everything else is replicated, and XLA inserts the reductions.

* :func:`make_train_chunk`: up to ``steps_per_call`` training steps of one
  pass in a ``lax.fori_loop``, gathering, augmenting and normalising batches
  on device, with the divergence guard (see :class:`Bad`).
* :func:`make_eval`: test-set loss and accuracy, by the rule's ``evaluate``.
* :func:`make_periodic`: alignment metrics and the family's diagnostics.
* :func:`make_phase`: a rule's epoch phases, one compiled call.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbio import build, registry
from jaxbio.experiment import Experiment, TrainState, make_preprocess
from jaxbio.metrics.alignment import alignment_metrics


class Bad(enum.IntEnum):
  """What went wrong first in a chunk (0: nothing)."""
  NONE = 0
  LOSS = 1        # a non-finite training loss.
  UPDATE = 2      # a non-finite (or overflowing) update.
  STATE = 3       # non-finite parameters, optimiser, rule or network state, found at the
                  # end of a chunk (no good state is left to save).
  EXPLODED = 4    # a finite loss over divergence_factor times the first step's.
  RULE_STATE = 5  # a non-finite rule state, found at the step.

  def describe(self) -> str:
    return {Bad.LOSS: "loss", Bad.UPDATE: "update",
            Bad.STATE: "parameter, optimizer, rule or network state",
            Bad.EXPLODED: "loss (exploded)", Bad.RULE_STATE: "rule state"}.get(self, "")


class ChunkOut(NamedTuple):
  """What a compiled training chunk returns."""
  state: TrainState
  sums: dict            # sums of the per-step training metrics over the good steps.
  bad: jax.Array        # a :class:`Bad` code.
  bad_step: jax.Array   # the step at which it went wrong (-1 if none).
  bad_value: jax.Array  # the loss at that step.
  first_loss: jax.Array  # the loss of the pass's first step in the run (NaN until it has run).


def all_finite(tree, square: bool = False) -> jax.Array:
  """Whether every float in ``tree`` is finite, from one sum per leaf.

  A NaN or infinity anywhere makes the sum non-finite, and a sum fuses with
  the computation that produced the leaf, so this is much cheaper than an
  element-wise test. With ``square``, the sum of squares: it also catches
  values whose square overflows (which would silently zero Adam's steps).
  """
  sums = [jnp.sum(jnp.square(x) if square else x, dtype=jnp.float32)
          for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.isfinite(sum(sums)) if sums else jnp.array(True)


def make_train_chunk(exp: Experiment, config, mesh, placement: str = "device",
                     pass_index: int = 0, plan=None):
  """Compiles ``chunk(state, images, labels, idx, num_steps, first_loss) -> ChunkOut``.

  Runs ``num_steps`` (dynamic, <= ``idx.shape[0]``) training steps of pass
  ``pass_index`` of the rule. With ``placement="device"`` the whole split is on
  every device and step ``i`` gathers the examples ``idx[i]``; with ``"host"``,
  ``images`` and ``labels`` are the chunk's batches, ``(steps, batch, ...)``,
  already sharded on the batch axis, and ``idx`` only gives the number of rows.

  One step: the pass's ``update``; then, for a pass that trains the
  parameters, the main optimiser's step and the rule's ``after_step``; a pass
  with ``trains_params=False`` leaves the parameters and the optimiser state
  exactly as they were. Checked every step: the loss, the update (the sum of
  its squares) and the rule state are finite, and, with
  ``config.divergence_factor = f > 0``, the loss is at most ``f`` times
  ``first_loss``, the loss of the run's first step of this pass (NaN until
  that step has run; the chunk that runs it records it). Once a step is bad the state stops
  changing, so the state returned is the last good one.

  With a :class:`jaxbio.replicas.ReplicaPlan`, the chunk is ``jax.vmap``-ed
  over replicas: ``chunk(values, states, images, labels, idx, num_steps,
  first_loss, start_bad)`` where ``states`` has a leading replica axis, ``idx``
  is ``(replicas, steps, batch)`` (each replica's own data order),
  ``first_loss`` and ``start_bad`` are per replica (a replica that starts bad,
  one that diverged before, is left unchanged), ``values`` maps each drawn
  config field to its per-replica values, and each replica's rule and
  optimiser are built from its own values (:func:`jaxbio.experiment.rebuild`).
  ``images`` and ``labels`` are shared with ``"device"`` placement, per
  replica with ``"host"``.
  """
  registry.check_placement(placement)
  replicated = NamedSharding(mesh, P())
  if plan is None:
    chunk = _chunk_fn(exp, config, mesh, placement, pass_index)
    single = lambda state, images, labels, idx, num_steps, first_loss: chunk(
        state, images, labels, idx, num_steps, first_loss, Bad.NONE)
    return jax.jit(single, donate_argnums=(0,), out_shardings=replicated)
  data_axis = None if placement == "device" else 0
  replicas = _over_replicas(lambda e: _chunk_fn(e, config, mesh, placement, pass_index), exp,
                            config, (0, data_axis, data_axis, 0, None, 0, 0))
  return jax.jit(replicas, donate_argnums=(1,), out_shardings=replicated)


def _chunk_fn(exp: Experiment, config, mesh, placement: str, pass_index: int):
  """The training chunk of :func:`make_train_chunk`, not compiled, with a starting bad code."""
  preprocess = make_preprocess(config, exp.dataset)
  batch_sharding = NamedSharding(mesh, P("data"))
  factor = float(config.get("divergence_factor", 0.0))
  unrolled = config.get("chunk_loop", "while") == "unrolled"
  rule_pass = exp.passes[pass_index]
  first_step = pass_index * exp.steps_per_pass  # the pass's first step of the run.

  def one_step(state: TrainState, images, labels, row):
    key = jax.random.wrap_key_data(state.key)
    key, k_aug, k_rule = jax.random.split(key, 3)
    x = jax.lax.with_sharding_constraint(images[row], batch_sharding)
    y = jax.lax.with_sharding_constraint(labels[row], batch_sharding)
    batch = {"image": preprocess(k_aug, x, True), "label": y}
    out = rule_pass.update(state.params, state.net_state, state.rule_state, batch, k_rule)
    params, opt_state, rule_state = state.params, state.opt_state, out.rule_state
    update_ok = jnp.array(True)
    if rule_pass.trains_params:
      updates, opt_state = exp.tx.update(out.grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      rule_state, params = exp.rule.after_step(rule_state, state.params, params, updates,
                                               jax.random.fold_in(k_rule, 1))
      update_ok = all_finite(out.grads, square=True)
    new = state._replace(step=state.step + 1, params=params, net_state=out.net_state,
                         opt_state=opt_state, rule_state=rule_state,
                         key=jax.random.key_data(key))
    # The whole state is checked once per chunk as well.
    checks = jnp.stack([all_finite(out.metrics["loss"]), update_ok, all_finite(rule_state)])
    codes = jnp.array([Bad.LOSS, Bad.UPDATE, Bad.RULE_STATE], jnp.int32)
    bad = jnp.where(jnp.all(checks), Bad.NONE, codes[jnp.argmin(checks)])
    return new, out.metrics, bad

  def chunk(state: TrainState, images, labels, idx, num_steps, first_loss, start_bad):
    row = (lambda i: idx[i]) if placement == "device" else (lambda i: i)
    zero_metrics = jax.eval_shape(lambda s: one_step(s, images, labels, row(0))[1], state)
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), zero_metrics)

    def body(i, carry):
      state, sums, bad, bad_step, bad_value, first = carry
      new, metrics, step_bad = one_step(state, images, labels, row(i))
      loss = jnp.asarray(metrics["loss"], jnp.float32)
      first = jnp.where(state.step == first_step, loss, first)
      if factor:
        exploded = (step_bad == Bad.NONE) & (loss > factor * first)
        step_bad = jnp.where(exploded, Bad.EXPLODED, step_bad)
      ok = (bad == Bad.NONE) & (step_bad == Bad.NONE)
      state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
      sums = jax.tree.map(lambda s, m: s + jnp.where(ok, m, 0.0).astype(s.dtype), sums, metrics)
      first_bad = (bad == Bad.NONE) & (step_bad != Bad.NONE)
      bad_step = jnp.where(first_bad, state.step + 1, bad_step)
      bad_value = jnp.where(first_bad, loss, bad_value)
      bad = jnp.where(first_bad, step_bad, bad)
      return state, sums, bad, bad_step, bad_value, first

    init = (state, sums0, jnp.asarray(start_bad, jnp.int32), jnp.int32(-1), jnp.float32(jnp.nan),
            jnp.asarray(first_loss, jnp.float32))
    if unrolled:
      # Straight-line code, one copy of the step per row of idx; steps past num_steps leave
      # the carry unchanged. XLA:CPU runs convolutions inside a while loop several times
      # slower than outside one, so conv nets on CPU train faster this way.
      carry = init
      for i in range(idx.shape[0]):
        new = body(i, carry)
        carry = jax.tree.map(lambda n, o, i=i: jnp.where(i < num_steps, n, o), new, carry)
      state, sums, bad, bad_step, bad_value, first = carry
    else:
      state, sums, bad, bad_step, bad_value, first = jax.lax.fori_loop(0, num_steps, body,
                                                                       init)
    whole = all_finite((state.params, state.opt_state, state.rule_state, state.net_state))
    late = (bad == Bad.NONE) & ~whole  # caught only by the end-of-chunk check.
    bad = jnp.where(late, Bad.STATE, bad)
    bad_step = jnp.where(late, state.step, bad_step)
    return ChunkOut(state, sums, bad, bad_step, bad_value, first)

  return chunk


def _softmax_cross_entropy_eval(net):
  def evaluate(params, net_state, rule_state, x, y):
    del rule_state
    logits, _ = net.apply(params, net_state, x, train=False)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y),
            jnp.argmax(logits, -1) == y)
  return evaluate


def _over_replicas(build_fn, exp: Experiment, config, in_axes: tuple, sequential: bool = False):
  """``fn(values, *args)``: ``build_fn(experiment)(*args)`` ``jax.vmap``-ed over replicas.

  Each replica's function is built from its own experiment, the rule and
  optimiser of its ``values`` (:func:`jaxbio.experiment.rebuild`); ``in_axes``
  are those of ``args`` (0: per replica, None: shared). With ``sequential``,
  the replicas run one after another in a ``lax.map`` instead: for code whose
  ``lax.cond`` branches ``vmap`` would turn into both branches at every step.
  """
  from jaxbio.experiment import rebuild  # pylint: disable=g-import-not-at-top

  def one(values, *args):
    return build_fn(rebuild(exp, config, values))(*args)

  if not sequential:
    return jax.vmap(one, in_axes=(0,) + tuple(in_axes))

  def mapped(values, *args):
    batched = [a for a, ax in zip(args, in_axes) if ax == 0]

    def each(xs):
      v, rest = xs
      it = iter(rest)
      return one(v, *[next(it) if ax == 0 else a for a, ax in zip(args, in_axes)])

    return jax.lax.map(each, (values, batched))

  return mapped


def make_eval(exp: Experiment, config, mesh, plan=None):
  """Compiles ``evaluate(params, net_state, rule_state, images, labels) -> (loss_sum, correct)``.

  Per-example losses and correctness come from the rule's ``evaluate`` (default:
  softmax cross-entropy of the network's output), over batches of
  ``config.eval_batch_size``. With a replica plan: ``evaluate(values, params,
  net_state, rule_state, images, labels)`` over stacked replicas, returning
  per-replica sums (the images are shared).
  """
  out = NamedSharding(mesh, P())
  if plan is not None:
    return jax.jit(_over_replicas(lambda e: _eval_fn(e, config), exp, config,
                                  (0, 0, 0, None, None)), out_shardings=out)
  return jax.jit(_eval_fn(exp, config), out_shardings=out)


def _eval_fn(exp: Experiment, config):
  preprocess = make_preprocess(config, exp.dataset)
  eval_bs = config.eval_batch_size
  per_example = exp.rule.evaluate or _softmax_cross_entropy_eval(exp.net)

  def evaluate(params, net_state, rule_state, images, labels):
    n = images.shape[0]
    num_batches = -(-n // eval_bs)
    pad = num_batches * eval_bs - n
    images = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
    labels = jnp.pad(labels, (0, pad))
    valid = jnp.arange(num_batches * eval_bs) < n

    def one(args):
      x, y, m = args
      losses, correct = per_example(params, net_state, rule_state, preprocess(None, x, False), y)
      return jnp.sum(jnp.where(m, losses, 0.0)), jnp.sum(correct & m)

    shape = lambda a: a.reshape((num_batches, eval_bs) + a.shape[1:])
    losses, correct = jax.lax.map(one, (shape(images), shape(labels), shape(valid)))
    return jnp.sum(losses), jnp.sum(correct)

  return evaluate


def make_periodic(exp: Experiment, config, mesh, plan=None):
  """Compiles ``periodic(state, images, labels, key_data) -> dict`` of alignment and diagnostics.

  With a replica plan: ``periodic(values, states, images, labels, key_data)``,
  every argument per replica.
  """
  out = NamedSharding(mesh, P())
  if plan is not None:
    return jax.jit(_over_replicas(lambda e: _periodic_fn(e, config), exp, config,
                                  (0, 0, 0, 0)), out_shardings=out)
  return jax.jit(_periodic_fn(exp, config), out_shardings=out)


def _periodic_fn(exp: Experiment, config):
  preprocess = make_preprocess(config, exp.dataset)
  diagnostics = build.build_diagnostics(exp.net, config.rule)

  def periodic(s: TrainState, x, y, k):
    batch = {"image": preprocess(None, x, False), "label": y}
    key = jax.random.wrap_key_data(k)
    out = alignment_metrics(exp.rule, exp.references, s.params, s.net_state, s.rule_state,
                            batch, key)
    if diagnostics is not None:
      out.update(diagnostics(s.params, batch["image"], y, key))
    if exp.rule.diagnostics is not None:
      out.update(exp.rule.diagnostics(s.params, s.net_state, s.rule_state, batch, key))
    return out

  return periodic


def make_phase(exp: Experiment, mesh, config=None, plan=None):
  """Compiles ``phase(state, epoch_key_data, first_epoch) -> (state, metrics)``: the epoch phases.

  Every phase whose ``every_epoch`` is set (or, before the first epoch, every
  phase) runs in order, keyed by ``fold_in(key, i)``; ``state.phase_epoch`` is
  not changed here (the loop sets it once the phase is done). Returns None if
  the rule has no phases. With a replica plan (and the run's ``config``):
  ``phase(states, key_data, first_epoch, values, alive)``, per replica, the
  replicas one after another (a ``lax.map``), skipping those not ``alive``.
  """
  if not exp.rule.phases:
    return None
  if plan is not None and config is None:
    raise ValueError("make_phase needs the run's config with a replica plan")
  out = NamedSharding(mesh, P())
  if plan is None:
    return jax.jit(lambda state, key_data, first_epoch: _phase_fn(exp, first_epoch)(
        state, key_data), static_argnums=(2,), donate_argnums=(0,), out_shardings=out)

  def phases(states, key_data, first_epoch, values, alive):
    def build(e):
      run = _phase_fn(e, first_epoch)

      def if_alive(state, key, ok):  # a diverged replica's state is left as it is.
        shapes = jax.eval_shape(run, state, key)[1]
        skip = lambda: (state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
        return jax.lax.cond(ok, lambda: run(state, key), skip)

      return if_alive

    # One replica after another: spiking phases branch (lax.cond) on events.
    return _over_replicas(build, exp, config, (0, 0, 0), sequential=True)(
        values, states, key_data, alive)

  return jax.jit(phases, static_argnums=(2,), donate_argnums=(0,), out_shardings=out)


def _phase_fn(exp: Experiment, first_epoch: bool):
  def phase(state: TrainState, key_data):
    key = jax.random.wrap_key_data(key_data)
    rule_state, metrics = state.rule_state, {}
    for i, ph in enumerate(exp.rule.phases):
      if ph.every_epoch or first_epoch:
        rule_state, m = ph.run(state.params, state.net_state, rule_state,
                               jax.random.fold_in(key, i))
        metrics.update({f"{ph.name}/{k}" if len(exp.rule.phases) > 1 else k: v
                        for k, v in m.items()})
    return state._replace(rule_state=rule_state), metrics

  return phase


def phase_key(seed: int, epoch: int) -> jax.Array:
  """The key data of the epoch phases before ``epoch``: fixed by ``(seed, epoch)``."""
  base = jax.random.fold_in(jax.random.key(seed), 0x9E3779B1 & 0x7FFFFFFF)
  return jax.random.key_data(jax.random.fold_in(base, epoch))

