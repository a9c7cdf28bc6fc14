"""Stop requests from the scheduler (SIGTERM) or the keyboard (SIGINT), remembered until the next step boundary.

Installed first thing by the training command, before any slow start-up work, so that every request is seen: the
loop saves a checkpoint at the next step boundary and exits (SIGTERM: 0, SIGINT: 130); a second Ctrl-C exits at once.
"""
from __future__ import annotations

import signal
from typing import Any

EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


class Preemption:
    """Remembers the first SIGTERM / SIGINT; a second SIGINT raises KeyboardInterrupt (exit now)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "Preemption":
        """Handle SIGTERM and SIGINT from now on (main thread only)."""
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signum

    @property
    def requested(self) -> bool:
        """True once a stop was asked for in this process."""
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """The exit code the run ends with after a requested stop."""
        return EXIT_CODES.get(self.signal, 0) if self.signal is not None else 0

    def reached(self, step: int) -> bool:
        """True on every process once any process was asked to stop (synchronised across hosts)."""
        import jax
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.requested

    def uninstall(self) -> None:
        """Restore the handlers that were there before `install`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
