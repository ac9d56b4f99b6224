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


def alignment_metrics(rule: LearningRule, reference, params, net_state,
                      rule_state, batch, key) -> dict[str, jax.Array]:
  """Per-layer alignment of ``rule`` with its reference rules (usually backprop).

  ``reference`` is a rule or a sequence of rules, each called like ``rule``
  (with the same rule state, so a reference may read the rule's own feedback
  weights). The first one's metrics are named as below; another one's
  ``update_angle_<its name>/...`` and ``update_norm_ratio_<its name>/...``.

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
  references = (reference,) if isinstance(reference, LearningRule) else tuple(reference)
  out = rule.update(params, net_state, rule_state, batch, key)
  upd = _kernel_leaves(out.grads)
  metrics = {}
  for i, ref_rule in enumerate(references):
    suffix = "" if i == 0 else f"_{ref_rule.name}"
    ref = _kernel_leaves(ref_rule.update(params, net_state, rule_state, batch, key).grads)
    for name in upd:
      metrics[f"update_angle{suffix}/{name}"] = angle_degrees(upd[name], ref[name])
      metrics[f"update_norm_ratio{suffix}/{name}"] = _norm_ratio(upd[name], ref[name])
    if upd:
      metrics[f"update_angle{suffix}/all"] = angle_degrees(
          jnp.concatenate([jnp.ravel(v) for v in upd.values()]),
          jnp.concatenate([jnp.ravel(ref[k]) for k in upd]))
  for layer, (b, w) in rule.feedback(params, rule_state).items():
    metrics[f"feedback_angle/{layer}"] = angle_degrees(b, w)
    nonzero = b != 0
    agree = jnp.sum(nonzero & (jnp.sign(b) == jnp.sign(w)))
    metrics[f"feedback_sign_agreement/{layer}"] = agree / jnp.maximum(jnp.sum(nonzero), 1)
    metrics[f"feedback_norm_ratio/{layer}"] = _norm_ratio(b, w)
  return metrics
