"""How close each shipped experiment comes to tripping the divergence guard.

The trainer stops a run when a step's training loss exceeds
``config.divergence_factor`` (100 by default) times the run's first-step loss.
This trains every given config on its real training set through the trainer's
own compiled chunk (``train.make_train_chunk``) and records each step's loss:
``steps_per_call = 1``, so each call's ``sums["loss"]`` is exactly one step's
loss. Everything else is the trainer's (``train._Run``): the data order
(``data.epoch_permutation(seed, epoch * passes + pass, n)``; every shipped
rule has one pass), the rule's epoch phases if it has any, the first-step loss
passed back in as ``first_loss``, replicated argument placement, the
learning-rate schedule over the config's full ``num_epochs``. The guard itself is off in the
measuring run (``divergence_factor = 0``) so it cannot stop it; up to the
step where it would have fired, the guarded run's states are the same.

The table gives, per config, ``max over steps of loss / first-step loss``, the
(1-based) step where it is reached, and the margin ``factor / max ratio``: how
many times larger the worst loss could get before the guard fires. Configs
whose dataset is not prepared in ``--data_dir`` are listed as not measured.

Steps per config: ``--steps``, or by default one epoch, capped at
``--recurrent_cap`` steps for the recurrent (hEP / BPTT) nets; a config may
carry its own count as ``module:arg@steps`` (the default list does so for the
online-hEP config, whose steps are about 8x longer), and ``--steps_for`` sets
the count of some configs of the list without restating it.

    python -m benchmarks.divergence_margin --data_dir=../shared/data/tfds

The recorded figures (2-core CPU shared with other jobs, so the slow configs
were shortened) came from two commands: the first measured the MNIST
Bartunov configs (it stopped at the first hEP config on a working tree that
was being edited), the second the rest:

    python -m benchmarks.divergence_margin --data_dir=../shared/data/tfds --recurrent_cap=500 \
        --steps_for="bartunov:mnist,conv,bp@200;hep_fmnist:online@50"
    python -m benchmarks.divergence_margin --data_dir=../shared/data/tfds --recurrent_cap=100 \
        --steps_for="hep_fmnist:online@10" --configs="$REST"

with ``REST`` the ``DEFAULT_CONFIGS`` below without the ``bartunov:mnist,...``
ones, ';'-joined.

A subset:

    python -m benchmarks.divergence_margin --data_dir=../shared/data/tfds \
        --configs="bartunov:mnist,fc,dfa;hep_fmnist:table1,0,0.05" --steps=200
"""

from __future__ import annotations

import importlib
import math
import time

from absl import app, flags
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from jaxbio import build, data, train, workdir as workdirs
from jaxbio import steps as train_steps

_BARTUNOV_RULES = ("bp", "fa", "dfa", "kp", "sign_symmetry")
_HEP_CONV = [f"hep_conv:{d},{e}" for d in ("cifar10", "cifar100")
             for e in ("table2_n0", "table2_n2", "table2_bp", "table2_bp_nohomeo", "fig4")]
DEFAULT_CONFIGS = (
    [f"bartunov:mnist,{arch},{rule}" for arch in ("fc", "lc") for rule in _BARTUNOV_RULES]
    + ["bartunov:mnist,conv,bp"]
    + [f"hep_fmnist:{arg}" for arg in (
        "table1,2,0.05", "table1,4,0.5", "table1,6,0.5", "table1,0,0.05", "fig3,bptt,90",
        "fig4_reciprocal,0", "fig4_reciprocal,1.0", "fig4_loop,0.1")]
    + ["hep_fmnist:online@200"]
    + [f"bartunov:cifar10,{arch},{rule}" for arch in ("fc", "lc") for rule in _BARTUNOV_RULES]
    + ["bartunov:cifar10,conv,bp"]
    + _HEP_CONV + ["hep_conv:imagenet32,imagenet"])

_CONFIGS = flags.DEFINE_string(
    "configs", ";".join(DEFAULT_CONFIGS),
    "';'-separated configs, each 'module:arg' (a launch/configs module and its config "
    "argument) with an optional '@steps'. Default: every shipped config listed above.")
_STEPS = flags.DEFINE_integer(
    "steps", 0, "Steps per config (overrides the default and any '@steps'); 0: one epoch, "
    "capped at --recurrent_cap for recurrent nets.")
_OVERRIDES = flags.DEFINE_string(
    "steps_for", "", "';'-separated 'module:arg@steps' entries: step counts for some of the "
    "--configs (over their own '@steps' and the default), e.g. to shorten the slow ones.")
