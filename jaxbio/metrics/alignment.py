"""Alignment of any rule with backprop, and of feedback with forward weights.

These metrics cost one extra rule update and one reference gradient, so the
trainer computes them every ``N`` steps in a separate compiled call, never
inside the training step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbio.rules.base import LearningRule


def angle_degrees(a: jax.Array, b: jax.Array) -> jax.Array:
  """Angle in degrees between two arrays seen as flat vectors (90 if one is 0)."""
  a = jnp.ravel(a).astype(jnp.float32)
  b = jnp.ravel(b).astype(jnp.float32)
  denom = jnp.linalg.norm(a) * jnp.linalg.norm(b)
  cos = jnp.where(denom > 0, jnp.vdot(a, b) / jnp.where(denom > 0, denom, 1.0), 0.0)
  return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def _norm_ratio(a, b):
  nb = jnp.linalg.norm(jnp.ravel(b))
  return jnp.linalg.norm(jnp.ravel(a)) / jnp.where(nb > 0, nb, 1.0)


def _kernel_leaves(tree) -> dict[str, jax.Array]:
  """The ``kernel`` leaves (weights, not biases) of a parameter tree, by path name."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if getattr(path[-1], "key", None) == "kernel":
      name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
      out[name] = leaf
  return out


def alignment_metrics(rule: LearningRule, reference: LearningRule, params, net_state,
                      rule_state, batch, key) -> dict[str, jax.Array]:
  """Per-layer alignment of ``rule`` with ``reference`` (usually backprop).

  Returns a flat dict of scalars:

  * ``update_angle/<w>``: angle (degrees) between the rule's update and the
    reference gradient for weight ``w`` on the same batch, and
    ``update_angle/all`` over all weights concatenated;
  * ``update_norm_ratio/<w>``: ``|update| / |reference|``;
  * for every pair in ``rule.feedback``: ``feedback_angle/<layer>`` (angle
    between feedback and forward weights, i.e. ``B`` vs ``W^T``),
    ``feedback_sign_agreement/<layer>`` (fraction of non-zero feedback entries
    whose sign matches) and ``feedback_norm_ratio/<layer>`` (``|B| / |W|``).
  """
  out = rule.update(params, net_state, rule_state, batch, key)
  ref = reference.update(params, net_state, (), batch, key)
  metrics = {}
  upd, bp = _kernel_leaves(out.grads), _kernel_leaves(ref.grads)
  for name in upd:
    metrics[f"update_angle/{name}"] = angle_degrees(upd[name], bp[name])
    metrics[f"update_norm_ratio/{name}"] = _norm_ratio(upd[name], bp[name])
  if upd:
    metrics["update_angle/all"] = angle_degrees(
        jnp.concatenate([jnp.ravel(v) for v in upd.values()]),
        jnp.concatenate([jnp.ravel(bp[k]) for k in upd]))
  for layer, (b, w) in rule.feedback(params, rule_state).items():
    metrics[f"feedback_angle/{layer}"] = angle_degrees(b, w)
    nonzero = b != 0
    agree = jnp.sum(nonzero & (jnp.sign(b) == jnp.sign(w)))
    metrics[f"feedback_sign_agreement/{layer}"] = agree / jnp.maximum(jnp.sum(nonzero), 1)
    metrics[f"feedback_norm_ratio/{layer}"] = _norm_ratio(b, w)
  return metrics
