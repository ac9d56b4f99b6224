"""Several seeds and hyperparameter draws of one experiment, trained together.

``config.replicas`` asks for them:

* ``seeds``: how many seeds (``config.seed``, ``config.seed + 1``, ...), or
  ``seed_list``: the seeds themselves (a tuple of ints);
* ``hparams``: a JSON object mapping config fields to lists of values, one
  per draw, e.g. ``{"optimizer.learning_rate": [1e-3, 3e-4]}``;
* ``search``: a JSON object giving a random-search space per
  field, ``{"uniform": [lo, hi]}``, ``{"log_uniform": [lo, hi]}`` or
  ``{"choice": [v1, v2, ...]}``, with ``draws`` values drawn per field by
  ``search_seed`` (the same draws on every machine: NumPy's PCG64).

Every draw runs with every seed: replica ``r`` is draw ``r // S`` with seed
``r % S`` (``S`` seeds). They train in one compiled program: the training
state gets a leading replica axis and every step is ``jax.vmap``-ed over it,
each replica with its own initialisation, rule state, data order (its seed's)
and hyperparameters. A replica trains exactly as the single run with its seed
and values would (to float roundoff).

Only float fields of ``optimizer`` (and of a rule's own optimisers),
``rule`` and ``homeostasis.weight`` can differ between replicas: the rest
change shapes or the program itself (widths, step counts, the rule's name...)
and are refused with one line.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any

import ml_collections
import numpy as np

_DRAWABLE_PREFIXES = ("optimizer.", "rule.", "homeostasis.weight")
DISTRIBUTIONS = ("uniform", "log_uniform", "choice")


@dataclasses.dataclass(frozen=True)
class ReplicaPlan:
  """The replicas of a run.

  Attributes:
    seeds: the seed of every replica.
    draw: the draw (hyperparameter setting) index of every replica.
    hparams: config field -> its value for every replica (float64 arrays).
    num_seeds: seeds per draw.
  """
  seeds: tuple[int, ...]
  draw: tuple[int, ...]
  hparams: dict[str, np.ndarray]
  num_seeds: int

  @property
  def size(self) -> int:
    return len(self.seeds)

  @property
  def num_draws(self) -> int:
    return self.size // self.num_seeds

  def values(self, r: int) -> dict[str, float]:
    """The drawn fields' values of replica ``r``."""
    return {k: float(v[r]) for k, v in self.hparams.items()}

  def describe(self) -> str:
    fields = f" over {', '.join(self.hparams)}" if self.hparams else ""
    return f"{self.size} replicas ({self.num_draws} draw(s){fields} x {self.num_seeds} seed(s))"


def default_config() -> ml_collections.ConfigDict:
  """The ``config.replicas`` fields (one replica: the plain single run)."""
  return ml_collections.ConfigDict(dict(seeds=1, seed_list=(), hparams="", search="",
                                        draws=0, search_seed=0))


def _mapping(value, where: str) -> dict:
  if value in ("", None):
    return {}
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where} must be a JSON object, got {value!r} ({e.msg})") from None
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if not isinstance(value, dict):
    raise ValueError(f"{where} must be a JSON object mapping config fields to values, got "
                     f"{value!r}")
  return dict(value)


def _field(config, path: str, where: str):
  """The current value of config field ``path``; one-line errors for fields that cannot vary."""
  node = config
  for part in path.split("."):
    if not hasattr(node, "get") or part not in node:
      raise ValueError(f"{where}: config has no field {path!r}")
    node = node[part]
  if not path.startswith(_DRAWABLE_PREFIXES) or not isinstance(node, float):
    raise ValueError(f"{where}: {path!r} (= {node!r}) cannot differ between replicas of one "
                     "program (it changes shapes or the program); only float fields of "
                     "optimizer, rule and homeostasis.weight can, e.g. optimizer.learning_rate")
  return node


def _number(x, where: str) -> float:
  if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
    raise ValueError(f"{where}: values must be finite numbers, got {x!r}")
  return float(x)


def _draw(space: dict, draws: int, seed: int, config) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for path in sorted(space):
    where = f"replicas.search[{path!r}]"
    _field(config, path, "replicas.search")
    spec = space[path]
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
      raise ValueError(f"{where} must be one of {{\"uniform\": [lo, hi]}}, "
                       f"{{\"log_uniform\": [lo, hi]}}, {{\"choice\": [v, ...]}}; got {spec!r}")
    (kind, args), = spec.items()
    if not isinstance(args, (list, tuple)) or not args:
      raise ValueError(f"{where}: {kind} needs a list of numbers, got {args!r}")
    args = [_number(a, where) for a in args]
    if kind == "choice":
      out[path] = np.asarray(args)[rng.integers(0, len(args), draws)]
      continue
    if len(args) != 2 or not args[0] <= args[1] or (kind == "log_uniform" and args[0] <= 0):
      raise ValueError(f"{where}: {kind} needs [lo, hi] with lo <= hi"
                       f"{' and lo > 0' if kind == 'log_uniform' else ''}, got {args}")
    lo, hi = (np.log(args[0]), np.log(args[1])) if kind == "log_uniform" else args
    u = rng.uniform(lo, hi, draws)
    out[path] = np.exp(u) if kind == "log_uniform" else u
  return out


