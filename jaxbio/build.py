"""Builds networks and learning rules from experiment configs.

Every check here fails with a one-line ``ValueError`` that names the bad value
and the valid choices, so the launcher can exit cleanly before any work.
"""

from __future__ import annotations

import inspect
from typing import Any

from jaxbio import nets, optim, registry, rules
from jaxbio.registry import ARCHS, FEEDFORWARD_ARCHS, RECURRENT_ARCHS  # noqa: F401


def _kwargs(cfg, exclude=()) -> dict[str, Any]:
  d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  return {k: v for k, v in d.items() if k not in exclude}


def _call_checked(what: str, fn, *args, **kwargs):
  """Calls ``fn``, turning an unexpected keyword into a one-line error."""
  params = inspect.signature(fn).parameters
  valid = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
  for k in kwargs:
    if k not in valid:
      raise ValueError(f"{what} does not take parameter {k!r}; valid parameters: "
                       f"{', '.join(valid) or 'none'}")
  return fn(*args, **kwargs)


def build_network(model_cfg, input_shape, num_classes: int):
  """Returns the network named by ``model_cfg.arch``."""
  arch = model_cfg.arch
  kwargs = _kwargs(model_cfg, exclude=("arch",))
  if arch == "mlp":
    return _call_checked("model 'mlp'", _mlp, input_shape, num_classes, **kwargs)
  if arch in ("convnet", "lcnet"):
    return _call_checked(f"model {arch!r}", _convnet, input_shape, num_classes,
                         local=arch == "lcnet", **kwargs)
  if arch == "flax":
    return _flax_model(input_shape, num_classes, **kwargs)
  if arch in RECURRENT_ARCHS:
    from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
    return _call_checked(f"model {arch!r}", recurrent.make_network, arch, input_shape,
                         num_classes, **kwargs)
  raise ValueError(f"unknown model.arch {arch!r}; valid choices: {', '.join(ARCHS)}")


def _flax_model(input_shape, num_classes, *, module: str = "", kwargs: str = "{}",
                api: str = "auto"):
  """A user's Flax model: ``module`` is ``"package.module:callable"``.

  ``kwargs`` is a JSON object of the callable's keyword arguments. An NNX
  module class (or a callable taking ``rngs``) is called with them and
  ``rngs=nnx.Rngs(key)`` at every ``init``, so each seed draws new weights; a
  Linen module class is instantiated with them. ``api`` (auto, nnx, linen)
  forces one reading.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxbio import flax_models  # pylint: disable=g-import-not-at-top
  if ":" not in module:
    raise ValueError(f"model.module must be 'package.module:callable' naming a Flax model, got "
                     f"{module!r}")
  if api not in ("auto", "nnx", "linen"):
    raise ValueError(f"unknown model.api {api!r}; valid choices: auto, nnx, linen")
  name, _, attr = module.partition(":")
  try:
    target = getattr(importlib.import_module(name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"cannot import model.module {module!r}: {e}") from None
  try:
    kw = json.loads(kwargs)
  except json.JSONDecodeError as e:
    raise ValueError(f"model.kwargs must be a JSON object, got {kwargs!r} ({e.msg})") from None
  linen = api == "linen" or (api == "auto" and isinstance(target, type)
                             and issubclass(target, nn.Module))
  if linen:
    return flax_models.from_linen(target(**kw), jnp.zeros((1, *input_shape), jnp.float32))
  del nnx
  return flax_models.from_nnx(lambda rngs: target(**kw, rngs=rngs), input_shape,
                              num_outputs=num_classes)


def _mlp(input_shape, num_classes, *, widths=(256,), activation="tanh",
         output_activation="identity", kernel_init="glorot_uniform", init_gain=1.0,
         batch_norm=False, legacy_double_softmax=False, dtype="float32"):
  return nets.mlp(input_shape, tuple(widths), num_classes, activation=activation,
                  output_activation=output_activation, kernel_init=kernel_init,
                  init_gain=init_gain, batch_norm=batch_norm,
                  legacy_double_softmax=legacy_double_softmax, dtype=dtype)


def _convnet(input_shape, num_classes, *, local, convs=(), dense=(), activation="relu",
             pool="max_pool:2:2", batch_norm=False, bn_after_activation=False,
             kernel_init="glorot_uniform", init_gain=1.0, conv_bias=True,
             output_activation="identity", legacy_double_softmax=False, dtype="float32"):
  return nets.convnet(input_shape, [tuple(c) for c in convs], tuple(dense), num_classes,
                      activation=activation, pool=pool or None, batch_norm=batch_norm,
                      bn_after_activation=bn_after_activation, kernel_init=kernel_init,
                      init_gain=init_gain, conv_bias=conv_bias, local=local,
                      output_activation=output_activation,
                      legacy_double_softmax=legacy_double_softmax, dtype=dtype)


def build_rule(rule_cfg, net, total_steps: int = 1) -> rules.LearningRule:
  """Returns the learning rule named by ``rule_cfg.name`` for ``net``.

  The rule's registry entry (:mod:`jaxbio.registry`) names its factory and
  the factory arguments that are optimisers of the rule's own state: those
  config subtrees are built with :func:`jaxbio.optim.make_optimizer` (their
  schedules run over ``total_steps``).
  """
  name = rule_cfg.name
  kwargs = _kwargs(rule_cfg, exclude=("name",))
  entry = registry.check_rule(name, family_of(net).name)
  for opt in entry.optimizers:
    if opt in kwargs:
      kwargs[opt] = optim.make_optimizer(getattr(rule_cfg, opt), total_steps,
                                         where=f"rule.{opt}")
  return _call_checked(f"rule {name!r}", registry.resolve(entry.factory), net, **kwargs)


def family_of(net) -> registry.Family:
  """The registry family of a built network."""
  if isinstance(net, nets.Network):
    return registry.FAMILIES["feedforward"]
  if type(net).__module__ == "jaxbio.flax_models":
    return registry.FAMILIES["flax"]
  return registry.FAMILIES["recurrent"]


def build_references(rule: rules.LearningRule, net, rule_cfg=None) -> tuple[rules.LearningRule, ...]:
  """The rules alignment metrics compare ``rule`` against: its own, else its family's."""
  if rule.references:
    return rule.references
  return (build_reference_rule(net, rule_cfg),)


