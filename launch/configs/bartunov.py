"""Bartunov et al. (2018): BP, FA, DFA (and KP, sign-symmetry) on MNIST and CIFAR-10.

Usage: ``--config=launch/configs/bartunov.py:<dataset>,<arch>,<rule>[,runlocal]``

* dataset: ``mnist`` or ``cifar10``;
* arch: ``fc`` (fully connected), ``lc`` (locally connected, no pooling) or
  ``conv`` (the same geometry with shared weights: the paper's "BP ConvNet");
* rule: ``bp``, ``fa``, ``dfa`` (Table 5 optima), or ``kp``, ``sign_symmetry``
  (not in the paper; they use FA's optimiser settings);
* ``runlocal``: one epoch, for a smoke run.

Architectures are the paper's Table 3 (tanh everywhere, Glorot uniform,
softmax output, SAME padding, untied biases in LC layers); the optimiser is
Adam with the Table 5 optimum for (dataset, arch, rule), beta1 = 0.9. The batch
size is unstated in the paper; 128 is used. The paper reports the best test
error within 500 epochs (Table 1).
"""

from launch.configs import common

_ARCH = {
    ("mnist", "fc"): dict(arch="mlp", widths=(256,) * 5),
    ("mnist", "lc"): dict(arch="lcnet", convs=((32, 3, 2), (64, 3, 2)), dense=(1024,)),
    ("cifar10", "fc"): dict(arch="mlp", widths=(1024,) * 3),
    ("cifar10", "lc"): dict(arch="lcnet", convs=((64, 5, 2), (128, 5, 2), (256, 3, 1)),
                            dense=(1024,)),
}

# Table 5: (learning rate, beta2, epsilon). "conv" is the BP ConvNet column.
_ADAM = {
    ("mnist", "fc", "bp"): (0.000152, 0.999, 1e-8),
    ("mnist", "fc", "fa"): (0.000168, 0.999, 1e-4),
    ("mnist", "fc", "dfa"): (0.001649, 0.95, 1e-3),
    ("mnist", "lc", "bp"): (0.000133, 0.99, 1e-8),
    ("mnist", "conv", "bp"): (0.000297, 0.99, 1e-8),
    ("mnist", "lc", "fa"): (0.000219, 0.999, 1e-6),
    ("mnist", "lc", "dfa"): (0.002462, 0.99, 1e-4),
    ("cifar10", "fc", "bp"): (0.000019, 0.999, 1e-6),
    ("cifar10", "fc", "fa"): (0.000025, 0.99, 1e-4),
    ("cifar10", "fc", "dfa"): (0.000050, 0.99, 1e-8),
    ("cifar10", "lc", "bp"): (0.000044, 0.999, 1e-6),
    ("cifar10", "conv", "bp"): (0.000133, 0.99, 1e-4),
    ("cifar10", "lc", "fa"): (0.000022, 0.999, 1e-8),
    ("cifar10", "lc", "dfa"): (0.000040, 0.999, 1e-8),
}
RULES = ("bp", "fa", "dfa", "kp", "sign_symmetry")


def _choice(kind, value, valid):
  if value not in valid:
    raise ValueError(f"unknown {kind} {value!r} for this config; valid choices: "
                     f"{', '.join(valid)}")


def get_config(arg: str = "mnist,fc,bp"):
  parts = arg.split(",")
  if len(parts) < 3:
    raise ValueError(f"expected '<dataset>,<arch>,<rule>[,runlocal]', got {arg!r}")
  dataset, arch, rule, *extra = parts
  _choice("dataset", dataset, ("mnist", "cifar10"))
  _choice("arch", arch, ("fc", "lc", "conv"))
  _choice("rule", rule, RULES)
  c = common.base_config()
  c.dataset.name = dataset
  model = dict(_ARCH[(dataset, "lc" if arch == "conv" else arch)])
  if arch == "conv":
    model["arch"] = "convnet"
  if model["arch"] != "mlp":
    model["pool"] = ""  # the paper removes pooling: it hurts target propagation.
  c.model.update(dict(activation="tanh", kernel_init="glorot_uniform", **model))
  c.rule.name = rule
  if rule == "kp":
    c.rule.weight_decay = 0.0  # Akrout et al.'s reference runs: no decay.
  table_rule = "fa" if rule in ("kp", "sign_symmetry") else rule
  key = (dataset, arch, table_rule)
  if key not in _ADAM:  # e.g. FA on the ConvNet: not in Table 5, use the LC optimum.
    key = (dataset, "lc", table_rule)
  lr, b2, eps = _ADAM[key]
  c.optimizer.update(dict(name="adam", learning_rate=lr, b1=0.9, b2=b2, eps=eps))
  if dataset == "cifar10":
    c.dataset.normalize = "standardize"
    c.dataset.augment = "crop_flip"  # the paper's "flips and random crops", horizontal.
  c.batch_size = 128
  c.num_epochs = 500
  if "runlocal" in extra:
    c.num_epochs = 1
  elif any(extra):
    raise ValueError(f"unknown config option {extra!r}; valid choices: runlocal")
  return c
