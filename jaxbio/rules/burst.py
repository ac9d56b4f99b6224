"""BurstCCN (Greedy et al., NeurIPS 2022) and Burstprop (Payeur et al., 2021).

BurstCCN: single-phase burst-dependent learning.

A rate model of cortical pyramidal ensembles. Basal input sets a unit's event
rate ``e``, apical (top-down) input its burst probability ``p`` (burst rate
``b = p e``); the error is the deviation of ``p`` from a fixed baseline
``p^b``, sent down through burst-carrying feedback weights, while an
event-carrying pathway cancels the baseline. The network is an ordinary
sigmoid MLP or CNN (:mod:`jaxbio.nets`) with a logistic sigmoid after every
layer, the output included.

**Sign convention.** jaxbio stores the feedback as ``Ŷ_l = -Y_l`` and
``Q̂_l = -Q_l`` (the paper's ``Y``, ``Q``), in the layout of the next layer's
kernel, so that, as for every jaxbio feedback matrix, "aligned" means
``Ŷ_l ≈ W_{l+1}^T`` (``Ŷ_l == kernel_{l+1}`` exactly). All of ``u``, ``p``,
``b``, ``δb`` and every weight update are the same numbers as in the paper's
convention. Per training step, with ``σ`` the logistic sigmoid, ``t`` the
one-hot teacher (``t := e_L`` without teacher) and batch means ``⟨·⟩``:

* forward: ``v_l = W_l e_{l-1} + c_l``, ``e_l = σ(v_l)``, ``e_0 = x``;
* output: ``p_L = p^b [1 + (t - e_L) ⊙ (1 - e_L)]``, ``b_L = p_L ⊙ e_L``;
* hidden, top down: ``u_l = Ŷ_l b_{l+1} - Q̂_l e_{l+1}`` (paper: ``u_l = Q_l
  e_{l+1} - Y_l b_{l+1}``, the same number), ``p_l = σ(4 u_l ⊙ (1 - e_l))``,
  ``b_l = p_l ⊙ e_l``;
* the error, every layer: ``δb_l = (p_l - p^b) ⊙ e_l``;
* feedforward plasticity (paper Eq. 1): ``ΔW_l = η ⟨δb_l e_{l-1}^T⟩``,
  ``Δc_l = η ⟨δb_l⟩``; the rule hands the optimiser ``-⟨δb_l e_{l-1}^T⟩``
  (gradient convention), so SGD with learning rate ``η`` (optionally with
  momentum) applies Eq. 1; a weight decay ``λ`` acts on the pre-update
  weights and biases: ``W_l ← W_l + ΔW_l - λ W_l`` (decoupled: the
  optimiser never sees it; never on ``Ŷ`` or ``Q̂``);
* ``Q̂`` plasticity (paper Eq. 2, paper form ``ΔQ_l = -η_Q u_l e_{l+1}^T``):
  ``ΔQ̂_l = +η_Q ⟨u_l e_{l+1}^T⟩``, gradient descent on ``½‖u_l‖²``; without
  a teacher it drives ``Q̂_l`` to ``p^b Ŷ_l``;
* optional ``Ŷ`` plasticity (the authors' code): ``ΔŶ_l = -η_Y ⟨u_l
  e_{l+1}^T⟩``; its presynaptic factor is the event rate ``e_{l+1}``, not
  ``b_{l+1}``.

All updates come from the same pass, from the pre-update weights; the tied
modes re-copy ``Ŷ_l ← s_Y W_{l+1}^T`` from the updated weights, then
``Q̂_l ← p^b Ŷ_l``. ``δb_L = p^b δ_L^BP`` exactly (``δ^BP = -∂E/∂v`` for
``E = ½‖e_L - t‖²``), so with ``Ŷ_l = W_{l+1}^T`` and ``Q̂_l = p^b Ŷ_l``
BurstCCN is gradient descent on ½-MSE with effective learning rate ``p^b η``,
up to terms cubic in ``u``; with fixed random ``Ŷ`` it is feedback alignment
in the same sense. (The paper writes ``δb_L = -∂E/∂v_L``: it absorbs the
factor ``p^b`` into ``η``; jaxbio keeps it, as tuned learning rates assume.)

**Convolutional layers.** ``Ŷ_l`` and ``Q̂_l`` have the next layer's kernel
shape and act through that layer's transpose (for a strided convolution, the
transposed convolution that is its exact adjoint, so input positions it never
reads get ``u = 0``; dense after a conv layer: a dense matrix). ``Q̂`` and
``Ŷ`` learning work in every layer kind: ``⟨u_l e_{l+1}^T⟩`` is the gradient
of ``⟨u_l, T_{l+1}(K, e_{l+1})⟩`` with respect to the kernel ``K``.

**Baseline.** The hidden nonlinearity ``σ(4 u (1 - e))`` rests at ``p = 0.5``,
so ``p^b`` must be 0.5 with it (otherwise hidden layers learn at rest); other
baselines need a generalised apical nonlinearity: ``"paper"``, ``σ(α u (1 -
e) + β)`` with ``β = logit(p^b)``, ``α = 1 / (p^b (1 - p^b))`` (unit slope,
``p^b`` at rest), or ``"journal"``, ``2 p^b σ((2 / p^b) u (1 - e))`` (unit
slope, but ``p`` can exceed 1 for ``p^b > 0.5``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbio.nets.sequential import Network
from jaxbio.rules.base import LearningRule, Pass, RuleOutput, check_batch, concrete

APICAL = ("code", "paper", "journal")
Y_MODES = ("random", "symmetric_init", "tied")
Q_MODES = ("symmetric_init", "tied", "random", "w_symmetric_init")


class BurstState(NamedTuple):
  """BurstCCN's feedback weights, one per hidden layer, in the next layer's kernel layout.

  Attributes:
    y: ``(Ŷ_1, ..., Ŷ_{L-1})``; ``Ŷ_l == kernel_{l+1}`` means ``Ŷ_l = W_{l+1}^T``.
    q: ``(Q̂_1, ..., Q̂_{L-1})``, same shapes.
  """
  y: tuple
  q: tuple


class BurstActivity(NamedTuple):
  """Everything one BurstCCN pass computes, per layer (batch first).

  Attributes:
    inputs: ``e_{l-1}``, the input of each layer (``inputs[0] = x``).
    e: event rates ``e_1 .. e_L``.
    u: apical potentials ``u_1 .. u_{L-1}`` of the hidden layers.
    p: burst probabilities ``p_1 .. p_L``.
    b: burst rates ``b_1 .. b_L``.
    db: burst-rate errors ``δb_1 .. δb_L``.
    t: the teacher used (the one-hot label, or ``e_L`` without teacher).
  """
  inputs: tuple
  e: tuple
  u: tuple
  p: tuple
  b: tuple
  db: tuple
  t: jax.Array


def _choice(what: str, value, valid, rule: str = "burstccn") -> None:
  if value not in valid:
    raise ValueError(f"unknown {rule} {what} {value!r}; valid choices: {', '.join(valid)}")


def check_network(net, rule_name: str = "burstccn") -> None:
  """One-line error unless ``net`` is a jaxbio network with only a sigmoid after every layer."""
  if not isinstance(net, Network):
    raise ValueError(f"{rule_name} needs one of jaxbio's layered networks (jaxbio.nets.mlp, "
                     f"convnet, sequential), got {type(net).__name__}")
  for i, block in enumerate(net.blocks):
    if tuple(block.post) != ("sigmoid",):
      raise ValueError(f"{rule_name} needs a logistic sigmoid after every layer and nothing "
                       f"else (model.activation='sigmoid', output_activation='sigmoid', no "
                       f"pooling or batch norm); layer {i} has post-operations {block.post}")


def _active(coefficient) -> bool:
  """Whether a term scaled by ``coefficient`` is computed: if nonzero, or traced (per replica)."""
  return not concrete(coefficient) or bool(coefficient)


def apical_nonlinearity(name: str, p_baseline: float):
  """``f(u, e) -> p`` for a hidden layer (see the module docstring)."""
  _choice("apical nonlinearity", name, APICAL)
  if concrete(p_baseline) and not 0 < p_baseline < 1:
    raise ValueError(f"burstccn p_baseline must be in (0, 1), got {p_baseline}")
  if name == "code":
    if concrete(p_baseline) and p_baseline != 0.5:
      raise ValueError(f"burstccn p_baseline {p_baseline} needs a generalised apical "
                       f"nonlinearity: the default σ(4u(1-e)) rests at 0.5, so hidden layers "
                       f"would learn at rest; valid choices: apical='paper' or 'journal' (or "
                       f"p_baseline=0.5)")
    return lambda u, e: jax.nn.sigmoid(4.0 * u * (1.0 - e))
  if name == "paper":
    alpha = 1.0 / (p_baseline * (1.0 - p_baseline))
    beta = (math.log if concrete(p_baseline) else jnp.log)(p_baseline / (1.0 - p_baseline))
    return lambda u, e: jax.nn.sigmoid(alpha * u * (1.0 - e) + beta)
  return lambda u, e: 2.0 * p_baseline * jax.nn.sigmoid((2.0 / p_baseline) * u * (1.0 - e))


def _forward(net: Network, params, x: jax.Array) -> tuple[tuple, tuple]:
  """Event rates ``e_l = σ(W_l e_{l-1} + c_l)``: ``(inputs e_0..e_{L-1}, rates e_1..e_L)``."""
  inputs, es, h = [], [], x
  for block, p in zip(net.blocks, params):
    inputs.append(h)
    h = jax.nn.sigmoid(block.linear(p, h))
    es.append(h)
  return tuple(inputs), tuple(es)


def _teacher(e_out: jax.Array, labels: jax.Array, teacher: bool, target) -> jax.Array:
  """The teacher ``t``: ``target`` if given, else the one-hot labels, or ``e_L`` without teacher."""
  if target is not None:
    return jnp.asarray(target, e_out.dtype)
  if teacher:
    return jax.nn.one_hot(labels, e_out.shape[-1], dtype=e_out.dtype)
  return e_out


def burst_pass(net: Network, params, state: BurstState, x: jax.Array, labels: jax.Array, *,
               p_baseline: float = 0.5, apical: str = "code", teacher: bool = True,
               target: jax.Array | None = None) -> BurstActivity:
  """One BurstCCN pass: forward event rates, then burst probabilities top down.

  Args:
    net: a sigmoid network (see :func:`check_network`).
    params: its parameters.
    state: the feedback weights.
    x: ``(B, *input_shape)`` inputs.
    labels: ``(B,)`` integer labels (the teacher is their one-hot code).
    p_baseline: ``p^b``.
    apical: the hidden nonlinearity (:data:`APICAL`).
    teacher: False: ``t := e_L``, so ``p_L = p^b``.
    target: ``(B, n_L)``: a teacher ``t`` in place of the one-hot labels
      (e.g. a scaled teacher ``e_L + ε (t - e_L)``); ``labels`` are then unused.

  Returns:
    A :class:`BurstActivity`.
  """
  f = apical_nonlinearity(apical, p_baseline)
  inputs, es = _forward(net, params, x)
  e_out = es[-1]
  t = _teacher(e_out, labels, teacher, target)
  n = len(net.blocks)
  ps, bs, dbs, us = [None] * n, [None] * n, [None] * n, [None] * (n - 1)
  ps[-1] = p_baseline * (1.0 + (t - e_out) * (1.0 - e_out))
  for l in range(n - 1, -1, -1):
    if l < n - 1:
      nxt = net.blocks[l + 1]
      u = nxt.transpose(state.y[l], bs[l + 1]) - nxt.transpose(state.q[l], es[l + 1])
      us[l] = u.reshape(es[l].shape)
      ps[l] = f(us[l], es[l])
    bs[l] = ps[l] * es[l]
    dbs[l] = (ps[l] - p_baseline) * es[l]
  return BurstActivity(inputs, es, tuple(us), tuple(ps), tuple(bs), tuple(dbs), t)


def forward_grads(net: Network, params, act: BurstActivity, *, mean: bool = True):
  """``-⟨δb_l e_{l-1}^T⟩`` and ``-⟨δb_l⟩`` per layer, in the parameters' layout (gradient convention).

  ``mean=False`` sums over the batch instead of averaging.
  """
  scale = 1.0 / act.e[0].shape[0] if mean else 1.0

  def pre(ps):
    return tuple(block.linear(p, jax.lax.stop_gradient(h))
                 for block, p, h in zip(net.blocks, ps, act.inputs))

  _, vjp = jax.vjp(pre, params)
  (grads,) = vjp(tuple(-scale * db for db in act.db))
  return grads


def feedback_correlation(net: Network, act: BurstActivity, like: tuple) -> tuple:
  """``⟨u_l e_{l+1}^T⟩`` per hidden layer, in the feedback weights' layout.

  For any layer kind this is the gradient of ``⟨u_l, T_{l+1}(K, e_{l+1})⟩``
  with respect to ``K``, i.e. of ``⟨e_{l+1}, op_{l+1}(K, u_l)⟩`` (the next
  layer's forward operator applied to ``u_l``), averaged over the batch.
  """
  batch = act.e[0].shape[0]
  out = []
  for l, u in enumerate(act.u):
    nxt = net.blocks[l + 1]
    u_in = u.reshape((batch, *nxt.in_shape))
    _, vjp = jax.vjp(lambda k: nxt.op(k, u_in), like[l])
    out.append(vjp(act.e[l + 1] / batch)[0])
  return tuple(out)


def mse_loss(e_out: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example mean over units of ``(e_L - onehot)^2`` (the logged loss, not the objective)."""
  t = jax.nn.one_hot(labels, e_out.shape[-1], dtype=e_out.dtype)
  return jnp.mean((e_out - t) ** 2, axis=-1)


def _metrics(e_out: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """The logged training loss (mean squared error against the one-hot label) and accuracy."""
  return {"loss": jnp.mean(mse_loss(e_out, labels)),
          "accuracy": jnp.mean((jnp.argmax(e_out, -1) == labels).astype(jnp.float32))}


def _evaluate(net):
  def evaluate(params, net_state, rule_state, images, labels):
    del net_state, rule_state
    e_out = _forward(net, params, images)[1][-1]
    return mse_loss(e_out, labels), jnp.argmax(e_out, -1) == labels
  return evaluate


def _half_mse_rule(net, name: str, feedback_of) -> LearningRule:
  """The gradient of ``⟨½‖e_L - t‖²⟩`` (backprop, or FA with the feedback ``feedback_of(state)``)."""

  def update(params, net_state, rule_state, batch, key):
    del key
    fb = feedback_of(rule_state)

    def loss(p):
      e_out, _ = net.apply(p, net_state, batch["image"], train=True, feedback=fb)
      t = jax.nn.one_hot(batch["label"], e_out.shape[-1], dtype=e_out.dtype)
      return 0.5 * jnp.mean(jnp.sum((e_out - t) ** 2, axis=-1))

    value, grads = jax.value_and_grad(loss)(params)
    return RuleOutput(grads, rule_state, net_state, {"loss": value})

  return LearningRule(name, lambda key, params: None, update)


def references(net: Network) -> tuple[LearningRule, ...]:
  """Backprop on ½-MSE, then FA on ½-MSE with the rule's own ``Ŷ`` as backward matrices."""
  bp = _half_mse_rule(net, "bp", lambda state: None)
  fa = _half_mse_rule(net, "fa", lambda state: (None, *state.y))
  return bp, fa


def burstccn(net: Network, *, p_baseline: float = 0.5, apical: str = "code",
             y_mode: str = "random", y_scale: float = 1.0, y_lr: float = 0.0,
             q_mode: str = "symmetric_init", q_scale: float = 1.0, q_lr: float = 0.0,
             weight_decay: float = 0.0, teacher: bool = True,
             train_weights: bool = True) -> LearningRule:
  """BurstCCN on a sigmoid network (see the module docstring for the equations).

  Train it with SGD (``optimizer.name="sgd"``, learning rate ``η_W``,
  momentum optional): the updates are Eq. 1's, in gradient convention.

  Args:
    net: a jaxbio network with a logistic sigmoid after every layer.
    p_baseline: the baseline burst probability ``p^b``, shared by all layers.
    apical: hidden nonlinearity, ``"code"`` (``σ(4u(1-e))``, needs ``p^b =
      0.5``), ``"paper"`` or ``"journal"``.
    y_mode: ``"random"`` (``Ŷ ~ N(0, y_scale²)``), ``"symmetric_init"``
      (``y_scale W_{l+1}^T`` at init) or ``"tied"`` (``y_scale W_{l+1}^T``,
      re-copied after every step: the paper's "W-Y symmetric").
    y_scale: ``s_Y``.
    y_lr: ``η_Y`` of the ``Ŷ`` rule (0: fixed; must be 0 when tied).
    q_mode: ``"symmetric_init"`` (``p^b Ŷ`` at init), ``"tied"`` (``p^b Ŷ``
      every step: "BurstCCN (Q-Y sym)"), ``"random"`` (``N(0, q_scale²)``)
      or ``"w_symmetric_init"`` (``p^b q_scale W_{l+1}^T`` at init).
    q_scale: ``s_Q``.
    q_lr: ``η_Q`` of the ``Q̂`` rule (0: fixed; must be 0 when tied).
    weight_decay: ``λ``, decoupled, on the pre-update ``W`` and ``c``, in [0, 1).
    teacher: False: no teacher (``t := e_L``), as in the paper's Fig. 4.
    train_weights: False: ``W`` and ``c`` stay fixed and only the feedback
      learns (a pass that does not train the parameters).

  Returns:
    A :class:`LearningRule` with state :class:`BurstState`, its own loss
    (``metrics["loss"]``: mean squared error of ``e_L`` against the one-hot
    label, for logging) and evaluation (the same, and argmax accuracy),
    references (backprop and FA on ½-MSE, the latter with the rule's ``Ŷ``),
    and diagnostics ``apical_abs/layer<l>`` (mean ``|u|`` of hidden layer
    ``l``) and ``qy_angle/layer<l+1>`` (angle between ``Q̂`` and ``Ŷ`` of the
    pathway through layer ``l + 1``, named like its ``feedback_angle``).
  """
  check_network(net)
  apical_nonlinearity(apical, p_baseline)
  _choice("y_mode", y_mode, Y_MODES)
  _choice("q_mode", q_mode, Q_MODES)
  if y_mode == "tied" and y_lr:
    raise ValueError(f"burstccn y_lr must be 0 with y_mode='tied' (tied feedback is re-copied "
                     f"from W after every step), got {y_lr}")
  if q_mode == "tied" and q_lr:
    raise ValueError(f"burstccn q_lr must be 0 with q_mode='tied' (tied feedback is re-copied "
                     f"from Ŷ after every step), got {q_lr}")
  if concrete(weight_decay) and not 0 <= weight_decay < 1:
    raise ValueError(f"burstccn weight_decay must be in [0, 1), got {weight_decay}")
  hidden = range(len(net.blocks) - 1)
  dtype = net.param_dtype
  settings = dict(p_baseline=p_baseline, apical=apical, teacher=teacher)

  def init(key, params):
    ky, kq = jax.random.split(key)
    ys, qs = [], []
    for l in hidden:
      w = params[l + 1]["kernel"]
      if y_mode == "random":
        y = y_scale * jax.random.normal(jax.random.fold_in(ky, l), w.shape, dtype)
      else:
        y = y_scale * w
      if q_mode in ("symmetric_init", "tied"):
        q = p_baseline * y
      elif q_mode == "random":
        q = q_scale * jax.random.normal(jax.random.fold_in(kq, l), w.shape, dtype)
      else:
        q = p_baseline * q_scale * w
      ys.append(y)
      qs.append(q)
    return BurstState(tuple(ys), tuple(qs))

  def update(params, net_state, rule_state, batch, key):
    del key
    check_batch(net, batch)
    act = burst_pass(net, params, rule_state, batch["image"], batch["label"], **settings)
    grads = forward_grads(net, params, act)
    if not train_weights:
      grads = jax.tree.map(jnp.zeros_like, grads)
    y, q = rule_state
    if _active(q_lr) or _active(y_lr):
      corr = feedback_correlation(net, act, q)
      if _active(q_lr):
        q = tuple(qq + q_lr * c for qq, c in zip(q, corr))
      if _active(y_lr):
        y = tuple(yy - y_lr * c for yy, c in zip(y, corr))
    metrics = _metrics(act.e[-1], batch["label"])
    return RuleOutput(grads, BurstState(y, q), net_state, metrics)

  def after_step(rule_state, params, new_params, updates, key):
    del updates, key
    if _active(weight_decay):
      new_params = jax.tree.map(lambda n, p: n - weight_decay * p, new_params, params)
    y, q = rule_state
    if y_mode == "tied":
      y = tuple(y_scale * new_params[l + 1]["kernel"] for l in hidden)
    if q_mode == "tied":
      q = tuple(p_baseline * yy for yy in y)
    return BurstState(y, q), new_params

  def feedback(params, rule_state):
    return {f"layer{l + 1}": (rule_state.y[l], params[l + 1]["kernel"]) for l in hidden}

  def diagnostics(params, net_state, rule_state, batch, key):
    from jaxbio.metrics.alignment import angle_degrees  # pylint: disable=g-import-not-at-top
    del net_state, key
    act = burst_pass(net, params, rule_state, batch["image"], batch["label"], **settings)
    out = {}
    for l in hidden:
      out[f"apical_abs/layer{l}"] = jnp.mean(jnp.abs(act.u[l]))
      out[f"qy_angle/layer{l + 1}"] = angle_degrees(rule_state.q[l], rule_state.y[l])
    return out

  passes = () if train_weights else (Pass("feedback", update, trains_params=False),)
  return LearningRule("burstccn", init, update, feedback, after_step, passes=passes,
                      evaluate=_evaluate(net), references=references(net),
                      diagnostics=diagnostics)


# ---------------------------------------------------------------------------
# Burstprop (Payeur et al., Nature Neuroscience 2021): the two-phase predecessor.

BATCH_REDUCTIONS = ("mean", "sum")


class BurstpropState(NamedTuple):
  """Burstprop's rule state.

  Attributes:
    y: feedback ``Ŷ_l`` per hidden layer, in the next layer's kernel layout
      (``Ŷ_l == kernel_{l+1}`` means ``Ŷ_l = W_{l+1}^T``).
    r: recurrent inhibition ``R_l`` (``n_l x n_l``) per hidden layer, or None
      for a layer without it (convolutional layers have none).
  """
  y: tuple
  r: tuple


class BurstpropActivity(NamedTuple):
  """One Burstprop step's two passes (batch first; hidden layers first, output last).

  Attributes:
    inputs: ``e_{l-1}``, the input of each layer.
    e: event rates (the same in both passes: the teacher changes only bursts).
    p_ref, b_ref: no-teacher burst probabilities ``p̄`` and rates.
    a_ref: no-teacher apical terms ``ā_l = s̄_l ⊙ (1 - e_l) - R_l b̃_l`` (hidden).
    b_tilde: ``b̃_l = σ(s̄_l) ⊙ e_l``, the recurrent input (hidden).
    p, b: with-teacher burst probabilities and rates.
    delta: ``δ_l = (p_l - p̄_l) ⊙ e_l``, every layer.
  """
  inputs: tuple
  e: tuple
  p_ref: tuple
  b_ref: tuple
  a_ref: tuple
  b_tilde: tuple
  p: tuple
  b: tuple
  delta: tuple


def burstprop_pass(net: Network, params, state: BurstpropState, x: jax.Array,
                   labels: jax.Array, *, p_baseline: float = 0.2, teacher: bool = True,
                   target: jax.Array | None = None) -> BurstpropActivity:
  """Burstprop's no-teacher reference pass and its teacher pass, from one forward pass.

  See :func:`burstprop` for the equations; arguments as :func:`burst_pass`.
  """
  inputs, es = _forward(net, params, x)
  e_out = es[-1]
  t = _teacher(e_out, labels, teacher, target)
  n = len(net.blocks)
  p_ref, b_ref, p_t, b_t = [None] * n, [None] * n, [None] * n, [None] * n
  a_ref, b_tilde = [None] * (n - 1), [None] * (n - 1)
  p_ref[-1] = jnp.full_like(e_out, p_baseline)
  p_t[-1] = p_baseline * (1.0 + (t - e_out) * (1.0 - e_out))
  b_ref[-1], b_t[-1] = p_ref[-1] * e_out, p_t[-1] * e_out
  for l in range(n - 2, -1, -1):
    nxt, e = net.blocks[l + 1], es[l]
    s_ref = nxt.transpose(state.y[l], b_ref[l + 1]).reshape(e.shape)
    s_t = nxt.transpose(state.y[l], b_t[l + 1]).reshape(e.shape)
    b_tilde[l] = jax.nn.sigmoid(s_ref) * e
    inhibition = 0.0
    if state.r[l] is not None:
      inhibition = b_tilde[l] @ state.r[l].T
    a_ref[l] = s_ref * (1.0 - e) - inhibition
    p_ref[l] = jax.nn.sigmoid(a_ref[l])
    p_t[l] = jax.nn.sigmoid(s_t * (1.0 - e) - inhibition)
    b_ref[l], b_t[l] = p_ref[l] * e, p_t[l] * e
  delta = tuple((pt - pr) * e for pt, pr, e in zip(p_t, p_ref, es))
  return BurstpropActivity(inputs, es, tuple(p_ref), tuple(b_ref), tuple(a_ref),
                           tuple(b_tilde), tuple(p_t), tuple(b_t), delta)


def burstprop(net: Network, *, p_baseline: float = 0.2, y_mode: str = "random",
              y_scale: float = 1.0, learn_feedback: bool = False, recurrent: bool = True,
              r_scale: float = 0.01, r_lr: float = 1e-4, weight_decay: float = 0.0,
              output_lr_scale: float = 1.0, batch_reduction: str = "mean",
              teacher: bool = True) -> LearningRule:
  """Burstprop (Payeur et al. 2021), discrete form: the error is ``p - p̄``, with ``p̄`` from a no-teacher pass.

  Two passes per step on the same batch and the same event rates ``e_l =
  σ(W_l e_{l-1} + c_l)`` (sigmoid in every layer): a **no-teacher reference
  pass** and a **teacher pass**. In jaxbio's convention (feedback aligned
  iff ``Ŷ_l ≈ W_{l+1}^T``; Burstprop's ``Y`` is this ``Ŷ``, with no sign
  flip), with ``σ`` the logistic sigmoid:

  * output: ``p̄_L = p^b``; ``p_L = p^b [1 + (t - e_L) ⊙ (1 - e_L)]`` (the
    teacher form jaxbio's BurstCCN uses, so ``δ_L = p^b δ_L^BP``; the
    output baseline is 0.2 in the authors' code);
  * hidden, top down, apical input ``s̄_l = Ŷ_l b̄_{l+1}`` (reference) and
    ``s_l = Ŷ_l b_{l+1}`` (teacher), gain 1, with recurrent inhibition
    from ``b̃_l = σ(s̄_l) ⊙ e_l``:
    ``p̄_l = σ(s̄_l ⊙ (1 - e_l) - R_l b̃_l)``,
    ``p_l = σ(s_l ⊙ (1 - e_l) - R_l b̃_l)``, ``b = p ⊙ e``;
  * ``δ_l = (p_l - p̄_l) ⊙ e_l``; ``ΔW_l = η ⟨δ_l e_{l-1}^T⟩``, ``Δc_l = η ⟨δ_l⟩``
    (``⟨·⟩`` a batch mean, or a sum with ``batch_reduction="sum"`` as in
    Payeur et al.'s code: learning rates do not transfer between the two);
  * ``R`` pushes the reference apical term ``ā_l = s̄_l ⊙ (1 - e_l) - R_l b̃_l``
    to 0: ``ΔR_l = η_R Σ_batch ā_l b̃_l^T`` (a batch sum in both authors'
    codes), gradient descent on ``½‖ā_l‖²``; ``R`` exists in fully connected
    hidden layers only (none in convolutional ones, as in the authors' CNN);
  * with ``learn_feedback``, ``Ŷ_l`` receives the update the optimiser gave
    ``W_{l+1}`` (transposed, so with the same momentum) and the same decay
    (Kolen-Pollack-like), after every step;
  * weight decay ``λ`` (decoupled, on the pre-update values) applies to
    ``W`` and ``Ŷ``, not to biases or ``R``.

  Linearised (a weak teacher), ``δ_l ≈ σ'(ā_l) ⊙ e_l (1 - e_l) ⊙ Ŷ_l δ_{l+1}``:
  backprop's recursion with an extra gain ``σ'(ā_l)`` per unit, which ``R``
  drives toward 1/4 by silencing ``ā``.

  Args:
    net: a jaxbio network with a logistic sigmoid after every layer.
    p_baseline: the output layer's baseline ``p^b``.
    y_mode: ``"random"`` (``N(0, y_scale²)``), ``"symmetric_init"`` or
      ``"tied"`` (``y_scale W_{l+1}^T``, re-copied after every step).
    y_scale: the feedback scale.
    learn_feedback: Kolen-Pollack-like feedback learning (not with tied).
    recurrent: recurrent inhibition ``R`` in the fully connected hidden layers.
    r_scale: ``R ~ N(0, r_scale²)`` at init.
    r_lr: ``η_R``.
    weight_decay: ``λ`` in [0, 1).
    output_lr_scale: multiplies the output layer's updates (the authors'
      MNIST code uses a 10x smaller output learning rate); exact for SGD with
      or without momentum.
    batch_reduction: ``"mean"`` or ``"sum"`` for the ``W``, ``c`` (and so
      ``Ŷ``) updates.
    teacher: False: ``t := e_L`` (no learning signal at all).
  """
  check_network(net, "burstprop")
  _choice("y_mode", y_mode, Y_MODES, "burstprop")
  _choice("batch_reduction", batch_reduction, BATCH_REDUCTIONS, "burstprop")
  if concrete(p_baseline) and not 0 < p_baseline < 1:
    raise ValueError(f"burstprop p_baseline must be in (0, 1), got {p_baseline}")
  if y_mode == "tied" and learn_feedback:
    raise ValueError("burstprop learn_feedback must be False with y_mode='tied' (tied feedback "
                     "is re-copied from W after every step)")
  if concrete(weight_decay) and not 0 <= weight_decay < 1:
    raise ValueError(f"burstprop weight_decay must be in [0, 1), got {weight_decay}")
  hidden = range(len(net.blocks) - 1)
  dtype = net.param_dtype
  settings = dict(p_baseline=p_baseline, teacher=teacher)
  with_r = [recurrent and net.blocks[l].kind == "dense" for l in hidden]

  def init(key, params):
    ky, kr = jax.random.split(key)
    ys, rs = [], []
    for l in hidden:
      w = params[l + 1]["kernel"]
      if y_mode == "random":
        ys.append(y_scale * jax.random.normal(jax.random.fold_in(ky, l), w.shape, dtype))
      else:
        ys.append(y_scale * w)
      n = math.prod(net.blocks[l].out_shape)
      rs.append(r_scale * jax.random.normal(jax.random.fold_in(kr, l), (n, n), dtype)
                if with_r[l] else None)
    return BurstpropState(tuple(ys), tuple(rs))

  def update(params, net_state, rule_state, batch, key):
    del key
    check_batch(net, batch)
    act = burstprop_pass(net, params, rule_state, batch["image"], batch["label"], **settings)
    grads = forward_grads(net, params, BurstActivity(act.inputs, act.e, (), act.p, act.b,
                                                     act.delta, None),
                          mean=batch_reduction == "mean")
    if output_lr_scale != 1.0:
      grads = (*grads[:-1], jax.tree.map(lambda g: output_lr_scale * g, grads[-1]))
    rs = tuple(None if r is None else r + r_lr * (act.a_ref[l].T @ act.b_tilde[l])
               for l, r in enumerate(rule_state.r))
    metrics = _metrics(act.e[-1], batch["label"])
    return RuleOutput(tuple(grads), BurstpropState(rule_state.y, rs), net_state, metrics)

  def after_step(rule_state, params, new_params, updates, key):
    del key
    y = rule_state.y
    if learn_feedback:
      y = tuple((1 - weight_decay) * yy + updates[l + 1]["kernel"] for l, yy in zip(hidden, y))
    if _active(weight_decay):
      new_params = tuple(dict(n, kernel=n["kernel"] - weight_decay * p["kernel"])
                         for n, p in zip(new_params, params))
    if y_mode == "tied":
      y = tuple(y_scale * new_params[l + 1]["kernel"] for l in hidden)
    return rule_state._replace(y=y), new_params

  def feedback(params, rule_state):
    return {f"layer{l + 1}": (rule_state.y[l], params[l + 1]["kernel"]) for l in hidden}

  def diagnostics(params, net_state, rule_state, batch, key):
    del net_state, key
    act = burstprop_pass(net, params, rule_state, batch["image"], batch["label"], **settings)
    return {f"apical_abs/layer{l}": jnp.mean(jnp.abs(act.a_ref[l])) for l in hidden}

  return LearningRule("burstprop", init, update, feedback, after_step,
                      evaluate=_evaluate(net), references=references(net),
                      diagnostics=diagnostics)
