"""Train your own Flax model, unchanged, with jaxbio's learning rules.

:func:`from_nnx` (Flax NNX) and :func:`from_linen` (Flax Linen) wrap a model
you wrote yourself in a *network adapter* with the pure interface of jaxbio's
own networks::

    params, net_state = net.init(key)
    outputs, new_net_state = net.apply(params, net_state, x, train=True, feedback=None)

``params`` are the model's trainable parameters only (NNX: its ``nnx.Param``
variables; Linen: the ``"params"`` collection) as nested dicts with string
keys, so any optax optimiser, its weight decay and jaxbio's checkpoints see
exactly them; ``net_state`` is everything else (batch-norm statistics, NNX
RNG counters). :func:`rule` then builds a standard
:class:`jaxbio.rules.LearningRule` for the adapter: ``bp``, ``fa``, ``kp`` or
``sign_symmetry``, with the semantics of jaxbio's own rules of those names.

How feedback reaches an unchanged model: every dense or convolutional layer
computes through one linear primitive (``nnx.Linear`` through its
``self.dot_general``, ``nnx.Conv`` through ``self.conv_general_dilated``).
Inside ``apply``, on the copy of the model that ``nnx.merge`` builds, each
such layer's primitive is replaced by a custom-VJP version
(:func:`jaxbio.nets.layers.feedback_linear` around the original primitive
with the layer's own strides, padding and dimension numbers): the forward
pass is the original primitive, the kernel receives its ordinary gradient,
and the input cotangent goes through the *feedback kernel*, stored in the
forward kernel's layout, so ``feedback == kernel`` is exactly backprop.
Linen layers (``nn.Dense``, ``nn.Conv``, ``nn.ConvLocal``) are intercepted
with ``nn.intercept_methods``: the layer's own ``__call__`` runs under a
custom VJP whose input cotangent is the same layer's with the feedback
kernel in place of its kernel. Pooling, activations and reshapes in your
``__call__`` are plain functions and need nothing; batch, layer, RMS and group
norms are trained by their ordinary (local) gradient.

Feedback weights are their own kind of state: :class:`Feedback`, an
``nnx.Variable`` type that the rule creates (never your model), carried in
the rule state (``FlaxFeedbackState.feedback``, keyed by the layer's module
path: ``"conv1"``, ``"blocks/0/linear"``, Linen ``"Dense_1"``), so it is
checkpointed with it and never seen by the optimiser. For Linen they are
passed to the model as the variable collection ``"feedback"`` under each
layer's own path. Alignment metrics name them by that path
(``feedback_angle/<path>``). A layer whose input does not depend on any
parameter (the first layer) needs no feedback and gets none, as in jaxbio's
own networks; the adapters find these layers once, by tracing.

A parameter that belongs to anything but a supported layer (an attention
layer, an embedding, a module of yours doing ``jnp.dot(x, self.w)``) cannot
be given feedback without rewriting the model: the feedback rules refuse the
model with one error naming that layer (backprop takes any model). DFA (and
the other rules that need every hidden layer's activity) needs jaxbio's
layered networks.

For a trainer, an adapter is a drop-in for a jaxbio network: build it with
``from_nnx(factory, input_shape)`` (a factory ``rngs -> Module``, so that
``init(key)`` draws new weights for every seed) or ``from_linen(module,
example_batch)``, the rule with ``rule(name, net, **hyper)``, then use
``net.init``, ``net.apply(..., train=False)`` for evaluation, and the rule's
``init``/``update``/``after_step``/``feedback`` exactly as for jaxbio's own
networks; ``rule.references`` is backprop on the same model (alignment
metrics), and ``rule.evaluate`` is None (softmax cross-entropy).

Example::

    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import jaxbio
    >>> class MLP(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.hidden = nnx.Linear(784, 32, rngs=rngs)
    ...     self.out = nnx.Linear(32, 10, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.out(jnp.tanh(self.hidden(x)))
    >>> net = jaxbio.flax_models.from_nnx(MLP(nnx.Rngs(0)), input_shape=(784,))
    >>> rule = jaxbio.flax_models.rule("fa", net)
    >>> params, net_state = net.init(jax.random.key(0))
    >>> rule_state = rule.init(jax.random.key(1), params)
    >>> sorted(rule_state.feedback)  # the first layer needs none
    ['out']
    >>> batch = {"image": jnp.zeros((8, 784)), "label": jnp.arange(8) % 10}
    >>> out = rule.update(params, net_state, rule_state, batch, jax.random.key(2))
    >>> jax.tree.map(jnp.shape, out.grads)
    {'hidden': {'bias': (32,), 'kernel': (784, 32)}, 'out': {'bias': (10,), 'kernel': (32, 10)}}
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
from flax import nnx
import jax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp

from jaxbio.nets import layers
from jaxbio.rules import feedback as rule_feedback
from jaxbio.rules.base import EmptyState, LearningRule, RuleOutput

FLAX_RULES = ("bp", "fa", "kp", "sign_symmetry")
"""The rules that take any Flax model."""

LAYERED_ONLY_RULES = ("dfa", "burstccn")
"""jaxbio rules that need jaxbio's layered networks (every hidden layer's activity)."""


class Feedback(nnx.Variable):
  """A feedback kernel, in its forward kernel's layout.

  Rule state, created by the rule (never by your model): not an
  ``nnx.Param``, so neither the optimiser nor its weight decay sees it.
  """


class WeightLayer(NamedTuple):
  """A dense or convolutional layer of a Flax model.

  Attributes:
    path: its module path, ``"/"``-joined (``"conv1"``, ``"blocks/0/linear"``).
    cls: its class name (``"Linear"``, ``"Conv"``, ``"Dense"``, ``"ConvLocal"``).
    kind: ``"dense"``, ``"conv"`` or ``"local"`` (fixes the fans of the
      feedback initialiser).
    kernel_path: the keys of its kernel in ``params``.
    kernel_shape: the kernel's shape.
    needs_feedback: whether its input depends on any parameter, i.e. whether
      the signal it sends back reaches a parameter (False for the first layer).
  """
  path: str
  cls: str
  kind: str
  kernel_path: tuple[str, ...]
  kernel_shape: tuple[int, ...]
  needs_feedback: bool


class FlaxFeedbackState(NamedTuple):
  """Rule state of FA and KP on a Flax model: ``{layer path: Feedback}``."""
  feedback: dict[str, Feedback]


# ---------------------------------------------------------------------------
# Shared helpers.


def _path_str(parts) -> str:
  return "/".join(str(p) for p in parts)


def _get(tree, keys):
  for k in keys:
    tree = tree[k]
  return tree


def _set(tree, keys, value):
  """A copy of nested dicts ``tree`` with ``tree[keys...] = value``."""
  if not keys:
    return value
  out = dict(tree)
  out[keys[0]] = _set(tree[keys[0]], keys[1:], value)
  return out


def _is_typed_key(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _value(b):
  return b.get_value() if isinstance(b, nnx.Variable) else b


def _with_feedback(primitive: Callable, feedback: jax.Array, path: str,
                   prepare: Callable[[jax.Array], jax.Array] = lambda b: b) -> Callable:
  """``primitive(lhs, rhs, *args, **kwargs)`` whose ``lhs`` cotangent goes through ``feedback``.

  The forward pass is ``primitive``; backward, ``rhs`` (the kernel) gets its
  ordinary gradient and ``lhs`` (the input) the transpose of
  ``primitive(., prepare(feedback), *args, **kwargs)``: the same geometry
  (dimension numbers, strides, padding, dilation, groups) with the feedback
  kernel in place of the kernel.
  """

  def wrapped(lhs, rhs, *args, **kwargs):
    op = lambda kernel, x: primitive(x, kernel, *args, **kwargs)
    b = prepare(feedback)
    if tuple(b.shape) != tuple(rhs.shape):
      raise ValueError(f"feedback for layer '{path}' has shape {tuple(b.shape)}, but its "
                       f"kernel has shape {tuple(rhs.shape)}")
    return layers.feedback_linear(op)(rhs, b.astype(rhs.dtype), lhs)

  return wrapped


def _dependency_probe(name: str, hits: set) -> Callable:
  """Identity whose JVP records ``name`` in ``hits`` if its input has a non-zero tangent."""

  @jax.custom_jvp
  def probe(x):
    return x

  def jvp(primals, tangents):
    if not isinstance(tangents[0], SymbolicZero):
      hits.add(name)
    return primals[0], tangents[0]

  probe.defjvp(jvp, symbolic_zeros=True)
  return probe


def _layers_needing_feedback(run_probed: Callable[[Any, Any, set], Any], params,
                             net_state) -> set:
  """Paths of the weight layers whose input depends on ``params`` (abstract trace, no compute).

  ``run_probed(params, net_state, hits)`` runs the model with every weight
  layer's input passed through :func:`_dependency_probe`; a forward-mode
  derivative with respect to the parameters only (the input held fixed)
  gives a non-zero tangent exactly at the inputs that depend on them.
  """
  hits: set = set()

  def f(p, s):
    tangents = jax.tree.map(jnp.ones_like, p)
    return jax.jvp(lambda q: run_probed(q, s, hits), (p,), (tangents,))

  jax.eval_shape(f, params, net_state)
  return hits


def _unsupported_message(path: str, cls: str, rule_name: str, supported: Sequence[str]) -> str:
  return (f"layer '{path or '<root>'}' ({cls}) has weights rule '{rule_name}' cannot give "
          f"feedback to; supported layers: {', '.join(supported)} (backprop, rule 'bp', "
          f"takes any layer)")


def _find_owner(param_path: tuple, module_paths) -> tuple:
  """The longest module path that is a prefix of ``param_path``."""
  best = ()
  for mp in module_paths:
    if len(mp) > len(best) and param_path[:len(mp)] == mp:
      best = mp
  return best


def _reported_owner(owner: tuple, modules: dict) -> tuple:
  """The layer to name for an unsupported parameter of ``owner``.

  The outermost Flax library layer above it (``attn`` for the query
  projection inside an ``nnx.MultiHeadAttention`` at ``attn``), else
  ``owner`` itself (your own module).
  """
  for i in range(len(owner) + 1):
    m = modules.get(owner[:i])
    if m is not None and type(m).__module__.startswith("flax."):
      return owner[:i]
  return owner


def _stock_class(obj, classes) -> type | None:
  """The class in ``classes`` ``obj`` is an instance of, if it runs that class's own ``__call__``."""
  for c in classes:
    if isinstance(obj, c) and type(obj).__call__ is c.__call__:
      return c
  return None


