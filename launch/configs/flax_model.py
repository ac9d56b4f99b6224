"""Your own Flax model (NNX or Linen), unchanged, trained with a jaxbio rule.

Usage: ``--config=launch/configs/flax_model.py:<dataset>,<rule>[,runlocal]``
with ``--config.model.module=package.module:Callable`` (importable from the
current directory or your PYTHONPATH) and, if it takes any, its keyword
arguments as a JSON object: ``--config.model.kwargs='{"features": 64}'``.

* dataset: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
  ``svhn_cropped``;
* rule: ``bp``, ``fa``, ``kp``, ``sign_symmetry`` (the rules that take any
  Flax model; ``dfa`` needs jaxbio's layered networks);
* ``runlocal``: one epoch.

An NNX module class is called as ``Callable(**kwargs, rngs=nnx.Rngs(key))``
for every seed; a Linen module class as ``Callable(**kwargs)``. Its
``__call__`` takes a batch of images ``(B, H, W, C)`` (scaled to [0, 1], or
standardised for the CIFAR-like datasets) and returns ``(B, classes)``
logits. Adam 1e-3, batch 128, 20 epochs.
"""

from launch.configs import common

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped")
RULES = ("bp", "fa", "kp", "sign_symmetry")


def get_config(arg: str = "mnist,fa"):
  parts = arg.split(",")
  runlocal = "runlocal" in parts
  parts = [p for p in parts if p != "runlocal"]
  if len(parts) != 2:
    raise ValueError(f"expected '<dataset>,<rule>[,runlocal]', got {arg!r}")
  dataset, rule = parts
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r} for this config; valid choices: "
                     f"{', '.join(DATASETS)}")
  if rule not in RULES:
    raise ValueError(f"unknown rule {rule!r} for this config; valid choices: {', '.join(RULES)}")
  c = common.base_config()
  c.dataset.name = dataset
  if dataset not in ("mnist", "fashion_mnist"):
    c.dataset.normalize = "standardize"
  c.model.update(dict(arch="flax", module="", kwargs="{}", api="auto"))
  c.rule.name = rule
  c.num_epochs = 1 if runlocal else 20
  return c
