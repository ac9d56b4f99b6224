"""Builds networks and learning rules from experiment configs.

Every check here fails with a one-line ``ValueError`` that names the bad value
and the valid choices, so the launcher can exit cleanly before any work.
"""

from __future__ import annotations

import inspect
from typing import Any

from jaxbio import nets, registry, rules
from jaxbio.registry import ARCHS, FEEDFORWARD_ARCHS, RECURRENT_ARCHS, RECURRENT_RULES  # noqa: F401


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
  if arch in RECURRENT_ARCHS:
    from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
    return _call_checked(f"model {arch!r}", recurrent.make_network, arch, input_shape,
                         num_classes, **kwargs)
  raise ValueError(f"unknown model.arch {arch!r}; valid choices: {', '.join(ARCHS)}")


def _mlp(input_shape, num_classes, *, widths=(256,), activation="tanh",
         output_activation="identity", kernel_init="glorot_uniform", init_gain=1.0,
         batch_norm=False):
  return nets.mlp(input_shape, tuple(widths), num_classes, activation=activation,
                  output_activation=output_activation, kernel_init=kernel_init,
                  init_gain=init_gain, batch_norm=batch_norm)


def _convnet(input_shape, num_classes, *, local, convs=(), dense=(), activation="relu",
             pool="max_pool:2:2", batch_norm=False, bn_after_activation=False,
             kernel_init="glorot_uniform", init_gain=1.0, conv_bias=True,
             output_activation="identity"):
  return nets.convnet(input_shape, [tuple(c) for c in convs], tuple(dense), num_classes,
                      activation=activation, pool=pool or None, batch_norm=batch_norm,
                      bn_after_activation=bn_after_activation, kernel_init=kernel_init,
                      init_gain=init_gain, conv_bias=conv_bias, local=local,
                      output_activation=output_activation)


def build_rule(rule_cfg, net) -> rules.LearningRule:
  """Returns the learning rule named by ``rule_cfg.name`` for ``net``."""
  name = rule_cfg.name
  kwargs = _kwargs(rule_cfg, exclude=("name",))
  recurrent_net = not isinstance(net, nets.Network)
  registry.check_rule(name, recurrent_net)
  if not recurrent_net:
    return _call_checked(f"rule {name!r}", rules.FEEDFORWARD_RULES[name], net, **kwargs)
  from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
  return recurrent.make_rule(name, net, **kwargs)


def build_reference_rule(net) -> rules.LearningRule:
  """The rule whose updates alignment metrics compare against (exact gradients)."""
  if isinstance(net, nets.Network):
    return rules.backprop(net)
  from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
  return recurrent.make_rule("rbp", net)


def build_diagnostics(net):
  """Network-specific periodic diagnostics ``(params, x, labels, key) -> dict``, or None."""
  if isinstance(net, nets.Network):
    return None
  from jaxbio import recurrent  # pylint: disable=g-import-not-at-top
  return lambda params, x, labels, key: recurrent.diagnostics(net, params, x, labels, key)
