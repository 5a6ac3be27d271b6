"""Builds that nobody will finish: another job's cooperative build whose coordinator is gone."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable

from .fs import Directory
from .jobfiles import FAILED, PLAN, JobFiles, job_names
from .slices import ALIVE, PEER_TIMEOUT, Liveness
from .waiting import Wait


def _parts(names: Iterable[str]) -> list[int]:
    """The slices that a job's file names mention (``<key>.<job>.<s>.slice``...)."""
    parts = set()
    for name in names:
        fields = name.split(".")
        if len(fields) >= 4 and fields[2].isdigit() and name.endswith((".slice", ".owner.json")):
            parts.add(int(fields[2]))
    return sorted(parts)


def end_abandoned_builds(
    locks: Directory, key: str, *, keep: str | None, timeout: float, name: str
) -> None:
    """End other jobs' cooperative builds of ``key`` that nobody will finish; remove their files.

    The caller holds ``key``'s build lock, so a job that wrote a plan and no longer holds
    that lock has lost its coordinator: its members may still be writing shards into the
    staging directory, and the caller's resume scan must not run under them. Each such job
    gets its failure marker (its members stop at their next check) and is waited for. A
    job without a plan whose members are alive is left alone: its coordinator waits for
    this very lock.
    """
    for job, names in job_names(locks, key).items():
        if job == keep:
            continue
        files = JobFiles(locks, key, job)
        parts = _parts(names)
        liveness = Liveness(files, PEER_TIMEOUT)
        planned = files.name(PLAN) in names
        if not planned and any(liveness.state(part) == ALIVE for part in parts):
            continue
        if planned:
            reason = "its coordinator stopped; a later build of the same cache ended it"
            with contextlib.suppress(OSError):  # FileExistsError: it has one already
                files.create(FAILED, json.dumps({"reason": reason}).encode())
        wait = Wait(timeout)
        while alive := [part for part in parts if liveness.state(part) == ALIVE]:
            described = ", ".join(liveness.describe(part) for part in alive)
            wait.tick(f"{described}, members of an abandoned build of {name}, to stop")
        files.remove_all()
