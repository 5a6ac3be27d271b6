"""What every member of a cooperative build does: decode its slice, and fail for all.

The roles are `coordinator.Coordinator` and `participant.Participant`; the protocol is
described in `cooperative`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import PeerFailedError
from ..core.types import RawDataLoader, Transform
from .fs import Directory
from .jobfiles import JobFiles
from .key import CacheKey, cache_key
from .options import ShardOptions
from .slices import SliceLock, Watch
from .staging import StagedShard
from .teams import Plan, Team
from .tree import CacheTree
from .writer import decode_shards

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Share:
    """One cache that a rank builds with others.

    Attributes:
        subset: the subset's name.
        items: its split items.
        loader: the raw data loader.
        team: the ranks that build it, this one among them (`teams.Team`).
        parallel: decoding processes of this rank, as for `ensure_cache`.
        transforms: applied before a sample is stored, as for `ensure_cache`.
        key: its cache key, when the caller computed it already.
    """

    subset: str
    items: Sequence[Any]
    loader: RawDataLoader
    team: Team
    parallel: int = -1
    transforms: Sequence[Transform] = ()
    key: CacheKey | None = None

    def cache_key(self) -> CacheKey:
        """The share's cache key."""
        if self.key is not None:
            return self.key
        return cache_key(self.subset, self.items, self.loader, self.transforms)


class SliceBuild:
    """One member's part in a cooperative build of one cache (`Coordinator`, `Participant`).

    Args:
        tree: the cache directory, open.
        locks: its ``.locks``, open.
        share: what to build, and with whom.
        key: the share's cache key.
        options: the shard options.
        lock_timeout: the caller's deadline for each wait.
        peer_timeout: see `slices.PEER_TIMEOUT`.
    """

    def __init__(
        self,
        tree: CacheTree,
        locks: Directory,
        share: Share,
        key: CacheKey,
        *,
        options: ShardOptions,
        lock_timeout: float,
        peer_timeout: float,
    ) -> None:
        self.tree, self.share, self.key, self.team = tree, share, key, share.team
        self.options, self.lock_timeout = options, lock_timeout
        self.name = tree.names.cache_name(share.subset, key.digest)
        self.files = JobFiles(locks, key.digest, self.team.job)
        staging_path = tree.names.staging(key.digest)
        self.watch = Watch(self.files, self.name, self.team, staging_path, peer_timeout)
        self.slice_lock = SliceLock(self.files, self.team, tree.policy.shared_file_mode)

    def published(self) -> bool:
        """Whether the cache is published (by this build, or by another job)."""
        return self.tree.names.find(self.key.digest) is not None

    def run(self) -> None:
        """This member's part; the caller holds its slice lock."""
        try:
            self._build()
        except PeerFailedError:
            raise
        except BaseException as error:
            # The others fail with the root cause, at their next check, not at a deadline.
            self.watch.abandon(
                f"{self.team.member} failed in slice {self.team.me}: "
                f"{type(error).__name__}: {error}",
                rank=self.team.member.rank,
            )
            raise

    def _build(self) -> None:
        raise NotImplementedError

    def _decode(
        self, staging: Directory, plan: Plan, *, watched: list[int]
    ) -> tuple[list[StagedShard], int]:
        """Decode this member's slice, checking on the ``watched`` members as it goes."""
        indices = plan.indices(self.team.me)
        if not indices:
            return [], self.options.target_bytes or 0
        logger.info(
            "rank %d decodes %d samples of %s (slice %d of %d)",
            self.team.member.rank,
            len(indices),
            self.name,
            self.team.me,
            len(self.team.members),
        )

        def progress(done: int) -> None:
            self.slice_lock.report_progress(done, len(indices))
            self.watch.check(watched)

        return decode_shards(
            staging,
            self.share.subset,
            self.share.items,
            self.share.loader,
            indices,
            progress=progress,
            parallel=self.share.parallel,
            options=self.options,
            transforms=self.share.transforms,
            build_samples=plan.to_decode,
        )
