"""Bartunov et al. (2018) MNIST-FC: BP, FA and DFA test error after E epochs.

Trains each rule with the paper's Table 5 hyperparameters on real MNIST (the
784 -> 256 x 5 -> 10 tanh net, Adam, batch 128) and prints the best and last
test error next to the paper's best-within-500-epochs figures.

    python -m benchmarks.bartunov_mnist_fc --epochs=20 --data_dir=../shared/data/tfds
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging

from jaxbio import train
from launch.configs import bartunov

_RULES = flags.DEFINE_list("rules", ["bp", "fa", "dfa"], "Rules to train.")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "Epochs per rule.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_bartunov_mnist_fc", "Where runs go.")

PAPER_TEST_ERROR = {"bp": 1.48, "fa": 1.85, "dfa": 2.75}  # Table 1(a), best of 500 epochs.


def main(argv):
  del argv
  rows = []
  for rule in _RULES.value:
    config = bartunov.get_config(f"mnist,fc,{rule}")
    config.num_epochs = _EPOCHS.value
    config.seed = _SEED.value
    config.alignment_every = 0
    if _DATA_DIR.value:
      config.dataset.data_dir = _DATA_DIR.value
    workdir = os.path.join(_WORKDIR.value, f"{rule}_seed{_SEED.value}")
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      os.remove(os.path.join(workdir, "metrics.jsonl"))
    start = time.time()
    train.train_and_evaluate(config, workdir)
    wall = time.time() - start
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    errors = [r["test/error_pct"] for r in records]
    best = min(range(len(errors)), key=errors.__getitem__)
    rows.append((rule, len(records), errors[best], best + 1, errors[-1],
                 records[-1]["train/accuracy"], PAPER_TEST_ERROR.get(rule), wall))
    logging.info("%s done in %.0f s", rule, wall)
  print(f"\nMNIST-FC (784-256x5-10 tanh), Adam per Table 5, batch 128, seed {_SEED.value}")
  print("| rule | epochs | best test error % (epoch) | last test error % | last train acc "
        "| paper (best of 500 epochs) | wall time |")
  print("|---|---|---|---|---|---|---|")
  for rule, n, best, at, last, tr, paper, wall in rows:
    print(f"| {rule} | {n} | {best:.2f} ({at}) | {last:.2f} | {tr:.4f} | "
          f"{paper if paper is not None else '-'} | {wall:.0f} s |")


if __name__ == "__main__":
  app.run(main)
