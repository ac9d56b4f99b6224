"""jaxbio launcher: parses flags and calls ``jaxbio.train.train_and_evaluate``.

    python -m launch.main --config=launch/configs/bartunov_mnist_fc.py:fa \
        --workdir=/tmp/jaxbio/fa --config.num_epochs=5

Any config field can be overridden with ``--config.<field>=<value>``. Bad
configs exit non-zero with one line naming the bad value and the valid choices.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. launch/configs/bartunov_mnist_fc.py:bp.",
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
  # Imported here so that --help and flag errors do not pay for importing JAX.
  from jaxbio import data, distributed, train  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, data.DatasetNotFoundError, train.NonFiniteError) as e:
    logging.error("%s", e)
    sys.exit(f"jaxbio: error: {e}")


if __name__ == "__main__":
  app.run(main)
