"""PNG plots of training runs, read from their ``metrics.jsonl``.

Usage::

    python -m jaxbio.plot RUN_DIR [RUN_DIR ...] [--out=DIR] [--labels=a,b]

    python -m jaxbio.plot runs/fa                      # -> runs/fa/plots/*.png
    python -m jaxbio.plot runs/bp runs/fa --labels=BP,FA --out=plots/cmp

or, from Python (e.g. at the end of a training run)::

    from jaxbio import plot
    plot.plot_runs([workdir], os.path.join(workdir, "plots"))

Writes, into the output directory (default ``RUN_DIR/plots`` for one run,
``./plots`` for several):

* ``error.png``: train and test error (%) per epoch; train error is
  ``100 * (1 - train/accuracy)``, test error ``test/error_pct`` (or
  ``100 * (1 - test/accuracy)``);
* ``loss.png``: train and test loss per epoch (log scale if all positive);
* ``alignment.png``: one panel per alignment quantity present (update angle
  to the reference rule and feedback-weight angle per layer, in degrees, and
  for recurrent networks the pooled weight angle, the error cosine per layer
  and the Jacobian symmetry); not written if no run has any of them.

A replica run (``config.replicas``: several seeds or hyperparameter draws,
one record per replica and epoch) is drawn as one curve per draw, the mean
over its seeds, with the test error's ± s.e. band; the 8 draws with the
lowest final test error are shown.

Several runs are overlaid with one colour per run (labelled with ``--labels``,
else each run directory's name); a single run uses one colour per layer.
Records that are not valid JSON (a torn last line) are skipped, ``null`` or
non-finite values leave a gap. The PNGs are drawn with matplotlib's Agg canvas
directly (no pyplot), so no display is needed and the global backend is left
alone. Bad input (no ``metrics.jsonl``, no readable record) exits with status
1 and one line ``jaxbio.plot: error: <what>, <path>``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
from typing import Any, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator, MultipleLocator
import numpy as np

METRICS_FILE = "metrics.jsonl"
DPI = 120

# Panels of alignment.png: (metric prefix under "align/", title, y label, kind).
# A prefix matches "align/<prefix>" (one series) and "align/<prefix>/<layer>"
# (one series per layer). The names are those of jaxbio.metrics.alignment and
# jaxbio.recurrent.metrics.diagnostics.
_ALIGN_PANELS = (
    ("update_angle", "Update angle to the reference rule", "angle (deg)", "angle"),
    ("feedback_angle", "Feedback vs forward weights", "angle (deg)", "angle"),
    ("weight_angle", "Feedback vs forward weights (pooled)", "angle (deg)", "angle"),
    ("error_cos", "Neuronal error vs RBP adjoint", "cosine", "cosine"),
    ("jac_sym", "Jacobian symmetry", "||S|| / (||S|| + ||A||)", "fraction"),
)
_RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "figure.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}
# Several runs: the curves of one run share its colour; layers differ by these.
_LAYER_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1)),
                 (0, (8, 2)), "-")
_LAYER_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
_MARKER_LIMIT = 30  # epochs up to which points are marked (a lone point stays visible).


class _PlainLogFormatter(LogFormatterSciNotation):
  """Log-axis tick labels as plain numbers (0.02, 0.3) where matplotlib labels one."""

  def __call__(self, x, pos=None):
    return f"{x:g}" if super().__call__(x, pos) else ""


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
  """The per-epoch records of ``run_dir/metrics.jsonl``, sorted by epoch.

  Lines that are not a JSON object (a torn last line) are skipped; of records
  with the same epoch (a rewritten epoch) the last one is kept, and records
  without an ``epoch`` are left out unless none has one (then they are
  numbered 1, 2, ... in file order).

  Args:
    run_dir: a run directory (a trainer's ``workdir``).

  Returns:
    The records, as dicts.

  Raises:
    ValueError: the directory or its ``metrics.jsonl`` is missing or
      unreadable, or holds no readable record. The message ends with the path.
  """
  records = _read_all(run_dir)
  return _by_epoch([r for r in records if "replica" not in r] or records)


def _read_all(run_dir: str) -> list[dict[str, Any]]:
  """Every JSON-object record of ``run_dir/metrics.jsonl``, in file order; raises as
  :func:`read_metrics` does."""
  if not os.path.isdir(run_dir):
    raise ValueError(f"no such run directory, {run_dir}")
  path = os.path.join(run_dir, METRICS_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"no {METRICS_FILE} in the run directory, {run_dir}")
  records = []
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict):
          records.append(record)
  except OSError as e:
    raise ValueError(f"cannot read {METRICS_FILE} ({e.strerror}), {path}") from None
  if not records:
    raise ValueError(f"no readable records in {METRICS_FILE}, {path}")
  return records


def _by_epoch(records: list[dict]) -> list[dict]:
  by_epoch = {}  # the last record of each epoch; records without one are left out.
  for r in records:
    epoch = _number(r.get("epoch"))
    if math.isfinite(epoch):
      by_epoch[epoch] = r
  if not by_epoch:  # no epoch numbers at all: the order of the file, from 1.
    return [dict(r, epoch=i + 1) for i, r in enumerate(records)]
  return [by_epoch[e] for e in sorted(by_epoch)]


def read_draws(run_dir: str, max_draws: int = 8,
               records: list[dict] | None = None) -> list[tuple[str, list[dict]]] | None:
  """A replica run's draws, each as ``(label, per-epoch records)``; None for a plain run.

  A record of a draw holds, for every numeric metric, the mean over its seeds
  at that epoch (diverged seeds included: their frozen state is evaluated),
  and ``test/error_pct_se``, the standard error of the test error over the
  seeds. The ``max_draws`` draws with the lowest final mean validation error
  (test error without a validation split) are kept, the best first, so a
  large search stays readable. ``records``: the run's records, if already read.
  """
  records = [r for r in (_read_all(run_dir) if records is None else records) if "replica" in r]
  if not records:
    return None
  groups: dict[int, dict[float, list[dict]]] = {}
  for r in records:
    groups.setdefault(int(r.get("draw", 0)), {}).setdefault(_number(r.get("epoch")), {})[
        r["replica"]] = r
  draws = []
  use_val = any(r.get("val/error_pct") is not None for r in records)
  for d, epochs in groups.items():
    rows, reps = [], []
    for epoch in sorted(e for e in epochs if math.isfinite(e)):
      reps = list(epochs[epoch].values())
      keys = {k for r in reps for k, v in r.items() if isinstance(v, (int, float))
              and not isinstance(v, bool)} - {"replica", "seed", "draw", "step"}
      row = {"epoch": epoch}
      for k in keys:
        vals = np.asarray([_number(r.get(k)) for r in reps])
        row[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
      errs = np.asarray([math.nan if _test_error(r) is None else _test_error(r) for r in reps])
      errs = errs[np.isfinite(errs)]
      row["test/error_pct_se"] = (float(np.std(errs, ddof=1) / np.sqrt(errs.size))
                                  if errs.size > 1 else math.nan)
      rows.append(row)
    if not rows:
      continue
    hp = reps[0].get("hparams") or {}
    parts = ", ".join(s for s in (_short(hp), f"{len(reps)} seeds" if len(reps) > 1 else "")
                      if s)
    label = (f"draw {d}: {parts}" if parts else f"draw {d}") if len(groups) > 1 else parts
    final = _number(rows[-1].get("val/error_pct")) if use_val else _test_error(rows[-1])
    draws.append((final if final is not None and math.isfinite(final) else math.inf, label,
                  rows))
  draws.sort(key=lambda t: t[0])
  return [(label, rows) for _, label, rows in draws[:max_draws]]


def _short(hparams: dict) -> str:
  """``learning_rate=..., b2=...``: each field without its ``optimizer.`` or ``rule.`` prefix."""
  names = {k: k.split(".", 1)[1] if k.startswith(("optimizer.", "rule.")) else k
           for k in hparams}
  return ", ".join(f"{names[k]}={v:.3g}" for k, v in hparams.items())


def plot_runs(run_dirs: Sequence[str], out_dir: str,
              labels: Sequence[str] | None = None) -> list[str]:
  """Writes ``error.png``, ``loss.png`` and ``alignment.png`` for ``run_dirs``.

  Every run is read (and checked) before anything is written. Existing PNGs
  of the same names are replaced atomically, so this can be called again
  while a run is still writing its metrics.

  Args:
    run_dirs: run directories, each with a ``metrics.jsonl``.
    out_dir: where the PNGs go; created if needed.
    labels: legend names of the runs, one per run directory; default: each
      directory's name (with its parent's if two names collide).

  Returns:
    The paths written, in the order error, loss, alignment (the last only if
    some run has alignment metrics).

  Raises:
    ValueError: a run directory without readable metrics, a wrong number of
      labels, or an output directory that cannot be created.
  """
  run_dirs = [os.fspath(d) for d in run_dirs]
  if not run_dirs:
    raise ValueError("no run directories given, []")
  if labels is None:
    labels = _default_labels(run_dirs)
  elif len(labels) != len(run_dirs):
    raise ValueError(f"{len(labels)} labels for {len(run_dirs)} run directories, "
                     f"{','.join(labels)}")
  runs = []
  for label, d in zip(labels, run_dirs):
    records = _read_all(d)  # (one read per run, checked)
    draws = read_draws(d, records=records)
    if draws is None:
      runs.append((str(label), _by_epoch(records)))
    else:  # a replica run: each draw's mean over seeds (± s.e. on the test error).
      runs.extend(((f"{label}, {name}" if name else str(label)) if len(run_dirs) > 1
                   else (name or str(label)), rows) for name, rows in draws)
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create the output directory ({e.strerror}), {out_dir}") from None
  written = []
  with matplotlib.rc_context(_RC):
    for name, draw in (("error.png", _error_figure), ("loss.png", _loss_figure),
                       ("alignment.png", _alignment_figure)):
      fig = draw(runs)
      if fig is not None:
        written.append(_save(fig, os.path.join(out_dir, name)))
  return written


def _number(value: Any) -> float:
  """``value`` as a float; NaN for null, non-numbers and non-finite values."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return math.nan
  value = float(value)
  return value if math.isfinite(value) else math.nan


