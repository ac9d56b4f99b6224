"""Names jaxbio knows, without importing JAX: datasets, networks, rules, and config checks.

Everything here is plain Python, so the launcher can check a config (names,
field types and ranges) before JAX, TFDS or any data are loaded; the modules
that build things (:mod:`jaxbio.build`, :mod:`jaxbio.data`) take their names
from here.
"""

from __future__ import annotations

import dataclasses

NORMALIZE_MODES = ("scale", "standardize")
AUGMENTATIONS = ("none", "crop_flip", "crop", "flip")
CHUNK_LOOPS = ("while", "unrolled")
PLACEMENTS = ("device", "host")
CONFIG_VERSION = 1



@dataclasses.dataclass(frozen=True)
class Family:
  """A network family: the architectures in it, and what the trainer builds for them.

  Attributes:
    name: ``feedforward`` (stacks of blocks, :mod:`jaxbio.nets`) or
      ``recurrent`` (convergent recurrent networks, :mod:`jaxbio.recurrent`).
    archs: the ``model.arch`` names of the family.
    reference: ``module:function`` building the default reference rule
      (exact gradients) from ``(net, rule_config)``.
    diagnostics: ``module:function`` building the family's periodic
      diagnostics ``(params, x, labels, key) -> dict`` from
      ``(net, rule_config)``, or None.
    penalties: config subtrees of penalties this family's rules may add
      (``homeostasis``: the Jacobian-homeostasis loss).
  """
  name: str
  archs: tuple[str, ...]
  reference: str
  diagnostics: str | None = None
  penalties: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RuleEntry:
  """A learning rule the launcher can build by name.

  Attributes:
    name: the ``rule.name`` of configs.
    family: the network family it trains (a key of :data:`FAMILIES`).
    factory: ``module:function``, called as ``factory(net, **kwargs)`` with the
      config's ``rule`` fields as keyword arguments.
    optimizers: keyword arguments of the factory that are optimisers of the
      rule's own state: their config subtrees (like ``config.optimizer``) are
      turned into ``optax`` transformations, with schedules over the run's
      total steps, before the factory is called.
  """
  name: str
  family: str
  factory: str
  optimizers: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("feedforward", ("mlp", "convnet", "lcnet"), reference="jaxbio.build:backprop_reference"),
    Family("recurrent", ("hep_mlp", "hep_loop_mlp", "hep_cnn"),
           reference="jaxbio.build:rbp_reference", diagnostics="jaxbio.build:recurrent_diagnostics",
           penalties=("homeostasis",)),
    # A user's own Flax (NNX or Linen) model, named by model.module (jaxbio.flax_models).
    Family("flax", ("flax",), reference="jaxbio.build:flax_backprop_reference"),
)}

# Rules by (family, name): one name (e.g. "fa") may train several families.
RULE_ENTRIES: dict[tuple[str, str], RuleEntry] = {}


def register_rule(entry: RuleEntry) -> RuleEntry:
  """Adds a rule to the registry (your own rules too), so configs can name it."""
  if entry.family not in FAMILIES:
    raise ValueError(f"unknown family {entry.family!r} for rule {entry.name!r}; valid choices: "
                     f"{', '.join(FAMILIES)}")
  RULE_ENTRIES[(entry.family, entry.name)] = entry
  return entry


def rule_names() -> tuple[str, ...]:
  """Every registered rule name, in registration order."""
  return tuple(dict.fromkeys(name for _, name in RULE_ENTRIES))


