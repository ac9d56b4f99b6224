"""Target propagation: TP, DTP, SDTP and AO-SDTP (Bartunov et al., NeurIPS 2018).

Each hidden layer receives a *target* ``ĥ_l``, computed top-down by learned
approximate inverses ``g_l`` of the forward layers, and trains its forward
weights on the local loss ``‖h_l - ĥ_l‖²``; no gradient crosses a layer.
Notation (math convention; jaxbio stores kernels transposed, ``h_l = h_{l-1}
@ K_l + b_l``), with ``L`` weight layers, one-hot label ``y``:

* forward: ``a_l = W_l h_{l-1} + b_l``, ``h_l = f_l(h_{l-1}) = φ(a_l)`` for the
  hidden layers (``φ`` is the block's activation, tanh in the paper), ``o =
  softmax(a_L)``, ``ℓ = -Σ_k y_k log o_k``;
* inverses, for ``l = 2..L``: ``g_l(h) = φ_{l-1}(V_l h + c_l)``, with ``φ_{l-1}``
  the activation of the layer ``g_l`` maps into. jaxbio stores ``V_l`` in the
  layout of the forward kernel and applies it through the block's transpose
  (``g_l(h) = φ(T_l(V_l, h) + c_l)``), so a dense ``V_l == K_l`` means ``V_l =
  W_l^T`` and a locally connected inverse has the sparsity pattern of
  ``W_l^T`` (it is the adjoint of a locally connected layer with its own
  trainable kernel, never the forward one);
* targets, all constants for learning (stop-gradient). The difference rule
  (DTP, paper Eq. 2) is evaluated as ``ĥ_l = h_l + [g_{l+1}(ĥ_{l+1}) -
  g_{l+1}(h_{l+1})]``: algebraically Eq. 2's ``h_l - g(h_{l+1}) + g(ĥ_{l+1})``,
  but only this order returns ``h_l`` bitwise when ``ĥ_{l+1} = h_{l+1}``.
  Vanilla TP uses ``ĥ_l = g_{l+1}(ĥ_{l+1})``. Top targets:

  - ``dtp`` (and ``tp(top="gradient")``): ``ĥ_{L-1} = h_{L-1} - α ∂ℓ_n/∂h_{L-1}``,
    the gradient of *each example's* loss through ``W_L`` and the softmax (the
    one use of weight transport). Codes that take the gradient of the
    batch-mean loss instead take a per-example step ``α / B``: their ``α`` is
    ``B`` times this one;
  - ``sdtp`` (and ``tp(top="label")``): ``ĥ_L = y`` with ``h_L := o`` (the
    probabilities, comparable with the one-hot target);
  - ``ao_sdtp`` (paper Eq. 3): ``h_L := [o; z]`` with fixed random auxiliary
    outputs ``z = tanh(W_z h_{L-1} + b_z)`` (``W_z`` Glorot uniform, ``b_z =
    0``, never trained, in the rule state) and ``ĥ_L = [y; z]``, the *same*
    ``z`` in both calls of ``g_L``, so ``ĥ_{L-1} = h_{L-1} + g_L([y; z]) -
    g_L([o; z])``;

* forward losses (sum over units, mean over the batch): ``L_l =
  ‖f_l(sg[h_{l-1}]) - sg[ĥ_l]‖²`` for the hidden layers, whose gradient is
  ``2 [(h_l - ĥ_l) ⊙ φ'(a_l)] h_{l-1}^T``; the output layer is trained on
  ``ℓ(softmax(W_L sg[h_{L-1}] + b_L), y)`` (the delta rule ``(o - y)
  h_{L-1}^T``; in AO-SDTP only this o-part is trained);
* inverse losses, with ``h̃ = sg[h_{l-1}] + ε``, ``ε ~ N(0, σ² I)`` drawn afresh
  for every example at every step and ``f_l`` evaluated with ``sg[θ_l]``:
  noise-preserving (DTP, Lee et al.'s code) ``‖h̃ - g_l(f_l(h̃))‖²``, or
  de-noising (SDTP, AO-SDTP) ``‖sg[h_{l-1}] - g_l(f_l(h̃))‖²``; for the top
  inverse of SDTP ``f_L(h̃) = softmax(W_L h̃ + b_L)``, of AO-SDTP ``[o(h̃);
  z(h̃)]``. DTP's top target is a gradient, so it has no ``g_L``: its inverses
  are ``g_2 .. g_{L-1}``. The paper's Algorithm 1 has index typos (``θ_{l-1}``
  inside the inverse loss, ``f(h_l)`` against ``ĥ_{l+1}``); jaxbio reads it
  consistently: ``g_l`` inverts ``f_l`` and layer ``l``'s output is pulled
  toward ``ĥ_l``.

**Optimisers.** The forward weights ``θ`` are the trained parameters: the
trainer's main optimiser (``config.optimizer``; Adam in the paper) descends
the forward-loss gradients this rule returns. The inverses ``λ`` live in the
rule state with their own optimiser (``inverse_optimizer``, Adam by default),
applied inside the rule's update. The paper's Algorithm 1 says "SGD" but means
these Adam updates.

**Schedules.** ``"parallel"``: one pass; each step computes the targets with
the current ``λ``, the forward gradients and the inverse gradients from the
same pre-update parameters, then both optimisers step. ``"alternating"`` (the
default: Lee et al.'s, more stable and better in the paper): an epoch is a
full pass updating only ``λ`` (``θ`` and the main optimiser untouched), then a
full pass updating only ``θ`` (``λ`` frozen, targets recomputed per batch).

All matrix products run at the highest precision (reduced-precision matmuls,
e.g. TF32 on recent GPUs, have produced NaNs in target propagation).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxbio.nets import layers
from jaxbio.nets.sequential import Network
from jaxbio.rules.base import LearningRule, Pass, RuleOutput, check_batch, concrete

TOPS = ("gradient", "label")
INVERSE_LOSSES = ("noise_preserving", "denoising")
SCHEDULES = ("alternating", "parallel")


class TPState(NamedTuple):
  """The rule state of target propagation.

  Attributes:
    inverse: per block ``i`` (0-based), the inverse ``g`` mapping block ``i``'s
      output to block ``i - 1``'s: ``{"kernel", "bias"}`` (the kernel in the
      forward kernel's layout; for AO-SDTP's top inverse, ``(n_{L-1}, n_L +
      n_z)``, acting on ``[o; z]``), or ``None`` where there is none (block 0,
      and the output block of DTP and gradient-top TP).
    opt_state: the inverse optimiser's state.
    aux: AO-SDTP's fixed auxiliary output weights ``{"kernel": (n_{L-1},
      n_z), "bias": (n_z,)}``, else ``None``.
  """
  inverse: tuple
  opt_state: Any
  aux: Any


class _Spec(NamedTuple):
  name: str
  top: str             # "gradient" or "label"
  difference: bool     # difference correction (DTP family) or vanilla TP
  alpha: float
  sigma: float
  inverse_loss: str
  n_z: int             # 0: no auxiliary outputs


def _choice(rule: str, what: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"unknown {rule} {what} {value!r}; valid choices: {', '.join(valid)}")


def _activation(block) -> Callable:
  return layers.get_activation(block.post[0] if block.post else "identity")


def check_network(net, rule: str) -> None:
  """One-line error unless ``net`` is a jaxbio network target propagation can train.

  Every hidden block must have exactly one post-operation, an activation (no
  batch norm or pooling: the paper removes pooling, which is incompatible with
  TP), and the output block must be a dense layer producing logits.
  """
  if not isinstance(net, Network):
    raise ValueError(f"{rule} needs one of jaxbio's layered networks (jaxbio.nets.mlp, convnet, "
                     f"sequential), got {type(net).__name__}")
  if len(net.blocks) < 2:
    raise ValueError(f"{rule} needs at least one hidden layer")
  for i, block in enumerate(net.blocks[:-1]):
    if len(block.post) != 1 or block.post[0] not in layers.ACTIVATIONS:
      raise ValueError(f"{rule} needs exactly one activation after every hidden layer (no "
                       f"batch norm or pooling: model.pool=''); layer {i} has post-operations "
                       f"{block.post}")
  last = net.blocks[-1]
  if last.kind != "dense" or tuple(last.post) not in ((), ("identity",)):
    raise ValueError(f"{rule} needs a dense output layer producing logits (output_activation="
                     f"'identity'); the output layer is {last.kind} with {last.post}")


def inverse_layers(net: Network, top: str) -> tuple[int, ...]:
  """Block indices ``i`` that have an inverse (mapping block ``i``'s output to block ``i - 1``'s)."""
  last = len(net.blocks) - 1
  return tuple(range(1, last + 1 if top == "label" else last))


def apply_inverse(net: Network, i: int, inv: dict, y: jax.Array) -> jax.Array:
  """``g(y) = φ_{i-1}(T_i(V, y) + c)``: block ``i``'s inverse on ``y``, shaped like block ``i-1``'s output.

  ``T_i`` is the transpose of block ``i``'s linear operator (``y @ V^T`` for a
  dense block, also AO-SDTP's ``[o; z]`` top inverse). ``c`` is left out when
  ``inv`` has no ``"bias"``.
  """
  block, below = net.blocks[i], net.blocks[i - 1]
  batch = y.shape[0]
  if block.kind == "dense":
    v = y.reshape(batch, -1) @ inv["kernel"].T
  else:
    v = block.transpose(inv["kernel"], y)
  if "bias" in inv:
    v = v + inv["bias"]
  return _activation(below)(v).reshape((batch, *below.out_shape))


def forward_activities(net: Network, params, x: jax.Array) -> tuple[jax.Array, ...]:
  """``h_i = f_i(sg[h_{i-1}]; θ_i)`` for every block (the last is the logits): block-local gradients."""
  hs, h = [], x
  for block, p in zip(net.blocks, params):
    h = _activation(block)(block.linear(p, jax.lax.stop_gradient(h)))
    hs.append(h)
  return tuple(hs)


def auxiliary_outputs(aux: dict, h_pen: jax.Array) -> jax.Array:
  """AO-SDTP's ``z = tanh(W_z h_{L-1} + b_z)``."""
  return jnp.tanh(h_pen.reshape(h_pen.shape[0], -1) @ aux["kernel"] + aux["bias"])