def _default_labels(run_dirs: list[str]) -> list[str]:
  parts = [os.path.normpath(os.path.abspath(d)).split(os.sep) for d in run_dirs]
  for depth in range(1, max(len(p) for p in parts) + 1):
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return [os.path.normpath(d) for d in run_dirs]


def _series(records: list[dict], value) -> tuple[np.ndarray, np.ndarray] | None:
  """(epochs, values) of the records for which ``value(record)`` is not None."""
  xs, ys = [], []
  for r in records:
    v = value(r)
    if v is not None:
      xs.append(r["epoch"])
      ys.append(v)
  if not xs:
    return None
  return np.asarray(xs, float), np.asarray(ys, float)


def _key(name: str):
  return lambda r: _number(r[name]) if name in r else None


def _train_error(r: dict) -> float | None:
  if "train/accuracy" not in r:
    return None
  return 100.0 * (1.0 - _number(r["train/accuracy"]))


def _test_error(r: dict) -> float | None:
  if "test/error_pct" in r:
    return _number(r["test/error_pct"])
  if "test/accuracy" in r:
    return 100.0 * (1.0 - _number(r["test/accuracy"]))
  return None


def _natural(name: str):
  """Sort key: ``all`` first, then by name with numbers compared as numbers."""
  return (name != "all", [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)])


