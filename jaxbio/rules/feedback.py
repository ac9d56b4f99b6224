"""Backprop and the feedback-alignment family on sequential networks.

All rules here train the same stack of blocks (:mod:`jaxbio.nets.sequential`)
on softmax cross-entropy and differ only in the backward pass:

* :func:`backprop`: the exact gradient.
* :func:`feedback_alignment` (Lillicrap et al. 2016): the error reaching layer
  ``l - 1`` is ``B_l delta_l`` with a fixed random ``B_l`` in place of
  ``W_l^T``; weight gradients keep their local form ``delta_l h_{l-1}^T``.
* :func:`kolen_pollack` (Kolen & Pollack 1994; Akrout et al. 2019): FA whose
  feedback receives the update the optimiser applied to the forward weights,
  transposed, and both pathways decay by the same factor, so ``W - B^T``
  shrinks by ``(1 - decay)`` every step without ``B`` ever reading ``W``.
* :func:`sign_symmetry` (Liao, Leibo & Poggio 2016): the feedback is
  ``sign(W^T)`` times a per-layer scale, recomputed from ``W`` at every step.
* :func:`direct_feedback_alignment` (Nokland 2016): every hidden block output
  ``h_l`` receives ``B_l e`` directly from the output error ``e``; block-local
  backprop then gives the weight updates (for a dense tanh layer,
  ``delta_l = (B_l e) * (1 - h_l^2)``).

Feedback kernels are stored in the forward kernel's layout (see
:func:`jaxbio.nets.layers.feedback_linear`), live in the rule state, and are
never seen by the optimiser. The first layer needs no feedback (nothing is
propagated to the input), so its entry is ``None``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxbio.nets.sequential import Network
from typing import NamedTuple

from jaxbio.rules.base import (EmptyState, concrete, LearningRule, RuleOutput, check_batch,
                               classification_metrics, cross_entropy)


class FeedbackState(NamedTuple):
  """Rule state of FA, KP and DFA: one feedback kernel per layer (None for the first layer in FA/KP)."""
  feedback: tuple


def loss_and_grads(net, params, net_state, batch, feedback=None):
  """Grads, new net state and metrics of the mean cross-entropy, with optional feedback kernels."""
  check_batch(net, batch)

  def loss_fn(p):
    logits, new_state = net.apply(p, net_state, batch["image"], train=True, feedback=feedback)
    return cross_entropy(logits, batch["label"]), (logits, new_state)

  (_, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return grads, new_state, classification_metrics(logits, batch["label"])


def _pairs(net: Network, params, feedback) -> dict:
  return {f"layer{i}": (fb, params[i]["kernel"])
          for i, fb in enumerate(feedback) if fb is not None}


def backprop(net: Network) -> LearningRule:
  """Exact gradients of the mean softmax cross-entropy."""

  def update(params, net_state, rule_state, batch, key):
    del key
    grads, new_state, metrics = loss_and_grads(net, params, net_state, batch)
    return RuleOutput(grads, rule_state, new_state, metrics)

  return LearningRule("bp", lambda key, params: EmptyState(), update)


def _init_feedback(net: Network, key: jax.Array, scale: float):
  keys = jax.random.split(key, len(net.blocks))
  return tuple(None if i == 0 else scale * block.kernel_init(k, block.kernel_shape, net.param_dtype)
               for i, (block, k) in enumerate(zip(net.blocks, keys)))


def feedback_alignment(net: Network, *, feedback_scale: float = 1.0) -> LearningRule:
  """Feedback alignment with fixed random feedback weights.

  ``B_l`` is drawn with the layer's own kernel initialiser (Glorot by default,
  whose variance is symmetric in the fans) times ``feedback_scale``, and never
  changes.

  Args:
    net: the network.
    feedback_scale: multiplies the initial feedback weights.

  Returns:
    A :class:`LearningRule` whose state is ``FeedbackState(feedback=(None, B_1, ...))``.
  """

  def init(key, params):
    del params
    return FeedbackState(_init_feedback(net, key, feedback_scale))

  def update(params, net_state, rule_state, batch, key):
    del key
    grads, new_state, metrics = loss_and_grads(net, params, net_state, batch,
                                                rule_state.feedback)
    return RuleOutput(grads, rule_state, new_state, metrics)

  return LearningRule("fa", init, update,
                      lambda params, state: _pairs(net, params, state.feedback))


def kolen_pollack(net: Network, *, weight_decay: float = 0.0,
                  feedback_scale: float = 1.0) -> LearningRule:
  """Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019): feedback learns the forward update.

  Backward pass as in FA. After each optimiser step, every forward kernel
  ``W_l`` that has a feedback kernel ``B_l`` and that feedback kernel (in
  kernel layout, so ``B_l == W_l`` means feedback ``= W_l^T``) receive the
  same update and the same decay (Akrout et al. 2019, Eqs. 7-8)::

      W_l <- W_l + u_l - weight_decay * W_l
      B_l <- B_l + u_l - weight_decay * B_l

  where ``u_l`` is the update the optimiser applied to ``W_l`` (SGD, Adam,
  ...). The decay of ``W_l`` is applied here, decoupled from the optimiser,
  so that it is the same decay whatever the optimiser. ``B``'s update reads
  only ``u`` and ``B`` itself, never ``W`` (that would be weight transport);
  still ``W_{t+1} - B_{t+1} = (1 - weight_decay) (W_t - B_t)``: the pathways
  converge because both decay. With ``weight_decay = 0`` the gap is fixed
  while both move. (The first layer, which has no feedback kernel, is not
  decayed here.)

  Args:
    net: the network.
    weight_decay: the decay of each step, for ``W`` and ``B`` alike, in [0, 1).
    feedback_scale: multiplies the initial random feedback weights.
  """
  if concrete(weight_decay) and not 0 <= weight_decay < 1:
    raise ValueError(f"kolen_pollack weight_decay must be in [0, 1), got {weight_decay}")

  def after_step(rule_state, params, new_params, updates, key):
    del key
    feedback = tuple(None if fb is None else (1 - weight_decay) * fb + u["kernel"]
                     for fb, u in zip(rule_state.feedback, updates))
    decayed = tuple(p if fb is None else dict(p, kernel=p["kernel"] - weight_decay * w["kernel"])
                    for p, w, fb in zip(new_params, params, rule_state.feedback))
    return FeedbackState(feedback), decayed

  # The forward and backward passes are FA's; only the feedback learns.
  fa = feedback_alignment(net, feedback_scale=feedback_scale)
  return fa._replace(name="kp", after_step=after_step)


SIGN_SCALES = ("mean_abs", "unit")


def sign_symmetry(net: Network, *, scale: str = "mean_abs") -> LearningRule:
  """Sign-symmetric feedback: ``B_l = s_l sign(W_l^T)``, from the current weights.

  Args:
    net: the network.
    scale: ``"mean_abs"`` (``s_l`` = mean of ``|W_l|``, so the backward signal
      keeps the forward weights' magnitude) or ``"unit"`` (``s_l = 1``, the
      batch-Manhattan-free form of Liao et al.).
  """
  if scale not in SIGN_SCALES:
    raise ValueError(f"unknown sign_symmetry scale {scale!r}; valid choices: "
                     f"{', '.join(SIGN_SCALES)}")

  def feedback_of(params):
    def one(p):
      k = jax.lax.stop_gradient(p["kernel"])
      s = jnp.mean(jnp.abs(k)) if scale == "mean_abs" else 1.0
      return s * jnp.sign(k)
    return tuple(None if i == 0 else one(p) for i, p in enumerate(params))

  def update(params, net_state, rule_state, batch, key):
    del key
    grads, new_state, metrics = loss_and_grads(net, params, net_state, batch,
                                                feedback_of(params))
    return RuleOutput(grads, rule_state, new_state, metrics)

  return LearningRule("sign_symmetry", lambda key, params: EmptyState(), update,
                      lambda params, state: _pairs(net, params, feedback_of(params)))


def direct_feedback_alignment(net: Network, *, feedback_scale: float = 1.0) -> LearningRule:
  """Direct feedback alignment: output error sent straight to every hidden block.

  ``B_l`` has shape ``(n_outputs, prod(h_l.shape))`` and is drawn from
  ``U(-a, a)`` with ``a = feedback_scale * sqrt(6 / (n_outputs + n_l))``
  (Glorot with the transposed fans). Block ``l`` receives the cotangent
  ``e B_l`` at its output, where ``e`` is the gradient of the batch-mean loss
  with respect to the logits, and backpropagates it only through itself.

  Args:
    net: the network.
    feedback_scale: multiplies the Glorot range of the feedback weights.
  """

  def init(key, params):
    del params
    n_out = net.num_outputs
    keys = jax.random.split(key, len(net.blocks) - 1)
    fb = []
    for block, k in zip(net.blocks[:-1], keys):
      n_h = math.prod(block.out_shape)
      limit = feedback_scale * (6.0 / (n_out + n_h)) ** 0.5
      fb.append(jax.random.uniform(k, (n_out, n_h), net.param_dtype, -limit, limit))
    return FeedbackState(tuple(fb))

  def update(params, net_state, rule_state, batch, key):
    del key
    check_batch(net, batch)
    x, labels = batch["image"], batch["label"]

    def blocks_local(p):
      # Each block sees its input as a constant: gradients stay block-local.
      outs, states, h = [], [], x
      for i, block in enumerate(net.blocks):
        h, s = block.apply(p[i], net_state[i], jax.lax.stop_gradient(h), train=True)
        outs.append(h)
        states.append(s)
      return tuple(outs), tuple(states)

    outs, vjp, new_state = jax.vjp(blocks_local, params, has_aux=True)
    logits = outs[-1]
    e = jax.grad(cross_entropy)(logits, labels)
    cotangents = tuple((e @ b).reshape(h.shape) for b, h in zip(rule_state.feedback, outs))
    (grads,) = vjp(cotangents + (e,))
    return RuleOutput(grads, rule_state, new_state, classification_metrics(logits, labels))

  return LearningRule("dfa", init, update)
