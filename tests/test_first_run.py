"""What a new user runs first: relative paths, one run per workdir, Ctrl-C, summaries.

Every launcher run here starts from a temporary current directory with
relative ``--workdir`` and ``--config.dataset.data_dir`` paths, as a user types
them, rather than the absolute temporary paths other tests use.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxbio import data, train
from jaxbio.data import testing as data_testing
from launch.configs import bartunov

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = data.shared_data_dir()
CONFIG = os.path.join(REPO, "launch", "configs", "bartunov.py")
needs_data = pytest.mark.skipif(SHARED is None, reason="needs ../shared/data/tfds (real MNIST)")
TIMEOUT = 900  # generous: catches a hang without failing a slow, loaded machine.


def _flags(cwd, *extra):
  return [f"--config={CONFIG}:mnist,fc,fa",
          f"--config.dataset.data_dir={os.path.relpath(SHARED, cwd)}",
          "--config.dataset.train_split=train[:2560]", "--config.dataset.test_split=test[:500]",
          "--config.batch_size=32", "--config.model.widths=(32,32)",
          "--config.steps_per_call=10", *extra]


def _launch(cwd, workdir, *extra, **kwargs):
  cmd = [sys.executable, "-m", "launch.main", f"--workdir={workdir}", *_flags(cwd, *extra)]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT, **kwargs)


def _popen(cwd, workdir, *extra):
  cmd = [sys.executable, "-m", "launch.main", f"--workdir={workdir}", *_flags(cwd, *extra)]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _records(path):
  # json.loads with parse_constant rejects the bare NaN / Infinity of non-strict JSON.
  def reject(name):
    raise ValueError(f"non-strict JSON constant {name}")
  return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def _steps(workdir):
  d = workdir / "checkpoints"
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if d.is_dir() else []


@needs_data
def test_relative_paths_through_a_checkpoint_and_a_resume(tmp_path):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  first = _launch(cwd, "runs/rel", "--config.num_epochs=1")
  assert first.returncode == 0, first.stderr[-3000:]
  work = cwd / "runs" / "rel"
  assert _steps(work) == [80]
  second = _launch(cwd, "runs/rel", "--config.num_epochs=2")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming from the checkpoint of step 80" in second.stderr
  assert _steps(work) == [80, 160]
  r1, r2 = _records(work / "metrics.jsonl")
  assert (r1["epoch"], r2["epoch"]) == (1, 2)
  # Alignment is measured at every epoch end, so epoch 1 (80 steps < the default
  # alignment_every of 500) has it too.
  assert 0.0 <= r1["align/update_angle/all"] <= 180.0
  # time/elapsed_s is cumulative over the resume: the second process's own
  # training time comes on top of the first's.
  own = (r2["step"] - r1["step"]) / r2["time/steps_per_s"]
  assert r2["time/elapsed_s"] >= r1["time/elapsed_s"] + 0.99 * own
  # The run ends on a summary naming its results and files, as typed.
  tail = second.stderr.strip().splitlines()[-5:]
  assert "done: fa on mnist, 80 steps in" in tail[0]
  assert f"test error: final {r2['test/error_pct']:.2f} % (epoch 2), best " in tail[1]
  assert "metrics: runs/rel/metrics.jsonl, TensorBoard: runs/rel/tensorboard" in tail[2]
  assert "plots: runs/rel/plots/error.png" in tail[3]
  assert tail[4].endswith("checkpoints: runs/rel/checkpoints (latest: step 160)")
  for name in ("error.png", "loss.png", "alignment.png"):
    assert (work / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Library logging stays at warning level: no Orbax/TFDS info lines.
  assert not [l for l in second.stderr.splitlines() if l.startswith("I1")], second.stderr[:2000]
  # A missing dataset leaves no workdir behind.
  missing = _launch(cwd, "runs/nodata", "--config.dataset.name=fashion_mnist",
                    "--config.dataset.data_dir=empty_dir")
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1].startswith("jaxbio: error: dataset ")
  assert not (cwd / "runs" / "nodata").exists()


@needs_data
def test_one_run_per_workdir_and_ctrl_c_saves(tmp_path):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  work = cwd / "runs" / "busy"
  holder = _popen(cwd, "runs/busy", "--config.num_epochs=200", "--config.checkpoint.every_steps=1000")
  try:
    deadline = time.time() + TIMEOUT
    metrics = work / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text()):
      assert holder.poll() is None, holder.communicate()[1][-3000:]
      time.sleep(0.1)  # the first epoch is logged: training is under way.
    second = _launch(cwd, "runs/busy", "--config.num_epochs=200")
    assert second.returncode == 1
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"jaxbio: error: workdir runs/busy is in use by another jaxbio run "
                           f"(process {holder.pid} on host {socket.gethostname()}, started ")
    assert len(second.stderr.strip().splitlines()) <= 3, second.stderr
    # Ctrl-C (SIGINT) saves the current step and exits with one line.
    holder.send_signal(signal.SIGINT)
    _, err = holder.communicate(timeout=TIMEOUT)
  finally:
    if holder.poll() is None:
      holder.kill()
  assert holder.returncode == 130, err[-3000:]
  saved = _steps(work)[-1]
  assert saved > 80  # past the first epoch: saved by the Ctrl-C, which named it below.
  assert err.strip().splitlines()[-1] == (
      f"jaxbio: interrupted (Ctrl-C): saved step {saved} to runs/busy/checkpoints; run the same "
      "command to resume")
  assert "Traceback" not in err
  # The lock went with its process: the same command resumes.
  epochs = saved // 80 + 1
  again = _launch(cwd, "runs/busy", f"--config.num_epochs={epochs}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resuming from the checkpoint of step {saved}" in again.stderr
  assert _steps(work)[-1] == epochs * 80


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
  from jaxbio import workdir  # pylint: disable=g-import-not-at-top
  code = ("import sys, time; from jaxbio import workdir; workdir.WorkdirLock(sys.argv[1]).acquire();"
          " print('locked', flush=True); time.sleep(600)")
  proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO))
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(workdir.WorkdirBusyError, match=f"process {proc.pid} on host "):
      workdir.WorkdirLock(str(tmp_path), "w").acquire()
  finally:
    proc.kill()
    proc.wait()
  assert json.loads((tmp_path / workdir.LOCK_NAME).read_text())["pid"] == proc.pid  # left behind.
  with workdir.WorkdirLock(str(tmp_path)):
    assert json.loads((tmp_path / workdir.LOCK_NAME).read_text())["pid"] == os.getpid()
  assert (tmp_path / workdir.LOCK_NAME).read_text() == ""  # released.


def _mock_config(**overrides):
  config = bartunov.get_config("mnist,fc,bp")
  config.dataset.train_split = "train[:512]"
  config.dataset.test_split = "test[:256]"
  config.model.widths = (16,)
  config.num_epochs = 3
  config.steps_per_call = 4
  config.alignment_every = 0
  for k, v in overrides.items():
    node = config
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return config


def test_an_exploding_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path):
  config = _mock_config(**{"optimizer.learning_rate": 1e6})
  with data_testing.mock_data(512):
    config.dataset.data_dir = str(tmp_path / "tfds")
    with pytest.raises(train.NonFiniteError, match=r"training loss \S+ at step (\d+) is over "
                       r"100x the first step's loss \S+ \(config.divergence_factor; 0 disables "
                       r"this check\): the run diverged; the state of step \d+ is kept") as e:
      train.train_and_evaluate(config, str(tmp_path / "w"))
  bad = int(str(e.value).split(" at step ")[1].split()[0])
  assert 1 < bad <= 12
  assert _steps(tmp_path / "w") == [bad - 1]  # the last good state.
  # Off with 0: the same run goes on (until its loss is non-finite, if ever).
  config.divergence_factor = 0.0
  with data_testing.mock_data(512):
    try:
      train.train_and_evaluate(config, str(tmp_path / "off"))
    except train.NonFiniteError as err:
      assert "non-finite" in str(err)
  assert _steps(tmp_path / "off") and _steps(tmp_path / "off")[-1] > bad


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path):
  from jaxbio.train import _Writers  # pylint: disable=g-import-not-at-top
  writers = _Writers(str(tmp_path), True)
  writers.write(5, {"train/loss": float("nan"), "test/loss": float("inf"), "epoch": 1,
                    "test/accuracy": 0.5})
  writers.close()
  (record,) = _records(tmp_path / "metrics.jsonl")
  assert record == {"step": 5, "train/loss": None, "test/loss": None, "epoch": 1,
                    "test/accuracy": 0.5}


def test_training_loss_and_steps_per_s_go_to_tensorboard_every_log_every_steps(tmp_path, monkeypatch):
  from jaxbio.train import _Writers  # pylint: disable=g-import-not-at-top
  points = []
  original = _Writers.scalars

  def scalars(self, step, values):
    points.append((step, dict(values)))
    original(self, step, values)

  monkeypatch.setattr(_Writers, "scalars", scalars)
  config = _mock_config(log_every=3)  # 512 examples / 128 = 4 steps per epoch, 3 epochs.
  with data_testing.mock_data(512):
    config.dataset.data_dir = str(tmp_path / "tfds")
    train.train_and_evaluate(config, str(tmp_path / "w"))
  step_points = [(s, v) for s, v in points if "train_step/loss" in v]
  assert [s for s, _ in step_points] == [3, 6, 9, 12]
  for _, v in step_points:
    assert math.isfinite(v["train_step/loss"]) and v["time/steps_per_s"] > 0
  epoch_points = [s for s, v in points if "test/loss" in v]
  assert epoch_points == [4, 8, 12]
  events = os.listdir(tmp_path / "w" / "tensorboard")
  assert any(f.startswith("events.out.tfevents") for f in events)


@needs_data
def test_the_launcher_trains_a_users_own_flax_model(tmp_path):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  config = os.path.join(REPO, "launch", "configs", "flax_model.py")
  cmd = [sys.executable, "-m", "launch.main", "--workdir=runs/flax", f"--config={config}:mnist,fa",
         "--config.model.module=flax_example_models:SmallCNN", '--config.model.kwargs={"features": 4}',
         f"--config.dataset.data_dir={os.path.relpath(SHARED, cwd)}",
         "--config.dataset.train_split=train[:3200]", "--config.dataset.test_split=test[:1000]",
         "--config.num_epochs=2", "--config.batch_size=32", "--config.alignment_every=50"]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r1, r2 = _records(cwd / "runs" / "flax" / "metrics.jsonl")
  assert r2["test/error_pct"] < 35.0  # 200 FA steps of a 4-channel CNN on real digits.
  for path in ("feedback_angle/head",):  # named by the layer's module path.
    assert 0.0 < r2[f"align/{path}"] < 90.0
  assert 0.0 <= r2["align/update_angle/all"] < 90.0
  base = [sys.executable, "-m", "launch.main", "--workdir=runs/other", f"--config={config}:mnist,fa"]
  bad = subprocess.run(base + ["--config.model.module=flax_example_models:Nope"], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1].startswith(
      "jaxbio: error: cannot import model.module 'flax_example_models:Nope'")
  dfa = subprocess.run(base + ["--config.rule.name=dfa",
                               "--config.model.module=flax_example_models:SmallCNN"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert dfa.returncode == 1
  assert "rule 'dfa' needs jaxbio's layered networks" in dfa.stderr.strip().splitlines()[-1]