def _colors(n: int) -> list:
  """``n`` distinct colours: tab10's, or a rainbow in order for more than 10."""
  if n <= 10:
    return [matplotlib.colormaps["tab10"](i) for i in range(n)]
  return [matplotlib.colormaps["turbo"](0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _figure(nrows: int = 1, ncols: int = 1, legend_below: bool = False) -> tuple[Figure, list]:
  width = 8.0 if ncols == 1 else 12.0
  height = 5.0 if nrows == 1 else 4.0 * nrows
  if legend_below:
    height += 0.5
  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
  return fig, axes


def _plot(ax, series, n_epochs: int, **kwargs) -> None:
  """Draws one curve; points are marked if few, a marker given is spaced out."""
  xs, ys = series
  if "marker" in kwargs:
    kwargs.setdefault("markevery", max(1, math.ceil(n_epochs / 15)))
  elif n_epochs <= _MARKER_LIMIT:
    kwargs["marker"] = "o"
  kwargs.setdefault("markersize", 3.5)
  ax.plot(xs, ys, **kwargs)


def _epoch_axis(ax) -> None:
  """Labels the x axis (integer epochs); call after the curves are drawn."""
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  lo, hi = ax.dataLim.intervalx
  if np.isfinite([lo, hi]).all() and hi - lo < 2:  # one or two epochs.
    ax.set_xlim(lo - 1, hi + 1)


def _no_data(ax) -> None:
  ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
          color="0.4", fontsize=12)


def _run_legend(fig: Figure, runs) -> None:
  """The figure legend of several runs: one colour each, below the panels."""
  colors = _colors(len(runs))
  handles = [Line2D([], [], color=c, lw=2) for c in colors]
  fig.legend(handles, [label for label, _ in runs], loc="outside lower center",
             ncols=min(len(runs), 5 if max(len(label) for label, _ in runs) < 24 else 2),
             title="run", frameon=False)


def _title(fig: Figure, runs) -> None:
  fig.suptitle(runs[0][0] if len(runs) == 1 else f"{len(runs)} runs")


def _split_figure(runs, quantities, title: str, ylabel: str, log_if_positive: bool):
  """One panel with the train and test curve of every run (error, loss)."""
  multi = len(runs) > 1
  fig, (ax,) = _figure(legend_below=multi)
  n_epochs = max(len(records) for _, records in runs)
  colors = _colors(len(runs)) if multi else _colors(len(quantities))
  values = []
  drawn = set()
  for i, (_, records) in enumerate(runs):
    for j, (split, value) in enumerate(quantities):
      s = _series(records, value)
      if s is None or not np.isfinite(s[1]).any():
        continue
      drawn.add(split)
      values.append(s[1][np.isfinite(s[1])])
      style = ("--" if split == "train" else "-") if multi else "-"
      color = colors[i if multi else j]
      _plot(ax, s, n_epochs, color=color, ls=style, label=None if multi else split, lw=1.6)
      se = _series(records, _key("test/error_pct_se")) if value is _test_error else None
      if se is not None and len(se[0]) == len(s[0]) and np.isfinite(se[1]).any():
        ax.fill_between(s[0], s[1] - se[1], s[1] + se[1], color=color, alpha=0.15, lw=0)
  ax.set_title(f"{title}: {runs[0][0]}" if not multi else f"{title}, {len(runs)} runs")
  ax.set_ylabel(ylabel)
  _epoch_axis(ax)
  if not values:
    _no_data(ax)
  else:
    values = np.concatenate(values)
    if log_if_positive and (values > 0).all():
      ax.set_yscale("log")
      ax.yaxis.set_major_formatter(_PlainLogFormatter())
      ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    elif (values >= 0).all():
      ax.set_ylim(0, 1.07 * values.max() if values.max() > 0 else 1)
    if multi:
      handles = [Line2D([], [], color="0.3", ls="--" if split == "train" else "-", lw=1.6)
                 for split, _ in quantities if split in drawn]
      ax.legend(handles, [split for split, _ in quantities if split in drawn], loc="best")
      _run_legend(fig, runs)
    else:
      ax.legend(loc="best")
  return fig


def _error_figure(runs):
  return _split_figure(runs, (("train", _train_error), ("test", _test_error)),
                       "Train and test error", "error (%)", log_if_positive=False)


def _loss_figure(runs):
  return _split_figure(runs, (("train", _key("train/loss")), ("test", _key("test/loss"))),
                       "Train and test loss", "loss", log_if_positive=True)


def _panel_keys(runs, prefix: str) -> dict[str, str]:
  """{series name: record key} of one alignment panel over all runs."""
  keys = {}
  for _, records in runs:
    for r in records:
      for k in r:
        if k == f"align/{prefix}":
          keys.setdefault(prefix, k)
        elif k.startswith(f"align/{prefix}/"):
          name = k[len(f"align/{prefix}/"):]
          name = name[:-len(".kernel")] if name.endswith(".kernel") else name
          keys.setdefault(name, k)
  return dict(sorted(keys.items(), key=lambda kv: _natural(kv[0])))


def _alignment_figure(runs):
  """One panel per alignment quantity present; None if there is none."""
  panels = []
  for prefix, title, ylabel, kind in _ALIGN_PANELS:
    keys = _panel_keys(runs, prefix)
    if keys:
      panels.append((prefix, title, ylabel, kind, keys))
  if not panels:
    return None
  multi = len(runs) > 1
  ncols = 1 if len(panels) == 1 else 2
  nrows = math.ceil(len(panels) / ncols)
  fig, axes = _figure(nrows, ncols, legend_below=multi)
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  n_epochs = max(len(records) for _, records in runs)
  run_colors = _colors(len(runs))
  for ax, (prefix, title, ylabel, kind, keys) in zip(axes, panels):
    layer_colors = iter(_colors(sum(name not in ("all", prefix) for name in keys)))
    styles = itertools.cycle(zip(_LAYER_STYLES, _LAYER_MARKERS))
    legend = []  # (handle, name) of the series drawn.
    values = []
    for name, key in keys.items():
      whole = name in ("all", prefix)
      if multi:
        if whole:
          style = dict(ls="-", lw=2.4, marker=None)
        else:
          ls, marker = next(styles)
          style = dict(ls=ls, marker=marker, lw=1.2, markersize=4)
        handle = Line2D([], [], color="0.3", **style)
      else:
        style = dict(color="black", lw=2.2) if whole else dict(color=next(layer_colors), lw=1.5)
        handle = None
      drawn = False
      for i, (_, records) in enumerate(runs):
        s = _series(records, _key(key))
        if s is None or not np.isfinite(s[1]).any():
          continue
        values.append(s[1][np.isfinite(s[1])])
        kwargs = dict(style, color=run_colors[i]) if multi else dict(style)
        _plot(ax, s, n_epochs, **kwargs)
        if not multi:
          handle = ax.lines[-1]
        drawn = True
      if drawn and name != prefix:
        legend.append((handle, name))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _epoch_axis(ax)
    if not values:
      _no_data(ax)
    _limits(ax, kind, np.concatenate(values) if values else np.zeros(0))
    if legend:
      handles, names = zip(*legend)
      ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                title="weight" if prefix == "update_angle" else "layer",
                ncols=1 if len(names) <= 12 else 2)
  if multi:
    _run_legend(fig, runs)
  _title(fig, runs)
  return fig


