"""Tests for jaxbio.checkpoint (small states, tmp_path only)."""

from __future__ import annotations

import logging
import os
import signal
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbio import checkpoint
from jaxbio.checkpoint import Checkpointer
from jaxbio.preemption import PreemptionFlag

# Orbax leaves un-awaited read coroutines behind when a restore of damaged data
# fails; Python reports them whenever they are garbage-collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Opt(NamedTuple):
  count: jax.Array
  mu: dict


def make_state(seed: int = 0):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((64, 64)).astype(np.float32)
  w[0, 0], w[0, 1] = -0.0, np.float32(np.nan)
  return {
      "params": {"w": jnp.asarray(w), "b": jnp.arange(64, dtype=jnp.float32) + seed},
      "opt_state": (Opt(jnp.int32(seed), {"w": jnp.zeros((64, 64))}), ()),
      "rule_state": (jnp.full((3,), 7 + seed, jnp.int32), np.arange(4, dtype=np.uint32) * 3),
      "key": jax.random.key_data(jax.random.key(seed)),
      "step": jnp.int32(100 + seed),
      "data_position": 12 + seed,
      "lr_scale": np.float32(0.5),
  }


def abstract(tree):
  """Shapes and dtypes of ``tree``'s arrays; Python scalars stay as they are."""
  return jax.tree.map(lambda x: x if isinstance(x, (int, float)) else
                      jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def step_dirs(directory):
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def largest_data_file(step_dir):
  """The biggest tensorstore data file (under a ``d/`` folder) of the step's arrays."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs if os.path.basename(r) == "d"]
  return max(files, key=os.path.getsize)


def test_round_trip_is_bit_identical_and_keeps_structure(tmp_path):
  state = make_state()
  meta = {"config": {"lr": 0.1, "layers": [256, 256]}, "data_position": 12,
          "jaxbio_version": "0.1.0"}
  with Checkpointer(str(tmp_path / "ckpt")) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.restore_latest(abstract(state)) is None
    assert ckpt.save(100, state, meta)
    ckpt.wait()
    assert ckpt.latest_step() == 100
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  zeros = jax.tree.map(lambda x: type(x)(0) if isinstance(x, (int, float)) else
                       jnp.zeros_like(x) if isinstance(x, jax.Array) else np.zeros_like(x), state)
  for target in (abstract(state), zeros, state):
    restored, restored_meta, step = ckpt.restore_latest(target)
    assert step == 100 and restored_meta == meta
    assert_bit_identical(restored, state)
    assert type(restored["opt_state"]) is tuple and type(restored["rule_state"]) is tuple
    assert isinstance(restored["opt_state"][0], Opt)
  restored, _, _ = ckpt.restore_latest(state)
  assert isinstance(restored["params"]["w"], jax.Array)
  assert isinstance(restored["rule_state"][1], np.ndarray)
  assert type(restored["data_position"]) is int and restored["data_position"] == 12
  assert isinstance(restored["lr_scale"], np.float32)
  ckpt.close()


def test_keeps_only_the_last_checkpoints_and_save_every(tmp_path):
  state = {"w": jnp.ones(4)}
  with Checkpointer(str(tmp_path), keep=2, save_every_steps=2, async_save=False) as ckpt:
    saved = [ckpt.save(s, state, {}) for s in range(1, 9)]
    assert saved == [False, True, False, True, False, True, False, True]
    assert ckpt.save(9, state, {}, force=True)
    assert not ckpt.save(9, state, {}, force=True)  # Already there.
    assert not ckpt.save(6, state, {})  # Not beyond the latest.
    ckpt.wait()
    assert step_dirs(tmp_path) == [8, 9]
    assert ckpt.latest_step() == 9


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete_metadata"])
def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog, damage):
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    for s in (1, 2):
      ckpt.save(s, make_state(s), {"step": s})
  step2 = os.path.join(tmp_path, "2")
  if damage == "truncate":
    path = largest_data_file(step2)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == "garbage":  # Same size, inside array data: only the checksums tell.
    path = largest_data_file(step2)
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      f.write(b"\xff\x00garbage!")
  else:
    os.remove(os.path.join(step2, "metadata", "metadata"))
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  with caplog.at_level(logging.WARNING):
    restored, meta, step = ckpt.restore_latest(abstract(make_state()))
  assert step == 1 and meta == {"step": 1}
  assert_bit_identical(restored, make_state(1))
  warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
  assert len(warnings) == 1 and step2 in warnings[0]
  if damage == "garbage":
    assert "checksum mismatch" in warnings[0]
  # The damaged step is moved aside (not deleted) and can be saved again.
  assert ckpt.save(2, make_state(2), {"step": 2})
  assert os.path.isdir(os.path.join(tmp_path, "2.corrupt"))
  assert ckpt.restore_latest(abstract(make_state()))[2] == 2
  ckpt.close()


def test_all_corrupt_returns_none(tmp_path, caplog):
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, make_state(), {})
  os.remove(largest_data_file(os.path.join(tmp_path, "1")))
  with Checkpointer(str(tmp_path)) as ckpt, caplog.at_level(logging.WARNING):
    assert ckpt.restore_latest(abstract(make_state())) is None
    assert ckpt.latest_step() is None
  assert any("unusable" in r.getMessage() for r in caplog.records)


def test_uncommitted_step_and_tmp_leftovers_are_ignored(tmp_path):
  state = make_state()
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, state, {"step": 1})
  os.rename(tmp_path / "1", tmp_path / "5")  # A copy of step 1, minus its marker.
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    assert ckpt.save(1, state, {"step": 1}, force=True)  # Older than step 5.
  os.remove(tmp_path / "5" / "commit_success.txt")
  leftover = tmp_path / "7.orbax-checkpoint-tmp"
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "junk").write_bytes(b"partial")
  ckpt = Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 1
  _, meta, step = ckpt.restore_latest(abstract(state))
  assert (step, meta) == (1, {"step": 1})
  assert ckpt.save(5, state, {"step": 5})  # The uncommitted dir is moved aside.
  ckpt.wait()
  assert ckpt.latest_step() == 5
  assert not leftover.exists()
  assert (tmp_path / "5.uncommitted").is_dir()
  ckpt.close()


def test_workdir_that_is_a_file(tmp_path):
  workdir = tmp_path / "run"
  workdir.write_text("not a directory")
  with pytest.raises(ValueError, match=f"{workdir} is a file"):
    Checkpointer(str(workdir / "checkpoints"))


def test_unwritable_workdir(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  workdir.chmod(0o500)
  try:
    if os.access(workdir, os.W_OK):
      pytest.skip("running as a user (root) for whom permissions do not apply")
    with pytest.raises(ValueError, match=f"not writable.*{workdir}"):
      Checkpointer(str(workdir / "checkpoints"))
  finally:
    workdir.chmod(0o700)


def test_format_version_mismatch(tmp_path, monkeypatch):
  state = {"w": jnp.ones(3)}
  monkeypatch.setattr(checkpoint, "CHECKPOINT_FORMAT_VERSION", 99)
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, state, {})
  monkeypatch.undo()
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(ValueError, match=r"written by format version 99; this jaxbio reads "
                                         r"version 1"):
      ckpt.restore_latest(state)


def test_target_mismatch_raises_instead_of_falling_back(tmp_path):
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, {"w": jnp.ones(3)}, {})
    with pytest.raises(ValueError, match="does not match the restore target"):
      ckpt.restore_latest({"w": jnp.ones(4)})
    with pytest.raises(ValueError, match="not in checkpoint: v"):
      ckpt.restore_latest({"w": jnp.ones(3), "v": jnp.ones(1)})
    assert ckpt.latest_step() == 1


def test_eval_shape_target_on_a_mesh(tmp_path):
  mesh = jax.make_mesh((1,), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put({"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}, replicated)
  target = jax.eval_shape(lambda: state)  # Shardings over an AbstractMesh.
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(3, state, {})
    restored, _, _ = ckpt.restore_latest(target)
    assert_bit_identical(restored, state)
    restored, _, _ = ckpt.restore_latest(state)
    assert restored["w"].sharding == replicated


def test_target_orbax_cannot_use_raises_and_marks_nothing(tmp_path, monkeypatch):
  mesh = jax.make_mesh((1,), ("data",))
  state = jax.device_put({"w": jnp.ones(3)}, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, state, {})
    # Hand Orbax the abstract-mesh sharding it cannot restore into.
    monkeypatch.setattr(checkpoint, "_concrete_sharding", lambda s: s)
    with pytest.raises(ValueError, match="into this target, although its data is readable"):
      ckpt.restore_latest(jax.eval_shape(lambda: state))
    monkeypatch.undo()
    assert ckpt.save(2, state, {})
    assert step_dirs(tmp_path) == [1, 2]
    assert not os.path.exists(tmp_path / "1.corrupt")


def test_rejects_typed_keys_and_bad_metadata(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(TypeError, match="key_data"):
      ckpt.save(1, {"key": jax.random.key(0)}, {})
    with pytest.raises(TypeError, match="JSON"):
      ckpt.save(1, {"w": jnp.ones(2)}, {"x": object()})
    assert ckpt.latest_step() is None


def test_async_save_then_sigterm_sets_the_preemption_flag(tmp_path):
  state = make_state()
  ckpt = Checkpointer(str(tmp_path))
  assert ckpt.save(1, state, {"step": 1})
  ckpt.wait()
  assert ckpt.restore_latest(abstract(state))[2] == 1
  previous = signal.getsignal(signal.SIGTERM)
  with PreemptionFlag() as preemption:
    assert not preemption.agreed()
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # The handler runs between bytecodes.
      pass
    assert preemption.requested and preemption.agreed()
    assert ckpt.save(2, make_state(2), {"step": 2}, force=True)  # the loop's reaction.
  assert signal.getsignal(signal.SIGTERM) is previous
  restored, meta, step = ckpt.restore_latest(abstract(state))
  assert step == 2 and meta == {"step": 2}
  assert_bit_identical(restored, make_state(2))
  ckpt.close()
