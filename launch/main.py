"""jaxbio launcher: parses flags and calls ``jaxbio.train.train_and_evaluate``.

    python -m launch.main --config=launch/configs/bartunov.py:mnist,fc,fa \
        --config.dataset.data_dir=../shared/data/tfds --workdir=runs/mnist_fc_fa \
        --config.num_epochs=5

Experiment files: ``launch/configs/bartunov.py`` (BP and the feedback-alignment
family, Bartunov et al. 2018), ``launch/configs/hep_fmnist.py`` and
``launch/configs/hep_conv.py`` (holomorphic EP, Laborieux & Zenke 2024),
``launch/configs/flax_model.py`` (your own Flax model, named by
``--config.model.module=package.module:Callable``); the argument after ``:``
is documented at the top of each file. Any config field
can be overridden with ``--config.<field>=<value>``. Bad configs exit
non-zero with one line naming the bad value and the valid choices. The same
command on the same ``--workdir`` resumes a run; Ctrl-C or SIGTERM saves the
current step first. Libraries log at warning level unless ``--verbosity``
asks for more (``--verbosity=0`` shows their info lines).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file and argument, e.g. "
    "launch/configs/bartunov.py:mnist,fc,fa (also hep_fmnist.py, hep_conv.py, flax_model.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard and "
                               "checkpoints; an existing run there is resumed.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs without "
    "Slurm (Slurm jobs are detected automatically).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # pylint: disable=g-import-not-at-top
  from jaxbio import log, registry  # (no JAX: config errors come before it is imported)
  try:
    registry.validate(_CONFIG.value)
  except ValueError as e:
    _exit(f"jaxbio: error: {e}", 1)
  if not flags.FLAGS["verbosity"].present:
    log.quiet_libraries()
  if _CONFIG.value.model.get("dtype") == "float64":
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_enable_x64", True)  # before any array is made.
  try:
    # Imported here so that --help and flag errors do not pay for importing JAX.
    from jaxbio import distributed, train  # pylint: disable=g-import-not-at-top
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, train.NonFiniteError) as e:  # DatasetNotFoundError is a ValueError.
    # (The first line: JAX appends notes to errors raised while tracing.)
    _exit(f"jaxbio: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", 1)
  except train.Interrupted as e:
    _exit(f"jaxbio: {e}", 128 + e.signum)
  except KeyboardInterrupt:
    _exit("jaxbio: interrupted (Ctrl-C); not saved since the last checkpoint, which is kept",
          130)


def _exit(line: str, code: int) -> None:
  """Prints one line to stderr and exits with ``code``."""
  print(line, file=sys.stderr, flush=True)
  sys.exit(code)


def _check_config_args(argv: list[str]) -> str | None:
  """Loads ``--config`` and checks every ``--config.a.b=`` override's field.

  Returns a one-line error message, or None if all is well (absl would
  otherwise print a multi-line traceback for these errors).
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_jaxbio_config", path)
  if module_spec is None or not os.path.isfile(path):
    return f"config file {path!r} not found"
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:
    return f"{path}: {e}"
  for a in argv:
    if not a.startswith("--config."):
      continue
    field = a[len("--config."):].split("=", 1)[0]
    node = config
    parts = field.split(".")
    for i, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        where = ".".join(parts[:i]) or "the config"
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
        return (f"unknown config field {field!r}: {where} has no field {part!r}; valid "
                f"fields: {valid}")
      node = node[part]
  return None


def run() -> None:
  """``app.run(main)``, with one-line errors for bad config files and overrides."""
  try:
    message = _check_config_args(sys.argv[1:])
    if message:
      _exit(f"jaxbio: error: {message}", 1)
    app.run(main)
  except KeyboardInterrupt:
    _exit("jaxbio: interrupted (Ctrl-C) before training started; nothing to save", 130)


if __name__ == "__main__":
  run()
