"""One workdir, one writer: an exclusive `flock` on `workdir/run.lock` for the life of a training run.

The kernel drops the lock when its holder exits in any way (including kill -9), so a lock is never stale; the file
only records who holds it (pid, host, start time, command) for the message a second run stops with. In a multi-host
job only process 0 takes it (the other processes write nothing of their own to the workdir).
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from types import TracebackType

LOCK_FILE = "run.lock"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir; the message names it."""


class WorkdirLock:
    """Context manager: hold `workdir/run.lock` exclusively (when `enabled`), release it on exit."""

    def __init__(self, workdir: str, enabled: bool = True) -> None:
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self.enabled = enabled
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise WorkdirBusyError naming the holder; never waits."""
        if not self.enabled or self._fd is not None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process that has not said who it is"
            os.close(fd)
            raise WorkdirBusyError(
                f"{os.path.dirname(self.path)} is in use by another run ({holder}); wait for it to end or stop it, "
                "or use another --workdir.") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        command = " ".join(sys.argv)[:300]
        record = f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it could let two runs lock two different files)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
