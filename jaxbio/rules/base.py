"""The learning-rule interface.

A learning rule is built by a factory from its network and hyperparameters,
like an optax transformation, and is a bundle of pure, jit-able functions
(:class:`LearningRule`):

* ``init(key, params) -> rule_state``: everything the rule carries between
  steps (feedback weights, inverse networks and their optimiser state, running
  baselines, spiking-phase statistics). Rule state is never part of the
  trained parameters, so the main optimiser (and its weight decay) never
  touches it. Rules that need no state return :class:`EmptyState`.
* ``update(params, net_state, rule_state, batch, key) -> RuleOutput``: for one
  batch, the *updates* for the trained parameters (``grads``: same tree as
  ``params``, in gradient convention: the optimiser descends them, so
  backprop's update is the gradient of the loss), the new ``rule_state``, the
  new ``net_state`` (batch-norm statistics), ``metrics`` and ``aux`` arrays
  other components may use (e.g. the free fixed point of a recurrent
  network). ``metrics["loss"]`` (a scalar: the batch's training loss) is
  required: the trainer logs it and its divergence guard watches it;
  ``metrics["accuracy"]`` is logged when present; any other scalar is
  averaged per epoch as ``train/<key>``.
* ``after_step(rule_state, params, new_params, updates, key) -> (rule_state,
  new_params)``: called after the optimiser step with the update it applied
  (``new_params = params + updates``) and a fresh key. Kolen-Pollack gives
  its feedback weights the same update, tied modes re-copy the new weights,
  weight mirror draws its noise here. It may also adjust ``new_params``
  (e.g. a decoupled decay the optimiser must not see). The identity by default.
* ``feedback(params, rule_state) -> dict[str, (B, K)]``: the backward weights
  the rule uses, by layer name, each paired with the forward weights it should
  align with, in the same layout: ``B`` is aligned iff ``B`` is proportional
  to ``K``. For a sequential network both are in the forward kernel's layout,
  so ``B == K`` means the feedback matrix equals ``W^T`` in math notation. An
  empty dict where the notion does not apply (backprop, DFA). Used by
  alignment metrics only.

Beyond one update per batch, a rule may declare:

* **Passes** (``passes``): several named data passes per epoch, each a
  :class:`Pass` with its own ``update`` and its own compiled step. A pass with
  ``trains_params=False`` leaves the trained parameters and the main
  optimiser's state exactly unchanged (it only updates the rule state), e.g.
  target propagation's alternating schedule: an inverse-only pass, then a
  forward-only pass. Empty: one pass of ``update``.
* **Epoch phases** (``phases``): a compiled :class:`Phase` run before an epoch
  (every epoch, or only the first) that rewrites the rule state, e.g. RDD's
  spiking feedback phase. The trainer keys it by seed and epoch, records its
  completion in the checkpointed train state (a resume never re-runs it),
  checkpoints right after it, and logs its metrics as ``phase/<key>``.
* **Its own optimisers**, for its own state (target propagation's inverse
  networks): the factory takes ``optax.GradientTransformation`` arguments,
  keeps their state in the rule state, and applies them inside ``update``.
  From a config, :func:`jaxbio.build.build_rule` builds them from config
  subtrees named in the rule's registry entry, like the main optimiser.
* **Its loss and evaluation** (``evaluate``): ``(params, net_state,
  rule_state, images, labels) -> (loss, correct)``, per example, used for the
  test set. Default: softmax cross-entropy of the network's output.
* **Its diagnostics** (``diagnostics``): ``(params, net_state, rule_state,
  batch, key) -> dict`` of scalars, computed with the alignment metrics
  every ``alignment_every`` steps (never inside the training step) and
  logged as ``align/<key>``: e.g. BurstCCN's apical potentials.
* **Its references** (``references``): the rules whose updates alignment
  metrics compare against, called with the same arguments as ``update``
  (so a reference can read the rule's own state, e.g. FA with the rule's
  feedback weights). The first is logged as ``update_angle/...``, others as
  ``update_angle_<name>/...``. Default: backprop on cross-entropy
  (feedforward networks) or recurrent backprop (convergent recurrent ones).

Example (paste into your own JAX code)::

    >>> import jax, optax, jaxbio
    >>> net = jaxbio.nets.mlp((784,), [32, 32], 10)
    >>> rule = jaxbio.rules.kolen_pollack(net, weight_decay=0.01)
    >>> params, net_state = net.init(jax.random.key(0))
    >>> rule_state = rule.init(jax.random.key(1), params)
    >>> tx = optax.adam(1e-3)
    >>> opt_state = tx.init(params)
    >>> @jax.jit
    ... def step(params, net_state, opt_state, rule_state, batch, key):
    ...   k_rule, k_after = jax.random.split(key)
    ...   out = rule.update(params, net_state, rule_state, batch, k_rule)
    ...   updates, opt_state = tx.update(out.grads, opt_state, params)
    ...   new_params = optax.apply_updates(params, updates)
    ...   rule_state, new_params = rule.after_step(out.rule_state, params, new_params, updates,
    ...                                            k_after)
    ...   return new_params, out.net_state, opt_state, rule_state, out.metrics
    >>> batch = {"image": jax.numpy.zeros((8, 784)), "label": jax.numpy.arange(8) % 10}
    >>> params, net_state, opt_state, rule_state, metrics = step(
    ...     params, net_state, opt_state, rule_state, batch, jax.random.key(2))
    >>> bool(metrics["loss"] > 0)
    True
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Batch = dict[str, jax.Array]  # {"image": (B, ...) float, "label": (B,) int}


def check_batch(net, batch) -> None:
  """One-line ValueErrors for a batch that ``net``'s rules cannot train on.

  Checks, at trace time (so at no cost per step inside ``jit``): that
  ``batch`` is a dict with keys ``"image"`` and ``"label"``, that the images
  are ``(B, *net.input_shape)`` and the labels ``(B,)`` integers. When the
  labels are concrete (on the host, or an eager call outside ``jit``) it also
  checks that they lie in ``[0, num_classes)``: out-of-range labels would
  otherwise give a silent NaN loss. Every rule's ``update`` calls this; call
  it yourself where your batches enter, outside ``jit``, to check the values
  of a batch from your own pipeline.

  Args:
    net: the network (anything with ``input_shape`` and ``num_classes`` or
      ``num_outputs``).
    batch: ``{"image": (B, ...) float, "label": (B,) int}``.
  """
  num_classes = getattr(net, "num_classes", None) or net.num_outputs
  if not isinstance(batch, Mapping) or "image" not in batch or "label" not in batch:
    got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    raise ValueError(f"batch must be a dict with keys 'image' and 'label', got {got}")
  shape = tuple(np.shape(batch["image"]))
  if len(shape) < 1 or shape[1:] != tuple(net.input_shape):
    raise ValueError(f"batch['image'] has shape {shape}, but the network expects (batch, "
                     f"{', '.join(map(str, net.input_shape))})")
  labels = batch["label"]
  if tuple(np.shape(labels)) != shape[:1]:
    raise ValueError(f"batch['label'] has shape {tuple(np.shape(labels))}; expected "
                     f"({shape[0]},): one integer class per image")
  dtype = np.dtype(getattr(labels, "dtype", None) or np.asarray(labels).dtype)
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f"batch['label'] has dtype {dtype}; expected integer class indices in "
                     f"[0, {num_classes})")
  if not isinstance(labels, jax.core.Tracer):
    values = np.asarray(labels)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
      raise ValueError(f"batch['label'] has {bad.size} label(s) outside [0, {num_classes}), "
                       f"e.g. {int(bad[0])}; labels must be class indices 0..{num_classes - 1}")


class EmptyState(NamedTuple):
  """The state of a rule that carries nothing between steps (like optax's ``EmptyState``)."""


class RuleOutput(NamedTuple):
  """What a rule's ``update`` returns for one batch (see the module docstring)."""
  grads: Any
  rule_state: Any
  net_state: Any
  metrics: dict[str, jax.Array]
  aux: dict[str, jax.Array] = {}


class Pass(NamedTuple):
  """One data pass of an epoch (see the module docstring).

  Attributes:
    name: the pass's name, e.g. ``"inverse"``; metrics are logged per epoch
      as ``train/<key>`` for the last pass and ``train_<name>/<key>`` for the
      others.
    update: ``(params, net_state, rule_state, batch, key) -> RuleOutput``.
    trains_params: False: the trainer applies no optimiser step to the
      parameters in this pass (``grads`` are ignored), so they and the main
      optimiser's state stay exactly as they are.
  """
  name: str
  update: Callable[..., "RuleOutput"]
  trains_params: bool = True


class Phase(NamedTuple):
  """A compiled computation run before an epoch that updates the rule state.

  Attributes:
    name: the phase's name (for logs).
    run: ``(params, net_state, rule_state, key) -> (rule_state, metrics)``;
      ``metrics`` are scalars, logged in that epoch's record as
      ``phase/<key>``.
    every_epoch: True: before every epoch; False: before the first only.
  """
  name: str
  run: Callable[..., tuple[Any, dict[str, jax.Array]]]
  every_epoch: bool = True


def _identity_after_step(rule_state, params, new_params, updates, key):
  del params, updates, key
  return rule_state, new_params


class LearningRule(NamedTuple):
  """A learning rule: pure functions closed over a network and hyperparameters.

  Attributes:
    name: registry name of the rule.
    init: ``(key, params) -> rule_state``.
    update: ``(params, net_state, rule_state, batch, key) -> RuleOutput``.
    feedback: ``(params, rule_state) -> dict[str, (B, K)]``.
    after_step: ``(rule_state, params, new_params, updates, key) ->
      (rule_state, new_params)``, after the optimiser step.
    passes: the epoch's data passes (empty: one pass of ``update``).
    phases: computations run before an epoch.
    evaluate: ``(params, net_state, rule_state, images, labels) -> (loss,
      correct)`` per example, or None for softmax cross-entropy.
    references: the rules alignment metrics compare against (empty: the
      network family's exact-gradient rule).
    diagnostics: ``(params, net_state, rule_state, batch, key) -> dict`` of
      scalars computed with the alignment metrics, or None.

  See the module docstring for each.
  """
  name: str
  init: Callable[[jax.Array, Any], Any]
  update: Callable[..., RuleOutput]
  feedback: Callable[[Any, Any], dict[str, tuple[jax.Array, jax.Array]]] = (
      lambda params, rule_state: {})
  after_step: Callable[..., tuple[Any, Any]] = _identity_after_step
  passes: tuple[Pass, ...] = ()
  phases: tuple[Phase, ...] = ()
  evaluate: Callable[..., tuple[jax.Array, jax.Array]] | None = None
  references: tuple["LearningRule", ...] = ()
  diagnostics: Callable[..., dict[str, jax.Array]] | None = None

  def epoch_passes(self) -> tuple[Pass, ...]:
    """The passes of one epoch: ``passes``, or one pass of ``update``."""
    return self.passes or (Pass("train", self.update),)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer ``labels``."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  return {"loss": cross_entropy(logits, labels), "accuracy": accuracy(logits, labels)}


RULE_GRADS = "rule_grads"  # aux key: the wrapped rule's own updates (see with_penalty).


def concrete(x) -> bool:
  """Whether ``x`` is a concrete value, not a traced one.

  A hyperparameter that differs between the replicas of one program
  (:mod:`jaxbio.replicas`) reaches a rule's factory traced; range checks
  skip it (each replica's value was checked as a single run's first).
  """
  return not isinstance(x, jax.core.Tracer)


def with_penalty(rule: LearningRule, penalty: Callable[..., jax.Array], weight: float,
                 name: str = "penalty") -> LearningRule:
  """Adds ``weight * grad(penalty)`` to a rule's updates.

  The wrapped rule's update is g_total = g_rule + λ ∇_θ P(θ), with λ =
  ``weight`` (for Jacobian homeostasis, Laborieux & Zenke, ICLR 2024: the
  objective L_task + λ L_homeo, one optimiser step on g_total).

  ``penalty(params, batch, aux, key) -> scalar`` may use the rule's auxiliary
  outputs (e.g. a recurrent network's fixed point, held constant). The rule's
  own state is unchanged; the penalty value is logged as ``metrics[name]``,
  and the rule's own updates g_rule (without the penalty) are kept as
  ``aux["rule_grads"]`` (:data:`RULE_GRADS`), so alignment metrics can compare
  the learning rule itself with a reference; nested penalties keep the
  innermost rule's. This is how the launcher composes, for example, the
  Jacobian-homeostasis loss with any rule on convergent recurrent networks.
  """
  if concrete(weight) and weight < 0:
    raise ValueError(f"{name} weight must be >= 0, got {weight}")

  def add_penalty(rule_update):
    def update(params, net_state, rule_state, batch, key):
      key_rule, key_pen = jax.random.split(key)
      out = rule_update(params, net_state, rule_state, batch, key_rule)
      value, grads = jax.value_and_grad(penalty)(params, batch, out.aux, key_pen)
      total = jax.tree.map(lambda g, p: g + weight * p, out.grads, grads)
      aux = {**out.aux, RULE_GRADS: out.aux.get(RULE_GRADS, out.grads)}
      return out._replace(grads=total, metrics={**out.metrics, name: value}, aux=aux)
    return update

  passes = tuple(p._replace(update=add_penalty(p.update)) if p.trains_params else p
                 for p in rule.passes)
  return rule._replace(update=add_penalty(rule.update), passes=passes)