def top_activity(logits: jax.Array, z: jax.Array | None) -> jax.Array:
  """``h_L := o`` (SDTP) or ``[o; z]`` (AO-SDTP)."""
  o = jax.nn.softmax(logits, axis=-1)
  return o if z is None else jnp.concatenate([o, z], axis=-1)


def gradient_top_target(net: Network, params, h_pen: jax.Array, labels: jax.Array,
                        alpha: float) -> jax.Array:
  """DTP's ``ĥ_{L-1} = h_{L-1} - α ∂ℓ_n/∂h_{L-1}``, each example's own gradient (no 1/B)."""
  block = net.blocks[-1]
  logits, vjp = jax.vjp(lambda v: block.linear(params[-1], v), h_pen)
  delta = jax.nn.softmax(logits, -1) - jax.nn.one_hot(labels, logits.shape[-1],
                                                      dtype=logits.dtype)
  (grad,) = vjp(delta)
  return h_pen - alpha * grad


def propagate_targets(h: Sequence[jax.Array], top_index: int, top_target: jax.Array,
                      inverses: Sequence[Callable | None], difference: bool = True
                      ) -> tuple[jax.Array, ...]:
  """Targets top-down from ``ĥ_{top_index} = top_target``, with any inverse callables.

  Args:
    h: the activities, by block index (``h[top_index]`` is the top activity:
      ``h_{L-1}`` for a gradient top target, ``o`` or ``[o; z]`` for a label one).
    top_index: the block index of the top target.
    top_target: its target.
    inverses: ``inverses[i]`` maps block ``i``'s activity to block ``i - 1``'s,
      for ``i = 1..top_index``.
    difference: ``ĥ_{i-1} = h_{i-1} + [g_i(ĥ_i) - g_i(h_i)]`` (DTP, in the order
      that is bitwise ``h_{i-1}`` at ``ĥ_i = h_i``), else ``ĥ_{i-1} = g_i(ĥ_i)`` (TP).

  Returns:
    ``(ĥ_0, ..., ĥ_{top_index})``.
  """
  targets = [None] * (top_index + 1)
  targets[top_index] = top_target
  for i in range(top_index, 0, -1):
    g = inverses[i]
    if difference:
      targets[i - 1] = h[i - 1] + (g(targets[i]) - g(h[i]))
    else:
      targets[i - 1] = g(targets[i])
  return tuple(targets)