def _classify_params(params: list[tuple[tuple[str, ...], tuple[int, ...]]], owners: dict,
                     weight_classes: dict, norm_classes: tuple, model_class: str
                     ) -> tuple[dict[str, "WeightLayer"], list[tuple[str, str]]]:
  """The supported weight layers and the unsupported owners of a model's parameters.

  Args:
    params: ``(path, shape)`` of every parameter (path keys as the owners' are).
    owners: module path -> module, for the modules that can own parameters.
    weight_classes: stock weight-layer class -> its primitive's name.
    norm_classes: stock normalisation classes (trained by their local gradient).
    model_class: the model's class name, for parameters owned by the model itself.

  Returns:
    ``({layer path: WeightLayer}, [(owner path, class name), ...])``.
  """
  layers: dict[str, WeightLayer] = {}
  unsupported: list[tuple[str, str]] = []
  for ppath, shape in params:
    owner = _find_owner(ppath, owners)
    m = owners.get(owner)
    name = _path_str(owner)
    c = None if m is None else _stock_class(m, tuple(weight_classes) + norm_classes)
    if c is None:
      at = _reported_owner(owner, owners)
      entry = (_path_str(at), type(owners[at]).__name__ if at in owners else model_class)
      if entry not in unsupported:
        unsupported.append(entry)
    elif c in weight_classes and ppath[-1] == "kernel":
      layers[name] = WeightLayer(name, type(m).__name__, weight_classes[c],
                                 tuple(str(k) for k in ppath), shape, False)
  return layers, unsupported