_RECURRENT_CAP = flags.DEFINE_integer(
    "recurrent_cap", 1000, "Default step cap for the recurrent (hEP/BPTT) configs.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_CHECK_EVERY = 100  # steps between looks at the chunk's bad flag (a host sync).


def parse(spec: str) -> tuple[str, str, int | None]:
  """Splits ``'module:arg[@steps]'`` into its parts.

  Args:
    spec: one entry of ``--configs``.

  Returns:
    ``(module, arg, steps)``; ``steps`` is None when the entry has none.

  Raises:
    ValueError: the entry is not of that form.
  """
  spec = spec.strip()
  if ":" not in spec:
    raise ValueError(f"expected 'module:arg[@steps]', got {spec!r}")
  module, arg = spec.split(":", 1)
  steps = None
  if "@" in arg:
    arg, count = arg.rsplit("@", 1)
    steps = int(count)
  return module, arg, steps


def measure(config, train_ds, steps: int) -> dict:
  """Trains ``config`` for ``steps`` steps with the trainer's chunks; returns the losses.

  Mirrors ``train._Run``: the rule's epoch phases before an epoch that needs
  them, one compiled chunk per data pass of the epoch, pass ``p`` of epoch
  ``e`` in the order ``epoch_permutation(seed, e * passes + p, n)``, and the
  first-step loss passed back in once step 1 has run.

  Args:
    config: an experiment config (modified: one step per call, guard off).
    train_ds: its training split (``data.ArrayDataset``).
    steps: how many steps to run (at most the config's total).

  Returns:
    A dict with ``losses`` (float64 array, one per good step), ``first_loss``
    (what the chunk recorded as the run's first loss), ``bad`` (None, or a
    description of the first non-finite step, after which nothing is kept),
    ``compiles`` (compilations of the chunks, over the passes), ``passes``,
    ``seconds`` (the whole run) and ``first_call`` (the seconds of step 1,
    compile included).
  """
  config.steps_per_call = 1
  config.divergence_factor = 0.0
  n_train = len(train_ds.labels)
  exp = train.build_experiment(config, n_train)
  steps = min(steps, exp.total_steps)
  mesh = train.make_mesh(jax.devices())
  replicated = NamedSharding(mesh, P())
  put = lambda x: jax.device_put(np.asarray(x), replicated)
  images, labels = put(train_ds.images), put(train_ds.labels)
  state = jax.jit(lambda: train.init_state(exp, config.seed), out_shardings=replicated)()
  passes = len(exp.passes)
  chunks = [train.make_train_chunk(exp, config, mesh, "device", p) for p in range(passes)]
  phase_fn = train_steps.make_phase(exp, mesh)
  one = put(np.int32(1))
  first = put(np.float32(np.nan))  # as the trainer: NaN until step 1 has run.
  first_loss = math.nan
  bs = config.batch_size
  losses, bads = [], []
  bad = None
  perms = {}
  first_call = math.nan
  start = time.perf_counter()

  def first_bad(upto: int):
    for i in range(upto):
      code = int(bads[i])
      if code:
        return i, code
    return None

  for step in range(steps):
    epoch, p, pos = exp.position(step)
    if (phase_fn is not None and p == 0 and pos == 0 and int(state.phase_epoch) < epoch
        and (epoch == 0 or any(ph.every_epoch for ph in exp.rule.phases))):
      state, _ = phase_fn(state, put(train_steps.phase_key(config.seed, epoch)), epoch == 0)
      state = state._replace(phase_epoch=put(np.int32(epoch)))
    if pos == 0:
      perms = {p: np.asarray(data.epoch_permutation(config.seed, epoch * passes + p, n_train))}
    idx = perms[p][pos * bs:(pos + 1) * bs].reshape(1, bs)
    out = chunks[p](state, images, labels, put(idx), one, first)
    state = out.state
    losses.append(out.sums["loss"])
    bads.append(out.bad)
    if step == 0:
      first_loss = float(out.first_loss)  # waits for the call: its time is mostly compile.
      first = put(np.float32(first_loss))
      first_call = time.perf_counter() - start
    if (step + 1) % _CHECK_EVERY == 0 and first_bad(len(bads)) is not None:
      break  # the trainer would have stopped; later steps restarted from a stale state.
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  found = first_bad(len(bads))
  if found is not None:
    i, code = found
    bad = f"non-finite {train.Bad(code).describe()} at step {i + 1}"
    losses = losses[:i]
  return {"losses": np.asarray([float(x) for x in losses], np.float64),
          "first_loss": first_loss, "bad": bad, "passes": passes,
          "compiles": sum(c._cache_size() for c in chunks),  # pylint: disable=protected-access
          "seconds": seconds, "first_call": first_call}


def main(argv):
  del argv
  t_begin = time.time()
  data_dir = workdirs.resolve(_DATA_DIR.value) if _DATA_DIR.value else None
  splits, missing = {}, {}
  rows, notes, margins = [], [], []
  specs = [parse(spec) for spec in filter(None, _CONFIGS.value.split(";"))]
  overrides = {f"{m}:{a}": n for m, a, n in map(parse, filter(None, _OVERRIDES.value.split(";")))}
  unknown = set(overrides) - {f"{m}:{a}" for m, a, _ in specs}
  if unknown or None in overrides.values():
    raise ValueError(f"--steps_for needs 'module:arg@steps' entries naming --configs; got "
                     f"{_OVERRIDES.value!r}")
  print(f"devices: {jax.devices()}")
  for module, arg, spec_steps in specs:
    name = f"{module}:{arg}"
    spec_steps = overrides.get(name, spec_steps)
    config = importlib.import_module(f"launch.configs.{module}").get_config(arg)
    factor = float(config.get("divergence_factor", 0.0))
    if factor != 100:
      notes.append(f"`{name}` ships divergence_factor {factor:g}, not 100: its margin is "
                   f"{factor:g} / max ratio (inf when 0, the guard off)")
    key = (config.dataset.name, config.dataset.train_split)
    if key not in splits and config.dataset.name not in missing:
      try:
        splits[key] = data.load(config.dataset.name, config.dataset.train_split, data_dir)
      except data.DatasetNotFoundError as e:
        missing[config.dataset.name] = str(e).splitlines()[0]
    if config.dataset.name in missing:
      rows.append(f"| `{name}` | not measured (no data here: {config.dataset.name}) "
                  "| | | | | | |")
      continue
    train_ds = splits[key]
    spe = train.build_experiment(config, len(train_ds.labels)).steps_per_epoch
    recurrent = config.model.arch in build.RECURRENT_ARCHS
    steps = _STEPS.value or spec_steps or (min(spe, _RECURRENT_CAP.value) if recurrent else spe)
    how = ("--steps" if _STEPS.value else f"set to {spec_steps}" if spec_steps else
           f"cap {_RECURRENT_CAP.value}" if recurrent and steps < spe else "1 epoch")
    out = measure(config, train_ds, steps)
    losses = out["losses"]
    if out["compiles"] > out["passes"]:
      notes.append(f"`{name}`: the chunks compiled {out['compiles']} times for "
                   f"{out['passes']} pass(es) (expected one each)")
    if out["bad"]:
      notes.append(f"`{name}`: {out['bad']}; the run stops there, as the trainer would")
    if len(losses) == 0:
      rows.append(f"| `{name}` | 0 ({out['bad']}) | | | | | | {out['seconds']:.0f} |")
      continue
    if losses[0] != out["first_loss"]:
      notes.append(f"`{name}`: chunk's first_loss {out['first_loss']!r} != step-1 loss "
                   f"{losses[0]!r}")
    ratios = losses / losses[0]
    at = int(np.argmax(ratios))
    margin = factor / ratios[at] if factor else math.inf
    margins.append((margin, name, ratios[at], at + 1))
    rows.append(f"| `{name}` | {len(losses)} of {spe}/epoch ({how}) | {losses[0]:.4g} | "
                f"{losses[at]:.4g} | {ratios[at]:.3f} | {at + 1} | {margin:.1f} | "
                f"{out['seconds']:.0f} ({out['first_call']:.0f}) |")
    print(f"measured {name}: {rows[-1]}", flush=True)

  print(f"\ndivergence_factor of the configs: 100 (launch/configs/common.py); the guard was off "
        f"in the measuring runs. Recurrent configs capped at {_RECURRENT_CAP.value} steps "
        "unless stated.\n")
  print("| config | steps measured | first-step loss | max loss | max ratio | at step | "
        "margin (100 / max ratio) | wall s (first call, with compile) |")
  print("|---|---|---|---|---|---|---|---|")
  for row in rows:
    print(row)
  for note in notes:
    print(f"\nnote: {note}")
  if margins:
    margin, name, ratio, at = min(margins)
    close = [n for m, n, _, _ in margins if m < 3]
    print(f"\nclosest to the guard: `{name}`, max ratio {ratio:.3f} at step {at}, "
          f"margin {margin:.1f}x")
    print("within a factor of 3 of tripping it: "
          + (", ".join(f"`{n}`" for n in close) if close else "none"))
  print(f"total wall time: {time.time() - t_begin:.0f} s")


if __name__ == "__main__":
  app.run(main)