def _sum_mean(d: jax.Array) -> jax.Array:
  """Sum of squares over units, mean over the batch."""
  return jnp.mean(jnp.sum(jnp.square(d.reshape(d.shape[0], -1)), axis=-1))


def compute_targets(net: Network, spec: _Spec, params, state: TPState, hs, labels):
  """``(top activity list, targets)`` for the activities ``hs``; everything stop-gradient."""
  params, hs = jax.lax.stop_gradient((params, hs))
  inverse, aux = jax.lax.stop_gradient((state.inverse, state.aux))
  last = len(net.blocks) - 1
  inv_fns = [None] + [None if inverse[i] is None else
                      (lambda y, i=i: apply_inverse(net, i, inverse[i], y))
                      for i in range(1, last + 1)]
  acts = list(hs)
  if spec.top == "gradient":
    top_index = last - 1
    top_target = gradient_top_target(net, params, hs[-2], labels, spec.alpha)
  else:
    top_index = last
    z = None if aux is None else auxiliary_outputs(aux, hs[-2])
    acts[-1] = top_activity(hs[-1], z)
    onehot = jax.nn.one_hot(labels, hs[-1].shape[-1], dtype=hs[-1].dtype)
    top_target = onehot if z is None else jnp.concatenate([onehot, z], axis=-1)
  targets = propagate_targets(acts, top_index, top_target, inv_fns, spec.difference)
  return tuple(acts), jax.lax.stop_gradient(targets)