def _check_output(what: str, shape) -> int:
  if len(shape) != 2:
    raise ValueError(f"{what} returns outputs of shape {tuple(shape)} for a batch of 1; "
                     "jaxbio's rules need logits of shape (batch, num_classes)")
  return int(shape[-1])


def _check_input(net, x) -> None:
  shape = tuple(getattr(x, "shape", ()))
  if len(shape) < 1 or shape[1:] != tuple(net.input_shape):
    raise ValueError(f"input batch has shape {shape}, but the network expects (batch, "
                     f"{', '.join(map(str, net.input_shape))})")


def _glorot_limit(kind: str, shape: tuple[int, ...]) -> float:
  """Glorot uniform's bound ``sqrt(6 / (fan_in + fan_out))`` for a kernel of ``kind``.

  Fans: dense ``(n_in, n_out)``; conv ``(..., C_in, C_out)`` times the
  receptive field; local ``(*locations, patch, C_out)`` per location (as
  :func:`jaxbio.nets.layers.initializer` for jaxbio's own layers).
  """
  receptive = 1 if kind == "local" else math.prod(shape[:-2])
  return (6.0 / (receptive * (shape[-2] + shape[-1]))) ** 0.5


def _glorot_draws(key, layers_: dict[str, "WeightLayer"], dtypes: dict) -> dict:
  """Glorot-uniform kernels for ``layers_`` from one uniform draw (one RNG kernel to compile)."""
  if not layers_:
    return {}
  sizes = [math.prod(l.kernel_shape) for l in layers_.values()]
  dtype = functools.reduce(jnp.promote_types, dtypes.values())
  u = jax.random.uniform(key, (sum(sizes),), dtype, -1.0, 1.0)
  out, start = {}, 0
  for (path, layer), size in zip(layers_.items(), sizes):
    flat = u[start:start + size] * _glorot_limit(layer.kind, layer.kernel_shape)
    out[path] = flat.reshape(layer.kernel_shape).astype(dtypes[path])
    start += size
  return out


# ---------------------------------------------------------------------------
# NNX.

_NNX_WEIGHT = {nnx.Linear: "dense", nnx.Conv: "conv"}
_NNX_NORMS = (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)
_NNX_CONTAINERS = (nnx.List, nnx.Dict, nnx.Sequential)
NNX_SUPPORTED = ("Linear", "Conv", "BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm")


