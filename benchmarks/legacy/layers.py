"""Linear operators, activations, pooling and initialisers for jaxbio networks.

Every weight layer in jaxbio is a *linear operator* ``op(kernel, x)``: linear in
``x`` for fixed ``kernel`` and linear in ``kernel`` for fixed ``x``. Bias,
normalisation, nonlinearity and pooling are applied afterwards by the block that
owns the operator (see :mod:`jaxbio.nets.sequential`). Keeping the operator
separate is what lets one mechanism, :func:`feedback_linear`, replace the
backward pass of any weight layer (dense, convolutional or locally connected)
with a separate feedback kernel.

Layouts (batch first, channels last):

* dense: ``x`` is ``(B, n_in)``, kernel ``(n_in, n_out)``; ``y = x @ kernel``.
* conv: ``x`` is ``(B, H, W, C)``, kernel ``(kh, kw, C_in, C_out)`` (HWIO).
* local (locally connected, a convolution without weight sharing): kernel
  ``(H_out, W_out, C_in * kh * kw, C_out)``: one kernel per output location.
  The patch features are ordered ``(c, kh, kw)``, as returned by
  :func:`jax.lax.conv_general_dilated_patches`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")

# ---------------------------------------------------------------------------
# Activations.


def _sigmoid(x):
  return jax.nn.sigmoid(x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "tanh": jnp.tanh,
    "sigmoid": _sigmoid,
    "relu": jax.nn.relu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation called ``name``; raises with the valid choices."""
  if name not in ACTIVATIONS:
    raise ValueError(
        f"unknown activation {name!r}; valid choices: {', '.join(sorted(ACTIVATIONS))}")
  return ACTIVATIONS[name]


# ---------------------------------------------------------------------------
# Initialisers. ``fan_in`` and ``fan_out`` follow the papers' conventions:
# dense (n_in, n_out); conv and local: receptive field times channels.

INITIALIZERS = ("glorot_uniform", "glorot_normal", "lecun_normal", "lecun_uniform",
                "he_normal", "he_uniform")


def initializer(name: str, kind: str, gain: float = 1.0):
  """Returns ``init(key, shape, dtype)`` for a kernel of layer ``kind``.

  Args:
    name: one of :data:`INITIALIZERS` (Glorot/Xavier, LeCun, He).
    kind: ``"dense"``, ``"conv"`` or ``"local"``; it fixes which axes are fans.
    gain: multiplies the standard deviation (BurstCCN uses gain 3.6).
  """
  if name not in INITIALIZERS:
    raise ValueError(
        f"unknown initializer {name!r}; valid choices: {', '.join(INITIALIZERS)}")
  family, distribution = name.split("_")
  mode = {"glorot": "fan_avg", "lecun": "fan_in", "he": "fan_in"}[family]
  scale = (2.0 if family == "he" else 1.0) * gain ** 2
  distribution = {"normal": "truncated_normal", "uniform": "uniform"}[distribution]
  if family == "glorot" and name == "glorot_normal":
    distribution = "normal"  # Glorot & Bengio's normal variant is untruncated.
  if kind in ("dense", "conv"):
    axes = dict(in_axis=-2, out_axis=-1)
  elif kind == "local":
    # (H_out, W_out, C_in*kh*kw, C_out): per-location fans, locations are batch axes.
    axes = dict(in_axis=-2, out_axis=-1, batch_axis=(0, 1))
  else:
    raise ValueError(f"unknown layer kind {kind!r}; valid choices: dense, conv, local")
  # For conv kernels variance_scaling multiplies both fans by the receptive
  # field (kh * kw), as Glorot and LeCun prescribe for convolutions.
  return jax.nn.initializers.variance_scaling(scale, mode, distribution, **axes)


# ---------------------------------------------------------------------------
# Linear operators.


def dense_op(kernel: jax.Array, x: jax.Array) -> jax.Array:
  return x @ kernel


def _pad_arg(padding):
  return padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)


def conv_op(kernel: jax.Array, x: jax.Array, *, stride: int = 1,
            padding: str | Sequence = "SAME") -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (stride, stride), _pad_arg(padding),
                                  dimension_numbers=_DIMS)


def local_op(kernel: jax.Array, x: jax.Array, *, kernel_size: int, stride: int = 1,
             padding: str | Sequence = "SAME") -> jax.Array:
  patches = lax.conv_general_dilated_patches(
      x, (kernel_size, kernel_size), (stride, stride), _pad_arg(padding),
      dimension_numbers=_DIMS)
  return jnp.einsum("bhwk,hwko->bhwo", patches, kernel)