for _entry in (
    RuleEntry("bp", "feedforward", "jaxbio.rules.feedback:backprop"),
    RuleEntry("fa", "feedforward", "jaxbio.rules.feedback:feedback_alignment"),
    RuleEntry("dfa", "feedforward", "jaxbio.rules.feedback:direct_feedback_alignment"),
    RuleEntry("kp", "feedforward", "jaxbio.rules.feedback:kolen_pollack"),
    RuleEntry("sign_symmetry", "feedforward", "jaxbio.rules.feedback:sign_symmetry"),
    RuleEntry("burstccn", "feedforward", "jaxbio.rules.burst:burstccn"),
    RuleEntry("burstprop", "feedforward", "jaxbio.rules.burst:burstprop"),
    RuleEntry("tp", "feedforward", "jaxbio.rules.target_prop:tp",
              optimizers=("inverse_optimizer",)),
    RuleEntry("dtp", "feedforward", "jaxbio.rules.target_prop:dtp",
              optimizers=("inverse_optimizer",)),
    RuleEntry("sdtp", "feedforward", "jaxbio.rules.target_prop:sdtp",
              optimizers=("inverse_optimizer",)),
    RuleEntry("ao_sdtp", "feedforward", "jaxbio.rules.target_prop:ao_sdtp",
              optimizers=("inverse_optimizer",)),
    RuleEntry("rdd", "feedforward", "jaxbio.rules.spiking_feedback:rdd"),
    RuleEntry("weight_mirror", "feedforward", "jaxbio.rules.spiking_feedback:weight_mirror"),
    RuleEntry("ep", "recurrent", "jaxbio.recurrent.hep:ep"),
    RuleEntry("hep", "recurrent", "jaxbio.recurrent.hep:hep"),
    RuleEntry("hep_online", "recurrent", "jaxbio.recurrent.hep:hep_online"),
    RuleEntry("rbp", "recurrent", "jaxbio.recurrent.hep:rbp"),
    RuleEntry("bptt", "recurrent", "jaxbio.recurrent.hep:bptt"),
    RuleEntry("bp", "flax", "jaxbio.flax_models:backprop"),
    RuleEntry("fa", "flax", "jaxbio.flax_models:feedback_alignment"),
    RuleEntry("kp", "flax", "jaxbio.flax_models:kolen_pollack"),
    RuleEntry("sign_symmetry", "flax", "jaxbio.flax_models:sign_symmetry"),
):
  register_rule(_entry)

FEEDFORWARD_ARCHS = FAMILIES["feedforward"].archs
RECURRENT_ARCHS = FAMILIES["recurrent"].archs
ARCHS = FEEDFORWARD_ARCHS + RECURRENT_ARCHS


def rules_of(family: str) -> tuple[str, ...]:
  """The registered rule names that train ``family``."""
  return tuple(name for fam, name in RULE_ENTRIES if fam == family)


def family_of_arch(arch: str) -> Family:
  """The family of ``model.arch``; one-line error naming the valid choices."""
  for family in FAMILIES.values():
    if arch in family.archs:
      return family
  raise ValueError(f"unknown model.arch {arch!r}; valid choices: {', '.join(ARCHS)}")