def forward_loss(net: Network, spec: _Spec, params, state: TPState, x, labels):
  """``Σ_l L_l + ℓ`` (hidden local losses plus the output cross-entropy) and ``(hs, targets, parts)``.

  Its gradient with respect to ``params`` is the rule's forward update.
  """
  hs = forward_activities(net, params, x)
  _, targets = compute_targets(net, spec, params, state, hs, labels)
  local = [_sum_mean(hs[i] - targets[i]) for i in range(len(net.blocks) - 1)]
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(hs[-1], labels))
  target_loss = sum(local)
  return target_loss + ce, (hs, targets, {"loss": ce, "target_loss": target_loss})


def inverse_noise(key: jax.Array, hs, indices: Sequence[int], sigma: float) -> dict:
  """``ε_i ~ N(0, σ² I)`` for the input of every inverse block ``i``: one fresh draw per example."""
  return {i: sigma * jax.random.normal(jax.random.fold_in(key, i), hs[i - 1].shape,
                                       hs[i - 1].dtype) for i in indices}


def _layer_output(net: Network, params, aux, i: int, h_in: jax.Array, top: str) -> jax.Array:
  """``f_i(h_in)`` as its inverse sees it: the activation, or for a label top ``o`` / ``[o; z]``."""
  block = net.blocks[i]
  a = block.linear(params[i], h_in)
  if i < len(net.blocks) - 1:
    return _activation(block)(a)
  if top != "label":
    raise ValueError("the output layer has no inverse with a gradient top target")
  return top_activity(a, None if aux is None else auxiliary_outputs(aux, h_in))


def inverse_loss(net: Network, spec: _Spec, inverse, params, aux, hs, noise: dict):
  """``Σ_l L^inv_l`` (noise-preserving or de-noising, see the module docstring) and per-layer values.

  ``params``, ``aux`` and ``hs`` are constants here; only ``inverse`` is differentiable.
  """
  params, aux, hs = jax.lax.stop_gradient((params, aux, hs))
  per = {}
  for i, eps in noise.items():
    clean = hs[i - 1]
    noisy = clean + eps
    rec = apply_inverse(net, i, inverse[i], _layer_output(net, params, aux, i, noisy, spec.top))
    want = noisy if spec.inverse_loss == "noise_preserving" else clean
    per[i] = _sum_mean(want - rec)
  return sum(per.values()), per


