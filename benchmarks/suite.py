"""Each paper's tables, reproduced side by side: one command per paper.

    python -m benchmarks.suite --paper=bartunov --epochs=2 --seeds=3
    python -m benchmarks.suite --paper=burstccn --epochs=2 --seeds=3
    python -m benchmarks.suite --paper=hep --epochs=1 --seeds=2
    python -m benchmarks.suite --paper=rdd --epochs=1 --seeds=2
    python -m benchmarks.suite --paper=bartunov --search=20 --epochs=20   # Table 5 search

Every row of a table is one launcher config trained with ``--seeds`` seeds in
one program (``config.replicas.seeds``) for ``--epochs`` epochs, exactly as
the launcher would. The report (``<out>/<paper>/report.md``) gives, per paper
table, our best test error within the epochs run (mean ± s.e. over seeds, and
the epoch count) beside the paper's figure, and the wall time; each table's
runs are plotted together (``<out>/<paper>/<table>.png``, the mean over seeds
with its ± s.e. band). Rows that this machine cannot run (a dataset that is
not in the data directory, or, without ``--full``, a net too slow for a CPU)
are listed with the reason, not left out.

``--search=D`` (Bartunov et al. only) instead runs the paper's random search
for the MNIST-FC BP and FA rows: D draws from the Table 4 space (Adam
learning rate log-uniform in [1e-5, 3e-4], β2 in {0.99, 0.999}, ε in
{1e-4, 1e-6, 1e-8}, β1 = 0.9) in one program, trained on ``train[:90%]``;
the draw with the best validation error on ``train[90%:]`` is chosen, and
its test error is reported beside Table 1(a) with its settings beside
Table 5's.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import shutil
import time

from absl import app, flags, logging

from jaxbio import data, log, plot, train
from jaxbio.train_replicas import best_draw, draws_table


@dataclasses.dataclass(frozen=True)
class Row:
  """One experiment of a paper table."""
  label: str
  module: str      # launch/configs/<module>.py
  arg: str         # its config argument
  paper: str | None = None  # the paper's figure (test error %), as printed
  heavy: str = ""  # why it is only run with --full (empty: always run)


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  metric: str  # what the paper's figure is
  rows: tuple[Row, ...]


_LC = "locally connected net, slow on a CPU"
_CONV = "the conv net: about 3 min an epoch on a 2-core CPU"
PAPERS: dict[str, tuple[Table, ...]] = {
    "bartunov": (
        Table("table1a_mnist_fc", "Bartunov et al. (2018), Table 1(a), MNIST, fully connected "
              "(784-256x5-10, tanh; Adam at Table 5's optima)",
              "best test error (%) within 500 epochs", (
                  Row("BP", "bartunov", "mnist,fc,bp", "1.48"),
                  Row("FA", "bartunov", "mnist,fc,fa", "1.85"),
                  Row("DFA", "bartunov", "mnist,fc,dfa", "2.75"),
                  Row("DTP, parallel", "bartunov", "mnist,fc,dtp,parallel", "2.86"),
                  Row("DTP, alternating", "bartunov", "mnist,fc,dtp,alternating", "1.83"),
                  Row("SDTP, parallel", "bartunov", "mnist,fc,sdtp,parallel", "3.52"),
                  Row("SDTP, alternating", "bartunov", "mnist,fc,sdtp,alternating", "2.28"),
                  Row("AO-SDTP, parallel", "bartunov", "mnist,fc,ao_sdtp,parallel", "2.93"),
                  Row("AO-SDTP, alternating", "bartunov", "mnist,fc,ao_sdtp,alternating",
                      "1.86"))),
        Table("table1a_mnist_lc", "Bartunov et al. (2018), Table 1(a), MNIST, locally "
              "connected", "best test error (%) within 500 epochs", (
                  Row("BP", "bartunov", "mnist,lc,bp", "1.17", _LC),
                  Row("BP ConvNet", "bartunov", "mnist,conv,bp", "1.01", _LC),
                  Row("FA", "bartunov", "mnist,lc,fa", "1.26", _LC),
                  Row("DTP, alternating", "bartunov", "mnist,lc,dtp,alternating", "1.46", _LC),
                  Row("SDTP, alternating", "bartunov", "mnist,lc,sdtp,alternating", "1.90",
                      _LC))),
        Table("table1b_cifar", "Bartunov et al. (2018), Table 1(b), CIFAR-10",
              "best test error (%) within 500 epochs", (
                  Row("BP, FC", "bartunov", "cifar10,fc,bp", "41.32"),
                  Row("FA, FC", "bartunov", "cifar10,fc,fa", "41.97"),
                  Row("DTP, FC, alternating", "bartunov", "cifar10,fc,dtp,alternating",
                      "42.32"),
                  Row("BP, LC", "bartunov", "cifar10,lc,bp", "32.41", _LC),
                  Row("FA, LC", "bartunov", "cifar10,lc,fa", "37.44", _LC))),
    ),
    "burstccn": (
        Table("mnist", "Greedy et al. (2022), MNIST, 784-500x3-10 sigmoid, SGD, batch 32",
              "best test error (%), mean ± s.e. over 5 seeds", (
                  Row("BurstCCN", "burstccn", "mnist", "1.84 ± 0.01"),
                  Row("BurstCCN, rate and scales from jaxbio's search", "burstccn",
                      "mnist_tuned", "1.84 ± 0.01"),
                  Row("Burstprop", "burstccn", "burstprop_mnist", "1.75 ± 0.01"),
                  Row("Burstprop, rate and scales from jaxbio's search", "burstccn",
                      "burstprop_mnist_tuned", "1.75 ± 0.01"))),
        Table("depth", "Greedy et al. (2022), depth sweep (Fig. 5B, figure only): BurstCCN "
              "keeps a low error as layers are added", "test error (%)", (
                  Row("2 hidden layers", "burstccn", "depth2"),
                  Row("5 hidden layers", "burstccn", "depth5"),
                  Row("9 hidden layers", "burstccn", "depth9"))),
        Table("cifar10", "Greedy et al. (2022), CIFAR-10 CNN (Fig. 6B)",
              "test error (%), mean ± s.e. over 5 seeds", (
                  Row("BurstCCN, random feedback", "burstccn", "cifar10_random",
                      "38.99 ± 0.18"),
                  Row("BurstCCN, W-Y symmetric feedback", "burstccn", "cifar10_tied",
                      "22.92 ± 0.03"),
                  Row("Burstprop, random feedback", "burstccn", "burstprop_cifar10",
                      "41.32 ± 0.14"))),
    ),
    "hep": (
        Table("fmnist", "Laborieux & Zenke (2024), Fashion-MNIST MLP (784-256-256-10 + readout)",
              "test error (%); the paper's figures could not be read, so none is quoted", (
                  Row("hEP N=2 beta=0.05, angle 0", "hep_fmnist", "table1,2,0.05"),
                  Row("hEP N=4 beta=0.5, angle 0", "hep_fmnist", "table1,4,0.5"),
                  Row("hEP N=0, angle 90, no homeostasis", "hep_fmnist", "fig4_reciprocal,0"),
                  Row("hEP N=0, angle 90, homeostasis 1.0", "hep_fmnist",
                      "fig4_reciprocal,1.0"))),
    ),
    "rdd": (
        Table("mnist_fc", "Guerguiev et al. (2020) rules on an MNIST MLP (784-500-500-10, ReLU, "
              "SGD): not a configuration of the paper", "test error (%)", (
                  Row("BP", "rdd", "mnist_fc,bp"),
                  Row("FA", "rdd", "mnist_fc,fa"),
                  Row("RDD", "rdd", "mnist_fc,rdd"),
                  Row("KP", "rdd", "mnist_fc,kp"),
                  Row("Weight mirror", "rdd", "mnist_fc,weight_mirror"))),
        Table("fashion_mnist", "Guerguiev et al. (2020), the authors' CIFAR-10 net on "
              "Fashion-MNIST (the paper's test errors were not transcribed)", "test error (%)", (
                  Row("BP", "rdd", "fashion_mnist,bp", None, _CONV),
                  Row("FA", "rdd", "fashion_mnist,fa", None, _CONV),
                  Row("RDD", "rdd", "fashion_mnist,rdd", None, _CONV),
                  Row("KP", "rdd", "fashion_mnist,kp", None, _CONV),
                  Row("Weight mirror", "rdd", "fashion_mnist,weight_mirror", None, _CONV))),
        Table("cifar10_svhn", "Guerguiev et al. (2020), CIFAR-10 and SVHN (the paper's test "
              "errors were not transcribed)", "test error (%)", tuple(
                  Row(f"{rule} on {name}", "rdd", f"{d},{key}", None, _CONV)
                  for d, name in (("cifar10", "CIFAR-10"), ("svhn", "SVHN"))
                  for key, rule in (("bp", "BP"), ("fa", "FA"), ("rdd", "RDD")))),
    ),
}
# Bartunov et al.'s Table 4 space for the BP/FA search (Adam; beta1 fixed at 0.9).
SEARCH_SPACE = {"optimizer.learning_rate": {"log_uniform": [1e-5, 3e-4]},
                "optimizer.b2": {"choice": [0.99, 0.999]},
                "optimizer.eps": {"choice": [1e-4, 1e-6, 1e-8]}}
SEARCH_ROWS = (("BP", "mnist,fc,bp", "1.48", "lr 0.000152, β2 0.999, ε 1e-8"),
               ("FA", "mnist,fc,fa", "1.85", "lr 0.000168, β2 0.999, ε 1e-4"))

_PAPER = flags.DEFINE_enum("paper", None, list(PAPERS), "Which paper's tables.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs per run.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per row, trained together.")
_SEARCH = flags.DEFINE_integer("search", 0, "Bartunov only: random-search draws (0: none).")
_FULL = flags.DEFINE_boolean("full", False, "Also run the rows too slow for a CPU.")
_TABLES = flags.DEFINE_list("tables", None, "Only these tables (default: all of the paper's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: jaxbio's).")
_OUT = flags.DEFINE_string("out", "runs/suite", "Output folder (<out>/<paper>, replaced).")
flags.mark_flag_as_required("paper")


def _available(name: str) -> bool:
  root = data.resolve_data_dir(_DATA_DIR.value)
  return os.path.isdir(os.path.join(root, name.split("/")[0]))


def _config(module: str, arg: str):
  config = importlib.import_module(f"launch.configs.{module}").get_config(arg)
  config.num_epochs = _EPOCHS.value
  if _DATA_DIR.value:
    config.dataset.data_dir = _DATA_DIR.value
  return config


def _records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):  # every replica diverged before an epoch ended.
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _train(config, workdir: str) -> tuple[list[dict], float]:
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.time()
  try:
    train.train_and_evaluate(config, workdir)
  except train.NonFiniteError as e:
    logging.warning("%s: %s", workdir, e)
  return _records(workdir), time.time() - start


def _fmt(mean: float, se: float) -> str:
  if not math.isfinite(mean):
    return "diverged"
  return f"{mean:.2f} ± {se:.2f}" if math.isfinite(se) and se > 0 else f"{mean:.2f}"


def run_table(table: Table, out: str) -> list[str]:
  lines = [f"### {table.title}", "",
           f"Ours: best test error (%) within {_EPOCHS.value} epoch(s), mean ± s.e. over "
           f"{_SEEDS.value} seeds (each seed's best epoch, chosen on the test set as the paper "
           f"does); paper: {table.metric}.", "",
           "| method | config | ours | final epoch | paper | wall time |",
           "|---|---|---|---|---|---|"]
  dirs, labels = [], []
  for row in table.rows:
    config = _config(row.module, row.arg)
    if not _available(config.dataset.name):
      lines.append(f"| {row.label} | `{row.arg}` | not run: {config.dataset.name} is not in "
                   f"the data directory | | {row.paper or '-'} | |")
      continue
    if row.heavy and not _FULL.value:
      lines.append(f"| {row.label} | `{row.arg}` | not run ({row.heavy}; --full runs it) | | "
                   f"{row.paper or '-'} | |")
      continue
    config.replicas.seeds = _SEEDS.value
    workdir = os.path.join(out, table.name, row.arg.replace(",", "_"))
    records, wall = _train(config, workdir)
    (d,) = draws_table(records) or [None]
    if d is None:
      lines.append(f"| {row.label} | `{row.arg}` | no epoch finished | | {row.paper or '-'} | "
                   f"{wall:.0f} s |")
      continue
    diverged = f" ({d['diverged']} diverged)" if d["diverged"] else ""
    lines.append(f"| {row.label} | `{row.arg}` | {_fmt(d['test_mean'], d['test_se'])}{diverged}"
                 f" | {_fmt(d['final_mean'], d['final_se'])} | {row.paper or '-'} | "
                 f"{wall:.0f} s |")
    dirs.append(workdir)
    labels.append(row.label)
    logging.info("%s: %s done in %.0f s", table.name, row.label, wall)
  if dirs:
    written = plot.plot_runs(dirs, os.path.join(out, table.name, "plots"), labels)
    error = next(p for p in written if p.endswith("error.png"))
    shutil.copy(error, os.path.join(out, f"{table.name}.png"))
    lines += ["", f"Plot: `{table.name}.png`."]
  return lines + [""]


def run_search(out: str) -> list[str]:
  lines = [f"### Bartunov et al. (2018), MNIST-FC random search: {_SEARCH.value} draws x "
           f"{_EPOCHS.value} epochs", "",
           "Table 4 space (Adam lr log-uniform in [1e-5, 3e-4], β2 in {0.99, 0.999}, "
           "ε in {1e-4, 1e-6, 1e-8}, β1 = 0.9), all draws in one program, trained on "
           "`train[:90%]`; the draw with the lowest best validation error (`train[90%:]`) is "
           "chosen and its test error at that epoch reported. The paper: best test error "
           "within 500 epochs from 60 draws, chosen on the test set.", "",
           "| method | chosen draw: lr, β2, ε | its validation error | its test error | "
           "paper (Table 1(a)) | Table 5 settings | wall time |", "|---|---|---|---|---|---|---|"]
  for label, arg, paper, table5 in SEARCH_ROWS:
    config = _config("bartunov", arg)
    config.dataset.train_split, config.dataset.validation_split = "train[:90%]", "train[90%:]"
    config.replicas.search = json.dumps(SEARCH_SPACE)
    config.replicas.draws = _SEARCH.value
    workdir = os.path.join(out, f"search_{arg.replace(',', '_')}")
    records, wall = _train(config, workdir)
    best = best_draw(records)
    if best is None:
      lines.append(f"| {label} | no epoch finished | | | {paper} | {table5} | {wall:.0f} s |")
      continue
    hp = best["hparams"]
    lines.append(f"| {label} | {hp['optimizer.learning_rate']:.6f}, {hp['optimizer.b2']:g}, "
                 f"{hp['optimizer.eps']:g} | {best['select_mean']:.2f} | "
                 f"{best['test_mean']:.2f} | {paper} | {table5} | {wall:.0f} s |")
    plot.plot_runs([workdir], os.path.join(workdir, "plots"))
    shutil.copy(os.path.join(workdir, "plots", "error.png"),
                os.path.join(out, f"search_{label.lower()}.png"))
  return lines + ["", "Plots: `search_bp.png`, `search_fa.png` (the 8 best draws)."]


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    log.quiet_libraries()
  paper = _PAPER.value
  if _SEARCH.value and paper != "bartunov":
    raise app.UsageError("--search is for --paper=bartunov (its Table 4 random search)")
  out = os.path.join(_OUT.value, paper)
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  start = time.time()
  if _SEARCH.value:
    lines = run_search(out)
  else:
    names = [t.name for t in PAPERS[paper]]
    unknown = set(_TABLES.value or ()) - set(names)
    if unknown:
      raise app.UsageError(f"unknown --tables {sorted(unknown)}; valid choices: "
                           f"{', '.join(names)}")
    lines = []
    for table in PAPERS[paper]:
      if _TABLES.value and table.name not in _TABLES.value:
        continue
      lines += run_table(table, out)
  import jax  # pylint: disable=g-import-not-at-top
  header = [f"## {paper}: `python -m benchmarks.suite --paper={paper} --epochs={_EPOCHS.value} "
            + (f"--search={_SEARCH.value}`" if _SEARCH.value else f"--seeds={_SEEDS.value}`"),
            "", f"{jax.device_count()} {jax.devices()[0].platform} device(s); total wall time "
            f"{(time.time() - start) / 60:.1f} min.", ""]
  report = "\n".join(header + lines) + "\n"
  with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
    f.write(report)
  print(report)
  print(f"report: {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
  app.run(main)
