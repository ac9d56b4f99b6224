"""jaxbio: biologically plausible learning rules in JAX.

Subpackages load on first use (``jaxbio.rules``, ``jaxbio.nets``,
``jaxbio.recurrent``, ...), so ``import jaxbio`` itself is cheap and tools
that only check a config (the launcher's argument checks) need not import JAX.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("build", "checkpoint", "data", "distributed", "flax_models", "log", "metrics",
               "nets", "optim", "plot", "recurrent", "replicas", "rules", "train", "workdir")
__all__ = ["metrics", "nets", "recurrent", "rules", "__version__"]


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxbio.{name}")
  raise AttributeError(f"module 'jaxbio' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_SUBMODULES))