def resolve(target: str):
  """Imports ``module:attribute``."""
  import importlib  # pylint: disable=g-import-not-at-top
  module, _, attr = target.partition(":")
  return getattr(importlib.import_module(module), attr)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about one image-classification dataset.

  Attributes:
    name: TFDS name, e.g. ``"cifar10"`` or ``"imagenet_resized/32x32"``.
    num_classes: Number of label classes.
    image_shape: ``(H, W, C)`` of one decoded image.
    mean: Per-channel pixel mean, in ``[0, 1]`` pixel units.
    std: Per-channel pixel standard deviation, in ``[0, 1]`` pixel units.
    train_split: Name of the training split.
    test_split: Name of the held-out split used for evaluation.
    streamed: Whether the decoded dataset is too large for host memory. A
      streamed split keeps only its labels in memory; its images are decoded
      from disk batch by batch (:class:`jaxbio.data.StreamedImages`), and the
      trainer needs ``data_placement='host'``.
    resize: Whether the records hold images of varying size, resized on
      decoding to ``image_shape`` (bilinear, both sides, aspect not kept).
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_split: str = "train"
  test_split: str = "test"
  streamed: bool = False
  resize: bool = False


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,)),
        DatasetSpec("fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,)),
        DatasetSpec(
            "cifar10", 10, (32, 32, 3),
            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        DatasetSpec(
            "cifar100", 100, (32, 32, 3),
            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        DatasetSpec(
            "svhn_cropped", 10, (32, 32, 3),
            (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
        DatasetSpec(
            "imagenet_resized/32x32", 1000, (32, 32, 3),
            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
            test_split="validation"),
        # ILSVRC-2012 at 224 x 224 (Bartunov et al. 2018 resize every image to
        # it); 1.28 M training images, about 190 GB decoded: streamed.
        DatasetSpec(
            "imagenet2012", 1000, (224, 224, 3),
            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
            test_split="validation", streamed=True, resize=True),
    )
}


def validate(config) -> None:
  """Checks the fields the trainer itself uses, and the names; raises one-line ValueErrors.

  Needs no JAX. Networks' and rules' own hyperparameters are checked when
  they are built (:func:`jaxbio.train.build_experiment`).
  """
  version = config.get("version", CONFIG_VERSION)
  if version != CONFIG_VERSION:
    raise ValueError(f"config version {version} is not supported; this jaxbio reads config "
                     f"version {CONFIG_VERSION}")
  for field in ("batch_size", "num_epochs", "steps_per_call", "eval_batch_size"):
    value = config.get(field)
    if not (isinstance(value, int) and value > 0):
      raise ValueError(f"config.{field} must be a positive integer, got {value!r}")
  for field in ("alignment_every", "log_every"):
    value = config.get(field, 0)
    if not (isinstance(value, int) and value >= 0):
      raise ValueError(f"config.{field} must be an integer >= 0 (0 disables), got {value!r}")
  factor = config.get("divergence_factor", 0.0)
  if not (isinstance(factor, (int, float)) and (factor == 0 or factor > 1)):
    raise ValueError(f"config.divergence_factor must be 0 (off) or a number > 1, got {factor!r}")
  if config.dataset.name not in DATASETS:
    raise ValueError(f"unknown dataset.name {config.dataset.name!r}; valid choices: "
                     f"{', '.join(DATASETS)}")
  ckpt = config.get("checkpoint")
  if ckpt is not None and (ckpt.every_steps < 0 or ckpt.keep < 1):
    raise ValueError(f"config.checkpoint needs every_steps >= 0 and keep >= 1, got "
                     f"every_steps={ckpt.every_steps}, keep={ckpt.keep}")
  check_placement(config.get("data_placement", "device"))
  if DATASETS[config.dataset.name].streamed and config.get("data_placement") != "host":
    raise ValueError(f"dataset {config.dataset.name!r} is streamed from disk (it does not fit "
                     f"in memory): it needs data_placement 'host', got "
                     f"{config.get('data_placement', 'device')!r}")
  loop = config.get("chunk_loop", "while")
  if loop not in CHUNK_LOOPS:
    raise ValueError(f"unknown chunk_loop {loop!r}; valid choices: {', '.join(CHUNK_LOOPS)}")
  if config.dataset.normalize not in NORMALIZE_MODES:
    raise ValueError(f"unknown dataset.normalize {config.dataset.normalize!r}; valid choices: "
                     f"{', '.join(NORMALIZE_MODES)}")
  if config.dataset.augment not in AUGMENTATIONS:
    raise ValueError(f"unknown dataset.augment {config.dataset.augment!r}; valid choices: "
                     f"{', '.join(AUGMENTATIONS)}")
  check_names(config.model.arch, config.rule.name)
  from jaxbio import replicas  # pylint: disable=g-import-not-at-top  (no JAX either)
  replicas.plan(config)


def check_placement(placement: str) -> None:
  if placement not in PLACEMENTS:
    raise ValueError(f"unknown data_placement {placement!r}; valid choices: "
                     f"{', '.join(PLACEMENTS)}")


def check_names(arch: str, rule: str) -> None:
  """One-line errors for an unknown architecture or rule, or a rule on the wrong family."""
  check_rule(rule, family_of_arch(arch).name)


def check_rule(rule: str, family: str) -> RuleEntry:
  """The registry entry of ``rule``; one-line errors if unknown or not for ``family``."""
  if (family, rule) in RULE_ENTRIES:
    return RULE_ENTRIES[(family, rule)]
  if rule not in rule_names():
    raise ValueError(f"unknown rule.name {rule!r}; valid choices: {', '.join(rule_names())}")
  other = next(fam for fam, name in RULE_ENTRIES if name == rule)
  archs, rules = ", ".join(FAMILIES[other].archs), ", ".join(rules_of(family))
  if other == "feedforward" and family == "recurrent":
    raise ValueError(f"rule {rule!r} trains feedforward networks ({archs}); for a recurrent "
                     f"network use one of: {rules}")
  if other == "recurrent":
    raise ValueError(f"rule {rule!r} needs a convergent recurrent network ({archs}); for a "
                     f"{family} network use one of: {rules}")
  raise ValueError(f"rule {rule!r} needs jaxbio's layered networks ({archs}): it uses every "
                   f"layer's activity; for a {family} network use one of: {rules}")