def plan(config) -> ReplicaPlan | None:
  """The run's replicas, or None for a plain single run; one-line ValueErrors.

  Needs no JAX: the launcher checks it with the rest of the config.
  """
  rc = config.get("replicas")
  if rc is None:
    return None
  seed_list = tuple(rc.get("seed_list", ()) or ())
  n_seeds = rc.get("seeds", 1)
  if seed_list and n_seeds != 1:
    raise ValueError(f"replicas.seeds ({n_seeds!r}) and replicas.seed_list ({seed_list!r}) are "
                     "both set; set one")
  if seed_list:
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seed_list):
      raise ValueError(f"replicas.seed_list must be non-negative integers, got {seed_list!r}")
    if len(set(seed_list)) != len(seed_list):
      raise ValueError(f"replicas.seed_list repeats a seed: {seed_list!r}")
  elif not (isinstance(n_seeds, int) and n_seeds >= 1):
    raise ValueError(f"replicas.seeds must be a positive integer, got {n_seeds!r}")
  seeds = seed_list or tuple(config.seed + i for i in range(n_seeds))
  grid = _mapping(rc.get("hparams", ""), "replicas.hparams")
  space = _mapping(rc.get("search", ""), "replicas.search")
  draws = rc.get("draws", 0)
  search_seed = rc.get("search_seed", 0)
  if isinstance(search_seed, bool) or not (isinstance(search_seed, int) and search_seed >= 0):
    raise ValueError(f"replicas.search_seed must be an integer >= 0, got {search_seed!r}")
  if isinstance(draws, bool) or not (isinstance(draws, int) and draws >= 0):
    raise ValueError(f"replicas.draws must be an integer >= 0, got {draws!r}")
  if space and not draws:
    raise ValueError("replicas.search needs replicas.draws > 0 (how many draws)")
  if draws and not space:
    raise ValueError(f"replicas.draws = {draws} needs a replicas.search space")
  values: dict[str, np.ndarray] = {}
  for path, vals in grid.items():
    _field(config, path, "replicas.hparams")
    if not isinstance(vals, (list, tuple)) or not vals:
      raise ValueError(f"replicas.hparams[{path!r}] must be a non-empty list of values, got "
                       f"{vals!r}")
    values[path] = np.asarray([_number(v, f"replicas.hparams[{path!r}]") for v in vals])
  lengths = {len(v) for v in values.values()} | ({draws} if draws else set())
  if len(lengths) > 1:
    raise ValueError(f"replicas.hparams lists (and replicas.draws) must all have one length, "
                     f"got {sorted(lengths)}")
  both = set(values) & set(space)
  if both:
    raise ValueError(f"replicas: {sorted(both)[0]!r} is in both hparams and search")
  num_draws = lengths.pop() if lengths else 1
  values.update(_draw(space, draws, search_seed, config) if space else {})
  weight = values.get("homeostasis.weight")
  if weight is not None and (weight == 0).any() and (weight != 0).any():
    raise ValueError("replicas: homeostasis.weight mixes 0 (no penalty) with nonzero values; a "
                     "replica with weight 0 would still compute the penalty: run the weight-0 "
                     "draws as a separate run")
  if len(seeds) == 1 and num_draws == 1 and not values:
    return None
  r = np.arange(num_draws * len(seeds))
  return ReplicaPlan(seeds=tuple(int(seeds[i]) for i in r % len(seeds)),
                     draw=tuple(int(d) for d in r // len(seeds)),
                     hparams={k: v[r // len(seeds)] for k, v in values.items()},
                     num_seeds=len(seeds))


def _set(config, path: str, value) -> None:
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def config_for(config, plan_: ReplicaPlan, r: int) -> ml_collections.ConfigDict:
  """The single-run config of replica ``r``: its seed and values, no replicas."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.seed = plan_.seeds[r]
    for path, v in plan_.values(r).items():
      _set(c, path, v)
    c.replicas = default_config()
  return c


def with_values(config, values: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``values`` (traced arrays allowed) in the named fields."""
  c = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  for path, v in values.items():
    _set(c, path, v)
  return c


def mean_se(xs) -> tuple[float, float]:
  """Mean and standard error (sample s.d. / sqrt(n); 0 for one value) of finite ``xs``."""
  xs = np.asarray([x for x in xs if x is not None and math.isfinite(x)], np.float64)
  if not xs.size:
    return math.nan, math.nan
  se = float(np.std(xs, ddof=1) / np.sqrt(xs.size)) if xs.size > 1 else 0.0
  return float(np.mean(xs)), se
