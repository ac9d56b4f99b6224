"""Feedforward networks as stacks of Flax layers, with pure ``init``/``apply``.

A :class:`Block` is one weight layer, a Flax Linen layer without its bias
(``nn.Dense``, ``nn.Conv`` or, for a locally connected layer, ``nn.ConvLocal``),
whose call is the block's linear operator ``op(kernel, x)``; then the bias;
then a sequence of post-operations in a stated order: an activation, Flax's
``nn.BatchNorm``, or Flax's ``nn.max_pool`` / ``nn.avg_pool``. The bias is the
block's own so that the operator stays linear: feedback alignment replaces its
backward pass (:func:`jaxbio.nets.layers.feedback_linear`) and target
propagation applies its transpose (:meth:`Block.transpose`).
Learning rules see a network as this stack: feedback alignment swaps the
backward operator of each weight layer, DFA injects a signal at each block
output, target propagation sets targets for block outputs, and so on.

Parameters are a tuple with one dict per block (``kernel``, ``bias`` and, with
batch norm, ``bn_scale``/``bn_offset``, the Flax batch norm's ``scale`` and
``bias``); network state (batch-norm running statistics ``bn_mean``/``bn_var``)
is a tuple of dicts too. Both are plain pytrees, so any optax optimiser and
jaxbio's checkpoints take them as they are. Linen layers (rather than NNX
ones) because a Linen layer is a stateless description applied to explicit
variables, which is exactly the pure ``init``/``apply`` the learning rules
and ``jax.jit`` want, and because Linen has the locally connected layer
(``nn.ConvLocal``, a convolution without weight sharing, with one bias per
output location) that NNX lacks.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbio.nets import layers

Params = tuple[dict[str, jax.Array], ...]
NetState = tuple[dict[str, jax.Array], ...]

POST_OPS_HELP = ("an activation name (tanh, sigmoid, relu, identity), 'bn', "
                 "'max_pool:W:S', 'avg_pool:W:S' or 'softmax' (over the last axis)")


class Block(NamedTuple):
  """One weight layer and its post-operations.

  Attributes:
    kind: ``"dense"``, ``"conv"`` or ``"local"``.
    layer: the Flax layer (``nn.Dense``, ``nn.Conv``, ``nn.ConvLocal``, all
      with ``use_bias=False``) whose call is ``op``.
    norm: the block's ``nn.BatchNorm``, or ``None``.
    op: the linear operator ``op(kernel, x)``: ``layer`` applied with that kernel.
    feedback_op: ``op`` with the feedback-weight backward pass
      (:func:`jaxbio.nets.layers.feedback_linear`).
    in_shape: per-example input shape (after flattening for dense blocks).
    out_shape: per-example output shape of the block (after post-ops).
    kernel_shape: shape of the kernel.
    bias_shape: shape of the bias, or ``None`` for no bias.
    post: the post-operations, in order (see ``POST_OPS_HELP``).
    kernel_init: ``init(key, shape, dtype)`` for the kernel.
    flatten: whether the input is flattened before a dense layer.
  """
  kind: str
  layer: nn.Module
  norm: nn.Module | None
  op: Callable[[jax.Array, jax.Array], jax.Array]
  feedback_op: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...] | None
  post: tuple[str, ...]
  kernel_init: Callable
  flatten: bool

  def transpose(self, kernel: jax.Array, y: jax.Array) -> jax.Array:
    """The transpose of this block's linear operator (not its post-ops) applied to ``y``.

    ``y`` is ``(B, *linear output shape)``; returns ``(B, *in_shape)`` (flat
    for a dense block). See :func:`jaxbio.nets.layers.transpose_op`.
    """
    return layers.transpose_op(self.op, kernel, y, self.in_shape)

  def linear(self, params: dict, x: jax.Array) -> jax.Array:
    """The block's pre-activation ``op(kernel, x) + bias`` (input flattened for dense blocks).

    Rules that need the somatic potential ``v = W x + c`` itself (BurstCCN,
    target propagation) use this with the block's post-operations applied
    by themselves.
    """
    if self.flatten:
      x = x.reshape(x.shape[0], -1)
    h = self.op(params["kernel"], x)
    return h if self.bias_shape is None else h + params["bias"]

  def apply(self, params: dict, state: dict, x: jax.Array, *, train: bool,
            feedback: jax.Array | None = None):
    """This block on a batch: ``(h, new_state)`` (see :func:`block_apply`)."""
    return block_apply(self, params, state, x, train=train, feedback=feedback)


def _parse_post(op: str):
  if op in layers.ACTIVATIONS:
    return ("act", op)
  if op in ("bn", "softmax"):
    return (op,)
  parts = op.split(":")
  if parts[0] in ("max_pool", "avg_pool") and len(parts) == 3:
    return ("pool", parts[0][:3], int(parts[1]), int(parts[2]))
  raise ValueError(f"unknown post-operation {op!r}; valid choices: {POST_OPS_HELP}")


def _post_shape(shape, post):
  for op in post:
    spec = _parse_post(op)
    if spec[0] == "pool":
      if len(shape) != 3:
        raise ValueError(f"pooling {op!r} needs an image-shaped (H, W, C) input, got {shape}")
      _, _, window, stride = spec
      if min(shape[0], shape[1]) < window:
        raise ValueError(f"pooling {op!r} does not fit a {shape[0]}x{shape[1]} feature map")
      shape = ((shape[0] - window) // stride + 1, (shape[1] - window) // stride + 1, shape[2])
  return shape


def block_apply(block: Block, params: dict, state: dict, x: jax.Array, *,
                train: bool, feedback: jax.Array | None = None):
  """Applies one block to a batch; returns ``(h, new_state)``.

  If ``feedback`` is given, the weight layer's backward pass sends the input
  cotangent through the feedback kernel instead of the forward kernel.
  """
  if block.flatten:
    x = x.reshape(x.shape[0], -1)
  if feedback is None:
    h = block.op(params["kernel"], x)
  else:
    h = block.feedback_op(params["kernel"], feedback, x)
  if block.bias_shape is not None:
    h = h + params["bias"]
  new_state = dict(state)
  for op in block.post:
    spec = _parse_post(op)
    if spec[0] == "act":
      h = layers.get_activation(spec[1])(h)
    elif spec[0] == "bn":
      h, new_state["bn_mean"], new_state["bn_var"] = _batch_norm(
          block.norm, params, state, h, train)
    elif spec[0] == "softmax":
      h = jax.nn.softmax(h, axis=-1)
    else:
      pool = nn.max_pool if spec[1] == "max" else nn.avg_pool
      h = pool(h, (spec[2], spec[2]), strides=(spec[3], spec[3]), padding="VALID")
  return h, new_state


def _batch_norm(norm: nn.Module, params: dict, state: dict, h: jax.Array, train: bool):
  """Flax batch norm on the block's variables; returns ``(y, new_mean, new_var)``."""
  variables = {"params": {"scale": params["bn_scale"], "bias": params["bn_offset"]},
               "batch_stats": {"mean": state["bn_mean"], "var": state["bn_var"]}}
  if not train:
    return norm.apply(variables, h, use_running_average=True), state["bn_mean"], state["bn_var"]
  y, updated = norm.apply(variables, h, use_running_average=False, mutable=["batch_stats"])
  stats = jax.lax.stop_gradient(updated["batch_stats"])
  return y, stats["mean"], stats["var"]


