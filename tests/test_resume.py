"""Checkpoint/resume through the launcher: kills, preemption, corrupt checkpoints."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxbio import checkpoint, data, train
from launch.configs import bartunov

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = data.shared_data_dir()
pytestmark = pytest.mark.skipif(SHARED is None, reason="needs ../shared/data/tfds (real MNIST)")

FLAGS = ["--config=launch/configs/bartunov.py:mnist,fc,fa", f"--config.dataset.data_dir={SHARED}",
         "--config.dataset.train_split=train[:2560]", "--config.dataset.test_split=test[:500]",
         "--config.batch_size=32", "--config.model.widths=(32,32)", "--config.num_epochs=3",
         "--config.steps_per_call=10", "--config.checkpoint.every_steps=10",
         "--config.checkpoint.keep=2", "--config.alignment_every=40"]


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "launch.main", f"--workdir={workdir}", *FLAGS, *extra]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def _final_state(workdir):
  config = bartunov.get_config("mnist,fc,fa")
  config.batch_size, config.model.widths = 32, (32, 32)
  exp = train.build_experiment(config, 2560)
  target = jax.eval_shape(lambda: train.init_state(exp, 0))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, meta, step = ckpt.restore_latest(target)
  ckpt.close()
  return state, meta, step


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_sigkill_at_random_step_then_resume_is_bit_identical(tmp_path):
  ref = subprocess.run(_cmd(tmp_path / "ref"), cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=1200)
  assert ref.returncode == 0, ref.stderr[-2000:]
  work = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(work), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 900
  while not _steps(work) and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(random.uniform(0.0, 1.0))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = _steps(work)
  assert killed_at and killed_at[-1] < 240, "the run ended before it could be killed"
  # Its lock record stays behind, naming the dead process; it must not block the resume.
  assert json.loads((work / ".jaxbio.lock").read_text())["pid"] == proc.pid
  resumed = subprocess.run(_cmd(work), cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=1200)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resuming from the checkpoint of step" in resumed.stderr
  a, _, step_a = _final_state(tmp_path / "ref")
  b, meta, step_b = _final_state(work)
  assert step_a == step_b == 240 and meta["epoch"] == 3
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # metrics.jsonl has each epoch once, with the values of the uninterrupted run
  # (the epoch under way when killed included: its partial sums were checkpointed).
  got = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  want = [json.loads(l) for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in got] == [1, 2, 3]
  for g, w in zip(got, want):
    for k in w:
      if not k.startswith("time/"):
        assert g[k] == pytest.approx(w[k], rel=1e-9, abs=1e-12), k


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_sigterm_saves_a_checkpoint_and_exits_nonzero(tmp_path):
  work = tmp_path / "pre"
  proc = subprocess.Popen(_cmd(work, "--config.checkpoint.every_steps=1000"), cwd=REPO,
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 900
  metrics = work / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and metrics.read_text()):
    time.sleep(0.05)  # the first epoch is logged: training is under way.
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode != 0
  assert "preempted (SIGTERM)" in err
  steps = _steps(work)
  assert steps and steps[-1] not in (0, 240)
  resumed = subprocess.run(_cmd(work), cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=1200)
  assert resumed.returncode == 0
  assert f"resuming from the checkpoint of step {steps[-1]}" in resumed.stderr


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
  work = tmp_path / "c"
  first = subprocess.run(_cmd(work, "--config.num_epochs=1"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=1200)
  assert first.returncode == 0, first.stderr[-2000:]
  steps = _steps(work)
  assert steps == [70, 80]
  # Overwrite every data file of the latest checkpoint with garbage.
  for root, _, files in os.walk(work / "checkpoints" / "80" / "state"):
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        fh.write(os.urandom(max(size, 1)))
  again = subprocess.run(_cmd(work, "--config.num_epochs=2"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=1200)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resuming from the checkpoint of step 70" in again.stderr
  assert _final_state(work)[2] == 160


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_resume_repairs_missing_or_torn_records_and_refuses_a_new_data_order(tmp_path):
  work = tmp_path / "r"
  first = subprocess.run(_cmd(work, "--config.num_epochs=1"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=1200)
  assert first.returncode == 0, first.stderr[-2000:]
  metrics = work / "metrics.jsonl"
  record = json.loads(metrics.read_text())
  # Stopped after the epoch's checkpoint but before its record was complete.
  metrics.write_text(json.dumps(record)[:40])
  again = subprocess.run(_cmd(work, "--config.num_epochs=1"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=1200)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "skipping an unreadable line" in again.stderr
  repaired = [json.loads(l) for l in metrics.read_text().splitlines()]
  assert len(repaired) == 1 and repaired[0]["step"] == 80
  assert repaired[0]["test/loss"] == pytest.approx(record["test/loss"], rel=1e-6)
  assert repaired[0]["train/loss"] == pytest.approx(record["train/loss"], rel=1e-9)
  other = subprocess.run(_cmd(work, "--config.seed=1"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=1200)
  assert other.returncode != 0
  assert other.stderr.strip().splitlines()[-1] == (
      f"jaxbio: error: workdir {work} holds a run with seed=0; this config has seed=1, which "
      "would change the data order: use another --workdir")
  assert _steps(work) == [70, 80]
