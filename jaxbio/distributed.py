"""Multi-process (multi-host) start-up.

jaxbio runs one process per host (or per GPU); every process runs the same
program, and ``jax.jit`` over a global device mesh does the communication.
:func:`initialize` must run before any other JAX call.
"""

from __future__ import annotations

import os

from absl import logging
import jax


def under_slurm() -> bool:
  """True inside a Slurm job step with more than one task."""
  return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts JAX's distributed runtime when there is more than one process.

  With ``coordinator_address`` (``host:port`` of process 0), ``num_processes``
  and ``process_id`` given explicitly, those are used. Otherwise, under a
  multi-task Slurm job, everything is detected from Slurm's environment. With
  neither, this is a single-process run and nothing happens. On CPU the
  collectives use gloo (so multi-process CPU runs work, e.g. in tests).
  """
  explicit = coordinator_address is not None
  if explicit and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id too")
  if not explicit and (num_processes is not None or process_id is not None):
    raise ValueError("--num_processes and --process_id need --coordinator_address too "
                     "(under Slurm, give none of them)")
  if explicit and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id {process_id} must be in [0, {num_processes})")
  if not explicit and not under_slurm():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("process %d of %d; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
