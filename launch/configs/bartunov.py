"""Bartunov et al. (2018): target propagation and BP, FA, DFA (and KP, sign-symmetry).

Usage: ``--config=launch/configs/bartunov.py:<dataset>,<arch>,<rule>[,<schedule>][,runlocal]``

* dataset: ``mnist``, ``cifar10`` or ``imagenet`` (ILSVRC-2012 resized to
  224x224, TFDS ``imagenet2012``, which users prepare themselves; ``lc`` and
  ``conv`` only, with the rules of Table 2: ``dtp`` in both schedules,
  ``sdtp,parallel``, ``fa`` and ``bp``);
* arch: ``fc`` (fully connected), ``lc`` (locally connected, no pooling) or
  ``conv`` (the same geometry with shared weights: the paper's "BP ConvNet");
* rule: ``bp``, ``fa``, ``dfa`` (Table 5 optima), or ``kp``, ``sign_symmetry``
  (not in the paper; they use FA's optimiser settings), or the target
  propagation family ``dtp``, ``sdtp``, ``ao_sdtp`` (Table 5 optima; the paper
  gives none for AO-SDTP, which uses SDTP's, with ``n_z = 512`` auxiliary
  outputs) and ``tp`` (vanilla TP with DTP's gradient top target: not in the
  paper's tables, it uses DTP's settings);
* schedule (target propagation only): ``alternating`` (the default: an epoch
  is an inverse-only pass then a forward-only pass over the training set) or
  ``parallel`` (both from every batch); Table 5 has separate optima for each;
* ``runlocal``: one epoch, for a smoke run (on ImageNet a full epoch, 10,009
  steps).

Every Table 1 row is one config, e.g. ``mnist,fc,dtp`` (DTP, alternating),
``mnist,fc,sdtp,parallel``, ``cifar10,lc,ao_sdtp``. For target propagation
the forward weights use ``config.optimizer`` (Adam with Table 5's forward
lr, β1, β2, ε) and the inverses ``config.rule.inverse_optimizer`` (Adam with
the inverse columns); ``rule.alpha`` is DTP's top-target step, read as a step
on each example's own loss gradient (a code that differentiates the
batch-mean loss would need ``B`` times it), and ``rule.sigma`` the inverse
noise. On ``conv`` the target propagation rules use the LC optima.

Table 5's MNIST-FC TP rows print β1 = 0.99 although Table 4 fixes β1 at 0.9;
they are carried as printed. With them, ``mnist,fc,sdtp,parallel`` (inverse
Adam β1 = 0.99, β2 = 0.95) reached 88.7 % test accuracy after one epoch and
then collapsed to chance by epoch 3 in a 5-epoch run, while the same run with
``--config.rule.inverse_optimizer.b1=0.9`` kept improving (93.5 % after 4
epochs). Table 5's MNIST-FC SDTP-A inverse learning rate, 0.009572, is 32x
the top of Table 4's search domain (3e-4): with it, ``mnist,fc,sdtp`` and
``mnist,fc,ao_sdtp`` are best after epoch 1-2 and then degrade, as the
inverses' loss grows and the targets drift (update angles to backprop near
90 degrees). With ``--config.rule.inverse_optimizer.learning_rate`` at 3e-5
(SDTP) or 3e-4 (AO-SDTP) both kept improving over 20 epochs, one seed (see
benchmarks/README.md).

Architectures are the paper's Table 3 (tanh everywhere, Glorot uniform,
softmax output, SAME padding, untied biases in LC layers); the optimiser is
Adam with the Table 5 optimum for (dataset, arch, rule), beta1 = 0.9. The batch
size is unstated in the paper; 128 is used. The paper reports the best test
error within 500 epochs (Table 1).
"""

import ml_collections

from launch.configs import common

_ARCH = {
    ("mnist", "fc"): dict(arch="mlp", widths=(256,) * 5),
    ("mnist", "lc"): dict(arch="lcnet", convs=((32, 3, 2), (64, 3, 2)), dense=(1024,)),
    ("cifar10", "fc"): dict(arch="mlp", widths=(1024,) * 3),
    ("cifar10", "lc"): dict(arch="lcnet", convs=((64, 5, 2), (128, 5, 2), (256, 3, 1)),
                            dense=(1024,)),
    # (out-channels, kernel, stride) per layer, 224 -> 56 -> 28 -> 28 -> 14 -> 14 -> 7 -> 7,
    # straight into the 1000-way softmax: 259,859,368 forward parameters.
    ("imagenet", "lc"): dict(arch="lcnet", convs=((48, 9, 4), (48, 3, 2), (96, 5, 1), (96, 3, 2),
                                                 (192, 3, 1), (192, 3, 2), (384, 3, 1)),
                             dense=()),
}

