"""Convergent recurrent networks with the trainer's ``init``/``apply`` interface.

Example::

    import jax, jaxbio.recurrent as rec
    net = rec.make_network("hep_mlp", (28, 28, 1), 10, angle_deg=90.0)
    params, net_state = net.init(jax.random.key(0))
    logits, net_state = net.apply(params, net_state, x)   # T1 free steps from u = 0
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax

from jaxbio.recurrent import dynamics
from jaxbio.recurrent import vector_fields as vf

ARCHS = ("hep_mlp", "hep_loop_mlp", "hep_cnn")


class HEPNetwork(NamedTuple):
  """A convergent recurrent network: a vector field plus free-phase settings.

  Attributes:
    field: the :class:`jaxbio.recurrent.vector_fields.VectorField`.
    t_free: T1, free-phase iterations from u = 0.
    free_dtype: ``float32`` (parameters' precision), ``float16`` or ``bfloat16``.
    angle_deg: initial rotation α of the feedback weights (the authors'
      ``--rotate``: K_bwd ← sin α·K_bwd + cos α·K_fwdᵀ), or
      ``None`` for untouched random feedback.
  """
  field: vf.VectorField
  t_free: int = 150
  free_dtype: str = "float32"
  angle_deg: float | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    return self.field.input_shape

  @property
  def num_classes(self) -> int:
    return self.field.num_classes

  @property
  def num_neurons(self) -> int:
    return self.field.num_neurons

  def init(self, key: jax.Array):
    """Returns ``(params, ())``: LeCun-normal kernels, zero biases, then the rotation."""
    params = self.field.init_params(key)
    if self.angle_deg is not None:
      params = vf.rotate_feedback(self.field, params, self.angle_deg)
    return params, ()

  def apply(self, params, net_state, x: jax.Array, *, train: bool = False):
    """Free phase (T1 steps from u = 0), then the readout; returns ``(logits, net_state)``."""
    del train  # No train/eval difference.
    check_input(self, x)
    u1 = dynamics.free_phase(self, params, x)
    a_out = self.field.activation(u1["out"])
    return dynamics.logits(self, params, a_out), net_state


def check_input(net: HEPNetwork, x) -> None:
  """Raises a one-line ValueError if ``x`` is not a ``(B, *input_shape)`` batch."""
  shape = tuple(getattr(x, "shape", ()))
  if len(shape) < 1 or shape[1:] != tuple(net.input_shape):
    raise ValueError(f"input batch has shape {shape}, but the network expects (batch, "
                     f"{', '.join(map(str, net.input_shape))})")


def make_network(arch: str, input_shape: Sequence[int], num_classes: int, *,
                 angle_deg: float | None = None, t_free: int | None = None,
                 free_dtype: str = "float32", hidden: Sequence[int] = (256, 256),
                 channels: Sequence[int] = (128, 256, 512, 512)) -> HEPNetwork:
  """Builds a convergent recurrent network.

  Args:
    arch: ``hep_mlp`` (reciprocal 784-256-256-10 + 10×10 readout),
      ``hep_loop_mlp`` (in→l1→l2→out→l1) or ``hep_cnn`` (4-layer ConvNet with
      softmax pooling).
    input_shape: per-example input shape; MLPs flatten it internally.
    num_classes: readout classes K (the MLP out layer also has K units).
    angle_deg: initial feedback rotation α in degrees (the authors' ``--rotate``),
      or ``None``.
    t_free: free-phase steps T1 (default 150 for MLPs, 250 for the CNN).
    free_dtype: dtype of the free phase (``float32``, ``float16``, ``bfloat16``).
    hidden: MLP hidden widths.
    channels: CNN channels of conv1, conv2, conv3 and out.
  """
  if arch not in ARCHS:
    raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(ARCHS)}")
  if free_dtype not in dynamics.FREE_DTYPES:
    raise ValueError(f"unknown free_dtype {free_dtype!r}; valid choices: "
                     f"{', '.join(dynamics.FREE_DTYPES)}")
  if not (isinstance(num_classes, int) and num_classes >= 2):
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  if angle_deg is not None and not math.isfinite(float(angle_deg)):
    raise ValueError(f"angle_deg must be a finite number of degrees or None, got {angle_deg!r}")
  input_shape = tuple(int(d) for d in input_shape)
  if arch == "hep_cnn":
    field = vf.convnet(input_shape, channels, num_classes)
  else:
    if len(hidden) < 1 or any(int(h) < 1 for h in hidden):
      raise ValueError(f"hidden must be one or more positive widths, got {tuple(hidden)}")
    builder = vf.reciprocal_mlp if arch == "hep_mlp" else vf.loop_mlp
    field = builder(input_shape, hidden, num_classes)
  if t_free is None:
    t_free = 250 if arch == "hep_cnn" else 150
  if not isinstance(t_free, int) or t_free < 1:
    raise ValueError(f"t_free must be an integer >= 1, got {t_free!r}")
  return HEPNetwork(field=field, t_free=t_free, free_dtype=free_dtype,
                    angle_deg=None if angle_deg is None else float(angle_deg))


def num_params(params) -> int:
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(params))
