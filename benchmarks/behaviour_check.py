"""Behaviour check: short runs of every shipped config, recorded and compared bitwise.

For a refactor of the trainer that must not change what it computes. Each case
is one shipped experiment config (``launch/configs/*.py`` and its argument),
shrunk by overrides so that it takes seconds to minutes, still with its own
rule, network kind and optimiser. A case runs twice on one fresh workdir: first with
``num_epochs=1``, then with ``num_epochs=2``, which resumes from the epoch-1
checkpoint. Recorded per case: every ``metrics.jsonl`` record (``time/*`` keys
dropped), after each run; the checkpoint steps on disk after each run (the
latest one after run 1 is the step run 2 resumed from); and for every leaf of
the state of the latest checkpoint after each run, its path, dtype, shape and
the SHA-256 of its bytes.

Only surfaces that both the old and the new trainer share are used: the
launcher's command line, the files a run writes and Orbax itself (the state is
read with ``orbax.checkpoint.StandardCheckpointer`` and no target, so no jaxbio
class is involved). Datasets that are not on this machine (CIFAR-10/100,
ImageNet 32x32) run on TFDS mock data, which works only in-process: for those
cases this script starts its own subprocess (``--worker``) that enters
``jaxbio.data.testing.mock_data`` and calls
``jaxbio.train.train_and_evaluate(config, workdir)``, with the config built by
the config file's ``get_config(arg)`` and the same overrides set on the
ConfigDict.

    # Before the change, and again after it (same machine):
    python -m benchmarks.behaviour_check --record=/tmp/before.json --data_dir=../shared/data/tfds
    python -m benchmarks.behaviour_check --record=/tmp/after.json --data_dir=../shared/data/tfds
    python -m benchmarks.behaviour_check --compare=/tmp/before.json,/tmp/after.json

    # A subset: shell-style patterns on the case names (``--list`` prints them).
    python -m benchmarks.behaviour_check --record=/tmp/a.json --cases='bartunov:mnist,fc,*'

The runs of one ``--record`` share a fresh JAX persistent compilation cache
(``--nocompilation_cache`` turns it off): run 2 of a case loads the executables
run 1 compiled (all but the training step where a cosine schedule bakes in the
total step count), which saves about half its time and changes no result.

``--compare`` prints one line per case, ``identical`` or the first metric,
checkpoint step or leaf that differs, and exits with status 1 if anything
differs. Runs are bitwise reproducible only on the same machine and software:
the record notes both, and ``--compare`` warns when they differ.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, NamedTuple

from absl import app, flags

_RECORD = flags.DEFINE_string("record", None, "Run the cases and write their record (JSON) here.")
_COMPARE = flags.DEFINE_string("compare", None, "Two records, 'A.json,B.json': print per case "
                               "'identical' or the first difference; exit 1 if any differ.")
_SUITE = flags.DEFINE_enum("suite", "default", ["default", "full"], "'default': every rule, "
                           "network kind and optimiser of every shipped config (26 cases, 15-25 "
                           "min on 2 shared CPU cores); 'full': every combination (46 cases).")
_CASES = flags.DEFINE_multi_string("cases", None, "Shell-style patterns on case names "
                                   "(repeatable, or space-separated), chosen from all cases; "
                                   "default: those of --suite.")
_NEW_LEAVES = flags.DEFINE_list("allow_new_leaves", [], "With --compare: state leaves that may "
                                 "exist only in B (bookkeeping the change added, e.g. "
                                 "phase_epoch); every other leaf must match bitwise.")
_LIST = flags.DEFINE_bool("list", False, "Print the case names and their overrides, then exit.")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data/tfds",
                                "TFDS data directory with mnist and fashion_mnist (relative "
                                "paths are taken from the current directory).")
_JOBS = flags.DEFINE_integer("jobs", 3, "Cases run at the same time (most of a run is "
                             "single-threaded compilation).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the cases' workdirs and logs go (each "
                               "case's is replaced); default: a temporary directory, deleted "
                               "at the end.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 900, "Limit for one run of one case.")
_CACHE = flags.DEFINE_bool("compilation_cache", True, "Give the runs of one --record a fresh "
                           "JAX persistent compilation cache, so that run 2 of a case loads "
                           "run 1's executables instead of compiling them again.")
# Internal: one run of a mock-data case, in a subprocess of --record.
_WORKER = flags.DEFINE_string("worker", None, "(internal) Run this mock-data case in-process.")
_WORKER_WORKDIR = flags.DEFINE_string("worker_workdir", None, "(internal) Its workdir.")
_WORKER_EPOCHS = flags.DEFINE_integer("worker_epochs", None, "(internal) Its num_epochs.")

_FORMAT = 1
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root.


class Case(NamedTuple):
  """One shipped config, shrunk.

  Attributes:
    config: the config file, relative to the repository root.
    arg: its argument (the part after ``:`` on the launcher's command line).
    overrides: ``{field: value}``, set as ``--config.<field>=<value>`` (real
      data) or on the ConfigDict (mock data; there fields may also be added).
    dataset: the TFDS name, for the "no data here" check of real-data cases.
    mock: 0 for real data read through the launcher; else TFDS mock data with
      this many examples in every split, run in-process by ``--worker``.
    full_only: run by ``--suite=full`` only: the default suite skips it, as
      another case already covers its rule, network kind and optimiser.
  """
  config: str
  arg: str
  overrides: dict
  dataset: str
  mock: int = 0
  full_only: bool = False

  @property
  def name(self) -> str:
    return f"{os.path.splitext(os.path.basename(self.config))[0]}:{self.arg}"


def _cases() -> list[Case]:
  """Every case, in the order they are reported (``--suite=full`` runs them all).

  Every epoch has 50 steps at the config's batch size (hep_conv: batch 32
  instead of 256), alignment metrics run every 20 steps and at the end of
  each epoch, and a checkpoint is written at the end of each epoch.
  """
  common = {"checkpoint.every_steps": 0, "alignment_every": 20}
  cases = []
  # Bartunov et al.: batch 128, so 6400 training examples; MNIST from disk,
  # CIFAR-10 on mock data (its normalisation and crop-and-flip augmentation).
  small_mnist = {"fc": {"model.widths": (32, 32)},
                 "lc": {"model.convs": ((4, 3, 2), (8, 3, 2)), "model.dense": (32,)}}
  small_mnist["conv"] = small_mnist["lc"]
  small_cifar = {"fc": {"model.widths": (32, 32)},
                 "lc": {"model.convs": ((4, 5, 2), (8, 5, 2), (8, 3, 1)), "model.dense": (32,)}}
  small_cifar["conv"] = small_cifar["lc"]
  rules = ("bp", "fa", "dfa", "kp", "sign_symmetry")
  for arch in ("fc", "lc", "conv"):
    for rule in rules:
      cases.append(Case("launch/configs/bartunov.py", f"mnist,{arch},{rule}", {
          **common, "dataset.train_split": "train[:6400]", "dataset.test_split": "test[:500]",
          "eval_batch_size": 250, **small_mnist[arch]}, "mnist",
          full_only=arch == "conv" and rule in ("fa", "kp")))
  for arch, arch_rules in (("fc", rules), ("lc", rules), ("conv", ("bp",))):
    for rule in arch_rules:
      cases.append(Case("launch/configs/bartunov.py", f"cifar10,{arch},{rule}", {
          **common, "eval_batch_size": 1600, **small_cifar[arch]}, "cifar10", mock=6400,
          full_only=(arch, rule) not in (("fc", "bp"), ("lc", "fa"), ("conv", "bp"))))
  # hEP on Fashion-MNIST: batch 50, so 2500 training examples; the 784-256-256-10
  # network as it is (its widths are not config fields), with short dynamics.
  fmnist_full_only = ("table1,1,0.05", "table1,4,0.5", "fig4_reciprocal,0", "fig4_loop,0")
  for arg in ("table1,0,0.05", "table1,1,0.05", "table1,2,0.05", "table1,4,0.5", "table1,6,0.5",
              "online", "fig3,hep,45", "fig3,bptt,90", "fig4_reciprocal,0",
              "fig4_reciprocal,1.0", "fig4_loop,0", "fig4_loop,0.1"):
    short = {"model.t_free": 20, "rule.t_nudge": 5}
    if arg == "online":
      short["rule.t_free"] = 20
    cases.append(Case("launch/configs/hep_fmnist.py", arg, {
        **common, "dataset.train_split": "train[:2500]", "dataset.test_split": "test[:500]",
        "eval_batch_size": 250, **short}, "fashion_mnist", full_only=arg in fmnist_full_only))
  # hEP ConvNet on mock CIFAR-10/100 and ImageNet 32x32: batch 32, so 1600
  # examples; 4 channels per layer (a field the config does not set: added).
  for arg in ("cifar10,table2_n0", "cifar10,table2_n2", "cifar10,table2_bp",
              "cifar10,table2_bp_nohomeo", "cifar10,fig4", "cifar100,table2_n0",
              "cifar100,fig4", "imagenet32,imagenet"):
    dataset = {"cifar10": "cifar10", "cifar100": "cifar100",
               "imagenet32": "imagenet_resized/32x32"}[arg.split(",")[0]]
    cases.append(Case("launch/configs/hep_conv.py", arg, {
        **common, "batch_size": 32, "eval_batch_size": 400, "model.channels": (4, 4, 4, 4),
        "model.t_free": 10, "rule.t_nudge": 4, "homeostasis.num_probes": 2},
        dataset, mock=1600, full_only=arg not in ("cifar10,table2_n2", "imagenet32,imagenet")))
  return cases


def _select(cases: list[Case], patterns: list[str] | None, suite: str) -> list[Case]:
  """The cases ``--cases`` names (from all), else those of ``--suite``."""
  if not patterns:
    return [c for c in cases if suite == "full" or not c.full_only]
  patterns = [p for arg in patterns for p in arg.split()]
  chosen = [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
  unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p) for c in cases)]
  if unmatched:
    raise app.UsageError(f"--cases {' '.join(unmatched)} matches no case; see --list")
  return chosen


def _cost(case: Case) -> int:
  """Rough relative run time, so that the longest cases start first."""
  return {"hep_conv": 4, "hep_fmnist": 2}.get(case.name.split(":")[0], 1) + bool(case.mock)


def _flag_value(value) -> str:
  """``value`` as ``--config.<field>=`` takes it (tuples in Python syntax, no spaces)."""
  if isinstance(value, tuple):
    inner = ",".join(_flag_value(v) for v in value)
    return f"({inner},)" if len(value) == 1 else f"({inner})"
  return str(value)


# --------------------------------------------------------------------------- runs


def _env(cache_dir: str | None) -> dict[str, str]:
  """The environment of the runs: this repository's packages first; the compilation cache."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def _quiet_libraries() -> None:
  """Keeps absl, JAX, Orbax and TFDS at warning level, as the launcher does."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("jax", "orbax", "tensorflow_datasets", "absl"):
    std_logging.getLogger(name).setLevel(std_logging.WARNING)


def _command(case: Case, workdir: str, epochs: int, data_dir: str) -> list[str]:
  if case.mock:
    return [sys.executable, "-m", "benchmarks.behaviour_check", f"--worker={case.name}",
            f"--worker_workdir={workdir}", f"--worker_epochs={epochs}"]
  return [sys.executable, "-m", "launch.main", f"--config={case.config}:{case.arg}",
          f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
          f"--config.num_epochs={epochs}",
          *(f"--config.{k}={_flag_value(v)}" for k, v in case.overrides.items())]


def _worker(name: str, workdir: str, epochs: int) -> None:
  """One run of a mock-data case: ``train_and_evaluate`` inside ``mock_data``."""
  # pylint: disable=g-import-not-at-top
  from jaxbio import train
  from jaxbio.data import testing
  case = next(c for c in _cases() if c.name == name)
  path = os.path.join(_ROOT, case.config)
  spec = importlib.util.spec_from_file_location("_behaviour_check_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(case.arg)
  for field, value in {**case.overrides, "num_epochs": epochs}.items():
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  with testing.mock_data(case.mock):
    # Ignored under mock_data; a path that does not exist keeps real data out.
    config.dataset.data_dir = workdir.rstrip("/") + ".no-tfds"
    train.train_and_evaluate(config, workdir)


def _steps(workdir: str) -> list[int]:
  """The committed checkpoint steps in ``workdir``, ascending."""
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d)
                if n.isdigit() and os.path.exists(os.path.join(d, n, "commit_success.txt")))


def _metrics(workdir: str, drop_time: bool = True) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  if drop_time:
    records = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]
  return records


_orbax_lock = threading.Lock()


def _leaves(step_dir: str) -> list[dict]:
  """Path, dtype, shape and SHA-256 of every leaf of a checkpoint's ``state`` item."""
  # pylint: disable=g-import-not-at-top
  import logging as std_logging
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  with _orbax_lock:  # Orbax restores are not meant to run concurrently in one process.
    absl_logger = std_logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(std_logging.ERROR)  # ("Metadata file does not exist" for the item)
    try:
      with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(step_dir, "state"))
    finally:
      absl_logger.setLevel(level)
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    a = np.ascontiguousarray(np.asarray(x))
    out.append({"path": "/".join(_key_str(k) for k in path), "dtype": str(a.dtype),
                "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()})
  return out


def _key_str(k) -> str:
  for attr in ("key", "idx", "name"):  # DictKey/FlattenedIndexKey, SequenceKey, GetAttrKey.
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _tail(text: str, n: int = 15) -> list[str]:
  return [line for line in text.strip().splitlines() if line.strip()][-n:]


def _run_case(case: Case, base: str, data_dir: str, cache_dir: str | None) -> dict:
  """Runs one case (two runs on one fresh workdir) and returns its record."""
  slug = case.name.replace(":", "-").replace(",", "-").replace("/", "-")
  workdir = os.path.join(base, slug)
  shutil.rmtree(workdir, ignore_errors=True)
  rec: dict[str, Any] = {"config": case.config, "arg": case.arg,
                         "overrides": {k: _flag_value(v) for k, v in case.overrides.items()},
                         "data": f"TFDS mock data, {case.mock} examples per split" if case.mock
                                 else f"TFDS {case.dataset} in {data_dir}"}
  if not case.mock and not os.path.isdir(os.path.join(data_dir, case.dataset)):
    rec.update(status="skipped", reason=f"no data here: {case.dataset} is not in {data_dir}")
    return rec
  rec["commands"], rec["wall_s"] = [], []
  for epochs in (1, 2):
    cmd = _command(case, workdir, epochs, data_dir)
    rec["commands"].append(cmd[1:])
    t = time.perf_counter()
    try:
      proc = subprocess.run(cmd, cwd=_ROOT, env=_env(cache_dir), capture_output=True, text=True,
                            timeout=_TIMEOUT.value, check=False)
      rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
      rc = "timeout"
      output = "".join(o.decode(errors="replace") if isinstance(o, bytes) else (o or "")
                       for o in (e.stdout, e.stderr))
    rec["wall_s"].append(round(time.perf_counter() - t, 1))
    with open(f"{workdir}.run{epochs}.log", "w", encoding="utf-8") as f:
      f.write(output)
    if rc != 0:
      rec.update(status="failed", reason=f"run {epochs} (num_epochs={epochs}) exited with {rc}",
                 log_tail=_tail(output))
      return rec
    steps = _steps(workdir)
    if not steps:
      rec.update(status="failed", reason=f"run {epochs} left no checkpoint")
      return rec
    rec[f"run{epochs}"] = {"metrics": _metrics(workdir), "checkpoint_steps": steps,
                           "state_step": steps[-1],
                           "state": _leaves(os.path.join(workdir, "checkpoints", str(steps[-1])))}
    if epochs == 1:
      first_records = _metrics(workdir, drop_time=False)
  rec["resumed_from"] = rec["run1"]["state_step"]
  # Evidence that run 2 resumed instead of starting over: the epoch-1 records,
  # time stamps included, are the ones run 1 wrote.
  rec["run1_records_kept"] = _metrics(workdir, drop_time=False)[:len(first_records)] == \
      first_records
  rec["status"] = "ok"
  return rec


def _environment() -> dict:
  versions = {}
  for package in ("jax", "jaxlib", "numpy", "optax", "orbax-checkpoint", "tensorflow-datasets",
                  "ml-collections"):
    try:
      from importlib import metadata  # pylint: disable=g-import-not-at-top
      versions[package] = metadata.version(package)
    except Exception:  # pylint: disable=broad-except
      versions[package] = None
  git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True,
                       check=False)
  dirty = subprocess.run(["git", "status", "--porcelain"], cwd=_ROOT, capture_output=True,
                         text=True, check=False)
  # Where the runs' packages come from (the repository root, not an installed copy).
  where = subprocess.run(
      [sys.executable, "-c", "import jaxbio, launch; print(jaxbio.__file__); "
       "print(launch.__file__)"], cwd=_ROOT, env=_env(None), capture_output=True, text=True,
      check=False).stdout.split()
  return {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
          "python": platform.python_version(), "packages": versions, "repository": _ROOT,
          "imports": where,
          "commit": git.stdout.strip() or None, "uncommitted_changes": bool(dirty.stdout.strip()),
          "env": {k: os.environ[k] for k in ("XLA_FLAGS", "JAX_PLATFORMS", "JAX_ENABLE_X64")
                  if k in os.environ}}


def _record(out_path: str, cases: list[Case]) -> None:
  data_dir = os.path.abspath(os.path.expanduser(_DATA_DIR.value))
  base = (os.path.abspath(_WORKDIR.value) if _WORKDIR.value
          else tempfile.mkdtemp(prefix="behaviour_check-"))
  os.makedirs(base, exist_ok=True)
  cache_dir = None
  if _CACHE.value:
    cache_dir = os.path.join(base, "jax-compilation-cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
  print(f"{len(cases)} cases, {_JOBS.value} at a time; workdirs and logs in {base}", flush=True)
  t0 = time.perf_counter()
  results: dict[str, dict] = {}
  try:
    with concurrent.futures.ThreadPoolExecutor(max(1, _JOBS.value)) as pool:
      futures = {pool.submit(_run_case, c, base, data_dir, cache_dir): c
                 for c in sorted(cases, key=_cost, reverse=True)}
      for future in concurrent.futures.as_completed(futures):
        case = futures[future]
        try:
          rec = future.result()
        except Exception as e:  # pylint: disable=broad-except  (e.g. an unreadable checkpoint)
          rec = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
        results[case.name] = rec
        times = " + ".join(f"{w:.1f}" for w in rec.get("wall_s", []))
        line = f"{case.name:40s} {rec['status']:8s} {times + ' s' if times else ''}"
        if rec["status"] != "ok":
          line += f"  {rec['reason']}"
        else:
          line += f"  (run 2 resumed from step {rec['resumed_from']})"
          if not rec["run1_records_kept"]:
            line += "  (but rewrote run 1's records: did it resume?)"
        print(line, flush=True)
        for log_line in rec.get("log_tail", []):
          print(f"    | {log_line}", flush=True)
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(base, ignore_errors=True)
  total = time.perf_counter() - t0
  record = {"format": _FORMAT, "environment": _environment(), "total_wall_s": round(total, 1),
            "compilation_cache": bool(cache_dir),
            "cases": {c.name: results[c.name] for c in cases}}
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, allow_nan=False)
    f.write("\n")
  counts = {s: sum(r["status"] == s for r in results.values()) for s in ("ok", "skipped",
                                                                          "failed")}
  print(f"total {total:.0f} s: {counts['ok']} ok, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; record: {out_path}", flush=True)
  if counts["failed"]:
    sys.exit(1)


# --------------------------------------------------------------------------- compare


def _exact(v) -> str:
  """A metric value as JSON writes it: equal strings mean equal values and types."""
  return json.dumps(v, allow_nan=True)


def _diff_metrics(a: list[dict], b: list[dict], what: str) -> str | None:
  if len(a) != len(b):
    return f"{what}: {len(a)} records vs {len(b)}"
  for i, (ra, rb) in enumerate(zip(a, b)):
    where = f"{what} record {i + 1} (step {ra.get('step')})"
    for k in list(ra) + [k for k in rb if k not in ra]:
      if k not in rb or k not in ra:
        return f"{where}: {k!r} only in {'A' if k in ra else 'B'}"
      if _exact(ra[k]) != _exact(rb[k]):
        return f"{where}: {k!r} {_exact(ra[k])} vs {_exact(rb[k])}"
  return None


def _diff_state(a: list[dict], b: list[dict], what: str) -> str | None:
  la, lb = {x["path"]: x for x in a}, {x["path"]: x for x in b}
  only_a = [p for p in la if p not in lb]
  only_b = [p for p in lb if p not in la and p not in _NEW_LEAVES.value]
  if only_a or only_b:
    return (f"{what}: leaves differ: only in A {only_a[:3]}{' ...' if len(only_a) > 3 else ''}, "
            f"only in B {only_b[:3]}{' ...' if len(only_b) > 3 else ''}")
  for path, xa in la.items():
    xb = lb[path]
    for field in ("dtype", "shape", "sha256"):
      if xa[field] != xb[field]:
        n_bad = sum(la[p]["sha256"] != lb[p]["sha256"] for p in la)
        return (f"{what}: leaf {path!r} {field} {xa[field]} vs {xb[field]} "
                f"({n_bad} of {len(la)} leaves differ)")
  return None


def _diff_case(a: dict, b: dict) -> str | None:
  for run in ("run1", "run2"):
    diff = _diff_metrics(a[run]["metrics"], b[run]["metrics"], f"metrics after {run}")
    if diff:
      return diff
    if a[run]["checkpoint_steps"] != b[run]["checkpoint_steps"]:
      return (f"checkpoint steps after {run}: {a[run]['checkpoint_steps']} vs "
              f"{b[run]['checkpoint_steps']}")
    diff = _diff_state(a[run]["state"], b[run]["state"],
                       f"state of step {a[run]['state_step']} (after {run})")
    if diff:
      return diff
  if a["run1_records_kept"] != b["run1_records_kept"]:
    return f"run 2 kept run 1's records: {a['run1_records_kept']} vs {b['run1_records_kept']}"
  return None


def _compare(path_a: str, path_b: str) -> int:
  with open(path_a, encoding="utf-8") as f:
    rec_a = json.load(f)
  with open(path_b, encoding="utf-8") as f:
    rec_b = json.load(f)
  ea, eb = rec_a.get("environment", {}), rec_b.get("environment", {})
  for key in ("host", "machine", "cpus", "python", "packages", "env"):
    if ea.get(key) != eb.get(key):
      print(f"warning: {key} differs ({ea.get(key)} vs {eb.get(key)}): bitwise equality is "
            "expected only on the same machine and software")
  ca, cb = rec_a["cases"], rec_b["cases"]
  names = list(ca) + [n for n in cb if n not in ca]
  differ, compared, skipped = 0, 0, 0
  for name in names:
    a, b = ca.get(name), cb.get(name)
    if a is None or b is None:
      line, bad = f"only in {'A' if b is None else 'B'}", True
    elif a["status"] == b["status"] == "skipped":
      line, bad = f"skipped in both ({a['reason']})", False
      skipped += 1
    elif a["status"] != "ok" or b["status"] != "ok":
      line = "; ".join(f"{w} {r['status']}: {r.get('reason', '')}" for w, r in (("A", a), ("B", b))
                       if r["status"] != "ok")
      bad = True
    else:
      diff = _diff_case(a, b)
      line, bad = (f"DIFFERS: {diff}", True) if diff else ("identical", False)
      compared += 1
    differ += bad
    print(f"{name:40s} {line}")
  print(f"{compared} compared, {differ} differ or failed, {skipped} skipped in both")
  return 1 if differ else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  _quiet_libraries()
  if _WORKER.value:
    _worker(_WORKER.value, _WORKER_WORKDIR.value, _WORKER_EPOCHS.value)
    return
  cases = _select(_cases(), _CASES.value, _SUITE.value)
  if _LIST.value:
    for c in cases:
      data = f"mock data ({c.mock} examples)" if c.mock else c.dataset
      print(f"{c.name:40s} {data}: " + " ".join(f"{k}={_flag_value(v)}"
                                               for k, v in c.overrides.items()))
    return
  if bool(_RECORD.value) == bool(_COMPARE.value):
    raise app.UsageError("give exactly one of --record=OUT.json and --compare=A.json,B.json")
  if _COMPARE.value:
    paths = _COMPARE.value.split(",")
    if len(paths) != 2:
      raise app.UsageError(f"--compare takes two files, 'A.json,B.json'; got {_COMPARE.value!r}")
    sys.exit(_compare(*paths))
  _record(_RECORD.value, cases)


if __name__ == "__main__":
  app.run(main)
