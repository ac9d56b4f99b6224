"""Laborieux & Zenke (2024), Fashion-MNIST MLP experiments.

Settings from the authors' run.sh (github.com/Laborieux-Axel/generalized-holo-ep).

Usage: ``--config=launch/configs/hep_fmnist.py:<experiment>[,runlocal]`` with

* ``table1,<N>,<beta>``: hEP with N points on |beta| (N = 0: the exact
  forward-mode derivative), symmetric init (angle 0), SGD 0.01 momentum 0.9;
  the paper's grid is N in {1, 2, 4, 6}, beta in {0.05, 0.5}.
* ``online``: online hEP, N = 4, beta = 0.5, T1 = 1200, T2 = 60.
* ``fig3,<rule>,<angle>``: the angle sweep, rule ``hep`` (N = 0) or ``bptt``
  (truncated BPTT, the paper's "bp"), angle in degrees (0, 15, ..., 90).
* ``fig4_reciprocal,<lambda>``: reciprocal MLP at 90 degrees, hEP N = 0,
  AdamW 1e-4, homeostasis weight lambda (0 or 1.0 in the paper).
* ``fig4_loop,<lambda>``: the loop MLP (no reciprocal connections), hEP N = 0,
  SGD 0.01, lambda 0 or 0.1.

Common to all: 784-256-256-10 state plus a 10x10 readout, sigma(4z - 2),
batch 50, 50 epochs, T1 = 150, T2 = 20, pixels x/255 with no augmentation,
the test set evaluated in one batch of 10,000.
"""

from ml_collections import config_dict

from launch.configs import common

EXPERIMENTS = ("table1", "online", "fig3", "fig4_reciprocal", "fig4_loop")


def get_config(arg: str = "table1,2,0.05"):
  parts = arg.split(",")
  runlocal = "runlocal" in parts
  parts = [p for p in parts if p != "runlocal"]
  experiment, args = parts[0], parts[1:]
  if experiment not in EXPERIMENTS:
    raise ValueError(f"unknown experiment {experiment!r}; valid choices: {', '.join(EXPERIMENTS)}")
  n_args = {"table1": (0, 2), "online": (0,), "fig3": (0, 2), "fig4_reciprocal": (0, 1),
            "fig4_loop": (0, 1)}[experiment]
  if len(args) not in n_args:
    raise ValueError(f"experiment {experiment!r} takes {' or '.join(map(str, n_args))} "
                     f"arguments after its name, got {args}; see this file's docstring")
  c = common.base_config()
  c.dataset.name = "fashion_mnist"
  c.batch_size = 50
  c.eval_batch_size = 10_000
  c.num_epochs = 50
  c.steps_per_call = 100
  c.alignment_every = 1200  # once per epoch: jac_sym, angle, cos(v, delta), residual.
  c.model.arch = "hep_mlp"
  c.model.angle_deg = config_dict.placeholder(float)
  c.model.t_free = 150
  c.rule.name = "hep"
  c.rule.n_points = 0
  c.rule.t_nudge = 20
  c.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9))
  if experiment == "table1":
    n, beta = (int(args[0]), float(args[1])) if len(args) == 2 else (2, 0.05)
    c.model.angle_deg = 0.0
    c.rule.n_points, c.rule.beta = n, beta
  elif experiment == "online":
    c.model.angle_deg = 0.0
    c.model.t_free = 1200  # evaluation uses the online variant's T1.
    c.rule = config_dict.ConfigDict(dict(name="hep_online", n_points=4, beta=0.5,
                                         t_free=1200, t_nudge=60))
  elif experiment == "fig3":
    rule, angle = (args[0], float(args[1])) if len(args) == 2 else ("hep", 0.0)
    if rule not in ("hep", "bptt"):
      raise ValueError(f"unknown fig3 rule {rule!r}; valid choices: hep, bptt")
    c.model.angle_deg = angle
    if rule == "bptt":
      c.rule = config_dict.ConfigDict(dict(name="bptt", t_nudge=20))
  elif experiment == "fig4_reciprocal":
    c.model.angle_deg = 90.0
    c.optimizer.update(dict(name="adamw", learning_rate=1e-4, momentum=0.0))
    c.homeostasis.weight = float(args[0]) if args else 1.0
  else:
    c.model.arch = "hep_loop_mlp"
    c.homeostasis.weight = float(args[0]) if args else 0.1
  if runlocal:
    c.num_epochs = 1
    c.dataset.train_split = "train[:3000]"
    c.alignment_every = 30
  return c
