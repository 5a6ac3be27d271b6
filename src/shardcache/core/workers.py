"""What ``parallel`` means for processes: the one place that maps it to worker counts."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext

from .errors import ConfigurationError
from .settings import start_method


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def num_workers(parallel: int) -> int:
    """Worker processes for ``parallel``: ``<0`` none (in-process), ``0`` one per CPU, ``n``."""
    if isinstance(parallel, bool) or not isinstance(parallel, int):
        raise ConfigurationError(
            f"parallel={parallel!r}: expected an int (-1: in-process, 0: one worker per CPU, "
            "n >= 1: n workers)"
        )
    if parallel < 0:
        return 0
    return parallel or available_cpus()


def worker_context(workers: int) -> BaseContext | None:
    """The multiprocessing context for ``workers`` processes (None: DataLoader's default).

    Chosen by ``SHARDCACHE_START_METHOD`` (see `shardcache.core.settings`).
    """
    if workers <= 0:
        return None
    method = start_method()
    return None if method is None else multiprocessing.get_context(method)
