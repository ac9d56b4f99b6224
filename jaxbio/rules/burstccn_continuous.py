"""Continuous-time BurstCCN (Greedy et al., NeurIPS 2022) and its online regression task (Fig. 3).

A rate network of pyramidal ensembles, batch 1, one input sample per Euler step
``k``. Every layer ``l = 1..L`` has a somatic potential ``v_l`` and event rate
``e_l``; hidden layers also have an apical potential ``u_l``, a burst
probability ``p_l`` and a burst rate ``b_l = p_l * e_l``. Feedforward weights
``W_l`` (shape ``(n_l, n_{l-1})``) and biases ``c_l`` learn with the
burst-dependent rule; the feedback weights of hidden layer ``l`` read layer
``l + 1``: ``Y_hat_l`` carries bursts, ``Q_hat_l`` carries events (both of
shape ``(n_l, n_{l+1})``).

**Sign convention.** jaxbio writes the feedback as ``Y_hat = -Y`` and
``Q_hat = -Q``, where ``Y`` and ``Q`` are the paper's matrices, so that
"aligned" means ``Y_hat_l = +W_{l+1}^T`` as for every jaxbio feedback matrix::

    jaxbio:  apical drive  Y_hat_l b_{l+1} - Q_hat_l e_{l+1}
    paper:   apical drive  Q_l e_{l+1} - Y_l b_{l+1}          (the same number)

The released code's continuous-time model stores ``Y_c = W_{l+1}`` and
``Q_c = -p^b W_{l+1}`` and uses ``Q_c^T e + Y_c^T b``: again the same number.
The apical state ``u_l`` here is the released code's, which includes the gain
``4 h(e_l) = 4 (1 - e_l)``; the discrete-time model's ``u`` is the bracket alone.

**One step ``k``** (input ``e_0(k) = x_k``, target ``t_k``; ``p^b = 0.5``)::

  1. feedforward, l = 1..L, using the layer below's current rate:
       v_l <- (1 - dt/tau_v) v_l + (dt/tau_v) (W_l e_{l-1}(k) + c_l),   e_l(k) = sigmoid(v_l)
  2. output teacher (p^b of the output hard-coded to 0.5):
       p_L(k) = p^b + p^b (t_k - e_L(k)) (1 - e_L(k)),   b_L(k) = p_L(k) e_L(k)
       no-teacher steps: t_k := e_L(k), i.e. p_L(k) = p^b
  3. hidden layers, l = L-1 down to 1:
       u_l <- (1 - dt/tau_u) u_l + (dt/tau_u) 4 (1 - e_l(k)) (Y_hat_l b* - Q_hat_l e*)
         (paper form: the same with (Q_l e* - Y_l b*))
       p_l(k) = sigmoid(u_l),   b_l(k) = p_l(k) e_l(k)
       l = L-1:  (e*, b*) = (e_L(k-1), b_L(k-1))        both of the previous step
       l < L-1:  (e*, b*) = (e_{l+1}(k), b_{l+1}(k-1))  current rate, previous burst rate
  4. teaching steps only, every layer (lr = dt/tau_W):
       hidden: W_l += lr ((p_l(k-1) - p^b) e_l(k)) e_{l-1}(k)^T
       output: W_L += lr ((p_L(k-1) - p^b) e_L(k-1)) e_{L-1}(k)^T
       and c_l += lr times the same postsynaptic factor.
     The burst probability in the rule is always the previous step's. (The rule reads
     no feedback matrix, so it is the same in the paper's convention.)
  5. teaching steps only, if ``weight_transport``: Y_hat_l = W_{l+1}^T and
     Q_hat_l = p^b W_{l+1}^T, from the W just updated (paper form: Y_l = -W_{l+1}^T,
     Q_l = -p^b W_{l+1}^T).

No-teacher steps change no weight and do no transport. The one-step delays need
no extra state: the state carried into step ``k`` holds step ``k - 1``'s
``e``, ``p`` and ``b``, and the step reads them before it overwrites them.
With the paper's ``dt = tau_v = tau_u`` the leaky updates collapse exactly to
``v_l = W_l e_{l-1}(k) + c_l`` and ``u_l = 4 (1 - e_l(k)) (Y_hat_l b* - Q_hat_l e*)``:
the only dynamics left are the one-step delays. The general leaky-Euler form is
kept here; nothing relies on the collapse.

**Weight-transport caveat.** The released code re-copies ``Y`` and ``Q`` from
``W`` after every teaching step, so in this model the feedback is exact
(backprop-like, up to the delays) and feedback learning is never tested.
``weight_transport=False`` keeps the initial random ``Y_hat``, ``Q_hat`` fixed
(a feedback-alignment variant that is not in the paper; as ``Q_hat`` is then not
``p^b Y_hat``, the apical input also carries a teacher-independent bias).

**Initial state.** ``v, e, u, p, b`` are 0; ``W_l ~ N(0, 2/(n_{l-1} + n_l))``
(Glorot normal, gain 1), ``c_l = 0``; before the first teaching step
``Y_hat_l ~ N(0, 2/(n_l + n_{l+1}))`` and ``Q_hat_l`` is ``p^b`` times an
independent draw from the same distribution.

**Task (Fig. 3).** Three inputs ``x_{k,i} = cos(omega_i k + phi_i)`` with the
integer step index ``k``, ``omega_i ~ U(0, pi/20)``, ``phi_i ~ U(0, 2 pi)`` (the
paper writes sin; the random phase makes the two equivalent); the target is a
fixed 3-25-1 network with a sigmoid on both layers, weights ``U(+-sqrt(3))``
and ``U(+-0.6)`` (three times PyTorch's default range), biases ``U(+-1/sqrt(3))``
and ``U(+-0.2)`` (PyTorch's default). The learner is 3-50-1. Schedule: 10^4
no-teacher steps, 10^6 teaching steps, about 10^4 no-teacher steps; the logged
loss is the output's squared error after each step. Random draws come from
``jax.random`` keys made from integer seeds; the released code's PyTorch random
streams cannot be reproduced, so seed ``s`` here is not the reference's seed ``s``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

# The baseline burst probability. The released code hard-codes the output's at 0.5, and the
# hidden burst probability sigmoid(u) rests at sigmoid(0) = 0.5, so any other value would make
# the hidden layers learn at rest.
P_BASELINE = 0.5

# omega_i is drawn as 2 pi F_i / 2^32 with an integer F_i, so omega_i k mod 2 pi is exact in
# uint32 arithmetic (see task_inputs). 2^32 / 40 makes omega_i ~ U(0, pi/20).
_PHASE_BITS = 32
_OMEGA_STEPS = 2 ** _PHASE_BITS // 40


class Hyper(NamedTuple):
  """Hyperparameters (Python numbers; the tuple is a static argument of the compiled calls).

  Attributes:
    dt: the Euler step.
    tau_v: somatic time constant; ``v`` moves by ``dt/tau_v`` of the way to its drive.
    tau_u: apical time constant, likewise for ``u``.
    tau_w: plasticity time constant; the learning rate is ``dt/tau_w``.
    weight_transport: after every teaching step set ``Y_hat_l = W_{l+1}^T`` and
      ``Q_hat_l = p^b W_{l+1}^T`` (the released code's behaviour); if False the
      initial feedback stays fixed.
  """
  dt: float = 0.1
  tau_v: float = 0.1
  tau_u: float = 0.1
  tau_w: float = 100.0
  weight_transport: bool = True


def check_hyper(hyper: Hyper) -> None:
  """Raises ValueError for a time constant that is not positive or is shorter than ``dt``."""
  if not hyper.dt > 0:
    raise ValueError(f"burstccn_continuous dt must be > 0, got {hyper.dt}")
  for name in ("tau_v", "tau_u"):
    tau = getattr(hyper, name)
    if not tau >= hyper.dt:
      raise ValueError(f"burstccn_continuous {name} must be >= dt = {hyper.dt} (leaky Euler "
                       f"factor 1 - dt/{name} in [0, 1)), got {tau}")
  if not hyper.tau_w > 0:
    raise ValueError(f"burstccn_continuous tau_w must be > 0, got {hyper.tau_w}")


class State(NamedTuple):
  """Network state; tuples run over layers ``1..L`` (``u``, ``y_hat``, ``q_hat``: ``1..L-1``).

  Carried into step ``k``, ``e``, ``p`` and ``b`` are step ``k - 1``'s values,
  which is all the one-step delays read.

  Attributes:
    v: somatic potentials, ``(n_l,)``.
    e: event rates ``sigmoid(v_l)``.
    u: apical potentials of the hidden layers (gain ``4 (1 - e_l)`` included).
    p: burst probabilities (the output's from the teacher).
    b: burst rates ``p_l e_l``.
    w: feedforward weights ``W_l``, ``(n_l, n_{l-1})``.
    c: biases ``c_l``, ``(n_l,)``.
    y_hat: burst feedback ``Y_hat_l = -Y_l``, ``(n_l, n_{l+1})``.
    q_hat: event feedback ``Q_hat_l = -Q_l``, ``(n_l, n_{l+1})``.
  """
  v: tuple
  e: tuple
  u: tuple
  p: tuple
  b: tuple
  w: tuple
  c: tuple
  y_hat: tuple
  q_hat: tuple


def _glorot_normal(key, n_out, n_in, dtype):
  return math.sqrt(2.0 / (n_in + n_out)) * jax.random.normal(key, (n_out, n_in), dtype)


def init(key: jax.Array, widths: Sequence[int] = (3, 50, 1), dtype=jnp.float32) -> State:
  """The initial state: zero activity, Glorot-normal ``W``, zero ``c``, random feedback.

  Args:
    key: a ``jax.random`` key.
    widths: ``(n_0, n_1, ..., n_L)``, input first; at least one hidden layer.
    dtype: floating dtype of the state.

  Returns:
    ``State`` with ``W_l ~ N(0, 2/(n_{l-1}+n_l))``, ``c_l = 0``,
    ``Y_hat_l ~ N(0, 2/(n_l+n_{l+1}))``, ``Q_hat_l = p^b * (independent draw of the same)``.
  """
  widths = tuple(int(n) for n in widths)
  if len(widths) < 3 or min(widths) < 1:
    raise ValueError(f"burstccn_continuous widths must be (n_0, n_1, ..., n_L) with at least "
                     f"one hidden layer and positive sizes, got {widths}")
  return _init(key, widths, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("widths", "dtype"))
def _init(key, widths, dtype):
  num = len(widths) - 1
  kw, ky, kq = jax.random.split(key, 3)
  w = tuple(_glorot_normal(k, widths[l + 1], widths[l], dtype)
            for l, k in enumerate(jax.random.split(kw, num)))
  y_hat = tuple(_glorot_normal(k, widths[l + 1], widths[l + 2], dtype)
                for l, k in enumerate(jax.random.split(ky, num - 1)))
  q_hat = tuple(P_BASELINE * _glorot_normal(k, widths[l + 1], widths[l + 2], dtype)
                for l, k in enumerate(jax.random.split(kq, num - 1)))
  zeros = lambda ns: tuple(jnp.zeros((n,), dtype) for n in ns)
  return State(v=zeros(widths[1:]), e=zeros(widths[1:]), u=zeros(widths[1:-1]),
               p=zeros(widths[1:]), b=zeros(widths[1:]), w=w, c=zeros(widths[1:]),
               y_hat=y_hat, q_hat=q_hat)


def step(state: State, x: jax.Array, target: jax.Array, teach: jax.Array,
         hyper: Hyper = Hyper()) -> State:
  """One Euler step ``k`` in the order of the module docstring.

  Args:
    state: the state after step ``k - 1``.
    x: the input ``x_k``, ``(n_0,)``.
    target: the teacher ``t_k``, ``(n_L,)``; ignored when ``teach`` is False.
    teach: boolean scalar (may be traced): teacher, plasticity and weight transport on.
    hyper: hyperparameters (Python numbers).

  Returns:
    The state after step ``k``.
  """
  check_hyper(hyper)
  a_v, a_u, lr = hyper.dt / hyper.tau_v, hyper.dt / hyper.tau_u, hyper.dt / hyper.tau_w
  num = len(state.w)
  top = num - 1
  pb = P_BASELINE
  teach = jnp.asarray(teach, bool)

  # 1. Feedforward, bottom to top, from the layer below's current rate.
  v, e = [], []
  below = x
  for l in range(num):
    v.append((1 - a_v) * state.v[l] + a_v * (state.w[l] @ below + state.c[l]))
    e.append(jax.nn.sigmoid(v[l]))
    below = e[l]

  # 2. Output burst probability from the teacher (t := e_L without one, so p_L = p^b).
  t = jnp.where(teach, target, e[top])
  p = [None] * num
  b = [None] * num
  p[top] = pb + pb * (t - e[top]) * (1 - e[top])
  b[top] = p[top] * e[top]

  # 3. Hidden layers, top to bottom. Above l = L-1 both inputs are the output's previous-step
  # values; deeper, the event rate is current and the burst rate the previous step's.
  u = [None] * top
  for l in reversed(range(top)):
    e_star = state.e[top] if l == top - 1 else e[l + 1]
    b_star = state.b[l + 1]
    drive = 4 * (1 - e[l]) * (state.y_hat[l] @ b_star - state.q_hat[l] @ e_star)
    u[l] = (1 - a_u) * state.u[l] + a_u * drive
    p[l] = jax.nn.sigmoid(u[l])
    b[l] = p[l] * e[l]

  # 4. Plasticity on teaching steps, with the previous step's burst probability.
  w, c = [], []
  for l in range(num):
    post_rate = state.e[l] if l == top else e[l]
    post = lr * (state.p[l] - pb) * post_rate
    pre = x if l == 0 else e[l - 1]
    w.append(jnp.where(teach, state.w[l] + jnp.outer(post, pre), state.w[l]))
    c.append(jnp.where(teach, state.c[l] + post, state.c[l]))

  # 5. Weight transport from the updated W on teaching steps.
  if hyper.weight_transport:
    y_hat = tuple(jnp.where(teach, w[l + 1].T, state.y_hat[l]) for l in range(top))
    q_hat = tuple(jnp.where(teach, pb * w[l + 1].T, state.q_hat[l]) for l in range(top))
  else:
    y_hat, q_hat = state.y_hat, state.q_hat

  return State(v=tuple(v), e=tuple(e), u=tuple(u), p=tuple(p), b=tuple(b), w=tuple(w),
               c=tuple(c), y_hat=y_hat, q_hat=q_hat)


def squared_error(state: State, target: jax.Array) -> jax.Array:
  """The logged loss ``mean_i (e_L,i - t_i)^2`` (for one output, its squared error)."""
  return jnp.mean(jnp.square(state.e[-1] - target))


# ---------------------------------------------------------------------------------------------
# The Fig. 3 regression task.


class Task(NamedTuple):
  """A Fig. 3 task: input frequencies and phases and the fixed target network.

  Attributes:
    omega_steps: ``F_i`` (uint32) with ``omega_i = 2 pi F_i / 2^32``.
    phi: phases ``phi_i``.
    w1, b1, w2, b2: the target network, ``t = sigmoid(w2 sigmoid(w1 x + b1) + b2)``.
  """
  omega_steps: jax.Array
  phi: jax.Array
  w1: jax.Array
  b1: jax.Array
  w2: jax.Array
  b2: jax.Array

  @property
  def omega(self) -> jax.Array:
    """The angular frequencies ``omega_i`` (radians per step)."""
    return (2 * math.pi / 2 ** _PHASE_BITS) * self.omega_steps.astype(self.phi.dtype)


@functools.partial(jax.jit, static_argnames=("n_inputs", "n_hidden", "n_outputs", "dtype"))
def make_task(key: jax.Array, n_inputs: int = 3, n_hidden: int = 25, n_outputs: int = 1,
              dtype=jnp.float32) -> Task:
  """Draws a task.

  ``omega_i ~ U(0, pi/20)`` on the grid ``2 pi F / 2^32`` (spacing 1.5e-9 rad),
  ``phi_i ~ U(0, 2 pi)``; target weights ``U(+-3/sqrt(fan_in))``, biases
  ``U(+-1/sqrt(fan_in))``: ``U(+-sqrt(3))``, ``U(+-0.6)``, ``U(+-1/sqrt(3))``,
  ``U(+-0.2)`` for the 3-25-1 net.

  Args:
    key: a ``jax.random`` key.
    n_inputs, n_hidden, n_outputs: sizes of the target network.
    dtype: floating dtype of the task's arrays.
  """
  ko, kp, kw1, kb1, kw2, kb2 = jax.random.split(key, 6)
  uniform = lambda k, shape, a: jax.random.uniform(k, shape, dtype, -a, a)
  omega_steps = jax.random.randint(ko, (n_inputs,), 0, _OMEGA_STEPS, jnp.int32).astype(jnp.uint32)
  return Task(
      omega_steps=omega_steps,
      phi=jax.random.uniform(kp, (n_inputs,), dtype, 0.0, 2 * math.pi),
      w1=uniform(kw1, (n_hidden, n_inputs), 3 / math.sqrt(n_inputs)),
      b1=uniform(kb1, (n_hidden,), 1 / math.sqrt(n_inputs)),
      w2=uniform(kw2, (n_outputs, n_hidden), 3 / math.sqrt(n_hidden)),
      b2=uniform(kb2, (n_outputs,), 1 / math.sqrt(n_hidden)))


@jax.jit
def task_inputs(task: Task, k: jax.Array) -> jax.Array:
  """``x_{k,i} = cos(omega_i k + phi_i)`` for the integer step ``k`` (``0 <= k < 2^32``).

  ``omega_i k mod 2 pi`` is computed exactly as ``F_i k mod 2^32`` in uint32
  arithmetic, so the phase carries only the final rounding, at any ``k``.
  """
  turns = task.omega_steps * jnp.asarray(k).astype(jnp.uint32)
  dtype = task.phi.dtype
  return jnp.cos((2 * math.pi / 2 ** _PHASE_BITS) * turns.astype(dtype) + task.phi)


@jax.jit
def task_target(task: Task, x: jax.Array) -> jax.Array:
  """The target network's output ``sigmoid(w2 sigmoid(w1 x + b1) + b2)``."""
  return jax.nn.sigmoid(task.w2 @ jax.nn.sigmoid(task.w1 @ x + task.b1) + task.b2)


class Schedule(NamedTuple):
  """Steps ``[0, pre)`` without teacher, ``[pre, pre + train)`` with, then ``post`` without."""
  pre: int = 10_000
  train: int = 1_000_000
  post: int = 10_000

  @property
  def total(self) -> int:
    return self.pre + self.train + self.post


def simulate_fn(hyper: Hyper = Hyper(), window: int = 1):
  """Returns the jit-compiled ``simulate(state, task, k0, num_steps, teach_start, teach_stop)``.

  ``simulate`` runs steps ``k0 .. k0 + num_steps - 1`` of the task with
  ``jax.lax.scan``, teacher on for ``teach_start <= k < teach_stop``, and
  returns ``(state, errors)`` where ``errors[j]`` is the mean over the ``j``-th
  window of ``window`` consecutive steps of the logged squared error (the
  per-step error for ``window = 1``). Only these are recorded, so memory is
  ``num_steps / window`` numbers. ``num_steps`` is static (one compile per
  length) and must be a multiple of ``window``; ``k0`` and the teaching
  bounds are traced.

  Args:
    hyper: hyperparameters.
    window: steps averaged into one recorded error.
  """
  check_hyper(hyper)
  if window < 1:
    raise ValueError(f"burstccn_continuous window must be >= 1, got {window}")

  def simulate(state, task, k0, num_steps, teach_start, teach_stop):
    if num_steps % window:
      raise ValueError(f"burstccn_continuous num_steps must be a multiple of window = {window}, "
                       f"got {num_steps}")
    dtype = state.w[0].dtype

    def one_step(state, k):
      x = task_inputs(task, k)
      target = task_target(task, x)
      teach = (k >= teach_start) & (k < teach_stop)
      x, target = x.astype(dtype), target.astype(dtype)
      state = step(state, x, target, teach, hyper)
      return state, squared_error(state, target)

    def one_window(state, k_first):
      state, err = jax.lax.scan(one_step, state, k_first + jnp.arange(window, dtype=jnp.int32))
      return state, jnp.mean(err)

    k0 = jnp.asarray(k0, jnp.int32)
    if window == 1:
      return jax.lax.scan(one_step, state, k0 + jnp.arange(num_steps, dtype=jnp.int32))
    return jax.lax.scan(one_window, state,
                        k0 + window * jnp.arange(num_steps // window, dtype=jnp.int32))

  return jax.jit(simulate, static_argnames="num_steps")


def chunk_lengths(total: int, chunk: int) -> list[int]:
  """``total`` split into calls of ``chunk`` steps and one shorter remainder."""
  if chunk < 1:
    raise ValueError(f"burstccn_continuous chunk must be >= 1, got {chunk}")
  return [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])


def run(task_seed: int, model_seed: int, schedule: Schedule = Schedule(),
        hyper: Hyper = Hyper(), widths: Sequence[int] = (3, 50, 1), chunk: int = 100_000,
        simulate=None):
  """Runs a whole schedule of the Fig. 3 task and returns the per-step squared errors.

  Args:
    task_seed: seed of the task (``jax.random.key(task_seed)``).
    model_seed: seed of the learner's initial state.
    schedule: no-teacher, teaching and no-teacher step counts.
    hyper: hyperparameters.
    widths: the learner's layer sizes; ``widths[0]`` and ``widths[-1]`` are the task's.
    chunk: steps per compiled call.
    simulate: a function from :func:`simulate_fn` with ``window = 1`` (to reuse its compile).

  Returns:
    ``(state, errors)``: the final state and a float32 array of ``schedule.total`` errors.
  """
  simulate = simulate or simulate_fn(hyper)
  task = make_task(jax.random.key(task_seed), n_inputs=widths[0], n_outputs=widths[-1])
  state = init(jax.random.key(model_seed), widths)
  errors, k0 = [], 0
  for n in chunk_lengths(schedule.total, chunk):
    state, err = simulate(state, task, k0, n, schedule.pre, schedule.pre + schedule.train)
    errors.append(err)
    k0 += n
  return state, jnp.concatenate(errors)