def _limits(ax, kind: str, values: np.ndarray) -> None:
  """Fixed y ranges: angles 0-90 (0-180 if exceeded), cosines, fractions."""
  if kind == "angle":
    top = 90 if not values.size or values.max() <= 90 else 180
    ax.set_ylim(0, top)
    ax.yaxis.set_major_locator(MultipleLocator(15 if top == 90 else 30))
  elif kind == "cosine":
    low = -1.0 if values.size and values.min() < 0 else 0.0
    ax.set_ylim(low - 0.02, 1.02)
  elif kind == "fraction":
    low = 0.5 if not values.size or values.min() >= 0.5 else 0.0
    ax.set_ylim(low - 0.01, 1.01)


def _save(fig: Figure, path: str) -> str:
  """Writes ``fig`` as a PNG at ``path`` through a temporary file (atomic)."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise ValueError(f"cannot write a plot ({e.strerror}), {path}") from None
  return path


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: ``python -m jaxbio.plot RUN_DIR [...] [--out=DIR] [--labels=a,b]``."""
  parser = argparse.ArgumentParser(
      prog="jaxbio.plot", description="PNG plots (error, loss, alignment) of training runs.")
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help=f"run directories, each with a {METRICS_FILE}")
  parser.add_argument("--out", default=None, metavar="DIR",
                      help="output directory (default: RUN_DIR/plots for one run, ./plots "
                      "for several)")
  parser.add_argument("--labels", default=None, metavar="a,b",
                      help="comma-separated legend names, one per run (default: directory "
                      "names)")
  args = parser.parse_args(argv)
  out = args.out or (os.path.join(args.run_dirs[0], "plots") if len(args.run_dirs) == 1
                     else "plots")
  labels = None if args.labels is None else [s.strip() for s in args.labels.split(",")]
  try:
    paths = plot_runs(args.run_dirs, out, labels)
  except ValueError as e:
    print(f"jaxbio.plot: error: {e}", file=sys.stderr)
    return 1
  for p in paths:
    print(p)
  return 0


if __name__ == "__main__":
  sys.exit(main())
