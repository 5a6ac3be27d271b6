"""Crash and pause points: stop a child process at a chosen operation, deterministically.

An audit hook (``sys.addaudithook``) sees every ``open``, ``os.rename`` (also raised by
``os.replace``), ``os.mkdir``, ``shutil.rmtree``... with its arguments, before the operation
runs. At the ``nth`` event whose arguments match a pattern, the process exits at once with
`CRASH_EXIT` (no cleanup, no ``finally``: like a power cut, for this process), or pauses
until the test lets it go on, holding it inside a race window.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CRASH_EXIT = 77
"""The exit status of a child that reached its crash point."""

PAUSE_DEADLINE = 30.0
"""Seconds a paused process waits to be resumed before it goes on anyway."""


def _at_nth_event(event: str, pattern: str, nth: int, action: Callable[[], None]) -> None:
    """Run ``action`` at the ``nth`` audit ``event`` whose arguments match ``pattern``.

    The arguments are joined by spaces: ``open`` gives ``"<path> <mode> <flags>"``,
    ``os.rename`` gives ``"<src> <dst> ..."``.
    """
    matcher = re.compile(pattern)
    seen = 0

    def hook(name: str, arguments: tuple[Any, ...]) -> None:
        nonlocal seen
        if name != event or not matcher.search(" ".join(map(str, arguments))):
            return
        seen += 1
        if seen == nth:
            action()

    sys.addaudithook(hook)


def install_crash_hook(event: str, pattern: str, nth: int = 1) -> None:
    """``os._exit(CRASH_EXIT)`` at the ``nth`` audit ``event`` whose arguments match ``pattern``.

    The hook runs before the operation, so a crash "at" a rename leaves the source in place.
    """
    _at_nth_event(event, pattern, nth, lambda: os._exit(CRASH_EXIT))


def install_pause_hook(event: str, pattern: str, nth: int, paused: str, resume: str) -> None:
    """At the ``nth`` matching audit event, touch ``paused`` and wait for ``resume`` to exist.

    It holds a process inside a race window (before the operation) for as long as the test
    needs to make the other side of the race happen.
    """

    def pause() -> None:
        Path(paused).touch()
        deadline = time.monotonic() + PAUSE_DEADLINE
        while not Path(resume).exists() and time.monotonic() < deadline:
            time.sleep(0.005)

    _at_nth_event(event, pattern, nth, pause)
