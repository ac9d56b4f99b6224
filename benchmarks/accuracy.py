"""Test error of a suite of experiments after E epochs, next to the papers' figures.

Each suite is a list of launcher configs; every run goes through
``train_and_evaluate`` exactly as the launcher would, with ``num_epochs``
overridden, and the table reports the best and last test error, train
accuracy, wall time and the paper's figure where one exists. The suite's runs
are also plotted together (``<workdir>/<suite>/plots/*.png``).

    python -m benchmarks.accuracy --suite=compare_mnist_fc --epochs=20 --data_dir=../shared/data/tfds
    python -m benchmarks.accuracy --suite=bartunov_mnist_fc --epochs=100 --data_dir=../shared/data/tfds
    python -m benchmarks.accuracy --suite=hep_fmnist --epochs=50 --data_dir=../shared/data/tfds
"""

from __future__ import annotations

import importlib
import os

from absl import app, flags, logging

from benchmarks import common
from jaxbio import log, plot

from benchmarks.suites import SUITES  # noqa: E402

_SUITE = flags.DEFINE_enum("suite", "bartunov_mnist_fc", list(SUITES), "Which suite.")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "Epochs per run.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_accuracy", "Where runs go (replaced).")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    log.quiet_libraries()
  rows, dirs = [], []
  for label, module, arg, paper in SUITES[_SUITE.value]:
    config = importlib.import_module(f"launch.configs.{module}").get_config(arg)
    config.num_epochs = _EPOCHS.value
    config.seed = _SEED.value
    if _DATA_DIR.value:
      config.dataset.data_dir = _DATA_DIR.value
    workdir = os.path.join(_WORKDIR.value, _SUITE.value, arg.replace(",", "_"))
    dirs.append(workdir)
    records, wall = common.train_fresh(config, workdir)
    errors = [r["test/error_pct"] for r in records]
    best = min(range(len(errors)), key=errors.__getitem__)
    extra = {k: records[-1][k] for k in ("align/jac_sym", "align/weight_angle")
             if k in records[-1]}
    rows.append((label, arg, len(records), errors[best], best + 1, errors[-1],
                 records[-1]["train/accuracy"], paper, wall, extra))
    logging.info("%s done in %.0f s", label, wall)
  plots = plot.plot_runs(dirs, os.path.join(_WORKDIR.value, _SUITE.value, "plots"),
                         labels=[label for label, *_ in SUITES[_SUITE.value]])
  print(f"\nsuite {_SUITE.value}, seed {_SEED.value}; plots: {', '.join(plots)}")
  print("| run | config arg | epochs | best test error % (epoch) | last test error % | "
        "last train acc | paper | wall time | other |")
  print("|---|---|---|---|---|---|---|---|---|")
  for label, arg, n, best, at, last, tr, paper, wall, extra in rows:
    other = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in extra.items())
    print(f"| {label} | `{arg}` | {n} | {best:.2f} ({at}) | {last:.2f} | {tr:.4f} | "
          f"{paper or '-'} | {wall:.0f} s | {other} |")


if __name__ == "__main__":
  app.run(main)
