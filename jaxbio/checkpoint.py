"""Checkpointing for jaxbio runs: a thin, defensive wrapper around Orbax.

:class:`Checkpointer` saves the train state (any pytree of jax/numpy arrays and
Python scalars) together with a JSON metadata dict, one step directory per
checkpoint, through :class:`orbax.checkpoint.CheckpointManager` with a
``Composite`` of ``StandardSave`` (item ``state``) and ``JsonSave`` (item
``metadata``)::

    <directory>/<step>/
      state/              # arrays (tensorstore OCDBT)
      metadata/metadata   # {"format_version", "metadata", "leaves"} as JSON
      _CHECKPOINT_METADATA, commit_success.txt

Atomicity (verified in orbax-checkpoint 0.12.8): on local/POSIX file systems
Orbax uses ``AtomicRenameTemporaryPath``: a step is written into
``<directory>/<step>.orbax-checkpoint-tmp``, and only once every item is
written does it write ``commit_success.txt`` into that directory and
``rename(2)`` it to ``<directory>/<step>``, so a crash leaves either a complete
step directory or a ``*.orbax-checkpoint-tmp`` leftover, which is deleted when
the next :class:`Checkpointer` opens the directory. (On GCS, where rename is
not atomic, Orbax writes in place and ``commit_success.txt`` comes last.) This
wrapper additionally treats a step directory without ``commit_success.txt``
as uncommitted and ignores it, whatever wrote it.

Orbax does not detect every corruption: a bit flip inside an array chunk is
restored silently. So every save also records, per leaf, its path, shape,
dtype and a 32-bit checksum of its bits (computed on device by one jitted
reduction, so no extra host copy); :meth:`Checkpointer.restore_latest` checks
them and falls back to the previous checkpoint when a checkpoint cannot be
read or does not match its checksums. Unusable step directories are renamed
to ``<step>.corrupt`` (never deleted) before the next save, so that the step
can be saved again.

Multi-process: every method must be called by every process, as Orbax
requires (process 0 writes and deletes, the others join its barriers); the
wrapper creates no per-process paths, and decisions that depend on reading
data (is this checkpoint usable?) are agreed across processes.

Example (the trainer's use)::

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    restored = ckpt.restore_latest(jax.eval_shape(lambda: state))
    if restored is not None:
      state, meta, step = restored
    for step in ...:
      ...
      ckpt.save(step, state, {"config": config.to_dict(), ...})
    ckpt.close()

(SIGTERM and Ctrl-C are handled by :class:`jaxbio.preemption.PreemptionFlag`.)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import operator
import os
import re
from typing import Any, Iterator

from etils import epath
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxbio.log import logger as logging

CHECKPOINT_FORMAT_VERSION = 1
"""Version of the layout this module writes; bump it on incompatible change."""

_STATE = "state"
_METADATA = "metadata"
_COMMIT_MARKER = ocp.path.atomicity.COMMIT_SUCCESS_FILE  # "commit_success.txt"
_TMP_SUFFIX = ocp.path.atomicity.TMP_DIR_SUFFIX  # ".orbax-checkpoint-tmp"
_STEP_NAME = re.compile(r"^(0|[1-9]\d*)$")
_barrier_ids = itertools.count()


# ---------------------------------------------------------------------------
# Step directories.


def _is_committed(step_dir: epath.Path) -> bool:
  return (step_dir / _COMMIT_MARKER).exists()


class _CommittedStepNameFormat(ocp.path.step.NameFormat[ocp.path.step.Metadata]):
  """Orbax's plain ``<step>`` naming, but only committed directories count.

  Orbax's rename-based protocol accepts any non-temporary ``<step>`` directory
  as finished; requiring ``commit_success.txt`` too makes Orbax itself (latest
  step, retention, save decisions) ignore half-copied or hand-made ones.
  """

  def __init__(self):
    self._base = ocp.path.step.standard_name_format()

  def __str__(self) -> str:
    return f"Committed({self._base})"

  def build_name(self, step: int) -> str:
    return self._base.build_name(step)

  def find_all(self, base_path) -> Iterator[ocp.path.step.Metadata]:
    return (m for m in self._base.find_all(base_path) if _is_committed(m.path))

  def find_step(self, base_path, step: int) -> ocp.path.step.Metadata:
    metadata = self._base.find_step(base_path, step)
    if not _is_committed(metadata.path):
      raise ValueError(f"step directory {metadata.path} has no {_COMMIT_MARKER}")
    return metadata


def _check_directory(directory: str) -> None:
  """Creates ``directory``; one-line ValueError if that is impossible."""
  if not directory:
    raise ValueError("checkpoint directory must be a non-empty path")
  if "://" in directory:  # Remote storage (gs://...): Orbax and etils handle it.
    return
  path = os.path.abspath(directory)
  probe = path
  while not os.path.exists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise ValueError(f"cannot create checkpoint directory {directory}: {probe} is a file, "
                     "not a directory")
  if not os.access(probe, os.R_OK | os.W_OK | os.X_OK):
    raise ValueError(f"checkpoint directory {directory} is not writable: permission "
                     f"denied on {probe}")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create checkpoint directory {directory}: {e.strerror}") from None


def _barrier(name: str) -> None:
  """Barrier across processes (no-op with one process); names are unique."""
  ocp.multihost.sync_global_processes(f"jaxbio_checkpoint_{name}_{next(_barrier_ids)}")


def all_processes_agree(ok: bool) -> bool:
  """True iff ``ok`` is True on every process."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