# Config dataset names -> jaxbio dataset names.
_DATASETS = {"mnist": "mnist", "cifar10": "cifar10", "imagenet": "imagenet2012"}

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
    ("imagenet", "lc", "bp"): (0.000024, 0.999, 1e-8),
    ("imagenet", "conv", "bp"): (0.000049, 0.99, 1e-8),
    ("imagenet", "lc", "fa"): (0.000043, 0.99, 1e-4),
}
TP_RULES = ("dtp", "sdtp", "ao_sdtp", "tp")
RULES = ("bp", "fa", "dfa", "kp", "sign_symmetry") + TP_RULES
SCHEDULES = ("alternating", "parallel")

# Table 5, target propagation: (dataset, arch, method, schedule) ->
# (forward lr, b1, b2, eps), (inverse lr, b1, b2, eps), alpha (DTP only), sigma.
_TP = {
    ("mnist", "fc", "dtp", "parallel"):
        ((0.000757, 0.99, 0.95, 1e-3), (0.000768, 0.99, 0.999, 1e-4), 0.15008, 0.36133),
    ("mnist", "fc", "dtp", "alternating"):
        ((0.000308, 0.99, 0.99, 1e-4), (0.004593, 0.99, 0.999, 1e-4), 0.231758, 0.220444),
    ("mnist", "fc", "sdtp", "parallel"):
        ((0.000402, 0.99, 0.999, 1e-8), (0.001101, 0.99, 0.95, 1e-6), None, 0.213995),
    ("mnist", "fc", "sdtp", "alternating"):
        ((0.000301, 0.9, 0.95, 1e-4), (0.009572, 0.9, 0.95, 1e-3), None, 0.118267),
    ("mnist", "lc", "dtp", "parallel"):
        ((0.000905, 0.9, 0.99, 1e-4), (0.001239, 0.9, 0.999, 1e-4), 0.116131, 0.099236),
    ("mnist", "lc", "dtp", "alternating"):
        ((0.001481, 0.9, 0.99, 1e-4), (0.000137, 0.9, 0.999, 1e-6), 0.310892, 0.366964),
    ("mnist", "lc", "sdtp", "parallel"):
        ((0.000145, 0.9, 0.99, 1e-6), (0.001652, 0.9, 0.999, 1e-4), None, 0.061555),
    ("mnist", "lc", "sdtp", "alternating"):
        ((0.000651, 0.9, 0.99, 1e-4), (0.003741, 0.9, 0.99, 1e-4), None, 0.134739),
    ("cifar10", "fc", "dtp", "parallel"):
        ((0.000012, 0.9, 0.999, 1e-8), (0.000039, 0.9, 0.99, 1e-6), 0.125693, 0.169783),
    ("cifar10", "fc", "dtp", "alternating"):
        ((0.000013, 0.9, 0.999, 1e-8), (0.000114, 0.9, 0.99, 1e-4), 0.172085, 0.134811),
    ("cifar10", "fc", "sdtp", "parallel"):
        ((0.000129, 0.9, 0.99, 1e-6), (0.000011, 0.9, 0.99, 1e-6), None, 0.273341),
    ("cifar10", "fc", "sdtp", "alternating"):
        ((0.000041, 0.9, 0.99, 1e-4), (0.000014, 0.9, 0.99, 1e-8), None, 0.125678),
    ("cifar10", "lc", "dtp", "parallel"):
        ((0.000032, 0.9, 0.99, 1e-6), (0.000852, 0.9, 0.999, 1e-4), 0.189828, 0.146728),
    ("cifar10", "lc", "dtp", "alternating"):
        ((0.000036, 0.9, 0.99, 1e-8), (0.000389, 0.9, 0.999, 1e-8), 0.208141, 0.094869),
    ("cifar10", "lc", "sdtp", "parallel"):
        ((0.000020, 0.9, 0.99, 1e-4), (0.000261, 0.9, 0.999, 1e-6), None, 0.299769),
    ("cifar10", "lc", "sdtp", "alternating"):
        ((0.000109, 0.9, 0.99, 1e-4), (0.000011, 0.9, 0.99, 1e-8), None, 0.023804),
    ("imagenet", "lc", "dtp", "parallel"):
        ((0.000217, 0.9, 0.99, 1e-6), (0.000234, 0.9, 0.999, 1e-6), 0.163359, 0.192835),
    ("imagenet", "lc", "dtp", "alternating"):
        ((0.000101, 0.9, 0.99, 1e-8), (0.000064, 0.9, 0.999, 1e-8), 0.03706, 0.097217),
    ("imagenet", "lc", "sdtp", "parallel"):
        ((0.000011, 0.9, 0.999, 1e-6), (0.000170, 0.9, 0.999, 1e-8), None, 0.168522),
}

# ImageNet (Table 2): the rules and schedules the paper ran, as (rule, schedule) with
# schedule None for the rules without one; "conv" is BP only.
_IMAGENET = {"lc": (("dtp", "parallel"), ("dtp", "alternating"), ("sdtp", "parallel"),
                    ("fa", None), ("bp", None)),
             "conv": (("bp", None),)}