def _linear(layer: nn.Module, kernel: jax.Array, x: jax.Array) -> jax.Array:
  """The Flax layer's call with ``kernel``: the block's linear operator."""
  return layer.apply({"params": {"kernel": kernel}}, x)


class Network(NamedTuple):
  """A feedforward stack of blocks with pure ``init`` and ``apply``.

  Attributes:
    blocks: the blocks, input to output. The last block's output is the logits
      (or the output activity, for rules that use output activations).
    input_shape: per-example input shape, e.g. ``(28, 28, 1)``.
    dtype: of the parameters and state, ``"float32"`` or ``"float64"`` (which
      needs 64-bit JAX: ``jax.config.update("jax_enable_x64", True)`` at
      start-up; the launcher does this for ``model.dtype="float64"``).
  """
  blocks: tuple[Block, ...]
  input_shape: tuple[int, ...]
  dtype: str = "float32"

  @property
  def num_outputs(self) -> int:
    return math.prod(self.blocks[-1].out_shape)

  @property
  def param_dtype(self):
    """The parameters' dtype; a one-line error if float64 is asked for without 64-bit JAX."""
    return checked_dtype(self.dtype)

  def init(self, key: jax.Array) -> tuple[Params, NetState]:
    """Returns ``(params, state)``; biases and batch-norm offsets start at 0."""
    params, state = [], []
    dtype = self.param_dtype
    for block, k in zip(self.blocks, jax.random.split(key, len(self.blocks))):
      p = {"kernel": block.kernel_init(k, block.kernel_shape, dtype)}
      s = {}
      if block.bias_shape is not None:
        p["bias"] = jnp.zeros(block.bias_shape, dtype)
      if "bn" in block.post:
        channels = _bn_channels(block)
        p["bn_scale"] = jnp.ones((channels,), dtype)
        p["bn_offset"] = jnp.zeros((channels,), dtype)
        s = {"bn_mean": jnp.zeros((channels,), dtype),
             "bn_var": jnp.ones((channels,), dtype)}
      params.append(p)
      state.append(s)
    return tuple(params), tuple(state)

  def apply(self, params: Params, state: NetState, x: jax.Array, *, train: bool = False,
            feedback: Sequence[jax.Array | None] | None = None,
            return_hiddens: bool = False):
    """Runs the network on a batch ``x`` of shape ``(B, *input_shape)``.

    Args:
      params, state: from :meth:`init`.
      x: the input batch.
      train: batch norm uses batch statistics and updates its running ones.
      feedback: optional per-block feedback kernels (``None`` entries keep the
        forward kernel's backward pass).
      return_hiddens: also return every block's output ``(h_1, ..., h_L)``.

    Returns:
      ``(output, new_state)``, or ``(output, new_state, hiddens)``.
    """
    check_input(self, x)
    hiddens, new_state = [], []
    h = x
    for i, block in enumerate(self.blocks):
      fb = None if feedback is None else feedback[i]
      h, s = block_apply(block, params[i], state[i], h, train=train, feedback=fb)
      hiddens.append(h)
      new_state.append(s)
    if return_hiddens:
      return h, tuple(new_state), tuple(hiddens)
    return h, tuple(new_state)


