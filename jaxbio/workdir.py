"""A run's working directory: path resolution, checks, and one run at a time.

Paths a user types may be relative (``--workdir=runs/fa``); jaxbio resolves
them against the current directory once, at the start of a run, because
Orbax and TFDS need absolute paths. Messages keep showing the path as typed.

:class:`WorkdirLock` makes sure only one run uses a workdir at a time. It
holds an exclusive ``flock(2)`` on ``<workdir>/.jaxbio.lock`` for the life of
the run and writes the holder's process id, host and start time into it. The
kernel releases the lock when the holding process ends, however it ends, so a
lock left by a killed run never blocks a resume; a second run on a busy
workdir stops with one line naming the other run. File systems without
``flock`` support fall back to the recorded process id: a holder on this host
that no longer exists does not count.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

LOCK_NAME = ".jaxbio.lock"


def resolve(path: str) -> str:
  """``path`` with ``~`` expanded, made absolute against the current directory.

  Remote paths (``gs://...``) are returned unchanged.
  """
  path = os.fspath(path)
  if "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def check(workdir: str, shown: str | None = None) -> None:
  """One-line ValueError if ``workdir`` could not be used, without creating it.

  Args:
    workdir: the absolute path.
    shown: the path as the user typed it, for messages.
  """
  shown = shown or workdir
  if "://" in workdir:
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {shown} exists and is not a directory")
  probe = workdir
  while not os.path.exists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise ValueError(f"cannot create workdir {shown}: {probe} is a file, not a directory")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ValueError(f"workdir {shown} is not writable (permission denied on {probe})")


def create(workdir: str, shown: str | None = None) -> None:
  """Creates ``workdir`` (and its parents); one-line ValueError on failure."""
  shown = shown or workdir
  check(workdir, shown)
  if "://" in workdir:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create workdir {shown}: {e.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f"workdir {shown} is not writable")


class WorkdirBusyError(ValueError):
  """Another run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """An exclusive, crash-safe lock on a workdir (see the module docstring).

  Example::

      with WorkdirLock(workdir):
        ...  # train; a second run on workdir raises WorkdirBusyError
  """

  def __init__(self, workdir: str, shown: str | None = None):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.shown = shown or workdir
    self._fd: int | None = None

  def _holder(self) -> dict:
    try:
      with open(self.path, encoding="utf-8") as f:
        return json.loads(f.read() or "{}")
    except (OSError, ValueError):
      return {}

  def _busy(self, holder: dict) -> WorkdirBusyError:
    who = (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
           f"{holder.get('started', '?')}") if holder else "a process that left no record"
    return WorkdirBusyError(f"workdir {self.shown} is in use by another jaxbio run ({who}); "
                            "wait for it to end, stop it, or use another --workdir")

  def acquire(self) -> None:
    """Takes the lock; raises WorkdirBusyError naming the holder if another run has it."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise self._busy(self._holder()) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        os.close(fd)
        raise
      holder = self._holder()  # No flock here: trust a live process id on this host.
      if holder and (holder.get("host") != socket.gethostname()
                     or _pid_alive(int(holder.get("pid", -1)))) and holder.get("pid") != os.getpid():
        os.close(fd)
        raise self._busy(holder) from None
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Clears the record and releases the lock (idempotent).

    The file itself stays: removing it could let two later runs lock two
    different files of the same name.
    """
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
    finally:
      os.close(self._fd)  # releases the flock.
      self._fd = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
