"""jaxbio's console messages: one logger, ``jaxbio``, independent of absl's verbosity.

Training progress, warnings and the end-of-run summary go to the ``jaxbio``
logger. :func:`setup` (called by :func:`jaxbio.train.train_and_evaluate`)
gives it a handler that writes ``[jaxbio HH:MM:SS] message`` lines to the
current ``sys.stderr``, so progress shows whether jaxbio runs from the
launcher or from a user's own Python code. The launcher keeps the libraries
underneath (Orbax, TFDS, JAX) at warning level unless ``--verbosity`` asks
for more, so these lines are what a run prints.
"""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger("jaxbio")


class _Stderr(logging.StreamHandler):
  """Writes to whatever ``sys.stderr`` is at the time of each message."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


class _Formatter(logging.Formatter):

  def format(self, record: logging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
    return f"[jaxbio {stamp}] {level}{record.getMessage()}"


def setup(level: int = logging.INFO) -> logging.Logger:
  """Attaches jaxbio's stderr handler to the ``jaxbio`` logger (once) and sets its level."""
  if not any(isinstance(h, _Stderr) for h in logger.handlers):
    handler = _Stderr()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
  logger.setLevel(level)
  logger.propagate = False
  return logger


def quiet_libraries() -> None:
  """Keeps absl-logging libraries (Orbax, TFDS) and JAX's loggers at warning level."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("jax", "orbax", "tensorflow_datasets", "absl"):
    logging.getLogger(name).setLevel(logging.WARNING)