def check_input(net: Network, x) -> None:
  """Raises a one-line error if ``x`` does not match the network's input shape."""
  shape = tuple(getattr(x, "shape", ()))
  if len(shape) < 1 or shape[1:] != tuple(net.input_shape):
    raise ValueError(
        f"input batch has shape {shape}, but the network expects (batch, "
        f"{', '.join(map(str, net.input_shape))})")


def _bn_channels(block: Block) -> int:
  return block.kernel_shape[-1]  # the output channels, for every layer kind.


# ---------------------------------------------------------------------------
# Builders.


def _make_block(kind: str, in_shape: tuple[int, ...], *, features: int, kernel_size: int = 1,
                stride: int = 1, padding: str = "SAME", bias: bool = True,
                post: Sequence[str] = (), kernel_init: str = "glorot_uniform",
                init_gain: float = 1.0, dtype: str = "float32") -> Block:
  post = tuple(post)
  for op in post:
    _parse_post(op)
  if not (isinstance(features, int) and features > 0):
    raise ValueError(f"layer width must be a positive integer, got {features!r}")
  flatten = False
  init = layers.initializer(kernel_init, kind, init_gain)
  if kind == "dense":
    n_in = math.prod(in_shape)
    flatten = len(in_shape) != 1
    kernel_shape = (n_in, features)
    bias_shape = (features,)
    layer = nn.Dense(features, use_bias=False, kernel_init=init, param_dtype=jnp.dtype(dtype))
    lin_shape = (features,)
    in_shape = (n_in,)
  elif kind in ("conv", "local"):
    if len(in_shape) != 3:
      raise ValueError(f"a {kind} layer needs an image-shaped (H, W, C) input, got {in_shape}")
    if stride < 1 or kernel_size < 1:
      raise ValueError(f"{kind} layer kernel size and stride must be >= 1, got "
                       f"kernel {kernel_size}, stride {stride}")
    h, w, c = in_shape
    oh = layers.conv_output_size(h, kernel_size, stride, padding)
    ow = layers.conv_output_size(w, kernel_size, stride, padding)
    if oh < 1 or ow < 1:
      raise ValueError(f"{kind} layer with kernel {kernel_size}, stride {stride}, padding "
                       f"{padding} does not fit a {h}x{w} input")
    lin_shape = (oh, ow, features)
    geometry = dict(kernel_size=(kernel_size, kernel_size), strides=(stride, stride),
                    padding=padding if isinstance(padding, str)
                    else tuple(tuple(p) for p in padding),
                    use_bias=False, kernel_init=init, param_dtype=jnp.dtype(dtype))
    if kind == "conv":
      kernel_shape = (kernel_size, kernel_size, c, features)
      bias_shape = (features,)
      layer = nn.Conv(features, **geometry)
    else:
      # Kernel (H_out, W_out, C_in * kh * kw, C_out), patch features ordered (c, kh, kw).
      kernel_shape = (oh, ow, c * kernel_size * kernel_size, features)
      bias_shape = (oh, ow, features)  # untied biases, one per location.
      layer = nn.ConvLocal(features, **geometry)
  else:
    raise ValueError(f"unknown layer kind {kind!r}; valid choices: dense, conv, local")
  # Flax's batch norm with the statistics jaxbio's networks have always used:
  # running averages with momentum 0.9, eps 1e-5, the two-pass variance.
  norm = (nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                       param_dtype=jnp.dtype(dtype)) if "bn" in post else None)
  op = functools.partial(_linear, layer)
  return Block(kind=kind, layer=layer, norm=norm, op=op, feedback_op=layers.feedback_linear(op),
               in_shape=in_shape, out_shape=_post_shape(lin_shape, post),
               kernel_shape=kernel_shape, bias_shape=bias_shape if bias else None, post=post,
               kernel_init=init, flatten=flatten)


