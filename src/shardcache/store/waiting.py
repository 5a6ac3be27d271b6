"""Waiting for what another process writes: the caller's deadline, a log line, short polls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..core.errors import LockTimeoutError
from .locking import WAIT_LOG_INTERVAL

logger = logging.getLogger(__name__)

MAX_POLL = 0.5
"""Longest sleep between two looks at a file someone else writes."""

FIRST_POLL = 0.01
"""The first sleep; each next one is 1.5 times longer, up to `MAX_POLL`."""


class Wait:
    """One wait with a deadline: call `tick` after every look that found nothing yet.

    Args:
        timeout: seconds until `tick` raises `LockTimeoutError`.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        now = time.monotonic()
        self._deadline = now + timeout
        self._next_log = now + WAIT_LOG_INTERVAL
        self._sleep = FIRST_POLL

    def remaining(self) -> float:
        """Seconds left."""
        return self._deadline - time.monotonic()

    def tick(self, what: str | Callable[[], str]) -> None:
        """Give up past the deadline, log every `WAIT_LOG_INTERVAL` seconds, else sleep.

        ``what`` says whom and what for ("rank 1 (pid 7 on host a) to finish ..."); as a
        callable, it is called only for the error or the log line.

        Raises:
            LockTimeoutError: the deadline passed.
        """
        now = time.monotonic()
        remaining = self._deadline - now
        if remaining <= 0:
            raise LockTimeoutError(f"gave up after {self.timeout:.0f} s waiting for {_said(what)}")
        if now >= self._next_log:
            self._next_log = now + WAIT_LOG_INTERVAL
            logger.warning("waiting for %s (giving up in %.0f s)", _said(what), remaining)
        time.sleep(min(self._sleep, remaining))
        self._sleep = min(MAX_POLL, self._sleep * 1.5)


def _said(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()
