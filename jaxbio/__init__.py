"""jaxbio: biologically plausible learning rules in JAX."""

__version__ = "0.1.0"

from jaxbio import metrics, nets, recurrent, rules  # noqa: E402

__all__ = ["metrics", "nets", "recurrent", "rules", "__version__"]