def _make(net: Network, spec: _Spec, schedule: str,
          inverse_optimizer: optax.GradientTransformation | None) -> LearningRule:
  check_network(net, spec.name)
  _choice(spec.name, "schedule", schedule, SCHEDULES)
  _choice(spec.name, "inverse_loss", spec.inverse_loss, INVERSE_LOSSES)
  if concrete(spec.alpha) and not (math.isfinite(spec.alpha) and spec.alpha >= 0):
    raise ValueError(f"{spec.name} alpha must be a finite number >= 0, got {spec.alpha}")
  if concrete(spec.sigma) and not (math.isfinite(spec.sigma) and spec.sigma >= 0):
    raise ValueError(f"{spec.name} sigma must be a finite number >= 0, got {spec.sigma}")
  tx = optax.adam(1e-3) if inverse_optimizer is None else inverse_optimizer
  indices = inverse_layers(net, spec.top)
  last = len(net.blocks) - 1
  dtype = net.param_dtype

  def init(key, params):
    del params
    k_inv, k_aux = jax.random.split(key)
    inverse = [None] * len(net.blocks)
    for i in indices:
      block = net.blocks[i]
      k = jax.random.fold_in(k_inv, i)
      if i == last and spec.n_z:
        n_in = math.prod(block.in_shape)
        kernel = jax.nn.initializers.glorot_uniform()(k, (n_in, net.num_outputs + spec.n_z),
                                                      dtype)
      else:
        kernel = block.kernel_init(k, block.kernel_shape, dtype)
      inverse[i] = {"kernel": kernel, "bias": jnp.zeros(block.in_shape, dtype)}
    inverse = tuple(inverse)
    aux = None
    if spec.n_z:
      n_in = math.prod(net.blocks[-1].in_shape)
      aux = {"kernel": jax.nn.initializers.glorot_uniform()(k_aux, (n_in, spec.n_z), dtype),
             "bias": jnp.zeros((spec.n_z,), dtype)}
    return TPState(inverse, tx.init(inverse), aux)

  def _accuracy(logits, labels):
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))

  def _train_inverses(params, state, hs, key):
    noise = inverse_noise(key, hs, indices, spec.sigma)
    (value, _), grads = jax.value_and_grad(
        lambda inv: inverse_loss(net, spec, inv, params, state.aux, hs, noise),
        has_aux=True)(state.inverse)
    updates, opt_state = tx.update(grads, state.opt_state, state.inverse)
    return state._replace(inverse=optax.apply_updates(state.inverse, updates),
                          opt_state=opt_state), value

  def _forward_update(params, state, batch):
    (_, (hs, _, parts)), grads = jax.value_and_grad(
        lambda p: forward_loss(net, spec, p, state, batch["image"], batch["label"]),
        has_aux=True)(params)
    return grads, hs, {**parts, "accuracy": _accuracy(hs[-1], batch["label"])}

  def forward_update(params, net_state, rule_state, batch, key):
    del key
    check_batch(net, batch)
    with jax.default_matmul_precision("highest"):
      grads, _, metrics = _forward_update(params, rule_state, batch)
    return RuleOutput(grads, rule_state, net_state, metrics)

  def inverse_update(params, net_state, rule_state, batch, key):
    check_batch(net, batch)
    with jax.default_matmul_precision("highest"):
      hs = forward_activities(net, jax.lax.stop_gradient(params), batch["image"])
      rule_state, value = _train_inverses(params, rule_state, hs, key)
    labels = batch["label"]
    metrics = {"loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(hs[-1], labels)),
               "accuracy": _accuracy(hs[-1], labels), "inverse_loss": value}
    return RuleOutput(jax.tree.map(jnp.zeros_like, params), rule_state, net_state, metrics)

  def parallel_update(params, net_state, rule_state, batch, key):
    check_batch(net, batch)
    with jax.default_matmul_precision("highest"):
      grads, hs, metrics = _forward_update(params, rule_state, batch)
      rule_state, value = _train_inverses(params, rule_state, hs, key)
    return RuleOutput(grads, rule_state, net_state, {**metrics, "inverse_loss": value})

  def feedback(params, rule_state):
    out = {}
    for i in indices:
      v, k = rule_state.inverse[i]["kernel"], params[i]["kernel"]
      out[f"layer{i}"] = (v[..., :k.shape[-1]] if v.shape != k.shape else v, k)
    return out

  def diagnostics(params, net_state, rule_state, batch, key):
    del net_state, key
    with jax.default_matmul_precision("highest"):
      hs = forward_activities(net, params, batch["image"])
      acts, targets = compute_targets(net, spec, params, rule_state, hs, batch["label"])
      out = {}
      for i in range(last):
        d = targets[i] - hs[i]
        out[f"target_displacement/layer{i}"] = jnp.mean(
            jnp.sqrt(jnp.sum(jnp.square(d.reshape(d.shape[0], -1)), -1)))
      for i in indices:
        clean = hs[i - 1]
        rec = apply_inverse(net, i, rule_state.inverse[i],
                            _layer_output(net, params, rule_state.aux, i, clean, spec.top))
        out[f"reconstruction_error/layer{i}"] = _sum_mean(clean - rec) / jnp.maximum(
            _sum_mean(clean), jnp.finfo(clean.dtype).tiny)
    del acts
    return out

  if schedule == "parallel":
    update, passes = parallel_update, ()
  else:
    update = forward_update
    passes = (Pass("inverse", inverse_update, trains_params=False),
              Pass("forward", forward_update))
  return LearningRule(spec.name, init, update, feedback, passes=passes, diagnostics=diagnostics)


