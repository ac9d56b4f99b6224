"""RDD against its baselines on real Fashion-MNIST, the authors' conv net and protocol.

    python -m benchmarks.rdd_fashion --epochs=4 --data_dir=../shared/data/tfds

Trains ``launch/configs/rdd.py:fashion_mnist,<rule>`` for every rule of
``--rules`` (BP, FA, RDD, KP, weight mirror: the same net, SGD 0.01 with
momentum 0.9, batch 32, crops and flips) for ``--epochs`` epochs each, one
seed, exactly as the launcher would, and writes ``<out>/report.md`` with:

* test error (%) after every epoch, per rule;
* per fc layer and epoch, the angle between the feedback weights and W^T and
  their sign agreement (uncentred; at the end of the epoch), and for RDD the
  same before and after the spiking phase that precedes the epoch;
* wall time per epoch (training and evaluation; for RDD, with the spiking
  phase before it) and the paper's full protocol extrapolated from it: 100
  epochs, each after a 90 s phase for RDD, at the mean time of the epochs
  after the first (the first one also compiles).

``--report_only`` rebuilds the report and plots from the runs already in
``<out>`` without training.

The plots of ``jaxbio.plot`` (error, loss, alignment) go to ``<out>/plots``.
Runs go to ``<out>/<rule>`` (replaced).
"""

from __future__ import annotations

import os
import shutil
import time

from absl import app, flags, logging
import numpy as np

from jaxbio import log, plot, train
from launch.configs import rdd as rdd_configs

_EPOCHS = flags.DEFINE_integer("epochs", 3, "Training epochs per rule.")
_RULES = flags.DEFINE_list("rules", list(rdd_configs.RULES), "Rules to train.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data directory ('' : jaxbio's default).")
_OUT = flags.DEFINE_string("out", "runs/rdd_fashion", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every run.")
_REPORT_ONLY = flags.DEFINE_boolean("report_only", False,
                                    "Report on the runs in --out; no training.")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train",
                                   "Training split (e.g. train[:3200] for a quick look).")

LABELS = {"bp": "BP", "fa": "FA", "rdd": "RDD", "kp": "KP", "weight_mirror": "Weight mirror"}
FC_LAYERS = {2: "fc1 (1600->384)", 3: "fc2 (384->192)", 4: "fc3 (192->10)"}
PROTOCOL_EPOCHS = 100


def _fmt(value, spec=".1f"):
  return "-" if value is None or not np.isfinite(value) else format(value, spec)


def _epoch_times(records):
  elapsed = [r["time/elapsed_s"] for r in records]
  return np.diff([0.0] + elapsed)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    log.quiet_libraries()
  bad = [r for r in _RULES.value if r not in rdd_configs.RULES]
  if bad:
    raise app.UsageError(f"unknown --rules {bad}; valid choices: {', '.join(rdd_configs.RULES)}")
  import jax  # pylint: disable=g-import-not-at-top
  runs = {}
  start = time.time()
  for rule in _RULES.value:
    config = rdd_configs.get_config(f"fashion_mnist,{rule}")
    config.num_epochs = _EPOCHS.value
    config.seed = _SEED.value
    config.dataset.train_split = _TRAIN_SPLIT.value
    if _DATA_DIR.value:
      config.dataset.data_dir = _DATA_DIR.value
    workdir = os.path.join(_OUT.value, rule)
    if not _REPORT_ONLY.value:
      shutil.rmtree(workdir, ignore_errors=True)
      t = time.time()
      train.train_and_evaluate(config, workdir)
      logging.info("%s: %d epochs in %.0f s", rule, _EPOCHS.value, time.time() - t)
    runs[rule] = plot.read_metrics(workdir)

  epochs = range(1, _EPOCHS.value + 1)
  lines = [f"## `python -m benchmarks.rdd_fashion --epochs={_EPOCHS.value}`", "",
           f"{jax.device_count()} {jax.devices()[0].platform} device(s); seed {_SEED.value}; "
           f"training split {_TRAIN_SPLIT.value}"
           + ("." if _REPORT_ONLY.value else
              f"; total wall time {(time.time() - start) / 60:.1f} min."), "",
           "### Test error (%) after each epoch", "",
           "| epoch | " + " | ".join(LABELS[r] for r in runs) + " |",
           "|---" * (len(runs) + 1) + "|"]
  for e in epochs:
    cells = [_fmt(next((x["test/error_pct"] for x in recs if x["epoch"] == e), None), ".2f")
             for recs in runs.values()]
    lines.append(f"| {e} | " + " | ".join(cells) + " |")

  lines += ["", "### Feedback alignment of the fc layers at the end of each epoch",
            "", "Angle between the feedback weights and W^T (degrees) / sign agreement (%), "
            "uncentred. BP has no feedback weights. RDD's phase before the epoch: "
            "angle before -> after.", "",
            "| rule | epoch | " + " | ".join(FC_LAYERS.values()) + " |",
            "|---|---|" + "---|" * len(FC_LAYERS)]
  for rule, recs in runs.items():
    if rule == "bp":
      continue
    for r in recs:
      cells = []
      for l in FC_LAYERS:
        cell = (f"{_fmt(r.get(f'align/feedback_angle/layer{l}'))}° / "
                f"{_fmt(100 * r.get(f'align/feedback_sign_agreement/layer{l}', np.nan))} %")
        if f"phase/layer{l}/angle_before_deg" in r:
          cell += (f" (phase {_fmt(r[f'phase/layer{l}/angle_before_deg'])}° -> "
                   f"{_fmt(r[f'phase/layer{l}/angle_after_deg'])}°)")
        cells.append(cell)
      lines.append(f"| {LABELS[rule]} | {r['epoch']} | " + " | ".join(cells) + " |")

  lines += ["", "### Wall time", "",
            f"Per epoch: training and evaluation (for RDD, with the spiking phase before it). "
            f"Full protocol: {PROTOCOL_EPOCHS} epochs at the mean time of the epochs after the "
            "first (an extrapolation, not a measured run).", "",
            "| rule | epoch 1 (compiles) | later epochs, mean | "
            f"full protocol ({PROTOCOL_EPOCHS} epochs) |", "|---|---|---|---|"]
  for rule, recs in runs.items():
    times = _epoch_times(recs)
    later = times[1:] if len(times) > 1 else times
    lines.append(f"| {LABELS[rule]} | {times[0]:.0f} s | {np.mean(later):.0f} s | "
                 f"{PROTOCOL_EPOCHS * np.mean(later) / 3600:.1f} h |")

  written = plot.plot_runs([os.path.join(_OUT.value, r) for r in runs],
                           os.path.join(_OUT.value, "plots"), [LABELS[r] for r in runs])
  lines += ["", "Plots: " + ", ".join(f"`{os.path.relpath(p, _OUT.value)}`" for p in written), ""]
  report = "\n".join(lines)
  with open(os.path.join(_OUT.value, "report.md"), "w", encoding="utf-8") as f:
    f.write(report)
  print(report)


if __name__ == "__main__":
  app.run(main)
