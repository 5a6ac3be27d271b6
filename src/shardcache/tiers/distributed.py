"""The ranks of a multi-process job agree on who builds what: one quick exchange in setup.

The only use of ``torch.distributed`` in shardcache. The build itself goes through files and
locks with our own deadlines (`shardcache.store.cooperative`); the exchange only tells each
rank whom it builds with. `Exchange`, entered by every rank at the start of ``setup``:

1. creates a gloo group of its own, with the caller's deadline (``lock_timeout``), before
   anything can fail: a group created after a peer died waits in its rendezvous for the
   default timeout (30 minutes);
2. gathers a `View` from every rank: its rank, host and pid, the identity of its cache
   directory, and the keys it misses. Quick, and it waits for no build: the ranks have all
   just passed Lightning's pre-setup barrier;
3. `form_teams`: the ranks that read the same directory identity (whatever path they
   mount it at) and miss the same key build that key together; the others build alone;
4. `Exchange.barrier`, after the builds: a monitored barrier with the caller's deadline,
   so that a rank with nothing to build waits for those that build here, and not in
   Lightning's next barrier, which gives up after 30 minutes. A dead peer ends it at once.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

import torch.distributed as dist

from ..core.workers import available_cpus
from ..store.teams import Member, Team

logger = logging.getLogger(__name__)


def available() -> bool:
    """Whether this process is one rank of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass(frozen=True)
class View:
    """What one rank tells the others.

    Attributes:
        rank: its global rank.
        host: its host name.
        pid: its process id.
        identity: its cache directory's identity (None: it cannot cooperate).
        missing: the keys it needs and finds unpublished.
        job: a job id it proposes (global rank 0's is taken).
    """

    rank: int
    host: str
    pid: int
    identity: str | None
    missing: tuple[str, ...]
    job: str

    @classmethod
    def mine(cls, identity: str | None, missing: Sequence[str], job: str) -> View:
        """This process's view."""
        return cls(
            dist.get_rank(), socket.gethostname(), os.getpid(), identity, tuple(missing), job
        )


def form_teams(views: Sequence[View], rank: int) -> dict[str, Team]:
    """Rank ``rank``'s team for each key it builds with others (keys it builds alone: none).

    The same on every rank: a key's members are the ranks that share a directory identity
    and miss the key, sorted by rank; the job id is global rank 0's.
    """
    ordered = sorted(views, key=lambda view: view.rank)
    me = next(view for view in ordered if view.rank == rank)
    if me.identity is None:
        return {}
    teams = {}
    for key in me.missing:
        members = [view for view in ordered if view.identity == me.identity and key in view.missing]
        if len(members) > 1:
            team = tuple(Member(view.rank, view.host, view.pid) for view in members)
            teams[key] = Team(ordered[0].job, team, members.index(me))
    return teams


def decoding_processes(parallel: int, views: Sequence[View], rank: int) -> int:
    """``parallel`` for a rank's slice of a cooperative build.

    ``0`` (one process per CPU) shares the host's CPUs among the ranks that decode on it;
    other settings are kept.
    """
    if parallel != 0:
        return parallel
    host = next(view.host for view in views if view.rank == rank)
    decoding = sum(1 for view in views if view.host == host and view.missing)
    return max(1, available_cpus() // max(1, decoding))


class Exchange:
    """A gloo group of the job's ranks for one ``setup``; a context manager.

    Args:
        timeout: seconds any collective on it may wait (the caller's ``lock_timeout``).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timedelta(seconds=timeout)
        self.group: Any = None

    def __enter__(self) -> Exchange:
        # gloo whatever the job's backend: the exchange is CPU objects, and monitored_barrier
        # exists for gloo only.
        self.group = dist.new_group(backend="gloo", timeout=self.timeout)
        return self

    def gather(self, view: View) -> list[View]:
        """Every rank's view, by rank."""
        views: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(views, view, group=self.group)
        return sorted(views, key=lambda other: other.rank)

    def barrier(self) -> None:
        """Wait for every rank, up to the deadline; fails at once when a rank died."""
        # The deadline must be given: monitored_barrier's default is the 30-minute one.
        dist.monitored_barrier(group=self.group, timeout=self.timeout, wait_all_ranks=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        group, self.group = self.group, None
        if group is not None:
            dist.destroy_process_group(group)