def tp(net: Network, *, top: str = "gradient", alpha: float = 0.1, sigma: float = 0.1,
       inverse_loss: str = "noise_preserving", schedule: str = "alternating",
       inverse_optimizer: optax.GradientTransformation | None = None) -> LearningRule:
  """Vanilla target propagation: ``ĥ_l = g_{l+1}(ĥ_{l+1})`` (no difference correction).

  The paper discusses it but reports no TP numbers; its top target is DTP's
  or SDTP's.

  Args:
    net: a jaxbio network (see :func:`check_network`).
    top: ``"gradient"`` (DTP's ``ĥ_{L-1} = h_{L-1} - α ∂ℓ_n/∂h_{L-1}``) or
      ``"label"`` (SDTP's ``ĥ_L = y``, ``h_L := o``).
    alpha: ``α`` of a gradient top target, per example.
    sigma: ``σ`` of the inverse-loss noise.
    inverse_loss: ``"noise_preserving"`` or ``"denoising"``.
    schedule: ``"alternating"`` or ``"parallel"``.
    inverse_optimizer: the inverses' optimiser (default Adam, lr 1e-3).

  Returns:
    A :class:`LearningRule` with state :class:`TPState` (see :func:`dtp`).
  """
  _choice("tp", "top", top, TOPS)
  return _make(net, _Spec("tp", top, False, alpha, sigma, inverse_loss, 0), schedule,
               inverse_optimizer)