# ---------------------------------------------------------------------------
# Leaves: paths, validation, checksums.


def _path_str(path) -> str:
  """``params/layers/0/w``: the same for dicts, tuples, lists and namedtuples."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts) or "<root>"


def _flatten(tree, what: str) -> tuple[list[str], list[Any], Any]:
  """Leaves of ``tree`` with their path strings, and its treedef."""
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [_path_str(p) for p, _ in path_leaves]
  if len(set(paths)) != len(paths):
    dup = next(p for p in paths if paths.count(p) > 1)
    raise ValueError(f"{what} has two leaves at the same path {dup!r}; rename a key")
  return paths, [x for _, x in path_leaves], treedef


def _is_typed_key(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _check_leaf(path: str, x, what: str) -> None:
  if _is_typed_key(x):
    raise TypeError(f"{what} leaf {path!r} is a typed PRNG key array; checkpoint "
                    "jax.random.key_data(key) instead and rewrap it with "
                    "jax.random.wrap_key_data after restoring")
  allowed = (jax.Array, np.ndarray, np.generic, bool, int, float)
  if what == "restore target":
    allowed += (jax.ShapeDtypeStruct,)
  if not isinstance(x, allowed):
    raise TypeError(f"{what} leaf {path!r} has unsupported type {type(x).__name__}; "
                    "checkpoints hold jax/numpy arrays and int/float scalars")
  if isinstance(x, (np.ndarray, np.generic)) and x.dtype.kind not in "biufcV":
    raise TypeError(f"{what} leaf {path!r} has unsupported dtype {x.dtype}")


def _fmix32(h):
  """MurmurHash3's 32-bit finaliser (uint32 in, uint32 out, wrapping)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x) -> jax.Array:
  """The bits of ``x`` as a flat uint32 vector (one word per 8/16/32-bit element)."""
  if x.dtype == jnp.bool_:
    w = x.astype(jnp.uint32)
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    w = lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  return w.reshape(-1)


