"""Preemption: SIGTERM and Ctrl-C become a flag that the training loop acts on.

:class:`PreemptionFlag` turns the signals into a flag checked at chunk
boundaries, where every process is in lockstep, so a multi-process save can
never deadlock; the loop then saves the current step and stops.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxbio.log import logger as logging

class PreemptionFlag:
  """Within the context, SIGTERM and SIGINT (Ctrl-C) only set a flag, acted upon between steps.

  Exiting from inside a signal handler is unsafe for training: the handler
  runs wherever the main thread is (inside a save, or between a donated call
  and the assignment of its result), and with several processes each process
  is somewhere else, so a collective save could deadlock. Instead the
  training loop asks :meth:`agreed` at every chunk boundary, which all
  processes reach in lockstep; any process having been signalled makes all of
  them save and exit together. A second Ctrl-C raises ``KeyboardInterrupt``
  at once (without saving). The previous handlers are restored on exit.
  Outside the main thread (where Python cannot install handlers) the flag is
  inert.

  Attributes:
    requested: whether a signal arrived.
    signum: the first signal received (None before one arrives).
  """

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self.signals = signals
    self.requested = False
    self.signum: int | None = None
    self._previous = {}

  def _handler(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signum = self.signum or signum
    if signum == signal.SIGINT:
      logging.warning("Ctrl-C: stopping after the current steps and saving them (press "
                      "Ctrl-C again to quit without saving)")
    else:
      logging.warning("received signal %d; stopping after the current steps", signum)

  def __enter__(self) -> PreemptionFlag:
    if threading.current_thread() is threading.main_thread():
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for s, h in self._previous.items():  # None: a handler not set from Python.
      signal.signal(s, signal.SIG_DFL if h is None else h)
    self._previous = {}

  def agreed(self) -> bool:
    """Whether any process has been signalled (a collective with several processes).

    With several processes, ``signum`` is set to SIGTERM on the processes that
    were not signalled themselves.
    """
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if np.any(flags) and self.signum is None:
      self.signum = int(np.max(flags))
    return bool(np.any(flags))
