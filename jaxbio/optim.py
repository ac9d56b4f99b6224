"""Optimisers from configs."""

from __future__ import annotations

import jax
import ml_collections
import optax

from jaxbio.rules.base import concrete

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")


def make_optimizer(cfg, total_steps: int, where: str = "optimizer"
                   ) -> optax.GradientTransformation:
  """Builds the optimiser for the trained parameters.

  Args:
    cfg: a config with ``name`` (sgd, adam, adamw), ``learning_rate``,
      ``momentum`` (sgd), ``b1``, ``b2``, ``eps`` (adam/adamw),
      ``weight_decay`` (sgd: coupled L2 added to the update; adamw: decoupled),
      and ``schedule`` (constant, cosine decay to 0 over ``total_steps``).
    total_steps: the run's number of training steps.
    where: the config path named in error messages (``optimizer``, or a
      rule's own optimiser such as ``rule.inverse_optimizer``).

  Returns:
    An optax transformation. It only ever sees the trained parameters: rule
    state such as feedback weights is kept apart, so weight decay never
    touches it.
  """
  name = cfg.name
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown {where} {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
  lr = cfg.learning_rate
  if concrete(lr) and not lr > 0:
    raise ValueError(f"{where}.learning_rate must be > 0, got {lr}")
  wd = cfg.get("weight_decay", 0.0)
  if concrete(wd) and wd < 0:
    raise ValueError(f"{where}.weight_decay must be >= 0, got {wd}")
  schedule_name = cfg.get("schedule", "constant")
  if schedule_name not in SCHEDULES:
    raise ValueError(f"unknown {where}.schedule {schedule_name!r}; valid choices: "
                     f"{', '.join(SCHEDULES)}")
  lr_mult = dict(cfg.get("lr_multipliers", None) or {})
  wd_mult = dict(cfg.get("wd_multipliers", None) or {})
  if lr_mult or wd_mult:
    return _per_group(cfg, total_steps, lr_mult, wd_mult)
  schedule = lr if schedule_name == "constant" else optax.cosine_decay_schedule(lr, total_steps)
  kwargs = dict(b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), eps=cfg.get("eps", 1e-8))
  if name == "adamw":  # decoupled decay.
    return optax.adamw(schedule, weight_decay=wd, **kwargs)
  if name == "sgd":
    momentum = cfg.get("momentum", 0.0)
    tx = optax.sgd(schedule, momentum=momentum if not concrete(momentum) or momentum else None)
  else:
    tx = optax.adam(schedule, **kwargs)
  # Coupled decay (always chained when wd is a traced, per-replica value).
  return optax.chain(optax.add_decayed_weights(wd), tx) if not concrete(wd) or wd else tx



def _per_group(cfg, total_steps, lr_mult, wd_mult):
  """One optimiser per named top-level parameter group, with scaled lr and decay.

  Used by the hEP ConvNet (Laborieux & Zenke 2024): SGD with each
  connection's learning rate and coupled weight decay scaled by its own
  multiplier; groups not named use multiplier 1.
  """
  groups = sorted(set(lr_mult) | set(wd_mult))

  def make(group):
    sub = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    sub.update(learning_rate=cfg.learning_rate * lr_mult.get(group, 1.0),
               weight_decay=cfg.get("weight_decay", 0.0) * wd_mult.get(group, 1.0),
               lr_multipliers=None, wd_multipliers=None)
    return make_optimizer(ml_collections.ConfigDict(sub), total_steps)

  def labels(params):
    if not isinstance(params, dict):
      raise ValueError("optimizer.lr_multipliers/wd_multipliers need parameters keyed by "
                       "layer name (the recurrent networks)")
    unknown = set(groups) - set(params)
    if unknown:
      raise ValueError(f"optimizer multipliers name unknown layers {sorted(unknown)}; valid "
                       f"layers: {', '.join(sorted(params))}")
    return {k: jax.tree.map(lambda _, k=k: k if k in groups else "", v)
            for k, v in params.items()}

  return optax.multi_transform({g: make(g) for g in groups + [""]}, labels)
