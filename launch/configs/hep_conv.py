"""Laborieux & Zenke (2024), 4-layer ConvNet on CIFAR-10/100 and ImageNet 32x32.

Usage: ``--config=launch/configs/hep_conv.py:<dataset>,<experiment>[,runlocal]``

* dataset: ``cifar10``, ``cifar100`` or ``imagenet32``;
* experiment (the authors' run.sh commands):
  - ``table2_n0``: hEP N = 0 + homeostasis 15, lr 7e-3, 150 epochs;
  - ``table2_n2``: hEP N = 2, |beta| = 1 + homeostasis 15, lr 7e-3, 150 epochs;
  - ``table2_bp``, ``table2_bp_nohomeo``: truncated BPTT with / without
    homeostasis 15, lr 7e-3, 150 epochs;
  - ``fig4``: hEP N = 0, lr 5e-3, 90 epochs, homeostasis 15 on CIFAR-10 and
    none on CIFAR-100 (as run by the authors);
  - ``imagenet``: hEP N = 0 + homeostasis 10, lr 5e-3, 90 epochs (ImageNet 32x32).

Common: softmax pooling, activation (SiLU(z) - SiLU(z - 2))/2, angle 0,
T1 = 250 (free phase in float16), T2 = 40, batch 256; SGD momentum 0.9, coupled
weight decay 1e-4 (biases included), cosine decay to 0, per-connection
learning-rate multipliers (25, 15, 10, 8, 5 for readout) and a 2x decay on the
readout; random flip and 4-px pad-crop (on raw pixels), then (x/255 - mean)/std.

Normalisation constants, as in the authors' code (not the datasets' own
statistics): CIFAR-10 and CIFAR-100 both use mean (0.4914, 0.4822, 0.4465) and
std 1.5 x (0.2023, 0.1994, 0.2010) (CIFAR-10's values, for CIFAR-100 too);
ImageNet 32x32 uses mean (0.485, 0.456, 0.406) and std 1.5 x (0.229, 0.224,
0.225). They are set as ``dataset.mean``, ``dataset.std`` and
``dataset.std_multiplier = 1.5`` (the trainer divides by std_multiplier x std).
"""

from ml_collections import config_dict

from launch.configs import common

DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet32": "imagenet_resized/32x32"}
# (mean, std) per channel in [0, 1] pixel units, before the 1.5x std multiplier:
# the authors' code uses CIFAR-10's for CIFAR-100 as well.
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
STATS = {"cifar10": _CIFAR10_STATS, "cifar100": _CIFAR10_STATS,
         "imagenet32": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
EXPERIMENTS = ("table2_n0", "table2_n2", "table2_bp", "table2_bp_nohomeo", "fig4", "imagenet")

LR_MULTIPLIERS = {"in-conv1": 25.0, "conv1-conv2": 15.0, "conv2-conv1": 15.0,
                  "conv2-conv3": 10.0, "conv3-conv2": 10.0, "conv3-out": 8.0,
                  "out-conv3": 8.0, "readout": 5.0}


def get_config(arg: str = "cifar10,table2_n0"):
  parts = arg.split(",")
  runlocal = "runlocal" in parts
  parts = [p for p in parts if p != "runlocal"]
  if len(parts) != 2:
    raise ValueError(f"expected '<dataset>,<experiment>[,runlocal]', got {arg!r}")
  dataset, experiment = parts
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS)}")
  if experiment not in EXPERIMENTS:
    raise ValueError(f"unknown experiment {experiment!r}; valid choices: {', '.join(EXPERIMENTS)}")
  c = common.base_config()
  c.dataset.update(dict(name=DATASETS[dataset], normalize="standardize", augment="crop_flip",
                        crop_padding=4, mean=STATS[dataset][0], std=STATS[dataset][1],
                        std_multiplier=1.5,
                        test_split="validation" if dataset == "imagenet32" else "test"))
  c.batch_size = 256
  c.eval_batch_size = 1000
  c.steps_per_call = 20
  c.alignment_every = 0 if dataset == "imagenet32" else 195  # about once per CIFAR epoch.
  c.model = config_dict.ConfigDict(dict(arch="hep_cnn", angle_deg=0.0, t_free=250,
                                        free_dtype="float16"))
  c.rule = config_dict.ConfigDict(dict(name="hep", n_points=0, beta=1.0, t_nudge=40))
  c.optimizer.update(dict(name="sgd", learning_rate=7e-3, momentum=0.9, weight_decay=1e-4,
                          schedule="cosine"))
  c.optimizer.lr_multipliers = dict(LR_MULTIPLIERS)
  c.optimizer.wd_multipliers = {"readout": 2.0}
  c.homeostasis.weight = 15.0
  c.num_epochs = 150
  if experiment == "table2_n2":
    c.rule.n_points = 2
  elif experiment in ("table2_bp", "table2_bp_nohomeo"):
    c.rule = config_dict.ConfigDict(dict(name="bptt", t_nudge=40))
    c.homeostasis.weight = 0.0 if experiment == "table2_bp_nohomeo" else 15.0
  elif experiment == "fig4":
    c.optimizer.learning_rate = 5e-3
    c.num_epochs = 90
    c.homeostasis.weight = 15.0 if dataset == "cifar10" else 0.0
  elif experiment == "imagenet":
    if dataset != "imagenet32":
      raise ValueError("experiment 'imagenet' needs dataset imagenet32")
    c.optimizer.learning_rate = 5e-3
    c.num_epochs = 90
    c.homeostasis.weight = 10.0
  if runlocal:
    c.num_epochs = 1
    c.batch_size = 8
    c.model.t_free = 10
    c.rule.t_nudge = 4
    c.dataset.train_split = "train[:64]"
  return c