@jax.jit
def _checksums(leaves: list) -> jax.Array:
  """One position-dependent 32-bit hash per leaf; reduction order cannot matter."""
  out = []
  for x in leaves:
    w = _words(x)
    idx = lax.iota(jnp.uint32, w.size)
    h = jnp.sum(_fmix32(w ^ _fmix32(idx * jnp.uint32(0x9E3779B9) + jnp.uint32(1))),
                dtype=jnp.uint32)
    out.append(_fmix32(h ^ jnp.uint32(w.size & 0xFFFFFFFF)))
  return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def _host_words(a: np.ndarray) -> np.ndarray | None:
  """Host-side :func:`_words` (same words, little-endian), also for 64-bit dtypes."""
  a = np.ascontiguousarray(a).reshape(-1)
  if a.dtype == np.bool_:
    return a.astype(np.uint32)
  size = a.dtype.itemsize
  if size in (1, 2):
    return a.view(np.uint8 if size == 1 else np.uint16).astype(np.uint32)
  if size % 4 == 0:
    return a.view(np.uint32)
  return None


def _checksum_input(x):
  """What :func:`_checksums` hashes for leaf ``x``, or None if it cannot."""
  if isinstance(x, jax.Array):
    if (x.dtype.itemsize <= 4 and jax.dtypes.itemsize_bits(x.dtype) == 8 * x.dtype.itemsize
        and not jnp.issubdtype(x.dtype, jnp.complexfloating)):
      return x  # Hashed where it lives (sharded arrays included).
    if not x.is_fully_addressable:
      return None
  try:
    return _host_words(np.asarray(x))
  except (TypeError, ValueError):
    return None


def _dtype_str(x) -> str:
  return str(np.dtype(x.dtype)) if hasattr(x, "dtype") else str(np.asarray(x).dtype)


def _leaf_records(paths: list[str], leaves: list[Any], checksums: bool = True
                  ) -> list[dict[str, Any]]:
  """Path, shape, dtype and (optionally) checksum of each leaf, JSON-ready."""
  checksum = {}
  if checksums:
    inputs = [_checksum_input(x) for x in leaves]
    hashed = [i for i, v in enumerate(inputs) if v is not None]
    try:
      sums = np.asarray(jax.device_get(_checksums([inputs[i] for i in hashed])))
      checksum = dict(zip(hashed, (int(s) for s in sums)))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("jaxbio checkpoint: cannot compute checksums (%s); not using them",
                      _one_line(e))
  return [{"path": p, "shape": list(np.shape(x)), "dtype": _dtype_str(x),
           "checksum": checksum.get(i)} for i, (p, x) in enumerate(zip(paths, leaves))]


def _concrete_sharding(sharding):
  """``sharding`` if it names devices; None for none or an abstract mesh's.

  (``jax.eval_shape`` gives NamedShardings over an AbstractMesh, which Orbax
  cannot restore into.)
  """
  if sharding is None:
    return None
  try:
    sharding.device_set  # pylint: disable=pointless-statement
  except Exception:  # pylint: disable=broad-except
    return None
  return sharding


def _abstract_leaf(x):
  """The restore argument Orbax gets for target leaf ``x``.

  Leaves without a concrete sharding are restored onto this process's first
  device, so a checkpoint written by any number of processes (another
  topology) can be read back in a single process.
  """
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
    sharding = _concrete_sharding(getattr(x, "sharding", None)) or local
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  if isinstance(x, (np.ndarray, np.generic)):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=local)
  return x  # Python int/float/bool: Orbax restores these as such.


def _like_target(t, x):
  """Restored value ``x`` as the kind of object the target leaf ``t`` is."""
  if isinstance(t, (jax.Array, jax.ShapeDtypeStruct)):
    sharding = _concrete_sharding(getattr(t, "sharding", None))
    if isinstance(x, jax.Array) and (sharding is None or x.sharding == sharding):
      return x
    return jax.device_put(np.asarray(x), sharding) if sharding is not None else jnp.asarray(x)
  if isinstance(t, np.ndarray):
    return np.asarray(x)
  if isinstance(t, np.generic):
    return np.asarray(x).astype(t.dtype)[()]
  return type(t)(np.asarray(x).item())


