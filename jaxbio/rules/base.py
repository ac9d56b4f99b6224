"""The learning-rule interface.

A learning rule is built by a factory from its network and hyperparameters,
like an optax transformation, and is a bundle of pure, jit-able functions:

* ``init(key, params) -> rule_state``: everything the rule carries between
  steps (feedback weights, inverse networks and their optimiser state, running
  baselines). Rule state is never part of the trained parameters, so the
  optimiser (and its weight decay) never touches it unless the rule says so.
* ``update(params, net_state, rule_state, batch, key) -> RuleOutput``: for one
  batch, the *updates* for the trained parameters (same tree structure as
  ``params``, in gradient convention: the optimiser descends them, so backprop's
  update is the gradient of the loss), the new rule state, the new network state
  (batch-norm statistics), metrics, and auxiliary arrays other components may
  use (e.g. the free fixed point of a recurrent network).
* ``after_step(rule_state, params, updates) -> rule_state``: called with the
  update the optimiser actually applied to ``params`` (``new = params +
  updates``), for rules whose state must follow the forward weights'
  trajectory (Kolen-Pollack). The identity for most rules.
* ``feedback(params, rule_state) -> dict[str, (B, K)]``: the backward weights
  the rule uses, by layer name, each paired with the forward weights it should
  align with, in the same layout: ``B`` is aligned iff ``B`` is proportional
  to ``K``. For a sequential network both are in the forward kernel's layout,
  so ``B == K`` means the feedback matrix equals ``W^T`` in math notation. An
  empty dict where the notion does not apply (backprop, DFA). Used by
  alignment metrics only.

Example (paste into your own JAX code)::

    import jax, optax, jaxbio
    net = jaxbio.nets.mlp((784,), [256, 256], 10)
    rule = jaxbio.rules.feedback_alignment(net)
    params, net_state = net.init(jax.random.key(0))
    rule_state = rule.init(jax.random.key(1), params)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, net_state, opt_state, rule_state, batch, key):
      out = rule.update(params, net_state, rule_state, batch, key)
      updates, opt_state = tx.update(out.grads, opt_state, params)
      rule_state = rule.after_step(out.state, params, updates)
      return optax.apply_updates(params, updates), out.net_state, opt_state, rule_state
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


class RuleOutput(NamedTuple):
  """What a rule's ``update`` returns for one batch."""
  grads: Any
  state: Any
  net_state: Any
  metrics: dict[str, jax.Array]
  aux: dict[str, jax.Array] = {}


class LearningRule(NamedTuple):
  """A learning rule: pure functions closed over a network and hyperparameters.

  Attributes:
    name: registry name of the rule.
    init: ``(key, params) -> rule_state``.
    update: ``(params, net_state, rule_state, batch, key) -> RuleOutput``.
    feedback: ``(params, rule_state) -> dict[str, (B, K)]`` (see module
      docstring).
    after_step: ``(rule_state, params, updates) -> rule_state``, given the
      optimiser's applied update (see module docstring).
  """
  name: str
  init: Callable[[jax.Array, Any], Any]
  update: Callable[..., RuleOutput]
  feedback: Callable[[Any, Any], dict[str, tuple[jax.Array, jax.Array]]] = (
      lambda params, state: {})
  after_step: Callable[[Any, Any, Any], Any] = lambda state, params, updates: state


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer ``labels``."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  return {"loss": cross_entropy(logits, labels), "accuracy": accuracy(logits, labels)}


RULE_GRADS = "rule_grads"  # aux key: the wrapped rule's own updates (see with_penalty).


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
  if weight < 0:
    raise ValueError(f"{name} weight must be >= 0, got {weight}")

  def update(params, net_state, rule_state, batch, key):
    key_rule, key_pen = jax.random.split(key)
    out = rule.update(params, net_state, rule_state, batch, key_rule)
    value, grads = jax.value_and_grad(penalty)(params, batch, out.aux, key_pen)
    total = jax.tree.map(lambda g, p: g + weight * p, out.grads, grads)
    aux = {**out.aux, RULE_GRADS: out.aux.get(RULE_GRADS, out.grads)}
    return out._replace(grads=total, metrics={**out.metrics, name: value}, aux=aux)

  return rule._replace(update=update)