def dtp(net: Network, *, alpha: float = 0.1, sigma: float = 0.1,
        inverse_loss: str = "noise_preserving", schedule: str = "alternating",
        inverse_optimizer: optax.GradientTransformation | None = None) -> LearningRule:
  """Difference target propagation as in Bartunov et al. (2018), Eq. 2.

  ``ĥ_{L-1} = h_{L-1} - α ∂ℓ_n/∂h_{L-1}`` (each example's gradient: a code that
  differentiates the batch-mean loss has ``α_code = B α``), then ``ĥ_l = h_l +
  [g_{l+1}(ĥ_{l+1}) - g_{l+1}(h_{l+1})]`` for ``l = L-2 .. 1``; inverses
  ``g_2 .. g_{L-1}`` trained on the noise-preserving loss ``‖h̃ -
  g_l(f_l(h̃))‖²`` (see the module docstring).

  Args:
    net: a jaxbio network (see :func:`check_network`).
    alpha: ``α``, per example.
    sigma: ``σ`` of the inverse-loss noise.
    inverse_loss: ``"noise_preserving"`` (the paper's DTP) or ``"denoising"``.
    schedule: ``"alternating"`` (an inverse-only pass, then a forward-only
      pass, per epoch) or ``"parallel"`` (both from every batch).
    inverse_optimizer: the inverses' optimiser (default Adam, lr 1e-3); from
      a config, the ``rule.inverse_optimizer`` subtree.

  Returns:
    A :class:`LearningRule` with state :class:`TPState`, the forward-loss
    gradients as its update (the trainer's optimiser applies them), metrics
    ``loss`` (cross-entropy), ``accuracy``, ``target_loss`` (``Σ_l L_l``) and
    ``inverse_loss`` (where the inverses learn), feedback pairs (inverse
    kernel, forward kernel) per inverse, so ``feedback_angle/layer<i>`` is the
    angle between ``V`` and ``W^T``, and diagnostics
    ``target_displacement/layer<i>`` (batch mean of ``‖ĥ_i - h_i‖`` for hidden
    block ``i``) and ``reconstruction_error/layer<i>`` (``⟨‖h_{i-1} -
    g_i(f_i(h_{i-1}))‖²⟩ / ⟨‖h_{i-1}‖²⟩`` without noise, for the inverse of
    block ``i``; block indices from 0).
  """
  return _make(net, _Spec("dtp", "gradient", True, alpha, sigma, inverse_loss, 0), schedule,
               inverse_optimizer)


def sdtp(net: Network, *, sigma: float = 0.1, inverse_loss: str = "denoising",
         schedule: str = "alternating",
         inverse_optimizer: optax.GradientTransformation | None = None) -> LearningRule:
  """Simplified DTP (Bartunov et al. 2018, Algorithm 1): no gradient anywhere.

  ``ĥ_L = y`` (one-hot) with ``h_L := o = softmax(a_L)``, then the difference
  rule for ``l = L-1 .. 1``; inverses ``g_2 .. g_L`` (``g_L`` maps
  probabilities to ``h_{L-1}``) trained on the de-noising loss ``‖h_{l-1} -
  g_l(f_l(h_{l-1} + ε))‖²``. Arguments and returns as :func:`dtp`, without ``α``.
  """
  return _make(net, _Spec("sdtp", "label", True, 0.0, sigma, inverse_loss, 0), schedule,
               inverse_optimizer)


def ao_sdtp(net: Network, *, n_z: int = 512, sigma: float = 0.1,
            inverse_loss: str = "denoising", schedule: str = "alternating",
            inverse_optimizer: optax.GradientTransformation | None = None) -> LearningRule:
  """SDTP with auxiliary outputs (Bartunov et al. 2018, Eq. 3, Algorithm 2).

  ``h_L := [o; z]``, ``z = tanh(W_z h_{L-1} + b_z)`` with ``W_z`` fixed Glorot
  uniform and ``b_z = 0`` (``TPState.aux``, never trained), ``ĥ_L = [y; z]``
  with the same ``z``; ``g_L`` maps ``ℝ^{n_L + n_z} → ℝ^{n_{L-1}}``. Only the
  o-part of the output layer is trained. The paper gives ``n_z = 512`` (CIFAR);
  the nonlinearity of ``z`` and the initialisation of ``W_z`` are unstated
  there. Arguments and returns as :func:`sdtp`, plus ``n_z``.
  """
  if not (isinstance(n_z, int) and n_z > 0):
    raise ValueError(f"ao_sdtp n_z must be a positive integer (sdtp has no auxiliary outputs), "
                     f"got {n_z!r}")
  return _make(net, _Spec("ao_sdtp", "label", True, 0.0, sigma, inverse_loss, n_z), schedule,
               inverse_optimizer)