# ---------------------------------------------------------------------------
# The checkpointer.


class Checkpointer:
  """Saves and restores train states of one run under ``directory``.

  Saves are asynchronous by default: :meth:`save` returns once the arrays are
  copied to host memory, and writing continues in a background thread. Call
  :meth:`wait` before relying on a save being on disk, and :meth:`close` at the
  end (it waits). The object is also a context manager that closes itself.
  """

  def __init__(self, directory: str, *, keep: int = 3, save_every_steps: int | None = None,
               async_save: bool = True, checksums: bool = True):
    """Opens (creating it if needed) the checkpoint directory of a run.

    Unfinished saves of an earlier process (``*.orbax-checkpoint-tmp``) are
    deleted; step directories without ``commit_success.txt`` are ignored.

    Args:
      directory: where step directories go, usually ``<workdir>/checkpoints``.
      keep: how many of the most recent checkpoints to keep (>= 1).
      save_every_steps: :meth:`save` writes only at multiples of this step
        count unless forced; None writes at every call.
      async_save: write in a background thread.
      checksums: record per-leaf checksums at save time (one small jitted
        reduction) and verify them on restore.

    Raises:
      ValueError: ``directory`` or one of its parents is a file, it cannot be
        created or is not writable, or ``keep``/``save_every_steps`` < 1.
    """
    if not isinstance(keep, int) or keep < 1:
      raise ValueError(f"keep must be a positive integer, got {keep!r}")
    if save_every_steps is not None and (not isinstance(save_every_steps, int)
                                         or save_every_steps < 1):
      raise ValueError(f"save_every_steps must be a positive integer or None, got "
                       f"{save_every_steps!r}")
    directory = os.fspath(directory)
    if "://" not in directory:  # Orbax needs absolute paths.
      directory = os.path.abspath(os.path.expanduser(directory))
    _check_directory(directory)
    self._directory = epath.Path(directory)
    self._checksums = checksums
    self._name_format = _CommittedStepNameFormat()
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_every_steps or 1),
            policies.PreemptionCheckpointingPolicy(),
        ]),
        preservation_policy=policies.LatestN(n=keep),
        step_name_format=self._name_format,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._warn_uncommitted()
    self._mngr = ocp.CheckpointManager(self._directory, options=options)
    self._unusable: dict[int, str] = {}  # step -> why; renamed before the next save.
    self._pending: int | None = None  # Step of the last save not yet checked.
    self._busy = False
    self._closed = False

  @property
  def directory(self) -> epath.Path:
    """The checkpoint directory."""
    return self._directory

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- Queries.

  def _step_dir(self, step: int) -> epath.Path:
    return self._directory / self._name_format.build_name(step)

  def _usable_steps(self) -> list[int]:
    """Committed steps not known to be unusable, in increasing order."""
    return sorted(s for s in self._mngr.all_steps()
                  if s not in self._unusable and _is_committed(self._step_dir(s)))

  def latest_step(self) -> int | None:
    """The most recent committed checkpoint's step, or None if there is none.

    A save still in progress does not count until it is committed.
    """
    steps = self._usable_steps()
    return steps[-1] if steps else None

  def _warn_uncommitted(self) -> None:
    if not self._directory.exists():
      return
    for entry in self._directory.iterdir():
      if _STEP_NAME.match(entry.name) and entry.is_dir() and not _is_committed(entry):
        logging.warning("jaxbio checkpoint: ignoring %s: it has no %s (an unfinished or "
                        "partial copy)", entry, _COMMIT_MARKER)
      elif _TMP_SUFFIX in entry.name:
        logging.info("jaxbio checkpoint: removing the unfinished save %s", entry)

  # -- Saving.

  def _set_aside(self, step_dir: epath.Path, suffix: str, why: str) -> None:
    """Renames ``step_dir`` to ``<step>.<suffix>[-n]`` on process 0; keeps the data."""
    if ocp.multihost.process_index() == 0 and step_dir.exists():
      for n in itertools.count():
        dst = step_dir.parent / f"{step_dir.name}.{suffix}{f'-{n}' if n else ''}"
        if not dst.exists():
          break
      try:
        step_dir.rename(dst)
        logging.warning("jaxbio checkpoint: moved %s to %s (%s)", step_dir, dst.name, why)
      except OSError as e:
        logging.warning("jaxbio checkpoint: could not move %s aside (%s): %s", step_dir, why, e)
    _barrier("set_aside")

  def _set_aside_unusable(self) -> None:
    """Renames the checkpoints :meth:`restore_latest` found unusable."""
    for bad, why in sorted(self._unusable.items()):
      self._set_aside(self._step_dir(bad), "corrupt", why)
    self._unusable.clear()
    self._mngr.reload()

  def save(self, step: int, state, metadata: dict, *, force: bool = False) -> bool:
    """Saves ``state`` and ``metadata`` as the checkpoint of ``step``.

    Args:
      step: the training step (a non-negative int); names the directory.
      state: a pytree of jax/numpy arrays and Python int/float scalars (typed
        PRNG key arrays are rejected: save ``jax.random.key_data(key)``).
        Numpy leaves are copied before this returns; donate jax arrays only
        after it returns.
      metadata: a JSON-serialisable dict (config, data position, version...),
        copied before this returns. It comes back as JSON does: tuples become
        lists, keys strings.
      force: save even if ``save_every_steps`` says not to, or ``step`` is
        not beyond the latest checkpoint.

    Returns:
      Whether a save was started: False if ``save_every_steps`` skips this
      step (unless forced), if a checkpoint of a later step exists (unless
      forced), or if one of this very step already exists.

    Raises:
      TypeError: a leaf of ``state`` is not an array or scalar, or
        ``metadata`` is not JSON-serialisable.
      RuntimeError: the previous asynchronous save failed, or ``save`` was
        re-entered (e.g. from a signal handler during a save).
    """
    self._check_open()
    try:
      if isinstance(step, bool):
        raise TypeError
      step = operator.index(step)
    except TypeError:
      raise ValueError(f"step must be a non-negative integer, got {step!r}") from None
    if step < 0:
      raise ValueError(f"step must be a non-negative integer, got {step}")
    if not isinstance(metadata, dict):
      raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
      # A copy: Orbax writes it in the background, while the caller may change the dict.
      metadata = json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as e:
      raise TypeError(f"checkpoint metadata is not JSON-serialisable: {e}") from None
    paths, leaves, _ = _flatten(state, "state")
    for p, x in zip(paths, leaves):
      _check_leaf(p, x, "state")
    with self._guard("save"):
      self._check_pending()
      if self._unusable:
        self._set_aside_unusable()
      if step in self._mngr.all_steps():
        logging.info("jaxbio checkpoint: step %d is already saved; not saving it again", step)
        return False
      if not force and not self._mngr.should_save(step):
        return False
      self._wait_for_saves()  # Orbax would wait here too; this surfaces failures.
      step_dir = self._step_dir(step)
      if step_dir.exists():  # Not a committed step (checked above): in the way.
        self._set_aside(step_dir, "uncommitted", f"no {_COMMIT_MARKER}; saving step {step} anew")
        self._mngr.reload()
      envelope = {"format_version": CHECKPOINT_FORMAT_VERSION, "metadata": metadata,
                  "leaves": _leaf_records(paths, leaves, self._checksums)}
      saved = self._mngr.save(step, args=ocp.args.Composite(**{
          _STATE: ocp.args.StandardSave(state),
          _METADATA: ocp.args.JsonSave(envelope),
      }), force=True)
      if saved:
        self._pending = step
      return saved

  def _wait_for_saves(self) -> None:
    """Waits for Orbax's background save; raises if it failed."""
    try:
      self._mngr.wait_until_finished()
    except BaseException:
      self._pending = None  # Orbax's own error says it all.
      raise
    self._check_pending()

  def _check_pending(self) -> None:
    """Raises if the last save finished without committing its step."""
    if self._pending is None or self._mngr.is_saving_in_progress():
      return
    step, self._pending = self._pending, None
    if not _is_committed(self._step_dir(step)):
      raise RuntimeError(f"saving the checkpoint of step {step} to {self._step_dir(step)} "
                         "failed: it was never committed (see the log for the cause)")

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished.

    Raises:
      RuntimeError: the last save failed.
    """
    self._check_open()
    self._wait_for_saves()

  def close(self) -> None:
    """Waits for saves to finish and releases Orbax's resources (idempotent)."""
    if self._closed:
      return
    self._closed = True
    try:
      self._wait_for_saves()
    finally:
      self._mngr.close()

  # -- Restoring.

  def restore_latest(self, target) -> tuple[Any, dict, int] | None:
    """Restores the most recent usable checkpoint into ``target``'s structure.

    A checkpoint that cannot be read (missing or truncated files, garbage) or
    whose arrays do not match their recorded checksums is skipped with a
    warning, and the previous one is tried; skipped checkpoints are renamed to
    ``<step>.corrupt`` before the next save.

    Args:
      target: a pytree with the structure, shapes and dtypes of the saved
        state: concrete arrays or ``jax.ShapeDtypeStruct``s (e.g. from
        ``jax.eval_shape``). Leaves come back as the same kind of object:
        jax arrays (placed on the target's sharding, if it has one) for jax
        arrays and ShapeDtypeStructs, numpy for numpy, Python scalars for
        Python scalars. Tuples and namedtuples stay what they are.

    Returns:
      ``(state, metadata, step)``, or None if there is no usable checkpoint.

    Raises:
      ValueError: the checkpoint was written by another format version, its
        leaves (paths or shapes) do not match ``target``, or Orbax cannot
        restore into ``target`` (e.g. its shardings) although the data reads
        fine. These do not fall back: older checkpoints would fare no better.
    """
    self._check_open()
    t_paths, t_leaves, t_def = _flatten(target, "restore target")
    for p, x in zip(t_paths, t_leaves):
      _check_leaf(p, x, "restore target")
    with self._guard("restore_latest"):
      self._wait_for_saves()
      self._mngr.reload()
      for step in reversed(self._usable_steps()):
        result, why = self._try_restore(step, target, t_paths, t_leaves, t_def)
        if all_processes_agree(why is None):
          return result
        why = why or "unreadable on another process"
        self._unusable[step] = why
        logging.warning("jaxbio checkpoint: checkpoint %s is unusable (%s); falling back to "
                        "the previous one", self._step_dir(step), why)
      return None

  def _try_restore(self, step, target, t_paths, t_leaves, t_def):
    """``((state, metadata, step), None)``, or ``(None, why)`` if it is corrupt.

    Raises ValueError for problems of the target rather than of the data.
    """
    step_dir = self._step_dir(step)
    try:
      envelope = self._mngr.restore(step, args=ocp.args.Composite(
          **{_METADATA: ocp.args.JsonRestore()}))[_METADATA]
    except Exception as e:  # pylint: disable=broad-except
      return None, f"cannot read its metadata: {_one_line(e)}"
    if not isinstance(envelope, dict) or not isinstance(envelope.get("leaves"), list):
      return None, "its metadata is not a jaxbio checkpoint record"
    version = envelope.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
      raise ValueError(f"checkpoint at {step_dir} was written by format version {version}; "
                       f"this jaxbio reads version {CHECKPOINT_FORMAT_VERSION}")
    records = {r.get("path"): r for r in envelope["leaves"] if isinstance(r, dict)}
    _check_matches(step_dir, records, t_paths, t_leaves)
    error, leaves = None, None
    try:
      restored = self._restore_state(step, jax.tree.map(_abstract_leaf, target))
      leaves = [_like_target(t, restored[p]) for p, t in zip(t_paths, t_leaves)]
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if not all_processes_agree(error is None):
      # Corrupt data, or a target Orbax cannot restore into (e.g. a sharding
      # that does not fit)? Read the data once more into plain numpy arrays.
      if all_processes_agree(self._readable(step, records, t_paths, t_leaves, t_def)):
        raise ValueError(f"cannot restore the checkpoint at {step_dir} into this target, "
                         f"although its data is readable: "
                         f"{_one_line(error) if error else 'failed on another process'}")
      return None, f"cannot read its arrays: {_one_line(error) if error else 'on another process'}"
    bad = self._bad_checksums(records, t_paths, leaves)
    if bad:
      return None, f"checksum mismatch in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
    return (jax.tree.unflatten(t_def, leaves), envelope.get("metadata"), step), None

  def _restore_state(self, step: int, abstract_target) -> dict[str, Any]:
    """Orbax-restores the state item; returns its leaves by path."""
    restored = self._mngr.restore(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(abstract_target)}))[_STATE]
    paths, leaves, _ = _flatten(restored, "restored state")
    return dict(zip(paths, leaves))

  def _readable(self, step, records, t_paths, t_leaves, t_def) -> bool:
    """Whether the state's arrays can be read into host numpy arrays."""
    probe = [t if isinstance(t, (bool, int, float)) else
             np.zeros(records[p]["shape"], jnp.dtype(records[p]["dtype"]))
             for p, t in zip(t_paths, t_leaves)]
    try:
      restored = self._restore_state(step, jax.tree.unflatten(t_def, probe))
      return all(p in restored for p in t_paths)
    except Exception:  # pylint: disable=broad-except
      return False

  def _bad_checksums(self, records, paths, leaves) -> list[str]:
    """Paths whose restored bits do not hash to the recorded checksum."""
    if not self._checksums:
      return []
    check = [i for i, (p, x) in enumerate(zip(paths, leaves))
             if records[p].get("checksum") is not None
             and records[p].get("dtype") == _dtype_str(x)]
    if not check:
      return []
    new = _leaf_records([paths[i] for i in check], [leaves[i] for i in check])
    return [r["path"] for r in new
            if r["checksum"] is not None and r["checksum"] != records[r["path"]]["checksum"]]

  # -- Internals.

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError(f"Checkpointer for {self._directory} is closed")

  @contextlib.contextmanager
  def _guard(self, name: str):
    if self._busy:
      raise RuntimeError(f"Checkpointer.{name} was called while another call was in progress "
                         "(e.g. from a signal handler); Orbax is not re-entrant")
    self._busy = True
    try:
      yield
    finally:
      self._busy = False


def _one_line(e: BaseException) -> str:
  text = f"{type(e).__name__}: {e}".splitlines()[0]
  return text if len(text) <= 300 else text[:297] + "..."


def _check_matches(step_dir, records: dict, t_paths: list[str], t_leaves: list) -> None:
  """Raises ValueError if the checkpoint's leaves differ from the target's."""
  missing = [p for p in t_paths if p not in records]
  extra = [p for p in records if p not in set(t_paths)]
  shapes = [f"{p} {tuple(records[p].get('shape', ()))} vs {tuple(np.shape(t))}"
            for p, t in zip(t_paths, t_leaves)
            if p in records and tuple(records[p].get("shape", ())) != tuple(np.shape(t))]
  if missing or extra or shapes:
    parts = []
    for label, items in (("not in checkpoint", missing), ("not in target", extra),
                         ("shape checkpoint vs target", shapes)):
      if items:
        parts.append(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}")
    raise ValueError(f"checkpoint at {step_dir} does not match the restore target ("
                     f"{'; '.join(parts)})")