def build_reference_rule(net, rule_cfg=None) -> rules.LearningRule:
  """The family's exact-gradient rule (the default reference of alignment metrics).

  Args:
    net: the network.
    rule_cfg: the run's rule config (optional), e.g. ``config.rule``.
  """
  return registry.resolve(family_of(net).reference)(net, rule_cfg)


def _run_settings(rule_cfg) -> dict[str, Any]:
  """The run's hEP settings T1, T2, N and β, from its rule config (absent ones left out).

  ``t_free`` (T1; when the rule sets its own), ``t_nudge`` (T2: steps per
  nudged phase, also the BPTT/RBP length), ``n_points`` (N; ``ep`` has
  N = 2 if ``symmetric`` else N = 1) and ``beta`` (β).
  """
  if rule_cfg is None:
    return {}
  d = _kwargs(rule_cfg)
  out = {k: d[k] for k in ("t_free", "t_nudge", "n_points", "beta") if d.get(k) is not None}
  if d.get("name") == "ep":
    out["n_points"] = 2 if d.get("symmetric") else 1
  return out


def flax_backprop_reference(net, rule_cfg=None) -> rules.LearningRule:
  """Backprop on softmax cross-entropy through a user's Flax model."""
  del rule_cfg
  from jaxbio import flax_models  # pylint: disable=g-import-not-at-top
  return flax_models.backprop(net)


def backprop_reference(net, rule_cfg=None) -> rules.LearningRule:
  """Backprop on softmax cross-entropy: the reference of feedforward rules."""
  del rule_cfg
  return rules.backprop(net)


def rbp_reference(net, rule_cfg=None) -> rules.LearningRule:
  """The reference of recurrent rules: RBP at the free fixed point.

  δ ← (WD)ᵀδ + D P_out c for T2 steps from 0 (the authors' ``rec_bp``), with
  the run's own T2 = ``rule_cfg.t_nudge`` and, if the rule sets one, its
  T1 = ``rule_cfg.t_free`` (the RBP defaults, T2 = 20 and the network's T1,
  without ``rule_cfg`` or those fields), so the reference gradient is
  truncated like the rule's own estimate.
  """
  from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
  settings = _run_settings(rule_cfg)
  return recurrent.make_rule("rbp", net, **{k: settings[k] for k in ("t_free", "t_nudge")
                                            if k in settings})


def build_diagnostics(net, rule_cfg=None):
  """The family's periodic diagnostics ``(params, x, labels, key) -> dict``, or None."""
  target = family_of(net).diagnostics
  return None if target is None else registry.resolve(target)(net, rule_cfg)


def recurrent_diagnostics(net, rule_cfg=None):
  """:func:`jaxbio.recurrent.diagnostics` with the run's own N, β, T2 (and T1, if the rule sets one).

  So ``error_cos/...`` is cos(v, δ) for the v the rule uses (its defaults,
  N = 0 and T2 = 20, without ``rule_cfg``; rules without N, ``rbp`` and
  ``bptt``, use N = 0 at their T2).
  """
  from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
  settings = _run_settings(rule_cfg)
  return lambda params, x, labels, key: recurrent.diagnostics(net, params, x, labels, key,
                                                              **settings)


def add_penalties(rule: rules.LearningRule, net, config) -> rules.LearningRule:
  """Composes the penalties the config asks for (Jacobian homeostasis) with ``rule``."""
  homeo = config.get("homeostasis")
  if homeo is None or (rules.base.concrete(homeo.weight) and not homeo.weight):
    return rule
  family = family_of(net)
  if "homeostasis" not in family.penalties:
    archs = next(f.archs for f in registry.FAMILIES.values() if "homeostasis" in f.penalties)
    raise ValueError(f"homeostasis.weight > 0 needs a convergent recurrent network "
                     f"({', '.join(archs)}); got model.arch {config.model.arch!r}")
  from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
  return rules.with_penalty(rule, recurrent.homeostasis_penalty(net, homeo.num_probes),
                            homeo.weight, name="homeostasis")
