"""Vector fields of convergent recurrent networks.

A convergent recurrent network is the discrete-time map (no leak, no dt)

    u_{t+1} = H(σ(u_t), x; θ) + β P_out c(σ(u_t,out)),      F(u) = H(σ(u), x) + βP_out c − u,

with state ``u`` (pre-activations) split into named layers and activities
``a = σ(u)``. This module defines ``H`` for the three architectures of
Laborieux & Zenke (ICLR 2024): the reciprocal MLP, the loop MLP and the
4-layer ConvNet with softmax pooling. Everything here is holomorphic in the
state, so the same code runs in complex arithmetic for the Cauchy estimators.

Layouts (batch first; extra leading axes, e.g. vmapped nudge phases, are fine):

* state / activity: a dict ``{layer: (B, *shape)}``; the MLP layers are
  ``l1, ..., lL, out``; the CNN layers ``conv1, conv2, conv3, out``.
* parameters: a dict ``{"src-dst": {"kernel", ["bias"]}, "readout": {...}}``.
  A dense kernel of connection ``p-q`` has shape ``(n_p, n_q)`` and computes
  ``a_p @ K``, i.e. ``K = W_qpᵀ`` in column notation, where
  H_q = Σ_p W_qp a_p + b_q. Only forward (bottom-up) connections have a bias. Conv kernels are HWIO; a feedback conv
  ``q-p`` has the *same* layout as its forward partner ``p-q``.
* The input is the constant "in" layer: its contribution to ``H`` (the
  *drive*) is computed once per batch, outside the time loop.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Params = dict
State = dict

_DIMS = ("NHWC", "HWIO", "NHWC")

# ---------------------------------------------------------------------------
# Activations of the authors' code. Both are holomorphic.


def hard_sigmoid(z: jax.Array) -> jax.Array:
  """MLP activation σ(z) = 1 / (1 + exp(−(4z − 2))); σ(½) = ½, σ′(½) = 1.

  Poles at z = ½ + i(2k+1)π/4: complex trajectories must keep |Im u| < π/4.
  """
  return jax.nn.sigmoid(4.0 * z - 2.0)


def dsilu(z: jax.Array) -> jax.Array:
  """CNN activation σ(z) = ½[SiLU(z) − SiLU(z − 2)], a smooth clip(z/2, 0, 1).

  σ(1) = ½ and σ′(1) ≈ 0.4277; poles at i(2k+1)π and 2 + i(2k+1)π.
  """
  return 0.5 * (jax.nn.silu(z) - jax.nn.silu(z - 2.0))


# ---------------------------------------------------------------------------
# The vector-field description shared by every architecture.


class Connection(NamedTuple):
  """A weight layer from ``src`` to ``dst`` (``src == "in"`` for the input)."""
  src: str
  dst: str
  bias: bool

  @property
  def name(self) -> str:
    return f"{self.src}-{self.dst}"


class VectorField(NamedTuple):
  """``H`` of a convergent recurrent network, as pure functions.

  Attributes:
    arch: registry name (``hep_mlp``, ``hep_loop_mlp``, ``hep_cnn``).
    input_shape: per-example input shape.
    num_classes: readout width K.
    layers: ``((name, per-example shape), ...)`` of the state layers; the
      last one, ``out``, feeds the readout and receives the nudge.
    connections: every recurrent and input connection.
    pairs: ``((forward, feedback, transpose), ...)`` reciprocal connections:
      the feedback kernel is aligned with the forward one iff it equals the
      forward kernel (``transpose=False``, convs) or its transpose (dense).
    activation: σ, element-wise and holomorphic.
    init_params: ``key -> params`` (readout included; no rotation).
    drive: ``(params, x) -> {layer: input term}``, the state-independent part
      of ``H`` (computed once per batch).
    h: H itself, ``(params, a, drive) -> {layer: H_layer}``; ``drive=None`` omits
      the input term (all Jacobians w.r.t. ``a`` are unchanged).
  """
  arch: str
  input_shape: tuple[int, ...]
  num_classes: int
  layers: tuple[tuple[str, tuple[int, ...]], ...]
  connections: tuple[Connection, ...]
  pairs: tuple[tuple[str, str, bool], ...]
  activation: Callable[[jax.Array], jax.Array]
  init_params: Callable[[jax.Array], Params]
  drive: Callable[[Params, jax.Array], State]
  h: Callable[[Params, State, State | None], State]

  @property
  def num_neurons(self) -> int:
    """Total number of state units n: 522 (MLP), 57,856 (CNN)."""
    return sum(math.prod(shape) for _, shape in self.layers)

  @property
  def out_shape(self) -> tuple[int, ...]:
    return dict(self.layers)["out"]


def real_linear(op: Callable, kernel: jax.Array, x: jax.Array) -> jax.Array:
  """``op(kernel, x)`` for an operator linear in ``x``, fast for complex ``x``.

  A complex ``x`` with a real kernel runs as one real op on [Re x; Im x]
  (stacked along axis 0). That equals the complex op and is much faster on
  CPU, where complex matmuls and convolutions miss the optimised real kernels.
  Autodiff sees a C-linear map, so JVPs and (transpose) VJPs are the
  holomorphic ones.
  """
  if jnp.iscomplexobj(x) and not jnp.iscomplexobj(kernel):
    n = x.shape[0]
    y = op(kernel.astype(x.real.dtype), jnp.concatenate([jnp.real(x), jnp.imag(x)], axis=0))
    return lax.complex(y[:n], y[n:])
  dtype = jnp.result_type(kernel, x)
  return op(kernel.astype(dtype), x.astype(dtype))


def _matmul(kernel, x):
  return x @ kernel


def _lecun_normal(key, shape, dtype=jnp.float32):
  # Flax's default, as in the authors' code: truncated normal, variance exactly 1/fan_in.
  return jax.nn.initializers.lecun_normal()(key, shape, dtype)


def _readout_params(key, n_out: int, num_classes: int) -> dict:
  return {"kernel": _lecun_normal(key, (n_out, num_classes)),
          "bias": jnp.zeros((num_classes,), jnp.float32)}


def _add(h: State, name: str, value: jax.Array) -> None:
  h[name] = value if name not in h else h[name] + value


# ---------------------------------------------------------------------------
# MLPs (the Fashion-MNIST nets of the authors' code).


def _dense_field(arch: str, input_shape: Sequence[int], hidden: Sequence[int],
                 num_classes: int, connections: Sequence[Connection]) -> VectorField:
  input_shape = tuple(int(d) for d in input_shape)
  n_in = math.prod(input_shape)
  names = [f"l{i + 1}" for i in range(len(hidden))] + ["out"]
  sizes = dict(zip(names, [int(h) for h in hidden] + [int(num_classes)]))
  sizes["in"] = n_in
  connections = tuple(connections)
  recurrent = tuple(c for c in connections if c.src != "in")
  inputs = tuple(c for c in connections if c.src == "in")
  conn_names = {c.name for c in connections}
  pairs = tuple((c.name, f"{c.dst}-{c.src}", True) for c in recurrent
                if c.bias and f"{c.dst}-{c.src}" in conn_names)

  def init_params(key):
    keys = jax.random.split(key, len(connections) + 1)
    params = {}
    for c, k in zip(connections, keys[:-1]):
      p = {"kernel": _lecun_normal(k, (sizes[c.src], sizes[c.dst]))}
      if c.bias:
        p["bias"] = jnp.zeros((sizes[c.dst],), jnp.float32)
      params[c.name] = p
    params["readout"] = _readout_params(keys[-1], sizes["out"], num_classes)
    return params

  def linear(p, x):
    y = real_linear(_matmul, p["kernel"], x)
    return y + p["bias"].astype(y.dtype) if "bias" in p else y

  def drive(params, x):
    x = x.reshape(x.shape[:x.ndim - len(input_shape)] + (n_in,))
    return {c.dst: linear(params[c.name], x) for c in inputs}

  def field(params, a, drive=None):
    h = {}
    for c in recurrent:
      _add(h, c.dst, linear(params[c.name], a[c.src]))
    for name, value in (drive or {}).items():
      h[name] = h[name] + value
    return h

  return VectorField(arch=arch, input_shape=input_shape, num_classes=int(num_classes),
                     layers=tuple((n, (sizes[n],)) for n in names), connections=connections,
                     pairs=pairs, activation=hard_sigmoid, init_params=init_params,
                     drive=drive, h=field)


def reciprocal_mlp(input_shape: Sequence[int] = (784,), hidden: Sequence[int] = (256, 256),
                   num_classes: int = 10) -> VectorField:
  """The reciprocal MLP ("mlp_2-256" in the authors' code): 337,528 parameters by default.

  Connections in→l1 (bias), l_i→l_{i+1} (bias) and l_{i+1}→l_i, l_L→out
  (bias) and out→l_L; the out layer has ``num_classes`` units and feeds a
  ``num_classes × num_classes`` readout.
  """
  names = [f"l{i + 1}" for i in range(len(hidden))] + ["out"]
  conns = [Connection("in", "l1", True)]
  for lo, hi in zip(names[:-1], names[1:]):
    conns += [Connection(lo, hi, True), Connection(hi, lo, False)]
  return _dense_field("hep_mlp", input_shape, hidden, num_classes, conns)


def loop_mlp(input_shape: Sequence[int] = (784,), hidden: Sequence[int] = (256, 256),
             num_classes: int = 10) -> VectorField:
  """The loop MLP ("loop_mnist" in the authors' code): 271,992 parameters by default.

  in→l1 (bias), l_i→l_{i+1} (bias), l_L→out (bias) and out→l1: no reciprocal
  pair, so the Jacobian can never be symmetric.
  """
  names = [f"l{i + 1}" for i in range(len(hidden))] + ["out"]
  conns = [Connection("in", "l1", True)]
  conns += [Connection(lo, hi, True) for lo, hi in zip(names[:-1], names[1:])]
  conns.append(Connection("out", "l1", False))
  return _dense_field("hep_loop_mlp", input_shape, hidden, num_classes, conns)


# ---------------------------------------------------------------------------
# The 4-layer ConvNet (CIFAR-10/100, ImageNet 32×32).


def softmax_pool(v: jax.Array) -> jax.Array:
  """2×2, stride-2 softmax pooling: each window gives Σ v e^{v−m} / Σ e^{v−m}.

  ``m`` (the window maximum of Re v) is a stabiliser held constant; the
  result does not depend on it. Holomorphic in ``v``. Layout ``(..., H, W, C)``.
  """
  *lead, h, w, c = v.shape
  v = v.reshape(*lead, h // 2, 2, w // 2, 2, c)
  axes = (v.ndim - 4, v.ndim - 2)
  m = lax.stop_gradient(jnp.max(jnp.real(v), axis=axes, keepdims=True))
  e = jnp.exp(v - m)
  return jnp.sum(v * e, axis=axes) / jnp.sum(e, axis=axes)


def _conv(kernel, x, padding):
  op = lambda k, z: lax.conv_general_dilated(z, k, (1, 1), padding, dimension_numbers=_DIMS)
  return real_linear(op, kernel, x)


def convnet(input_shape: Sequence[int] = (32, 32, 3),
            channels: Sequence[int] = (128, 256, 512, 512),
            num_classes: int = 10) -> VectorField:
  """The 4-layer ConvNet of Laborieux & Zenke (ICLR 2024).

  States conv1 16×16×128, conv2 8×8×256, conv3 4×4×512, out 1×1×512 (for a
  32×32 input). Bottom-up: H_l ⊇ Pool(Conv_fwd(a_{l−1}) + b) (3×3 SAME; the
  out layer 3×3 VALID). Top-down: T(a_l; bk, a_{l+1}) =
  ∇_{a_l} Σ[Pool(Conv_bk(a_l)) ⊙ a_{l+1}], a VJP through a separate bias-free
  conv with the forward layout. With Conv_bk = Conv_fwd, H = ∇Φ with
  Φ = Σ_l a_{l+1}·Pool(Conv(a_l)) and J_h is symmetric. 7,677,706 parameters
  with a CIFAR-10 readout.
  """
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3:
    raise ValueError(f"hep_cnn needs an (H, W, C) input shape, got {input_shape}")
  h, w, c_in = input_shape
  if h % 8 or w % 8 or h // 8 < 4 or w // 8 < 4:
    raise ValueError(f"hep_cnn needs H and W divisible by 8 and >= 32, got {input_shape}")
  if len(channels) != 4 or any(int(c) < 1 for c in channels):
    raise ValueError(f"hep_cnn channels must be 4 positive integers, got {tuple(channels)}")
  c1, c2, c3, c4 = (int(c) for c in channels)
  ho, wo = (h // 8 - 2) // 2, (w // 8 - 2) // 2
  layers = (("conv1", (h // 2, w // 2, c1)), ("conv2", (h // 4, w // 4, c2)),
            ("conv3", (h // 8, w // 8, c3)), ("out", (ho, wo, c4)))
  cin = {"in": c_in, "conv1": c1, "conv2": c2, "conv3": c3}
  cout = {"conv1": c1, "conv2": c2, "conv3": c3, "out": c4}
  forward = (Connection("in", "conv1", True), Connection("conv1", "conv2", True),
             Connection("conv2", "conv3", True), Connection("conv3", "out", True))
  feedback = tuple(Connection(f.dst, f.src, False) for f in forward[1:])
  connections = forward + feedback
  padding = {"in": "SAME", "conv1": "SAME", "conv2": "SAME", "conv3": "VALID"}
  pairs = tuple((f.name, f"{f.dst}-{f.src}", False) for f in forward[1:])

  def init_params(key):
    keys = jax.random.split(key, len(connections) + 1)
    params = {}
    for conn, k in zip(connections, keys[:-1]):
      lo, hi = (conn.src, conn.dst) if conn.bias else (conn.dst, conn.src)
      p = {"kernel": _lecun_normal(k, (3, 3, cin[lo], cout[hi]))}
      if conn.bias:
        p["bias"] = jnp.zeros((cout[hi],), jnp.float32)
      params[conn.name] = p
    params["readout"] = _readout_params(keys[-1], ho * wo * c4, num_classes)
    return params

  def bottom_up(p, x, pad):
    y = _conv(p["kernel"], x, pad)
    return softmax_pool(y + p["bias"].astype(y.dtype))

  def top_down(kernel, a_lo, a_hi, pad):
    _, vjp = jax.vjp(lambda z: softmax_pool(_conv(kernel, z, pad)), a_lo)
    return vjp(a_hi)[0]

  def _batched(fn, x, n_lead):
    # lax.conv wants exactly one batch axis: fold extra leading axes into it.
    lead = x.shape[:n_lead]
    y = fn(x.reshape((-1,) + x.shape[n_lead:]))
    return y.reshape(lead + y.shape[1:])

  def drive(params, x):
    n_lead = x.ndim - 3
    return {"conv1": _batched(lambda z: bottom_up(params["in-conv1"], z, "SAME"), x, n_lead)}

  def field(params, a, drive=None):
    n_lead = a["out"].ndim - 3
    flat = {k: v.reshape((-1,) + v.shape[n_lead:]) for k, v in a.items()}
    hh = {}
    for f in forward[1:]:
      _add(hh, f.dst, bottom_up(params[f.name], flat[f.src], padding[f.src]))
      _add(hh, f.src, top_down(params[f"{f.dst}-{f.src}"]["kernel"], flat[f.src], flat[f.dst],
                               padding[f.src]))
    lead = a["out"].shape[:n_lead]
    hh = {k: v.reshape(lead + v.shape[1:]) for k, v in hh.items()}
    if drive is not None:
      hh["conv1"] = hh["conv1"] + drive["conv1"]
    return hh

  return VectorField(arch="hep_cnn", input_shape=input_shape, num_classes=int(num_classes),
                     layers=layers, connections=connections, pairs=pairs, activation=dsilu,
                     init_params=init_params, drive=drive, h=field)


# ---------------------------------------------------------------------------
# Initial rotation of the feedback weights (the authors' ``--rotate α``).


def rotate_feedback(field: VectorField, params: Params, angle_deg: float) -> Params:
  """Sets every feedback kernel to sin α·K_bwd + cos α·K_fwdᵀ (convs: no transpose).

  α = 0 gives exactly aligned (transposed) feedback, α = 90° keeps the random
  feedback. Applied once, at initialisation.
  """
  alpha = math.radians(float(angle_deg))
  s, c = math.sin(alpha), math.cos(alpha)
  if float(angle_deg) == 0.0:
    s, c = 0.0, 1.0
  params = {k: dict(v) for k, v in params.items()}
  for fwd, bwd, transpose in field.pairs:
    k_fwd = params[fwd]["kernel"]
    aligned = k_fwd.T if transpose else k_fwd
    params[bwd]["kernel"] = s * params[bwd]["kernel"] + c * aligned
  return params