def _flat(state) -> list[tuple[tuple, nnx.Variable]]:
  return list(nnx.to_flat_state(state))


def _tree_of(flat) -> dict:
  """Nested dicts with string keys of a flat NNX state's values (typed keys as key data)."""
  out: dict = {}
  for path, var in flat:
    v = var.get_value()
    if _is_typed_key(v):
      v = jax.random.key_data(v)
    node = out
    for k in path[:-1]:
      node = node.setdefault(str(k), {})
    node[str(path[-1])] = v
  return out


def _key_impls(flat) -> dict:
  """``{path: PRNG impl}`` of a flat state's typed-key variables (concrete or traced)."""
  return {tuple(path): jax.random.key_impl(var.get_value()) for path, var in flat
          if _is_typed_key(var.get_value())}


def _state_of(template, tree, impls) -> nnx.State:
  """A fresh NNX state with ``template``'s variable types and metadata and ``tree``'s values.

  Fresh variables, created in the current trace, so the merged model can
  update its batch statistics inside ``jit`` or ``grad``, and the caller's
  state is never mutated. Typed keys come back from their key data.
  """
  items = []
  for path, var in template:
    v = _get(tree, tuple(str(k) for k in path))
    if tuple(path) in impls:
      v = jax.random.wrap_key_data(v, impl=impls[tuple(path)])
    items.append((path, var.replace(v)))
  return nnx.from_flat_state(items)


class NNXNetwork:
  """A Flax NNX model as a jaxbio network (see :func:`from_nnx`).

  Attributes:
    input_shape: per-example input shape.
    num_outputs: the number of logits.
    layers: the model's dense and convolutional layers by path
      (:class:`WeightLayer`).
    unsupported: ``(path, class name)`` of every module owning a parameter
      that no feedback rule can handle.
  """

  kind = "flax_nnx"

  def __init__(self, model, input_shape: Sequence[int], num_outputs: int | None = None):
    if isinstance(model, nnx.Module):
      self._factory = None
      self._impls = _key_impls(_flat(nnx.state(model)))
    elif callable(model):
      factory, impls = model, {}

      def build():  # abstract: no weights are computed here
        m = factory(nnx.Rngs(0))
        if not isinstance(m, nnx.Module):
          raise TypeError(f"from_nnx: the factory returned a {type(m).__name__}, not an "
                          "nnx.Module")
        impls.update(_key_impls(_flat(nnx.state(m))))
        return m

      model = nnx.eval_shape(build)
      self._impls = impls
      # One compiled call draws all the weights (not one compile per initialiser).
      self._factory = jax.jit(lambda key: self._trees(factory(nnx.Rngs(key))))
    else:
      raise TypeError(f"from_nnx takes an nnx.Module or a factory rngs -> nnx.Module, got "
                      f"{type(model).__name__}")
    self.model_class = type(model).__name__
    self.input_shape = tuple(int(d) for d in input_shape)
    self._graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    self._params_template, self._rest_template = _flat(params), _flat(rest)
    self._init_trees = (_tree_of(self._params_template), _tree_of(self._rest_template))

    # Which module owns every parameter; the supported weight layers.
    modules = {tuple(p): m for p, m in nnx.iter_modules(model)}
    owners = {p: m for p, m in modules.items() if not isinstance(m, _NNX_CONTAINERS)}
    self.layers, self.unsupported = _classify_params(
        [(tuple(ppath), tuple(var.get_value().shape)) for ppath, var in self._params_template],
        owners, _NNX_WEIGHT, _NNX_NORMS, self.model_class)

    params0, state0 = self._init_trees
    out = jax.eval_shape(lambda p, s: self.apply(p, s, jnp.zeros((1,) + self.input_shape))[0],
                         params0, state0)
    inferred = _check_output(f"the NNX model {self.model_class}", out.shape)
    if num_outputs is not None and int(num_outputs) != inferred:
      raise ValueError(f"num_outputs={num_outputs}, but the model returns {inferred} outputs")
    self.num_outputs = inferred

    def probed(p, s, hits):
      return self._run(p, s, jnp.zeros((1,) + self.input_shape), train=False,
                       install=lambda mod, path: self._install_probe(mod, path, hits))[0]

    needs = _layers_needing_feedback(probed, params0, state0)
    self.layers = {k: l._replace(needs_feedback=k in needs) for k, l in self.layers.items()}

  # -- the network interface ------------------------------------------------

  def init(self, key: jax.Array):
    """``(params, net_state)``.

    From a model instance, its current values (``key`` is unused: an NNX
    module keeps no initialisers to draw again); from a factory, a model
    built with ``nnx.Rngs(key)``.
    """
    if self._factory is None:
      return self._init_trees
    return self._factory(key)

  @staticmethod
  def _trees(model):
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return _tree_of(_flat(params)), _tree_of(_flat(rest))

  def apply(self, params, net_state, x, *, train: bool = False,
            feedback: dict[str, Any] | None = None):
    """Runs the model on ``x``; returns ``(outputs, new_net_state)``.

    A fresh copy of the model is merged from ``params`` and ``net_state``
    and put in ``train()`` or ``eval()`` mode (batch norm's
    ``use_running_average``, dropout's ``deterministic``); the returned state
    is that copy's non-parameter state after the call (updated batch
    statistics, RNG counts).

    Args:
      params, net_state: from :meth:`init`.
      x: ``(B, *input_shape)``.
      train: training mode.
      feedback: optional ``{layer path: kernel-layout array or Feedback}``:
        those layers send their input cotangent through it.
    """
    _check_input(self, x)
    feedback = dict(feedback or {})
    for path in feedback:
      if path not in self.layers:
        raise ValueError(f"feedback for unknown layer {path!r}; the model's dense and conv "
                         f"layers: {', '.join(self.layers) or 'none'}")

    def install(mod, path):
      if path in feedback:
        self._install_feedback(mod, path, _value(feedback[path]))

    return self._run(params, net_state, x, train=train, install=install if feedback else None)

  # -- internals ---------------------------------------------------------------

  def _run(self, params, net_state, x, *, train, install=None):
    model = nnx.merge(self._graphdef, _state_of(self._params_template, params, self._impls),
                      _state_of(self._rest_template, net_state, self._impls))
    if train:
      model.train()
    else:
      model.eval()
    if install is not None:
      for path, mod in nnx.iter_modules(model):
        name = _path_str(path)
        if name in self.layers:
          install(mod, name)
    y = model(x)
    _, rest = nnx.split(model, nnx.Param, ...)[1:]
    return y, _tree_of(_flat(rest))

  @staticmethod
  def _primitive_name(mod) -> str:
    return "dot_general" if isinstance(mod, nnx.Linear) else "conv_general_dilated"

  def _install_feedback(self, mod, path, b):
    name = self._primitive_name(mod)
    mask = getattr(mod, "mask", None)
    prepare = (lambda v: v) if mask is None else (lambda v: v * mask)  # as the kernel is
    setattr(mod, name, _with_feedback(getattr(mod, name), b, path, prepare))

  def _install_probe(self, mod, path, hits):
    name = self._primitive_name(mod)
    original, probe = getattr(mod, name), _dependency_probe(path, hits)
    setattr(mod, name, lambda lhs, rhs, *a, **k: original(probe(lhs), rhs, *a, **k))

  def __repr__(self):
    return (f"NNXNetwork({self.model_class}, input_shape={self.input_shape}, "
            f"num_outputs={self.num_outputs}, layers={list(self.layers)})")