def _choice(kind, value, valid):
  if value not in valid:
    raise ValueError(f"unknown {kind} {value!r} for this config; valid choices: "
                     f"{', '.join(valid)}")


def get_config(arg: str = "mnist,fc,bp"):
  parts = arg.split(",")
  if len(parts) < 3:
    raise ValueError(f"expected '<dataset>,<arch>,<rule>[,<schedule>][,runlocal]', got {arg!r}")
  dataset, arch, rule, *extra = parts
  _choice("dataset", dataset, tuple(_DATASETS))
  _choice("arch", arch, ("fc", "lc", "conv"))
  _choice("rule", rule, RULES)
  schedule = next((e for e in extra if e in SCHEDULES), None)
  extra = [e for e in extra if e not in SCHEDULES]
  if dataset == "imagenet":
    _check_imagenet(arch, rule, schedule or ("alternating" if rule in TP_RULES else None))
  c = common.base_config()
  c.dataset.name = _DATASETS[dataset]
  model = dict(_ARCH[(dataset, "lc" if arch == "conv" else arch)])
  if arch == "conv":
    model["arch"] = "convnet"
  if model["arch"] != "mlp":
    model["pool"] = ""  # the paper removes pooling: it hurts target propagation.
  c.model.update(dict(activation="tanh", kernel_init="glorot_uniform", **model))
  c.rule.name = rule
  if rule == "kp":
    c.rule.weight_decay = 0.0  # Akrout et al.'s reference runs: no decay.
  if schedule is not None and rule not in TP_RULES:
    raise ValueError(f"a schedule ({schedule!r}) is only for the target propagation rules: "
                     f"{', '.join(TP_RULES)}")
  if rule in TP_RULES:
    _tp_settings(c, dataset, arch, rule, schedule or "alternating")
  table_rule = "fa" if rule in ("kp", "sign_symmetry") else rule
  key = (dataset, arch, table_rule)
  if key not in _ADAM:  # e.g. FA on the ConvNet: not in Table 5, use the LC optimum.
    key = (dataset, "lc", table_rule)
  if rule not in TP_RULES:
    lr, b2, eps = _ADAM[key]
    c.optimizer.update(dict(name="adam", learning_rate=lr, b1=0.9, b2=b2, eps=eps))
  if dataset == "cifar10":
    c.dataset.normalize = "standardize"
    c.dataset.augment = "crop_flip"  # the paper's "flips and random crops", horizontal.
  if dataset == "imagenet":
    # Streamed from disk, batch by batch. The paper states no augmentation or
    # preprocessing beyond the resize; jaxbio standardises with ImageNet's channel
    # statistics, as for CIFAR-10. Evaluation in batches of 128.
    c.data_placement = "host"
    c.dataset.test_split = "validation"  # ILSVRC-2012's test labels are not public.
    c.dataset.normalize = "standardize"
    c.eval_batch_size = 128
    c.steps_per_call = 50
  c.batch_size = 128
  c.num_epochs = 500
  if "runlocal" in extra:
    c.num_epochs = 1
  elif any(extra):
    raise ValueError(f"unknown config option {extra!r}; valid choices: runlocal, "
                     f"{', '.join(SCHEDULES)}")
  return c


def _check_imagenet(arch, rule, schedule):
  """One line if Table 2 has no ImageNet run of (arch, rule, schedule)."""
  if arch == "fc" or (rule, schedule) not in _IMAGENET[arch]:
    runs = "; ".join(f"{a},{r}" + (f",{s}" if s else "") for a, rs in _IMAGENET.items()
                     for r, s in rs)
    shown = f"{arch},{rule}" + (f",{schedule}" if schedule else "")
    raise ValueError(f"Bartunov et al. ran no ImageNet {shown!r} (Table 2); valid choices: "
                     f"imagenet,{runs.replace('; ', '; imagenet,')}")


def _tp_settings(c, dataset, arch, rule, schedule):
  """Table 5's optimum for a target propagation rule (AO-SDTP: SDTP's; TP: DTP's)."""
  method = {"ao_sdtp": "sdtp", "tp": "dtp"}.get(rule, rule)
  fwd, inv, alpha, sigma = _TP[(dataset, "lc" if arch == "conv" else arch, method, schedule)]
  adam = lambda lr, b1, b2, eps: dict(name="adam", learning_rate=lr, b1=b1, b2=b2, eps=eps)
  c.optimizer.update(adam(*fwd))
  c.rule.schedule = schedule
  c.rule.sigma = sigma
  c.rule.inverse_optimizer = ml_collections.ConfigDict(
      dict(adam(*inv), momentum=0.0, weight_decay=0.0, schedule="constant"))
  if alpha is not None:
    c.rule.alpha = alpha
  if rule == "ao_sdtp":
    c.rule.n_z = 512
