"""Alignment of any rule with backprop, and of feedback with forward weights.

These metrics cost one extra rule update and one reference gradient, so the
trainer computes them every ``N`` steps in a separate compiled call, never
inside the training step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbio.rules.base import RULE_GRADS, LearningRule


def angle_degrees(a: jax.Array, b: jax.Array) -> jax.Array:
  """Angle in degrees between two arrays seen as flat vectors (90 if one is 0).

  θ = 2·atan2(‖â − b̂‖, ‖â + b̂‖) with the unit vectors â = a/‖a‖, b̂ = b/‖b‖,
  which equals arccos⟨â, b̂⟩ in exact arithmetic but, unlike arccos of a
  rounded cosine, is accurate to rounding over the whole range: identical
  directions give exactly 0, opposite ones exactly 180, and a float32 angle of
  1e-3° keeps its leading digits (arccos of a float32 cosine cannot resolve
  angles below ≈ 0.03°, since 1 − cos θ ≈ θ²/2 falls under one ulp of 1).
  Each vector is first divided by its largest magnitude, so neither tiny nor
  huge updates underflow or overflow in the norms. Computed in at least
  float32. By convention the angle to a zero vector is 90°.
  """
  dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
  a = jnp.ravel(a).astype(dtype)
  b = jnp.ravel(b).astype(dtype)

  def unit(v):
    scale = jnp.max(jnp.abs(v))
    v = v / jnp.where(scale > 0, scale, 1.0)
    norm = jnp.linalg.norm(v)
    return v / jnp.where(norm > 0, norm, 1.0), scale > 0

  ua, nonzero_a = unit(a)
  ub, nonzero_b = unit(b)
  angle = 2.0 * jnp.arctan2(jnp.linalg.norm(ua - ub), jnp.linalg.norm(ua + ub))
  return jnp.where(nonzero_a & nonzero_b, jnp.degrees(angle), jnp.asarray(90.0, dtype))


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


def _angle_all(upd: dict, ref: dict) -> jax.Array:
  """Angle between all the weights of ``upd`` concatenated and the same of ``ref``."""
  return angle_degrees(jnp.concatenate([jnp.ravel(v) for v in upd.values()]),
                       jnp.concatenate([jnp.ravel(ref[k]) for k in upd]))


def alignment_metrics(rule: LearningRule, reference, params, net_state,
                      rule_state, batch, key) -> dict[str, jax.Array]:
  """Per-layer alignment of ``rule`` with its reference rules (usually backprop).

  ``reference`` is a rule or a sequence of rules, each called like ``rule``
  (with the same rule state, so a reference may read the rule's own feedback
  weights). The first one's metrics are named as below; another one's
  ``update_angle_<its name>/...`` and ``update_norm_ratio_<its name>/...``.

  Returns a flat dict of scalars:

  * ``update_angle/<w>``: angle (degrees) between the rule's own update and
    the reference gradient for weight ``w`` on the same batch, and
    ``update_angle/all`` over all weights concatenated. For a rule wrapped by
    :func:`jaxbio.rules.base.with_penalty` (e.g. hEP with Jacobian
    homeostasis) this is the learning rule's update g_rule alone, read from
    ``aux["rule_grads"]``, not g_rule + λ∇P;
  * ``update_angle_total/<w>`` and ``update_angle_total/all``: only for a
    penalised rule, the same angles for the total update g_rule + λ∇P that
    the optimiser receives;
  * ``update_norm_ratio/<w>``: ``|update| / |reference|`` (the rule's own
    update);
  * for every pair in ``rule.feedback``: ``feedback_angle/<layer>`` (angle
    between feedback and forward weights, i.e. ``B`` vs ``W^T``),
    ``feedback_sign_agreement/<layer>`` (fraction of non-zero feedback entries
    whose sign matches) and ``feedback_norm_ratio/<layer>`` (``|B| / |W|``).
  """
  references = (reference,) if isinstance(reference, LearningRule) else tuple(reference)
  out = rule.update(params, net_state, rule_state, batch, key)
  metrics = {}
  own = out.aux.get(RULE_GRADS)  # the rule's own update, without penalties.
  upd = _kernel_leaves(out.grads if own is None else own)
  total = None if own is None else _kernel_leaves(out.grads)
  for i, ref_rule in enumerate(references):
    suffix = "" if i == 0 else f"_{ref_rule.name}"
    ref = _kernel_leaves(ref_rule.update(params, net_state, rule_state, batch, key).grads)
    for name in upd:
      metrics[f"update_angle{suffix}/{name}"] = angle_degrees(upd[name], ref[name])
      metrics[f"update_norm_ratio{suffix}/{name}"] = _norm_ratio(upd[name], ref[name])
    if upd:
      metrics[f"update_angle{suffix}/all"] = _angle_all(upd, ref)
    if total and i == 0:
      for name in total:
        metrics[f"update_angle_total/{name}"] = angle_degrees(total[name], ref[name])
      metrics["update_angle_total/all"] = _angle_all(total, ref)
  for layer, (b, w) in rule.feedback(params, rule_state).items():
    metrics[f"feedback_angle/{layer}"] = angle_degrees(b, w)
    nonzero = b != 0
    agree = jnp.sum(nonzero & (jnp.sign(b) == jnp.sign(w)))
    metrics[f"feedback_sign_agreement/{layer}"] = agree / jnp.maximum(jnp.sum(nonzero), 1)
    metrics[f"feedback_norm_ratio/{layer}"] = _norm_ratio(b, w)
  return metrics
