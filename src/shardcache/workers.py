"""What ``parallel`` means for processes: the one place that maps it to worker counts."""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import BaseContext

from .errors import ConfigurationError


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


START_METHOD_VARIABLE = "SHARDCACHE_START_METHOD"


def worker_context(workers: int) -> BaseContext | None:
    """The multiprocessing context for ``workers`` processes (None: DataLoader's default).

    ``SHARDCACHE_START_METHOD`` (``fork``, ``spawn`` or ``forkserver``), read at call
    time, chooses how decoding and DataLoader workers start: e.g. ``spawn`` to check that
    a raw loader and its samples and errors cross a process boundary by pickling, as they
    must on macOS and Windows, or to avoid forking a process that runs threads. Unset:
    ``spawn`` on macOS, the platform's default elsewhere.

    Raises:
        ConfigurationError: the variable names a start method this platform lacks.
    """
    if workers <= 0:
        return None
    method = os.environ.get(START_METHOD_VARIABLE, "").strip().lower()
    if method:
        if method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                f"{START_METHOD_VARIABLE}={method!r}: expected one of "
                + ", ".join(multiprocessing.get_all_start_methods())
            )
        return multiprocessing.get_context(method)
    if sys.platform == "darwin":
        return multiprocessing.get_context("spawn")
    return None
