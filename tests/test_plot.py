"""jaxbio.plot: PNGs of synthetic runs, and the command line's bad-input errors."""

import json
import os
import subprocess
import sys

from matplotlib import image as mpimg
import numpy as np
import pytest

from jaxbio import plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, epochs=5, layers=3, align=True, torn=True):
  """A metrics.jsonl like the trainer's: nulls, align keys from epoch 2, a torn last line."""
  os.makedirs(run_dir, exist_ok=True)
  lines = []
  for e in range(1, epochs + 1):
    r = {"step": 100 * e, "epoch": e, "train/loss": 1.0 / e, "train/accuracy": 1 - 0.3 / e,
         "test/loss": 1.2 / e, "test/accuracy": 1 - 0.35 / e, "test/error_pct": 35.0 / e,
         "time/elapsed_s": 2.0 * e, "time/steps_per_s": 50.0}
    if align and e >= 2:
      r["align/update_angle/all"] = 40.0 + 10 / e
      for l in range(layers):
        r[f"align/update_angle/layer{l}.kernel"] = 70.0 - 10 * l + 5 / e
        r[f"align/update_norm_ratio/layer{l}.kernel"] = 1.0
      for l in range(1, layers):
        r[f"align/feedback_angle/layer{l}"] = 80.0 - 5 * l - e
        r[f"align/feedback_sign_agreement/layer{l}"] = 0.6
    if e == 3:
      r["test/loss"] = None  # a non-finite value.
      if align:
        r["align/update_angle/layer1.kernel"] = None
    lines.append(json.dumps(r))
  text = "\n".join(lines) + "\n"
  if torn:
    text += '{"step": 600, "epoch": 6, "train/lo'
  with open(os.path.join(run_dir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.write(text)
  return str(run_dir)


def _check_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE, path
  img = mpimg.imread(path)
  assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
  # ~8x5 in at 120 dpi: 960x600 pixels or more.
  assert img.shape[0] >= 500 and img.shape[1] >= 800, img.shape
  assert img.shape[0] <= 3000 and img.shape[1] <= 3000, img.shape
  rgb = img[..., :3].reshape(-1, 3)
  # Not blank: dark text and lines on a white background, and several colours.
  assert rgb.min() < 0.2 and rgb.max() > 0.9
  packed = np.round(rgb * 255).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
  assert len(np.unique(packed)) > 20


def _env():
  env = {k: v for k, v in os.environ.items()
         if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxbio.plot", *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=600)


def test_read_metrics_skips_torn_line_and_keeps_nulls(tmp_path):
  run = _write_run(tmp_path / "run")
  records = plot.read_metrics(run)
  assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
  assert records[2]["test/loss"] is None
  assert "align/update_angle/all" not in records[0]
  assert "align/update_angle/all" in records[1]


def test_read_metrics_keeps_the_last_record_of_a_rewritten_epoch(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text(
      '{"epoch": 1, "train/loss": 1.0}\n{"epoch": 2, "train/loss": 0.5}\n'
      '{"epoch": 2, "train/loss": 0.4}\n[1, 2]\n\n')
  records = plot.read_metrics(str(run))
  assert [(r["epoch"], r["train/loss"]) for r in records] == [(1, 1.0), (2, 0.4)]


def test_plot_runs_writes_error_loss_and_alignment_pngs(tmp_path):
  run = _write_run(tmp_path / "fa")
  out = tmp_path / "plots"
  paths = plot.plot_runs([run], str(out))
  assert [os.path.basename(p) for p in paths] == ["error.png", "loss.png", "alignment.png"]
  assert sorted(os.listdir(out)) == ["alignment.png", "error.png", "loss.png"]  # no temp files.
  for p in paths:
    assert os.path.dirname(p) == str(out)
    _check_png(p)


def test_plot_runs_writes_no_alignment_png_without_align_keys(tmp_path):
  run = _write_run(tmp_path / "bp", align=False)
  paths = plot.plot_runs([run], str(tmp_path / "plots"))
  assert [os.path.basename(p) for p in paths] == ["error.png", "loss.png"]
  assert not (tmp_path / "plots" / "alignment.png").exists()
  for p in paths:
    _check_png(p)


def test_plot_runs_overlays_several_runs(tmp_path):
  runs = [_write_run(tmp_path / "bp", align=False), _write_run(tmp_path / "fa", epochs=8),
          _write_run(tmp_path / "kp", layers=5, torn=False)]
  paths = plot.plot_runs(runs, str(tmp_path / "cmp"), labels=["BP", "FA", "KP"])
  assert [os.path.basename(p) for p in paths] == ["error.png", "loss.png", "alignment.png"]
  for p in paths:
    _check_png(p)
  with pytest.raises(ValueError, match="2 labels for 3 run directories"):
    plot.plot_runs(runs, str(tmp_path / "cmp"), labels=["BP", "FA"])


def test_plot_runs_plots_recurrent_diagnostics(tmp_path):
  run = tmp_path / "hep"
  run.mkdir()
  lines = [json.dumps({"epoch": e, "train/loss": 1.0 / e, "train/accuracy": 0.9,
                       "test/loss": 1.1 / e, "test/accuracy": 0.88,
                       "align/update_angle/all": 20.0, "align/jac_sym": 0.9,
                       "align/weight_angle": float("nan") if e == 2 else 10.0 / e,
                       "align/error_cos/layer0": 0.8, "align/error_cos/all": 0.85,
                       "align/log10_residual": -5.0}) for e in range(1, 4)]
  (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")  # NaN as json.dumps writes it.
  paths = plot.plot_runs([str(run)], str(tmp_path / "plots"))
  assert os.path.basename(paths[-1]) == "alignment.png"
  _check_png(paths[-1])


def test_plot_runs_rejects_bad_run_directories_before_writing(tmp_path):
  good = _write_run(tmp_path / "good")
  empty = tmp_path / "empty"
  empty.mkdir()
  out = tmp_path / "plots"
  with pytest.raises(ValueError, match=r"no metrics.jsonl in the run directory, .*empty$"):
    plot.plot_runs([good, str(empty)], str(out))
  (empty / "metrics.jsonl").write_text('\n{"epoch": 1, "train/lo')
  with pytest.raises(ValueError, match=r"no readable records in metrics.jsonl, .*metrics.jsonl$"):
    plot.plot_runs([good, str(empty)], str(out))
  assert not out.exists()


def test_cli_writes_default_plots_dir_headless(tmp_path):
  run = _write_run(tmp_path / "fa")
  proc = _cli(run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected = [os.path.join(run, "plots", n) for n in ("error.png", "loss.png", "alignment.png")]
  assert proc.stdout.split() == expected
  for p in expected:
    _check_png(p)


def test_cli_labels_and_out(tmp_path):
  runs = [_write_run(tmp_path / "a", align=False), _write_run(tmp_path / "b", align=False)]
  proc = _cli(*runs, f"--out={tmp_path / 'cmp'}", "--labels=BP,FA")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == [str(tmp_path / "cmp" / n) for n in ("error.png", "loss.png")]


def test_plot_runs_leaves_pyplot_and_the_backend_alone(tmp_path):
  run = _write_run(tmp_path / "fa")
  code = ("import sys, matplotlib; from jaxbio import plot; "
          f"plot.plot_runs([{run!r}], {str(tmp_path / 'plots')!r}); "
          "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
          "assert 'matplotlib.backends.backend_agg' in sys.modules")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("content,message", [
    (None, "no metrics.jsonl in the run directory, "),
    ('{"epoch": 1, "train/lo', "no readable records in metrics.jsonl, "),
])
def test_cli_bad_run_directory_exits_with_one_line(tmp_path, content, message):
  run = tmp_path / "run"
  run.mkdir()
  if content is not None:
    (run / "metrics.jsonl").write_text(content)
  proc = _cli(str(run))
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("jaxbio.plot: error: " + message), lines[0]
  assert str(run) in lines[0]
  assert not (run / "plots").exists()
