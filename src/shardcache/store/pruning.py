"""What ``shardcache prune`` removes: least recently used first, never a cache in use.

The decision lives here, testable without the command line: `plan_prune` says what would
go, `prune` removes it. Entries are considered oldest use first; one goes when it was not
used for ``older_than`` or while the directory is over ``max_size``. Builds in progress are
left alone, and a removal that fails (a live process holds the cache) frees nothing, so the
next entry is considered instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .inventory import BUILDING, CacheEntry
from .removal import Removal, remove

_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class PrunePolicy:
    """What may go: caches unused for ``older_than``, and the LRU ones over ``max_size``."""

    max_size: int | None = None
    older_than: timedelta | None = None


@dataclass(frozen=True)
class PruneOutcome:
    """One entry that was due to go, and whether it went."""

    entry: CacheEntry
    removal: Removal


@dataclass(frozen=True)
class PruneResult:
    """Every entry considered, in order, and what remains."""

    outcomes: tuple[PruneOutcome, ...]
    remaining_bytes: int
    remaining_count: int
    over_limit: bool

    @property
    def freed_bytes(self) -> int:
        """Bytes of the entries removed."""
        return sum(outcome.entry.size for outcome in self.outcomes if outcome.removal.removed)


def _run(
    entries: Sequence[CacheEntry],
    policy: PrunePolicy,
    now: datetime,
    attempt: Callable[[CacheEntry], Removal],
) -> PruneResult:
    total = sum(entry.size for entry in entries)
    cutoff = None if policy.older_than is None else now - policy.older_than
    candidates = sorted(
        (entry for entry in entries if entry.state != BUILDING),
        key=lambda entry: (entry.last_used or _OLDEST, entry.name),
    )
    outcomes: list[PruneOutcome] = []
    for entry in candidates:
        stale = cutoff is not None and (entry.last_used is None or entry.last_used < cutoff)
        over = policy.max_size is not None and total > policy.max_size
        if not (stale or over):
            continue
        removal = attempt(entry)
        outcomes.append(PruneOutcome(entry, removal))
        if removal.removed:
            total -= entry.size
    removed = sum(outcome.removal.removed for outcome in outcomes)
    return PruneResult(
        outcomes=tuple(outcomes),
        remaining_bytes=total,
        remaining_count=len(entries) - removed,
        over_limit=policy.max_size is not None and total > policy.max_size,
    )


def plan_prune(
    entries: Sequence[CacheEntry], policy: PrunePolicy, now: datetime | None = None
) -> PruneResult:
    """What `prune` would do now, removing nothing (entries in use are kept)."""

    def assume(entry: CacheEntry) -> Removal:
        return Removal(False, "in use by a running process") if entry.in_use else Removal(True)

    return _run(entries, policy, now or datetime.now(timezone.utc), assume)


def prune(
    cache_dir: Path,
    entries: Sequence[CacheEntry],
    policy: PrunePolicy,
    now: datetime | None = None,
) -> PruneResult:
    """Remove what ``policy`` lets go, each under its build lock and exclusive lease."""

    def attempt(entry: CacheEntry) -> Removal:
        return remove(cache_dir, entry.path, entry.name, entry.key, respect_leases=True)

    return _run(entries, policy, now or datetime.now(timezone.utc), attempt)
