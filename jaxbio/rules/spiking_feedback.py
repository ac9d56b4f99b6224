"""RDD feedback learning in a spiking network (Guerguiev, Kording & Richards, ICLR 2020).

Also :func:`weight_mirror` (Akrout et al. 2019), a rate-based feedback learner
for side-by-side comparison (Kolen-Pollack is :func:`jaxbio.rules.kolen_pollack`).

Feedback alignment (FA) whose fully connected feedback weights ``Y`` are
rewritten, before each training epoch, by a *feedback phase*: a spiking copy
of the network's fc layers is driven layer by layer with Poisson noise, and
each driven neuron ``i`` estimates its causal effect ``beta_ik`` on each
neuron ``k`` of the layer above by regression discontinuity design (RDD),
comparing windows where its drive just crossed threshold (it spiked) with
windows where it just missed. ``Y`` is then set from ``beta``. The algorithm
is the authors' public code (jordan-g/RDD-Weight-Alignment, commit 9288fce),
reproduced step by step (parity tests against traces recorded from its
spiking classes).

**The spiking pair** (driven layer ``D`` of ``n`` units, post layer ``P`` of
``K`` units; discrete time, one step = ``dt`` = 1 ms). Leaky
integrate-and-fire units with basal input ``B``::

    kappa(m) = (exp(-m / tau_L) - exp(-m / tau_s)) / (tau_L - tau_s),  m = 1..M
    v <- v + dt (-g_L v + g_D (B - v))        (= 0.3 v + 0.6 B with the defaults)

with ``tau_L = 10``, ``tau_s = 3`` (in steps), ``M = 30``, ``g_L = 100``,
``g_D = 600`` (per second), threshold ``theta = 1``, reset ``v_reset = -1``
and a refractory counter set to 3 on a spike (a unit fires only at counter
0). ``D``'s basal input is ``alpha * sum_m kappa(m) counts(t - m + 1)`` (its
drive, including this step's Poisson counts; ``alpha = 4``); ``P``'s is
``What . sum_m kappa(m) S_D(t - m + 1)`` with ``What = 0.2 n W / std(W)``
(the ANN's kernel rescaled, biases ignored; ``D``'s spikes of the same step
count). A random 20 % of ``D``'s units receive Poisson(0.2) counts per step,
re-drawn before steps 99, 199, ... (every 100 steps).

Each driven unit also integrates its drive without resets, ``u`` (the same
Euler step; ``u <- v`` whenever no window is open). A 30-step RDD window
opens when ``|theta - u| <= 0.1`` and none is open. Over the window, with
the one-step-delayed post trace ``q_k(t) = sum_m kappa(m) S_P,k(t - m)``:
``R_ik`` sums ``q_k`` over the window's 30 steps, ``R_pre,ik`` is ``q_k`` at
the opening step (not refreshed when a window re-opens on its own last
step), ``u_max`` is the maximum of 0 and ``u`` at the ends of the opening
step and the next 29, ``n_spk`` counts ``D``'s spikes in steps 1..29 of the
window. At its end (if ``|u_max - theta| <= u_window``), ``x = u_max``,
``y_ik = R_ik / 30 - R_pre,ik`` update one of two LMS line fits per pair::

    e = m x + c - y;   m <- m - eta e x;   c <- c - eta e        (eta = 1e-3)

the right fit if ``n_spk >= 1`` ("just spiked"), else the left one; and
``beta_ik = (m_r theta + c_r) - (m_l theta + c_l)``. The exact order of
operations within a step is that of :func:`pair_step`.

**Y update** every 10,000 steps (10 s): ``Y_ik <- beta_ik s_Y0 /
std(beta[beta != 0])`` wherever ``beta_ik != 0`` (population stds; ``s_Y0`` is
the std of the initial random ``Y``, kept in the rule state); other entries
keep their value. Or, with ``y_update="incremental"``, ``Y <- Y + eta_Y
(omega beta - gamma Y)``.

**Layouts.** Everything on the RDD side (the fits, ``beta``, ``Y``) is
``(n_pre, n_post)``, the shape of ``W^T`` and of jaxbio's dense kernels, so
``Y`` is directly the FA feedback kernel (``Y == kernel`` means ``Y = W^T``).

**Speed.** ``D``'s dynamics depend only on its drive, ``P``'s only on ``D``'s
spikes, and neither on the fits; the per-pair quantities ``R`` and ``R_pre``
are only read at window ends. So :func:`run_pair` computes a block of steps
(1000 by default) in passes: ``D``'s input for the whole block (a 30-term
kernel sum of the drive), ``D``'s dynamics (a scan of per-unit updates),
``What`` times ``D``'s spikes for the block (one matrix product), ``P``'s
input and dynamics (a scan over ``K``-vectors), the post trace ``q`` and
the window sums ``R`` (the ``R`` of every window ending at step ``t`` is the
same sum of the last 30 ``q``), and last the fits. A unit's fit rows are
touched only when one of its windows ends or opens afresh: at least 30 steps
apart, except an opening right after an end. So the fits are updated per
chunk of 30 steps or fewer: the rows of every unit with an end, then of
every unit with an opening, gathered, updated and scattered back in place.
Ring buffers carry the last 30 steps of drive, ``What S_D``, post spikes and
``q`` from block to block.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class RDDConstants(NamedTuple):
  """Constants of the spiking feedback phase (defaults: the authors' code).

  Attributes:
    dt: step length in seconds.
    g_l, g_d: leak and basal conductances, per second.
    theta, v_reset: threshold and reset potential.
    refractory: refractory counter value on a spike (steps).
    tau_l, tau_s: kernel time constants, in steps.
    kernel_len: kernel length M in steps.
    alpha: gain of the driving input.
    window: RDD window length in steps.
    init_window: a window opens when ``|theta - u| <= init_window``.
    u_window: a window is used only if ``|u_max - theta| <= u_window``.
    eta: LMS rate of the line fits.
    drive_rate: Poisson counts per step of an active driven unit.
    drive_fraction: fraction of the driven layer active (``int(f n)`` units).
    redraw_every: steps between re-draws of the active set (before steps
      ``redraw_every - 1``, ``2 redraw_every - 1``, ...).
    y_update_every: steps between Y updates (after steps with
      ``(t + 1) % y_update_every == 0``).
    w_scale: ``What = w_scale * n_pre * W / std(W)``.
  """
  dt: float = 1e-3
  g_l: float = 100.0
  g_d: float = 600.0
  theta: float = 1.0
  v_reset: float = -1.0
  refractory: int = 3
  tau_l: float = 10.0
  tau_s: float = 3.0
  kernel_len: int = 30
  alpha: float = 4.0
  window: int = 30
  init_window: float = 0.1
  u_window: float = 10.0
  eta: float = 1e-3
  drive_rate: float = 0.2
  drive_fraction: float = 0.2
  redraw_every: int = 100
  y_update_every: int = 10_000
  w_scale: float = 0.2


def kernel(consts: RDDConstants = RDDConstants(), dtype=jnp.float64) -> np.ndarray:
  """``kappa(m)`` for ``m = 1..M`` (``kappa[m - 1] = kappa(m)``), as a NumPy array."""
  m = np.arange(1, consts.kernel_len + 1, dtype=np.float64)
  k = (np.exp(-m / consts.tau_l) - np.exp(-m / consts.tau_s)) / (consts.tau_l - consts.tau_s)
  return k.astype(np.dtype(dtype))


def scaled_forward(w_kernel: jax.Array, consts: RDDConstants = RDDConstants()) -> jax.Array:
  """``What`` in kernel layout ``(n_pre, n_post)``: ``w_scale * n_pre * W / std(W)``."""
  n_pre = w_kernel.shape[0]
  return consts.w_scale * n_pre * w_kernel / jnp.std(w_kernel)


class Fits(NamedTuple):
  """The two LMS line fits per (pre, post) pair, each ``(n_pre, n_post)``."""
  m_r: jax.Array
  c_r: jax.Array
  m_l: jax.Array
  c_l: jax.Array


def zero_fits(n_pre: int, n_post: int, dtype) -> Fits:
  z = jnp.zeros((n_pre, n_post), dtype)
  return Fits(z, z, z, z)


def beta_of(fits: Fits, theta: float = 1.0) -> jax.Array:
  """``beta = (m_r theta + c_r) - (m_l theta + c_l)``, ``(n_pre, n_post)``."""
  return (fits.m_r * theta + fits.c_r) - (fits.m_l * theta + fits.c_l)


class PairState(NamedTuple):
  """State of a driven -> post spiking pair (see the module docstring).

  ``fit_rows`` (the four fits and ``R_pre``, stacked per driven unit so that
  one unit's update reads and writes one contiguous block) has one extra
  (dummy) row at index ``n_pre`` that padded gathers and scatters use. ``t``
  is the step counter: step ``s`` is in row ``s % M`` of the ``M``-row rings
  and ``s % window`` of ``q_ring``.
  """
  v: jax.Array          # (n,) driven membrane potential
  u: jax.Array          # (n,) drive without reset
  r: jax.Array          # (n,) int32 refractory counter
  c: jax.Array          # (n,) int32 window counter
  n_spk: jax.Array      # (n,) int32 spikes in the open window
  u_max: jax.Array      # (n,)
  drive_ring: jax.Array  # (M, n) drive counts of the last M steps
  v_post: jax.Array     # (K,)
  r_post: jax.Array     # (K,) int32
  z_ring: jax.Array     # (M, K) What^T S_D of the last M steps
  s_ring: jax.Array     # (M, K) post spikes of the last M steps
  q_ring: jax.Array     # (window, K) post trace q of the last `window` steps
  fit_rows: jax.Array   # (n + 1, 5, K): m_r, c_r, m_l, c_l, R_pre per driven unit
  t: jax.Array          # () int32
  counts: dict          # scalar statistics: spikes, windows


def _stats0(dtype):
  del dtype
  z = jnp.zeros((), jnp.int32)
  return {"pre_spikes": z, "post_spikes": z, "windows_spiked": z, "windows_no_spike": z,
          "windows_out_of_band": z}


def init_pair(n_pre: int, n_post: int, fits: Fits | None = None, *, dtype=jnp.float64,
              consts: RDDConstants = RDDConstants()) -> PairState:
  """The reset state: v = u = v_reset, counters and histories 0, fits as given (or 0)."""
  M, L = consts.kernel_len, consts.window
  fn = functools.partial(jnp.zeros, dtype=dtype)
  zi = lambda n: jnp.zeros((n,), jnp.int32)
  if fits is None:
    fits = zero_fits(n_pre, n_post, dtype)
  pad = lambda a: jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)], 0)
  return PairState(
      v=jnp.full((n_pre,), consts.v_reset, dtype), u=jnp.full((n_pre,), consts.v_reset, dtype),
      r=zi(n_pre), c=zi(n_pre), n_spk=zi(n_pre), u_max=fn((n_pre,)),
      drive_ring=fn((M, n_pre)), v_post=jnp.full((n_post,), consts.v_reset, dtype),
      r_post=zi(n_post), z_ring=fn((M, n_post)), s_ring=fn((M, n_post)),
      q_ring=fn((L, n_post)), fit_rows=pad(jnp.stack(tuple(fits) + (fn((n_pre, n_post)),), 1)),
      t=jnp.zeros((), jnp.int32), counts=_stats0(dtype))


def pair_fits(state: PairState) -> Fits:
  """The fits without the dummy row, each ``(n_pre, n_post)``."""
  return Fits(*(state.fit_rows[:-1, j] for j in range(4)))


def _lms(m_r, c_r, m_l, c_l, x, right, y, eta):
  """One LMS step of the chosen side's fit, rows broadcast against ``x[:, None]``."""
  x = x[:, None]
  right = right[:, None]
  m = jnp.where(right, m_r, m_l)
  c = jnp.where(right, c_r, c_l)
  e = m * x + c - y
  m_new = m - eta * e * x
  c_new = c - eta * e
  return (jnp.where(right, m_new, m_r), jnp.where(right, c_new, c_r),
          jnp.where(right, m_l, m_new), jnp.where(right, c_l, c_new))


def first_true(mask: jax.Array, size: int) -> jax.Array:
  """The indices of the first ``size`` True entries of the 1-D ``mask``, padded with ``len(mask)``.

  The same as ``jnp.nonzero(mask, size=size, fill_value=len(mask))[0]``, in
  a few operations: the running count comes from two small triangular
  matrix products (exact: float32 at the highest precision, counts far
  below 2**24) rather than a scan, which costs several times more per call
  inside a simulation loop.
  """
  n = mask.shape[0]
  cols = max(1, math.isqrt(n - 1) + 1) if n > 1 else 1
  rows = -(-n // cols)
  x = jnp.pad(mask, (0, rows * cols - n)).reshape(rows, cols).astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  within = jnp.matmul(x, jnp.triu(jnp.ones((cols, cols), jnp.float32)), precision=hi)
  before = jnp.matmul(jnp.tril(jnp.ones((rows, rows), jnp.float32), -1), within[:, -1],
                      precision=hi)
  count = (within + before[:, None]).reshape(-1)[:n].astype(jnp.int32)  # inclusive
  slot = jnp.where(mask, count - 1, size)
  return jnp.full((size,), n, jnp.int32).at[slot].set(jnp.arange(n, dtype=jnp.int32),
                                                       mode="drop")


def _update_rows(mask: jax.Array, rows: jax.Array, fn, capacity: int) -> jax.Array:
  """``rows[i] <- fn(idx, rows[idx])[j]`` for every ``i = idx[j]`` with ``mask[i]``.

  ``rows`` has one more row than ``mask`` (a dummy one, left unchanged);
  ``capacity`` rows are gathered, updated and scattered back per round, in
  as many rounds as needed (none if ``mask`` is all False).
  """
  n = mask.shape[0]

  def round_(carry):
    mask, rows = carry
    idx = first_true(mask, capacity)
    old = rows[idx]
    new = jnp.where((idx < n).reshape((-1,) + (1,) * (old.ndim - 1)), fn(idx, old), old)
    return mask.at[idx].set(False, mode="drop"), rows.at[idx].set(new)

  return jax.lax.while_loop(lambda c: jnp.any(c[0]), round_, (mask, rows))[1]


def pair_step(state: PairState, counts: jax.Array | None, w_hat_t: jax.Array, *,
              consts: RDDConstants = RDDConstants(), record: bool = False,
              basal: jax.Array | None = None, row_capacity: int = 128):
  """One 1-ms step of the pair, in the authors' code's order of operations.

  1. ``q`` <- the post trace as of the previous step.
  2. ``ending`` <- (window counter == 1); where a window is open, ``u_max <-
     max(u_max, u)`` (``u`` of the previous step).
  3. refractory counters ``r <- max(r - 1, 0)``.
  4. ``B <- alpha * drive trace`` (this step's counts included).
  5. Euler step of ``v`` and ``u``.
  6. where a window is open, ``R += q``; else ``R_pre <- q``.
  7. fire where ``v >= theta`` and ``r == 0``; there ``v <- v_reset``, ``r <- refractory``.
  8. for ending units with ``|u_max - theta| <= u_window``: LMS update of the
     right fit if ``n_spk >= 1``, else the left.
  9. ``c <- max(c - 1, 0)``; where ``c == 0``, ``u <- v``.
  10. where ``c == 0`` and ``|theta - u| <= init_window``: ``c <- window``.
  11. where a window is open and the unit fired: ``n_spk += 1``.
  12. where ending: ``n_spk, R, u_max <- 0``.
  13. the post layer: ``r``, Euler step with ``What`` times the driven trace
      (this step's spikes included), fire and reset.

  ``R`` is not stored: a window ending at step ``t`` covered steps ``t - 29 ..
  t``, so its ``R`` is the sum of the last 30 ``q``. ``R_pre`` is stored only
  when a window opens at a step that began with no window open (the last
  ``R_pre <- q`` before any window end is at such a step).

  This is :func:`run_pair` over one step (see there for how a run of steps
  is computed).

  Args:
    state: the pair state.
    counts: ``(n,)`` drive counts of this step (``None`` with ``basal``).
    w_hat_t: ``(n + 1, K)`` ``What`` in kernel layout with a zero last row (see :func:`padded`).
    consts: the constants.
    record: also return this step's per-unit state (for tests).
    basal: ``(n,)``, if given, the driven layer's basal input ``B`` of this
      step in place of ``alpha`` times its drive trace (the drive history is
      then left as it is): scripted inputs, e.g. to place ``u`` exactly,
      since ``u <- 0.3 u + 0.6 B`` with the defaults.
    row_capacity: see :func:`run_pair`.

  Returns:
    ``(state, record_dict or None)``.
  """
  one = lambda a: None if a is None else jnp.asarray(a)[None]
  state, rec = run_pair(state, one(counts), w_hat_t, consts=consts, record=record,
                        basal=one(basal), row_capacity=row_capacity)
  return state, None if rec is None else jax.tree.map(lambda r: r[0], rec)


def _weighted_history(ring: jax.Array, t0: jax.Array, x: jax.Array, weights: np.ndarray):
  """``y(t) = sum_j weights[j] x(t - j)`` for ``t = t0 .. t0 + T - 1``, and the ring after them.

  ``ring`` (``R`` rows, ``R >= len(weights) - 1``) holds ``x`` of the last
  ``R`` steps before ``t0``, step ``s`` in row ``s % R``; the returned ring
  holds the last ``R`` steps of ``x`` the same way. Zero weights are skipped.
  """
  n_ring, t = ring.shape[0], x.shape[0]
  weights = np.asarray(weights, ring.dtype)  # NumPy float64 weights would promote ring's dtype
  if n_ring < len(weights) - 1:
    raise ValueError(f"a ring of {n_ring} steps is too short for {len(weights)} weights")
  hist = ring[(t0 - jnp.arange(n_ring, 0, -1)) % n_ring]          # steps t0 - R .. t0 - 1
  ext = jnp.concatenate([hist, x.astype(ring.dtype)], 0)          # ext[i]: step t0 - R + i
  y = jnp.zeros((t,) + ring.shape[1:], ring.dtype)
  for j, w in enumerate(weights):
    if w != 0:
      term = ext[n_ring - j:n_ring - j + t]
      y = y + (term if w == 1 else w * term)
  new_ring = jnp.zeros_like(ring).at[(t0 + t - n_ring + jnp.arange(n_ring)) % n_ring].set(
      ext[t:t + n_ring])
  return y, new_ring


def _euler(x: jax.Array, b: jax.Array, cs: RDDConstants) -> jax.Array:
  """One Euler step of a LIF potential with basal input ``b`` (step 5 / 13)."""
  return x + cs.dt * (-cs.g_l * x + cs.g_d * (b - x))


def _fire(v: jax.Array, r: jax.Array, cs: RDDConstants):
  """Step 7 / 13: fire where ``v >= theta`` and ``r == 0``; reset ``v`` and ``r`` there."""
  fire = (v >= cs.theta) & (r == 0)
  return (jnp.where(fire, jnp.asarray(cs.v_reset, v.dtype), v),
          jnp.where(fire, cs.refractory, r), fire)


def _driven_step(carry, b, *, consts: RDDConstants, record: bool):
  """Steps 2, 3, 5, 7 and 9-12 of :func:`pair_step`: the driven layer, from its input ``b``."""
  cs = consts
  v, u, r, c, n_spk, u_max = carry
  dtype = v.dtype
  theta = jnp.asarray(cs.theta, dtype)
  c_start = c
  ending = c_start == 1
  u_max = jnp.where(c_start > 0, jnp.maximum(u_max, u), u_max)
  r = jnp.maximum(r - 1, 0)
  v, u = _euler(v, b, cs), _euler(u, b, cs)
  v, r, fire = _fire(v, r, cs)
  event = ending & (jnp.abs(u_max - theta) <= cs.u_window)
  right = n_spk >= 1
  c = jnp.maximum(c_start - 1, 0)
  u = jnp.where(c == 0, v, u)
  opening = (c == 0) & (jnp.abs(theta - u) <= cs.init_window)
  c = jnp.where(opening, cs.window, c)
  fresh = opening & (c_start == 0)  # never an ending unit (c_start == 1)
  n_spk = jnp.where((c > 0) & fire, n_spk + 1, n_spk)
  n_spk = jnp.where(ending, 0, n_spk)
  out = {"fire": fire, "ending": ending, "event": event, "right": right, "fresh": fresh,
         "x": u_max}
  u_max = jnp.where(ending, jnp.zeros((), dtype), u_max)
  if record:
    out.update(pre_v=v, pre_u=u, pre_window_counter=c, pre_n_spikes=n_spk, pre_refractory=r)
  return (v, u, r, c, n_spk, u_max), out


def _post_step(carry, b, *, consts: RDDConstants):
  """Step 13 of :func:`pair_step`: the post layer, from its input ``b``."""
  cs = consts
  v, r = carry
  v, r, fire = _fire(_euler(v, b, cs), jnp.maximum(r - 1, 0), cs)
  return (v, r), (fire, v, r)


def _fit_chunk(rows, x, *, eta: float, row_capacity: int):
  """Step 8 (the LMS step) and step 6's ``R_pre``, on the fit rows, for <= ``window`` steps.

  A unit's touches of its fit rows (the LMS step when a window ends, ``R_pre
  <- q`` when one opens afresh) are at least ``window`` steps apart, except
  that a window can open afresh one step after one ended. So in a chunk of
  at most ``window`` steps, a unit has at most one end and one fresh
  opening, the end first: every unit's end, then every unit's opening, can
  be applied at once, with the quantities (``q``, ``R``, ``u_max``, side) of
  the step it happened in.
  """
  event, fresh, right, u_max, q, y_base = x
  t_end = jnp.argmax(event, axis=0)
  t_open = jnp.argmax(fresh, axis=0)

  def ends(idx, f):
    t = t_end[idx]
    lms = _lms(f[:, 0], f[:, 1], f[:, 2], f[:, 3], u_max[t, idx], right[t, idx],
               y_base[t] - f[:, 4], eta)
    return jnp.stack(lms + (f[:, 4],), 1)

  rows = _update_rows(jnp.any(event, axis=0), rows, ends, row_capacity)
  rows = _update_rows(jnp.any(fresh, axis=0), rows,
                      lambda idx, f: f.at[:, 4].set(q[t_open[idx]]), row_capacity)
  return rows, None


def _pair_block(state: PairState, b: jax.Array, w_hat: jax.Array, *, consts: RDDConstants,
                record: bool, row_capacity: int, unroll: int):
  """T steps of the pair from the driven layer's input ``b``, ``(T, n)``; see :func:`run_pair`."""
  cs = consts
  dtype = state.v.dtype
  kappa = kernel(cs, np.float64)
  d_carry = (state.v, state.u, state.r, state.c, state.n_spk, state.u_max)
  d_carry, d = jax.lax.scan(functools.partial(_driven_step, consts=cs, record=record),
                            d_carry, b, unroll=unroll)
  z = jnp.matmul(d["fire"].astype(dtype), w_hat, precision=jax.lax.Precision.HIGHEST)
  b_post, z_ring = _weighted_history(state.z_ring, state.t, z, kappa)
  (v_post, r_post), (fire_post, v_post_t, r_post_t) = jax.lax.scan(
      functools.partial(_post_step, consts=cs), (state.v_post, state.r_post), b_post,
      unroll=unroll)
  s = fire_post.astype(dtype)
  q, s_ring = _weighted_history(state.s_ring, state.t, s, np.concatenate([[0.0], kappa]))
  r_sum, q_ring = _weighted_history(state.q_ring, state.t, q, np.ones(cs.window))
  t = b.shape[0]
  chunk = min(cs.window, t)
  n_chunks, rest = divmod(t, chunk)
  fit = functools.partial(_fit_chunk, eta=cs.eta, row_capacity=min(row_capacity, b.shape[1]))
  per_step = (d["event"], d["fresh"], d["right"], d["x"], q, r_sum / cs.window)
  fit_rows, _ = jax.lax.scan(fit, state.fit_rows, tuple(
      a[:n_chunks * chunk].reshape(n_chunks, chunk, *a.shape[1:]) for a in per_step))
  if rest:  # a last, shorter chunk
    fit_rows, _ = fit(fit_rows, tuple(a[n_chunks * chunk:] for a in per_step))
  total = lambda m: jnp.sum(m).astype(jnp.int32)
  st = state.counts
  counts = {
      "pre_spikes": st["pre_spikes"] + total(d["fire"]),
      "post_spikes": st["post_spikes"] + total(fire_post),
      "windows_spiked": st["windows_spiked"] + total(d["event"] & d["right"]),
      "windows_no_spike": st["windows_no_spike"] + total(d["event"] & ~d["right"]),
      "windows_out_of_band": st["windows_out_of_band"] + total(d["ending"] & ~d["event"]),
  }
  v, u, r, c, n_spk, u_max = d_carry
  new = state._replace(v=v, u=u, r=r, c=c, n_spk=n_spk, u_max=u_max, v_post=v_post,
                       r_post=r_post, z_ring=z_ring, s_ring=s_ring, q_ring=q_ring,
                       fit_rows=fit_rows, t=state.t + t, counts=counts)
  rec = None
  if record:
    rec = {key: d[key] for key in ("pre_v", "pre_u", "pre_window_counter", "pre_n_spikes",
                                   "pre_refractory")}
    rec.update(pre_spikes=d["fire"], post_spikes=fire_post, post_v=v_post_t,
               post_refractory=r_post_t, pre_B=b, post_B=b_post, event=d["event"],
               event_x=jnp.where(d["event"], d["x"], 0), event_side=d["right"])
  return new, rec


def run_pair(state: PairState, counts: jax.Array | None, w_hat_t: jax.Array, *,
             consts: RDDConstants = RDDConstants(), record: bool = False, unroll: int = 1,
             basal: jax.Array | None = None, row_capacity: int = 128, block: int = 1000):
  """Runs the pair over ``counts`` (``(T, n)`` drive counts, one row per step).

  The steps of :func:`pair_step`, computed ``block`` steps at a time in
  passes, which gives the same result because the driven layer does not
  depend on the post layer, and the post layer not on the fits: the driven
  layer's input for the whole block (a kernel-weighted sum of its drive
  counts), its dynamics (a scan), ``What`` times its spikes (one matrix
  product), the post layer's input, its dynamics (a scan), the post trace
  ``q`` and the window sums ``R``, and last the LMS fits and ``R_pre``, with
  only the rows of the units whose window ends or opens in a step touched
  (a scan over chunks of at most ``window`` steps, in which no unit's rows
  are touched twice in a way whose order matters, see :func:`_fit_chunk`).

  Args:
    state: from :func:`init_pair` (or a previous run).
    counts: the drive (``None`` with ``basal``).
    w_hat_t: ``(n + 1, K)`` ``What`` in kernel layout with a zero last row
      (see :func:`padded`).
    consts: the constants.
    record: also return the per-step state (for tests).
    unroll: the scans' unroll factor.
    basal: ``(T, n)``, the driven layer's basal input per step in place of
      the drive (see :func:`pair_step`).
    row_capacity: how many driven units' fit rows are updated together
      (gathered, updated and scattered back; more take further rounds; the
      result does not depend on it).
    block: steps per block (the last one may be shorter).

  Returns:
    ``(state, records)``: ``records`` stacks the per-step records of
    :func:`pair_step` (``None`` unless ``record``).
  """
  if (counts is None) == (basal is None):
    raise ValueError("run_pair takes either counts or basal")
  w_hat = w_hat_t[:-1]
  kappa = kernel(consts, np.float64)

  def run_block(s, x):
    if basal is None:
      b, ring = _weighted_history(s.drive_ring, s.t, x, kappa)
      b = consts.alpha * b
    else:
      b, ring = jnp.asarray(x, s.v.dtype), s.drive_ring
    s, rec = _pair_block(s, b, w_hat, consts=consts, record=record,
                         row_capacity=row_capacity, unroll=unroll)
    return s._replace(drive_ring=ring), rec

  xs = counts if basal is None else basal
  t = xs.shape[0]
  size = min(block, t)
  n_blocks, rest = divmod(t, size)
  state, rec = jax.lax.scan(run_block, state,
                            xs[:n_blocks * size].reshape(n_blocks, size, *xs.shape[1:]))
  if rec is not None:
    rec = jax.tree.map(lambda r: r.reshape(n_blocks * size, *r.shape[2:]), rec)
  if rest:  # a last, shorter block
    state, last = run_block(state, xs[n_blocks * size:])
    if rec is not None:
      rec = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), rec, last)
  return state, rec


def padded(w_hat: jax.Array) -> jax.Array:
  """``What`` (kernel layout ``(n, K)``) with a zero row appended, as :func:`run_pair` takes it."""
  return jnp.concatenate([w_hat, jnp.zeros((1, w_hat.shape[1]), w_hat.dtype)], 0)


def update_feedback(y: jax.Array, beta: jax.Array, s_y0: jax.Array, *, mode: str = "copy",
                    eta_y: float = 1.0, omega: float = 1.0, gamma: float = 0.0) -> jax.Array:
  """The Y update from ``beta`` (both ``(n_pre, n_post)``).

  ``mode="copy"`` (the authors' code): ``Y_ik <- beta_ik s_Y0 /
  std(beta[beta != 0])`` where ``beta_ik != 0``; other entries keep their
  value; nothing changes if every ``beta`` is 0. ``mode="incremental"``:
  ``Y <- Y + eta_y (omega beta - gamma Y)`` (its fixed point ``(omega /
  gamma) beta`` has ``beta``'s direction).
  """
  if mode == "incremental":
    return y + eta_y * (omega * beta - gamma * y)
  if mode != "copy":
    raise ValueError(f"unknown y_update {mode!r}; valid choices: copy, incremental")
  nz = beta != 0
  count = jnp.sum(nz)
  safe = jnp.maximum(count, 1)
  mean = jnp.sum(jnp.where(nz, beta, 0)) / safe
  std = jnp.sqrt(jnp.sum(jnp.where(nz, (beta - mean) ** 2, 0)) / safe)
  scaled = beta * s_y0 / jnp.where(std > 0, std, 1)
  return jnp.where(nz & (std > 0), scaled, y)


def drive_counts(key: jax.Array, t0: jax.Array, n_steps: int, n_pre: int,
                 consts: RDDConstants = RDDConstants()) -> jax.Array:
  """Poisson drive of ``n_steps`` steps starting at step ``t0``, ``(n_steps, n_pre)`` int8.

  ``int(drive_fraction * n_pre)`` units, drawn without replacement, receive
  Poisson(``drive_rate``) counts per step; the set is re-drawn before steps
  ``redraw_every - 1, 2 redraw_every - 1, ...``, so block ``b`` covers steps
  ``b redraw_every - 1 ...`` (block 0 one step less). Each block's set and
  each step's counts come from ``key`` folded with the block and step
  index, so the drive does not depend on how a run is cut into segments.
  Counts are drawn by inversion of the Poisson CDF truncated at 15 (the
  missing tail has probability below 1e-20 at rate 0.2).
  """
  n_act = int(consts.drive_fraction * n_pre)
  steps = t0 + jnp.arange(n_steps)
  blocks = (steps + 1) // consts.redraw_every
  k_sets, k_counts = jax.random.split(key)

  def active(b):
    return jax.random.permutation(jax.random.fold_in(k_sets, b), n_pre)[:n_act]

  b0 = (t0 + 1) // consts.redraw_every
  sets = jax.vmap(active)(b0 + jnp.arange(n_steps // consts.redraw_every + 2))
  act = sets[blocks - b0]                                              # (T, n_act)
  u = jax.vmap(lambda s: jax.random.uniform(jax.random.fold_in(k_counts, s), (n_act,)))(steps)
  lam = consts.drive_rate
  ks = np.arange(16)
  pmf = np.exp(-lam) * lam ** ks / np.array([float(math.factorial(k)) for k in ks])
  cdf = jnp.asarray(np.cumsum(pmf)[:-1], jnp.float32)
  c = jnp.sum(u[..., None] > cdf, axis=-1).astype(jnp.int8)          # (T, n_act)
  out = jnp.zeros((n_steps, n_pre), jnp.int8)
  return out.at[jnp.arange(n_steps)[:, None], act].set(c)


class PhaseResult(NamedTuple):
  """What :func:`feedback_phase` returns: per fc layer ``Y``, fits, and statistics."""
  feedback: tuple
  fits: tuple
  metrics: dict


def pair_phase(state: PairState, y, s_y0, w_hat, key, *, steps: int,
               consts: RDDConstants = RDDConstants(), y_update: str = "copy",
               y_kwargs: dict | None = None, row_capacity: int = 128, unroll: int = 1):
  """Drives one pair for ``steps`` steps, rewriting ``y`` every ``consts.y_update_every`` steps.

  Args:
    state: from :func:`init_pair` (fits included).
    y: ``(n, K)``, the pair's feedback weights before the phase.
    s_y0: the std of the initial random ``Y``.
    w_hat: ``(n, K)``, ``What`` (see :func:`scaled_forward`).
    key: the drive's key (see :func:`drive_counts`).
    steps: a multiple of ``consts.y_update_every``.
    consts, row_capacity, unroll: see :func:`run_pair`.
    y_update, y_kwargs: see :func:`update_feedback`.

  Returns:
    ``(state, y, ys)``: the final state and ``Y``, and ``ys``, ``Y`` after
    each update stacked (``(steps // y_update_every, n, K)``), e.g. to follow
    the alignment through the phase.
  """
  if steps % consts.y_update_every:
    raise ValueError(f"steps ({steps}) must be a multiple of y_update_every "
                     f"({consts.y_update_every})")
  n = w_hat.shape[0]
  seg = consts.y_update_every
  w_hat_t = padded(w_hat)

  def segment(carry, i):
    state, y = carry
    counts = drive_counts(key, i * seg, seg, n, consts)
    state, _ = run_pair(state, counts, w_hat_t, consts=consts, row_capacity=row_capacity,
                        unroll=unroll)
    y = update_feedback(y, beta_of(pair_fits(state), consts.theta), s_y0, mode=y_update,
                        **(y_kwargs or {}))
    return (state, y), y

  (state, y), ys = jax.lax.scan(segment, (state, y), jnp.arange(steps // seg))
  return state, y, ys


def feedback_phase(kernels, feedback, fits, s_y0, key, *, steps_per_layer: int = 30_000,
                   consts: RDDConstants = RDDConstants(), y_update: str = "copy",
                   eta_y: float = 1.0, omega: float = 1.0, gamma: float = 0.0,
                   row_capacity: int = 128, unroll: int = 1) -> PhaseResult:
  """One feedback phase over a stack of fc layers: each layer's input population driven in turn.

  Layer ``l`` (kernel ``kernels[l]`` of shape ``(n_l, n_{l+1})``) is the pair
  (population ``l`` driven, population ``l + 1`` post) for
  ``steps_per_layer`` steps; its ``Y`` is rewritten every
  ``consts.y_update_every`` steps from its ``beta`` (only the driven layer's
  ``Y``: the others' ``beta`` do not change, so rewriting them would leave
  them as they are). The phase starts from the reset state; between
  sub-phases the post population's potential, refractory counters and spike
  history carry over into the next sub-phase, where it is the driven one.
  Its window state starts closed, and populations above the post one are
  not simulated, so the next post population starts at rest (the authors'
  code simulates every population all the time; this changes only the first
  ~30 steps of a sub-phase).

  Args:
    kernels: the fc kernels (layout ``(n_in, n_out)``, i.e. ``W^T``), input to
      output.
    feedback: the current ``Y`` per layer (same shapes).
    fits: :class:`Fits` per layer (the LMS state, kept across phases).
    s_y0: per layer, the std of the initial random ``Y``.
    key: the drive's random key.
    steps_per_layer: steps each layer is driven; a multiple of
      ``consts.y_update_every``.
    consts: the constants.
    y_update, eta_y, omega, gamma: see :func:`update_feedback`.
    row_capacity, unroll: see :func:`run_pair`.

  Returns:
    A :class:`PhaseResult`. ``metrics`` per layer ``l``:
    ``layer{l}/pre_rate_hz``, ``post_rate_hz`` (mean firing rates),
    ``windows_spiked_per_unit_s``, ``windows_no_spike_per_unit_s``,
    ``windows_out_of_band`` (windows that ended with ``u_max`` outside the band).
  """
  if steps_per_layer % consts.y_update_every:
    raise ValueError(f"steps_per_layer ({steps_per_layer}) must be a multiple of "
                     f"y_update_every ({consts.y_update_every})")
  y_kwargs = dict(eta_y=eta_y, omega=omega, gamma=gamma)
  new_fb, new_fits, metrics = [], [], {}
  carry = None
  keys = jax.random.split(key, len(kernels))
  for l, (w, y, f, s) in enumerate(zip(kernels, feedback, fits, s_y0)):
    n, k = w.shape
    dtype = w.dtype
    w_hat = scaled_forward(w, consts)
    state = init_pair(n, k, f, dtype=dtype, consts=consts)
    if carry is not None and carry.v_post.shape[0] == n:
      state = state._replace(v=carry.v_post, u=carry.v_post, r=carry.r_post, t=carry.t,
                             z_ring=carry.s_ring @ w_hat)
    state, y, _ = pair_phase(state, y.astype(dtype), s, w_hat, keys[l], steps=steps_per_layer,
                             consts=consts, y_update=y_update, y_kwargs=y_kwargs,
                             row_capacity=row_capacity, unroll=unroll)
    carry = state
    new_fb.append(y)
    new_fits.append(pair_fits(state))
    secs = steps_per_layer * consts.dt
    cnt = state.counts
    metrics.update({
        f"layer{l}/pre_rate_hz": cnt["pre_spikes"] / (n * secs),
        f"layer{l}/post_rate_hz": cnt["post_spikes"] / (k * secs),
        f"layer{l}/windows_spiked_per_unit_s": cnt["windows_spiked"] / (n * secs),
        f"layer{l}/windows_no_spike_per_unit_s": cnt["windows_no_spike"] / (n * secs),
        f"layer{l}/windows_out_of_band": cnt["windows_out_of_band"],
    })
  return PhaseResult(tuple(new_fb), tuple(new_fits), metrics)


# --- The rule: FA whose fc feedback is rewritten by the spiking phase. ---------


class RDDState(NamedTuple):
  """Rule state of :func:`rdd`.

  Attributes:
    feedback: per block, the FA feedback kernel in the forward kernel's layout
      (``None`` for the first block); the fc ones are RDD's ``Y``.
    fits: per learned fc layer, its :class:`Fits` (kept across phases).
    s_y0: per learned fc layer, the std of its initial random ``Y``.
    phases_run: how many feedback phases have run.
  """
  feedback: tuple
  fits: tuple
  s_y0: tuple
  phases_run: jax.Array


def sign_agreement(y: jax.Array, w: jax.Array) -> jax.Array:
  """Fraction of the non-zero entries of ``y`` whose sign matches ``w``'s (same layout)."""
  nz = y != 0
  return jnp.sum(nz & (jnp.sign(y) == jnp.sign(w))) / jnp.maximum(jnp.sum(nz), 1)


def rdd(net, *, every_epoch: bool = True, steps_per_layer: int = 30_000,
        reset_fits: bool = False, y_update: str = "copy", eta_y: float = 1.0,
        omega: float = 1.0, gamma: float = 0.0, feedback_scale: float = 1.0,
        row_capacity: int = 128, **constants):
  """RDD feedback learning (Guerguiev, Kording & Richards, ICLR 2020) on FA.

  Training is feedback alignment (the input gradient of layer ``l`` is
  ``Y_l delta_l``; weight gradients are backprop's local ones). Before every
  epoch (or the first only, ``every_epoch=False``) a spiking feedback phase
  (:func:`feedback_phase`) drives the input population of each fully
  connected layer that has a feedback kernel for ``steps_per_layer`` 1-ms
  steps and rewrites its ``Y`` from the RDD estimate ``beta``. Conv layers'
  feedback stays fixed random. The LMS fits persist across phases (as in the
  authors' code) unless ``reset_fits``.

  Args:
    net: a sequential network (:mod:`jaxbio.nets`).
    every_epoch: run the phase before every epoch; False: before the first.
    steps_per_layer: steps each fc layer is driven (30 s by default).
    reset_fits: start every phase's fits from 0.
    y_update, eta_y, omega, gamma: the Y update (:func:`update_feedback`).
    feedback_scale: multiplies the initial random feedback (FA's).
    row_capacity: see :func:`run_pair`.
    **constants: overrides of :class:`RDDConstants` fields (e.g. ``eta``,
      ``u_window``, ``y_update_every``).

  Returns:
    A :class:`~jaxbio.rules.base.LearningRule` named ``"rdd"`` with state
    :class:`RDDState` and one :class:`~jaxbio.rules.base.Phase`.
  """
  from jaxbio.rules import base, feedback as fb_rules  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(constants) - set(RDDConstants._fields))
  if unknown:
    raise ValueError(f"unknown rdd constant(s) {', '.join(unknown)}; valid choices: "
                     f"{', '.join(RDDConstants._fields)}")
  consts = RDDConstants(**constants)
  if y_update not in ("copy", "incremental"):
    raise ValueError(f"unknown rdd y_update {y_update!r}; valid choices: copy, incremental")
  if steps_per_layer <= 0 or steps_per_layer % consts.y_update_every:
    raise ValueError(f"rdd steps_per_layer ({steps_per_layer}) must be a positive multiple of "
                     f"y_update_every ({consts.y_update_every})")
  learned = tuple(i for i, b in enumerate(net.blocks) if i > 0 and b.kind == "dense")
  if not learned:
    raise ValueError("rdd needs at least one dense layer after the first block")
  fa = fb_rules.feedback_alignment(net, feedback_scale=feedback_scale)

  def init(key, params):
    feedback = fa.init(key, params).feedback
    fits = tuple(zero_fits(*net.blocks[i].kernel_shape, net.param_dtype) for i in learned)
    s_y0 = tuple(jnp.std(feedback[i]) for i in learned)
    return RDDState(feedback, fits, s_y0, jnp.zeros((), jnp.int32))

  def run(params, net_state, rule_state, key):
    del net_state
    kernels = [params[i]["kernel"] for i in learned]
    ys = [rule_state.feedback[i] for i in learned]
    fits = rule_state.fits
    if reset_fits:
      fits = tuple(jax.tree.map(jnp.zeros_like, f) for f in fits)
    res = feedback_phase(kernels, ys, fits, rule_state.s_y0, key,
                         steps_per_layer=steps_per_layer, consts=consts, y_update=y_update,
                         eta_y=eta_y, omega=omega, gamma=gamma, row_capacity=row_capacity)
    feedback = list(rule_state.feedback)
    metrics = {}
    from jaxbio.metrics.alignment import angle_degrees  # pylint: disable=g-import-not-at-top
    for l, (i, w, y_old, y_new) in enumerate(zip(learned, kernels, ys, res.feedback)):
      feedback[i] = y_new.astype(y_old.dtype)
      metrics[f"layer{i}/angle_before_deg"] = angle_degrees(y_old, w)
      metrics[f"layer{i}/angle_after_deg"] = angle_degrees(y_new, w)
      metrics[f"layer{i}/sign_agreement_after"] = sign_agreement(y_new, w)
      for k, v in res.metrics.items():
        if k.startswith(f"layer{l}/"):
          metrics[f"layer{i}/{k.split('/', 1)[1]}"] = v
    new_state = RDDState(tuple(feedback), tuple(res.fits), rule_state.s_y0,
                         rule_state.phases_run + 1)
    return new_state, metrics

  return fa._replace(name="rdd", init=init,
                     phases=(base.Phase("rdd_feedback", run, every_epoch=every_epoch),))


# --- Weight mirror (Akrout et al. 2019): rate-based feedback learning. --------


def weight_mirror(net, *, mirror_lr: float = 0.01, decay: float = 0.0, noise_scale: float = 0.1,
                  noise_batch: int = 128, init_batches: int = 0, feedback_scale: float = 1.0,
                  mirror_conv: bool = True):
  """Weight mirror (Akrout et al., NeurIPS 2019): FA whose feedback learns from noise.

  After every optimiser step ("mirror mode"), each layer ``l`` with a
  feedback kernel (only the fully connected ones with ``mirror_conv=False``)
  gets a batch of ``noise_batch`` inputs ``x = noise_scale * (U[0, 1) - 1/2)``
  (zero mean, variance ``s^2 = noise_scale^2 / 12``), responds linearly,
  ``y = W_l x`` (the layer's operator, no bias), and::

      B_l <- B_l + mirror_lr * sum_batch x y^T - decay * B_l

  in kernel layout (for a dense layer ``sum x y^T`` is ``X^T Y``; for a conv,
  the kernel gradient of ``<op(K, x), y>``). ``E[sum x y^T] = batch s^2 W_l^T``,
  so with ``decay > 0`` ``B`` tends to ``(mirror_lr batch s^2 / decay) W^T``;
  with ``decay = 0`` (the reference code's effective setting) it grows
  without bound along ``W^T``. ``init_batches`` noise batches also run once,
  before the first epoch (the reference: ``N_train // 128``).

  Args:
    net: a sequential network.
    mirror_lr, decay, noise_scale, noise_batch, init_batches: see above.
    feedback_scale: multiplies the initial random feedback (FA's).
    mirror_conv: also mirror convolutional (and locally connected) layers;
      False keeps their feedback fixed random, as RDD does (a conv layer's
      mirror pushes a noise batch of images through it after every step).
  """
  from jaxbio.rules import base, feedback as fb_rules  # pylint: disable=g-import-not-at-top
  if base.concrete(decay) and not 0 <= decay < 1:
    raise ValueError(f"weight_mirror decay must be in [0, 1), got {decay}")
  fa = fb_rules.feedback_alignment(net, feedback_scale=feedback_scale)

  def mirror(feedback, params, key):
    keys = jax.random.split(key, len(feedback))
    out = []
    for block, fb, p, k in zip(net.blocks, feedback, params, keys):
      if fb is None or (not mirror_conv and block.kind != "dense"):
        out.append(fb)
        continue
      x = noise_scale * (jax.random.uniform(k, (noise_batch, *block.in_shape), fb.dtype) - 0.5)
      y = jax.lax.stop_gradient(block.op(p["kernel"], x))
      corr = jax.grad(lambda kern: jnp.sum(block.op(kern, x) * y))(jnp.zeros_like(fb))
      out.append((1 - decay) * fb + mirror_lr * corr)
    return tuple(out)

  def after_step(rule_state, params, new_params, updates, key):
    del params, updates
    return fb_rules.FeedbackState(mirror(rule_state.feedback, new_params, key)), new_params

  def warmup(params, net_state, rule_state, key):
    del net_state
    feedback = jax.lax.fori_loop(
        0, init_batches, lambda i, f: mirror(f, params, jax.random.fold_in(key, i)),
        rule_state.feedback)
    return fb_rules.FeedbackState(feedback), {}

  phases = (base.Phase("mirror_init", warmup, every_epoch=False),) if init_batches else ()
  return fa._replace(name="weight_mirror", after_step=after_step, phases=phases)