DTYPES = ("float32", "float64")


def checked_dtype(name: str):
  """``jnp.dtype(name)`` for a network dtype; one-line errors for bad names or no x64."""
  if name not in DTYPES:
    raise ValueError(f"unknown network dtype {name!r}; valid choices: {', '.join(DTYPES)}")
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("a float64 network needs 64-bit JAX: call "
                     "jax.config.update('jax_enable_x64', True) at start-up (the launcher does "
                     "this for model.dtype='float64')")
  return jnp.dtype(name)


def sequential(input_shape: Sequence[int], layer_specs: Sequence[dict[str, Any]],
               dtype: str = "float32") -> Network:
  """Builds a network from per-layer specs.

  Each spec is a dict with ``kind`` (dense, conv, local), ``features`` and
  optionally ``kernel_size``, ``stride``, ``padding``, ``bias``, ``post``,
  ``kernel_init``, ``init_gain``. ``dtype`` is the parameters' (float32 or
  float64).
  """
  checked_dtype(dtype)
  shape = tuple(int(d) for d in input_shape)
  blocks = []
  for spec in layer_specs:
    spec = dict(spec)
    kind = spec.pop("kind")
    block = _make_block(kind, shape, dtype=dtype, **spec)
    blocks.append(block)
    shape = block.out_shape
  if not blocks:
    raise ValueError("a network needs at least one layer")
  return Network(blocks=tuple(blocks), input_shape=tuple(int(d) for d in input_shape),
                 dtype=dtype)