def from_nnx(model, input_shape: Sequence[int], num_outputs: int | None = None) -> NNXNetwork:
  """Wraps a Flax NNX model as a jaxbio network with pure ``init``/``apply``.

  Args:
    model: your ``nnx.Module`` (left unchanged: the adapter copies its
      state), or a factory ``rngs -> nnx.Module`` (then ``init(key)`` builds
      the model with ``nnx.Rngs(key)``, so every seed draws new weights).
      Its ``__call__(x)`` must return ``(B, num_classes)`` logits.
    input_shape: per-example input shape, e.g. ``(28, 28, 1)``.
    num_outputs: checked against the model's output if given (it is
      inferred by tracing the model on one example).
  """
  return NNXNetwork(model, input_shape, num_outputs)


# ---------------------------------------------------------------------------
# Linen.

_LINEN_WEIGHT = {nn.Dense: "dense", nn.Conv: "conv", nn.ConvLocal: "local"}
_LINEN_NORMS = (nn.BatchNorm, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
LINEN_SUPPORTED = ("Dense", "Conv", "ConvLocal", "BatchNorm", "LayerNorm", "RMSNorm",
                   "GroupNorm")
FEEDBACK_COLLECTION = "feedback"

_BYPASS = contextvars.ContextVar("jaxbio_flax_bypass", default=False)


@contextlib.contextmanager
def _bypass():
  token = _BYPASS.set(True)
  try:
    yield
  finally:
    _BYPASS.reset(token)


def _linen_layer_with_feedback(mod: nn.Module, feedback: jax.Array, x: jax.Array, path: str):
  """Calls the bound linen layer ``mod`` on ``x`` with its input cotangent through ``feedback``."""
  params = mod.variables["params"]
  clone = mod.clone(parent=None)

  def layer(p, xx):
    with _bypass():
      return clone.apply({"params": p}, xx)

  if tuple(feedback.shape) != tuple(params["kernel"].shape):
    raise ValueError(f"feedback for layer '{path}' has shape {tuple(feedback.shape)}, but its "
                     f"kernel has shape {tuple(params['kernel'].shape)}")

  # The layer's own computation, its input cotangent through the feedback kernel.
  f = layers.feedback_linear(layer)
  return f(params, dict(params, kernel=feedback.astype(params["kernel"].dtype)), x)


class LinenNetwork:
  """A Flax Linen module as a jaxbio network (see :func:`from_linen`).

  Attributes as :class:`NNXNetwork`.
  """

  kind = "flax_linen"

  def __init__(self, module: nn.Module, example_input, *, train_kwarg: str | None = "auto"):
    if not isinstance(module, nn.Module):
      raise TypeError(f"from_linen takes a flax.linen Module, got {type(module).__name__}")
    self.module = module
    self.model_class = type(module).__name__
    shape = tuple(jnp.shape(example_input))
    if len(shape) < 2:
      raise ValueError(f"example_input must be a batch (B, ...), got shape {shape}")
    self.input_shape = tuple(int(d) for d in shape[1:])
    if train_kwarg == "auto":
      sig = inspect.signature(type(module).__call__).parameters
      train_kwarg = "train" if "train" in sig else None
    self.train_kwarg = train_kwarg

    # Every module that runs, by path, and the variables' structure.
    seen: dict[tuple, nn.Module] = {}

    def record(next_fun, args, kwargs, context):
      seen.setdefault(tuple(context.module.path), context.module)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      variables = jax.eval_shape(self.init, jax.random.key(0))
    params_shape, state_shape = variables
    owners = {p: m for p, m in seen.items() if not isinstance(m, nn.Sequential)}

    self.layers, self.unsupported = _classify_params(
        [(tuple(str(k.key) for k in kpath), tuple(leaf.shape))
         for kpath, leaf in jax.tree_util.tree_flatten_with_path(params_shape)[0]],
        owners, _LINEN_WEIGHT, _LINEN_NORMS, self.model_class)

    out = jax.eval_shape(lambda p, s: self.apply(p, s, jnp.zeros((1,) + self.input_shape))[0],
                         params_shape, state_shape)
    self.num_outputs = _check_output(f"the Linen module {self.model_class}", out.shape)

    def probed(p, s, hits):
      def probe_layer(next_fun, args, kwargs, context):
        name = _path_str(context.module.path)
        if context.method_name == "__call__" and name in self.layers and not _BYPASS.get():
          args = (_dependency_probe(name, hits)(args[0]),) + tuple(args[1:])
        return next_fun(*args, **kwargs)
      with nn.intercept_methods(probe_layer):
        return self.apply(p, s, jnp.zeros((1,) + self.input_shape))[0]

    needs = _layers_needing_feedback(probed, params_shape, state_shape)
    self.layers = {k: l._replace(needs_feedback=k in needs) for k, l in self.layers.items()}

  def _kwargs(self, train):
    return {} if self.train_kwarg is None else {self.train_kwarg: train}

  def init(self, key: jax.Array):
    """``(params, net_state)``: ``module.init`` with ``{"params": key}`` on one example.

    One compiled call (not one compile per initialiser).
    """
    return self._init(key)

  @functools.cached_property
  def _init(self):
    def init(key):
      variables = self.module.init({"params": key}, jnp.zeros((1,) + self.input_shape),
                                   **self._kwargs(False))
      variables = _plain(nn.unbox(variables))
      params = variables.pop("params", {})
      return params, variables
    return jax.jit(init)

  def apply(self, params, net_state, x, *, train: bool = False,
            feedback: dict[str, Any] | None = None):
    """``module.apply``; returns ``(outputs, new_net_state)``.

    With ``train`` the module gets ``train=True`` (if its ``__call__`` takes
    ``train``) and its state collections are mutable. ``feedback``:
    ``{layer path: kernel-layout array or Feedback}``, passed as the
    ``"feedback"`` collection under each layer's path.
    """
    _check_input(self, x)
    variables = {"params": params, **net_state}
    intercept = contextlib.nullcontext()
    if feedback:
      collection: dict = {}
      for path, b in feedback.items():
        if path not in self.layers:
          raise ValueError(f"feedback for unknown layer {path!r}; the module's dense and conv "
                           f"layers: {', '.join(self.layers) or 'none'}")
        node = collection
        for k in self.layers[path].kernel_path[:-1]:
          node = node.setdefault(k, {})
        node["kernel"] = _value(b)
      variables[FEEDBACK_COLLECTION] = collection
      intercept = nn.intercept_methods(self._interceptor)
    mutable = list(net_state) if (train and net_state) else False
    with intercept:
      out = self.module.apply(variables, x, mutable=mutable, **self._kwargs(train))
    if mutable:
      y, updates = out
      return y, {**net_state, **_plain(updates)}
    return out, net_state

  def _interceptor(self, next_fun, args, kwargs, context):
    mod = context.module
    name = _path_str(mod.path)
    if (context.method_name != "__call__" or _BYPASS.get() or name not in self.layers
        or not mod.has_variable(FEEDBACK_COLLECTION, "kernel")):
      return next_fun(*args, **kwargs)
    if len(args) != 1 or kwargs:  # Dense, Conv and ConvLocal take one input only
      raise ValueError(f"layer '{name}' ({type(mod).__name__}) was called with "
                       f"{len(args)} positional and {len(kwargs)} keyword arguments; "
                       "feedback needs the stock one-input call")
    b = mod.get_variable(FEEDBACK_COLLECTION, "kernel")
    return _linen_layer_with_feedback(mod, b, args[0], name)

  def __repr__(self):
    return (f"LinenNetwork({self.model_class}, input_shape={self.input_shape}, "
            f"num_outputs={self.num_outputs}, layers={list(self.layers)})")


def _plain(tree):
  """Nested plain dicts (no FrozenDict)."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def from_linen(module: nn.Module, example_input, *,
               train_kwarg: str | None = "auto") -> LinenNetwork:
  """Wraps a Flax Linen module as a jaxbio network with pure ``init``/``apply``.

  Args:
    module: your module, built from ``nn.Dense``, ``nn.Conv``,
      ``nn.ConvLocal``, norms and plain functions for the feedback rules (any
      layers for backprop). Its ``__call__(x[, train])`` returns
      ``(B, num_classes)`` logits.
    example_input: a batch ``(B, *input_shape)`` (only its shape is used).
    train_kwarg: the ``__call__`` argument that switches training mode
      (``nn.BatchNorm(use_running_average=not train)``); ``"auto"``:
      ``"train"`` if ``__call__`` takes it, else none.
  """
  return LinenNetwork(module, example_input, train_kwarg=train_kwarg)


# ---------------------------------------------------------------------------
# Rules.


def _check_net(net) -> None:
  if not isinstance(net, (NNXNetwork, LinenNetwork)):
    raise TypeError(f"expected a network from jaxbio.flax_models.from_nnx or from_linen, got "
                    f"{type(net).__name__}; for jaxbio's own networks use jaxbio.rules")


def check_supported(net, rule_name: str) -> None:
  """One-line ValueError if ``net`` has a parameter outside the layers rule ``rule_name`` handles."""
  _check_net(net)
  if net.unsupported:
    path, cls = net.unsupported[0]
    supported = NNX_SUPPORTED if isinstance(net, NNXNetwork) else LINEN_SUPPORTED
    raise ValueError(_unsupported_message(path, cls, rule_name, supported))


def _feedback_layers(net) -> dict[str, WeightLayer]:
  return {k: l for k, l in net.layers.items() if l.needs_feedback}


_loss_and_grads = rule_feedback.loss_and_grads


def _pairs(net, params, feedback: dict) -> dict:
  return {path: (_value(b), _get(params, net.layers[path].kernel_path))
          for path, b in feedback.items()}


def _backprop_core(net) -> LearningRule:
  def update(params, net_state, rule_state, batch, key):
    del key
    grads, new_state, metrics = _loss_and_grads(net, params, net_state, batch)
    return RuleOutput(grads, rule_state, new_state, metrics)

  return LearningRule("bp", lambda key, params: EmptyState(), update)


def backprop(net) -> LearningRule:
  """Exact gradients of the mean softmax cross-entropy; any Flax model."""
  _check_net(net)
  bp = _backprop_core(net)
  return bp._replace(references=(bp,))


def feedback_alignment(net, *, feedback_scale: float = 1.0,
                       feedback_init: Callable | None = None) -> LearningRule:
  """Feedback alignment (Lillicrap et al. 2016) with fixed random feedback kernels.

  Every layer that needs feedback gets ``B = feedback_scale * init(key,
  kernel_shape)``, by default Glorot uniform with the kernel's fans
  (receptive field times channels for a convolution, per location for a
  locally connected layer), as jaxbio's own networks default to.

  Returns:
    A rule whose state is ``FlaxFeedbackState({path: Feedback(B)})``.
  """
  check_supported(net, "fa")
  fb_layers = _feedback_layers(net)

  @jax.jit  # one compiled call for all the draws
  def init(key, params):
    dtypes = {p: _get(params, l.kernel_path).dtype for p, l in fb_layers.items()}
    if feedback_init is None:
      draws = _glorot_draws(key, fb_layers, dtypes)
    else:
      keys = jax.random.split(key, max(len(fb_layers), 1))
      draws = {path: feedback_init(k, layer.kernel_shape, dtypes[path])
               for k, (path, layer) in zip(keys, fb_layers.items())}
    return FlaxFeedbackState({path: Feedback(feedback_scale * b) for path, b in draws.items()})

  def update(params, net_state, rule_state, batch, key):
    del key
    grads, new_state, metrics = _loss_and_grads(net, params, net_state, batch,
                                                rule_state.feedback)
    return RuleOutput(grads, rule_state, new_state, metrics)

  return LearningRule("fa", init, update,
                      lambda params, state: _pairs(net, params, state.feedback),
                      references=(_backprop_core(net),))


def kolen_pollack(net, *, weight_decay: float = 0.0, feedback_scale: float = 1.0,
                  feedback_init: Callable | None = None) -> LearningRule:
  """Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019) on a Flax model.

  As :func:`jaxbio.rules.kolen_pollack`: FA's backward pass; after each
  optimiser step, every kernel ``W`` with a feedback kernel ``B`` and that
  ``B`` get the same update ``u`` (the one the optimiser applied to ``W``)
  and the same decoupled decay::

      W <- W + u - weight_decay * W
      B <- (1 - weight_decay) * B + u

  so ``W - B`` shrinks by ``(1 - weight_decay)`` per step under any
  optimiser, and ``B``'s update never reads ``W``. Layers without feedback
  (the first) are not decayed here.
  """
  if not 0 <= weight_decay < 1:
    raise ValueError(f"kolen_pollack weight_decay must be in [0, 1), got {weight_decay}")
  check_supported(net, "kp")
  fa = feedback_alignment(net, feedback_scale=feedback_scale, feedback_init=feedback_init)
  fb_layers = _feedback_layers(net)

  def after_step(rule_state, params, new_params, updates, key):
    del key
    feedback = {}
    for path, b in rule_state.feedback.items():
      kp = fb_layers[path].kernel_path
      feedback[path] = Feedback((1 - weight_decay) * _value(b) + _get(updates, kp))
      new_params = _set(new_params, kp, _get(new_params, kp) - weight_decay * _get(params, kp))
    return FlaxFeedbackState(feedback), new_params

  return fa._replace(name="kp", after_step=after_step)


SIGN_SCALES = ("mean_abs", "unit")


def sign_symmetry(net, *, scale: str = "mean_abs") -> LearningRule:
  """Sign-symmetric feedback (Liao et al. 2016): ``B = s sign(W)``, recomputed every step.

  ``s`` is the mean of ``|W|`` (``scale="mean_abs"``) or 1 (``"unit"``).
  """
  if scale not in SIGN_SCALES:
    raise ValueError(f"unknown sign_symmetry scale {scale!r}; valid choices: "
                     f"{', '.join(SIGN_SCALES)}")
  check_supported(net, "sign_symmetry")
  fb_layers = _feedback_layers(net)

  def feedback_of(params):
    out = {}
    for path, layer in fb_layers.items():
      k = jax.lax.stop_gradient(_get(params, layer.kernel_path))
      s = jnp.mean(jnp.abs(k)) if scale == "mean_abs" else 1.0
      out[path] = s * jnp.sign(k)
    return out

  def update(params, net_state, rule_state, batch, key):
    del key
    grads, new_state, metrics = _loss_and_grads(net, params, net_state, batch,
                                                feedback_of(params))
    return RuleOutput(grads, rule_state, new_state, metrics)

  return LearningRule("sign_symmetry", lambda key, params: EmptyState(), update,
                      lambda params, state: _pairs(net, params, feedback_of(params)),
                      references=(_backprop_core(net),))


RULES = {"bp": backprop, "fa": feedback_alignment, "kp": kolen_pollack,
         "sign_symmetry": sign_symmetry}


def rule(name: str, net, **hyper) -> LearningRule:
  """The learning rule ``name`` (one of :data:`FLAX_RULES`) for a Flax network adapter.

  ``hyper`` are the rule's keyword arguments (``feedback_scale``,
  ``weight_decay``, ``scale``, ...). Every rule's ``update`` trains on softmax
  cross-entropy of the model's outputs and checks the batch with
  :func:`jaxbio.rules.check_batch`; its ``references`` are backprop on the
  same model (for alignment metrics).
  """
  _check_net(net)
  if name in LAYERED_ONLY_RULES:
    raise ValueError(f"rule {name!r} needs the activity of every hidden layer, which an "
                     "arbitrary Flax model does not expose; use one of jaxbio's layered "
                     "networks (jaxbio.nets.mlp, jaxbio.nets.convnet, jaxbio.nets.sequential) "
                     f"for it; a Flax model trains with: {', '.join(FLAX_RULES)}")
  if name not in RULES:
    raise ValueError(f"unknown rule {name!r} for a Flax model; valid choices: "
                     f"{', '.join(FLAX_RULES)}")
  factory = RULES[name]
  valid = [n for n, p in inspect.signature(factory).parameters.items()
           if p.kind is p.KEYWORD_ONLY]
  for k in hyper:
    if k not in valid:
      raise ValueError(f"rule {name!r} does not take parameter {k!r}; valid parameters: "
                       f"{', '.join(valid) or 'none'}")
  return factory(net, **hyper)


__all__ = ["FLAX_RULES", "Feedback", "FlaxFeedbackState", "LinenNetwork", "NNXNetwork",
           "WeightLayer", "backprop", "check_supported", "feedback_alignment", "from_linen",
           "from_nnx", "kolen_pollack", "rule", "sign_symmetry"]