def transpose_op(op: Callable[[jax.Array, jax.Array], jax.Array], kernel: jax.Array,
                 y: jax.Array, in_shape: Sequence[int]) -> jax.Array:
  """Applies the transpose (adjoint) of the linear map ``x -> op(kernel, x)`` to ``y``.

  For any layer kind: a dense layer gives ``y @ kernel.T``; a strided
  convolution, the transposed convolution that is its exact adjoint (input
  positions the convolution never reads get 0); a locally connected layer,
  the map with the sparsity pattern of ``W^T``. ``<op(kernel, x), y> ==
  <x, transpose_op(op, kernel, y, x.shape[1:])>`` for all ``x``, ``y``.

  Args:
    op: a linear operator of this module (``dense_op``, ``conv_op``,
      ``local_op``, with its geometry bound, as in a block's ``op``).
    kernel: its kernel; ``y`` can be a feedback kernel's input instead, for a
      feedback pathway with the forward layer's geometry.
    y: ``(B, *out_shape)`` output-space batch.
    in_shape: the per-example input shape of ``op``.

  Returns:
    The ``(B, *in_shape)`` input-space batch.
  """
  x = jax.ShapeDtypeStruct((y.shape[0], *in_shape), y.dtype)
  (out,) = jax.linear_transpose(lambda v: op(kernel, v), x)(y)
  return out


def conv_output_size(size: int, kernel_size: int, stride: int, padding: str) -> int:
  if padding == "SAME":
    return -(-size // stride)
  if padding == "VALID":
    return (size - kernel_size) // stride + 1
  raise ValueError(f"unknown padding {padding!r}; valid choices: SAME, VALID")


def tie_local_kernel(conv_kernel: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """Copies an HWIO conv kernel to every location of a local kernel.

  A locally connected layer with this kernel computes exactly the convolution.
  """
  kh, kw, cin, cout = conv_kernel.shape
  flat = jnp.transpose(conv_kernel, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)
  return jnp.broadcast_to(flat, (*out_hw, cin * kh * kw, cout))


# ---------------------------------------------------------------------------
# Feedback-weight linear operator.


def feedback_linear(op: Callable[[jax.Array, jax.Array], jax.Array]):
  """Wraps ``op(kernel, x)`` so its input cotangent uses a feedback kernel.

  The returned ``f(kernel, feedback, x)`` computes ``op(kernel, x)`` forward.
  Backward, the kernel receives the ordinary gradient, while the input receives
  ``op(feedback, .)^T g``: the transpose of the operator defined by the
  feedback kernel, instead of ``op(kernel, .)^T g``. For a dense layer with
  math-convention weights ``W = kernel^T`` and feedback matrix ``B``, the input
  cotangent is ``B g`` with ``B = feedback`` read as ``W``'s transpose, so
  ``feedback == kernel`` is exactly backprop. The feedback kernel gets a zero
  cotangent: feedback weights are learned by rules, never by autodiff.
  ``kernel`` and ``feedback`` may also be pytrees of the same structure (e.g. a
  layer's whole parameter dict, with the feedback kernel in the kernel's place).
  """

  @jax.custom_vjp
  def f(kernel, feedback, x):
    return op(kernel, x)

  def fwd(kernel, feedback, x):
    return op(kernel, x), (kernel, feedback, x)

  def bwd(res, g):
    kernel, feedback, x = res
    _, vjp_kernel = jax.vjp(lambda k: op(k, x), kernel)
    _, vjp_x = jax.vjp(lambda xx: op(feedback, xx), x)
    return vjp_kernel(g)[0], jax.tree.map(jnp.zeros_like, feedback), vjp_x(g)[0]

  f.defvjp(fwd, bwd)
  return f


# ---------------------------------------------------------------------------
# Pooling and normalisation.


def max_pool(x: jax.Array, window: int, stride: int, padding: str = "VALID") -> jax.Array:
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), padding)


def avg_pool(x: jax.Array, window: int, stride: int, padding: str = "VALID") -> jax.Array:
  summed = lax.reduce_window(x, 0.0, lax.add, (1, window, window, 1),
                             (1, stride, stride, 1), padding)
  return summed / (window * window)


POOLS = {"max": max_pool, "avg": avg_pool}


def batch_norm(x: jax.Array, scale: jax.Array, offset: jax.Array, mean: jax.Array,
               var: jax.Array, *, train: bool, momentum: float = 0.9,
               eps: float = 1e-5):
  """Batch normalisation over all axes but the last.

  Returns ``(y, new_mean, new_var)``; in eval mode the running statistics are
  used and returned unchanged.
  """
  if train:
    axes = tuple(range(x.ndim - 1))
    batch_mean = jnp.mean(x, axes)
    batch_var = jnp.var(x, axes)
    new_mean = momentum * mean + (1 - momentum) * lax.stop_gradient(batch_mean)
    new_var = momentum * var + (1 - momentum) * lax.stop_gradient(batch_var)
    mu, v = batch_mean, batch_var
  else:
    new_mean, new_var, mu, v = mean, var, mean, var
  y = (x - mu) * lax.rsqrt(v + eps) * scale + offset
  return y, new_mean, new_var


def fan_in(kind: str, kernel_shape: Sequence[int]) -> int:
  if kind == "dense":
    return kernel_shape[0]
  if kind == "conv":
    return math.prod(kernel_shape[:3])
  return kernel_shape[2]