def mlp(input_shape: Sequence[int], widths: Sequence[int], num_classes: int, *,
        activation: str = "tanh", output_activation: str = "identity",
        kernel_init: str = "glorot_uniform", init_gain: float = 1.0,
        batch_norm: bool = False, legacy_double_softmax: bool = False,
        dtype: str = "float32") -> Network:
  """A fully connected network: ``widths`` hidden layers, then ``num_classes`` outputs.

  ``legacy_double_softmax``: see :func:`convnet`.
  """
  layers.get_activation(activation)
  layers.get_activation(output_activation)
  hidden_post = (("bn",) if batch_norm else ()) + (activation,)
  specs = [dict(kind="dense", features=w, post=hidden_post, bias=not batch_norm,
                kernel_init=kernel_init, init_gain=init_gain) for w in widths]
  specs.append(dict(kind="dense", features=num_classes,
                    post=_output_post(output_activation, legacy_double_softmax),
                    kernel_init=kernel_init, init_gain=init_gain))
  return sequential(input_shape, specs, dtype)


def _output_post(output_activation: str, legacy_double_softmax: bool) -> tuple[str, ...]:
  if not legacy_double_softmax:
    return (output_activation,)
  if output_activation != "identity":
    raise ValueError(f"legacy_double_softmax needs output_activation='identity' (the softmax "
                     f"is the output activation), got {output_activation!r}")
  return ("identity", "softmax")


def convnet(input_shape: Sequence[int], convs: Sequence[Sequence], dense: Sequence[int],
            num_classes: int, *, activation: str = "relu", pool: str | None = "max_pool:2:2",
            batch_norm: bool = False, bn_after_activation: bool = False,
            kernel_init: str = "glorot_uniform", init_gain: float = 1.0,
            conv_bias: bool = True, local: bool = False,
            output_activation: str = "identity", legacy_double_softmax: bool = False,
            dtype: str = "float32") -> Network:
  """A convolutional (or, with ``local=True``, locally connected) network.

  Args:
    input_shape: ``(H, W, C)``.
    convs: per conv layer ``(features, kernel_size, stride[, padding])``.
    dense: hidden fully connected widths after flattening.
    num_classes: outputs.
    activation: hidden nonlinearity.
    pool: post-op string for pooling after each conv layer, or ``None``.
    batch_norm: batch norm in every hidden layer.
    bn_after_activation: order ``activation -> bn`` (as in Guerguiev et al.)
      instead of ``bn -> activation``.
    local: use locally connected layers (no weight sharing, untied biases).
    output_activation: the output layer's activation (``identity``: logits).
    legacy_double_softmax: end with a softmax, so the network outputs
      probabilities that the softmax cross-entropy normalises a second time:
      the loss is ``CE(log_softmax(softmax(z)))`` for logits ``z``. This is
      the output layer of Guerguiev et al.'s RDD code (a ``Softmax`` layer
      before a cross-entropy that applies log-softmax itself), offered for
      parity studies, since that paper's numbers may include it. The
      predicted class is the same; the loss is bounded and its gradient much
      smaller than with logits.
    dtype: parameter dtype.
  """
  layers.get_activation(activation)

  def hidden_post(with_pool):
    act = (activation,)
    bn = ("bn",) if batch_norm else ()
    ops = act + bn if bn_after_activation else bn + act
    return ops + ((pool,) if (with_pool and pool) else ())

  # A bias right before batch norm is cancelled by it (its true gradient is 0),
  # so it is left out; with bn after the activation it matters and stays.
  bias_before_bn = not batch_norm or bn_after_activation
  specs = []
  for conv in convs:
    features, kernel_size, stride, *rest = conv
    padding = rest[0] if rest else "SAME"
    specs.append(dict(kind="local" if local else "conv", features=int(features),
                      kernel_size=int(kernel_size), stride=int(stride), padding=padding,
                      bias=(conv_bias or local) and bias_before_bn, post=hidden_post(True),
                      kernel_init=kernel_init, init_gain=init_gain))
  for w in dense:
    specs.append(dict(kind="dense", features=int(w), post=hidden_post(False),
                      bias=bias_before_bn, kernel_init=kernel_init, init_gain=init_gain))
  specs.append(dict(kind="dense", features=num_classes,
                    post=_output_post(output_activation, legacy_double_softmax),
                    kernel_init=kernel_init, init_gain=init_gain))
  return sequential(input_shape, specs, dtype)


def num_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
