"""Build one cache with several ranks of a job: each decodes a slice, one publishes it all.

For the ranks of a `Team` (those that miss the cache and share its directory):

1. Every member takes its slice lock (`slices.SliceLock`) of every cache it builds.
2. The coordinator (the lowest rank) takes the key's build lock, as a single builder does:
   it opens what another job published meanwhile, ends abandoned builds of the key, scans
   the staging directory for verified shards to resume from, and writes the plan: the
   missing samples in one consecutive part per member.
3. Every member decodes its part (``parallel`` processes, as a single builder) into shards
   of its own in the staging directory, then writes its done file.
4. The coordinator waits for every done file, checks that the shards tile every sample,
   and publishes the cache with one rename, as a single builder does; the others wait for
   the published cache.

Files and locks only, with the caller's deadlines (``lock_timeout``), never a collective:
nothing here imports torch.distributed or Lightning. Whoever waits watches the others
(`slices.Watch`): a member that died with its part unfinished, or one that failed (the
job's failure marker), ends the build on every member with `PeerFailedError`. Its shards
stay in the staging directory and the next build resumes from them, so an item is never
decoded twice in one job.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CorruptCacheError, PeerFailedError
from ..core.settings import DEFAULT_LOCK_TIMEOUT
from ..core.types import RawDataLoader, Transform
from .abandoned import end_abandoned_builds
from .cache import open_or_clear, prepare_tree
from .format import ShardInfo
from .fs import Directory
from .jobfiles import JobFiles
from .key import CacheKey, cache_key
from .layout import SHARD_NAME, STAGING_DIR, TEMPORARY_PREFIX
from .locking import BuildLock, describe_owner, owner_path, read_owner
from .options import ShardOptions
from .slices import PEER_TIMEOUT, START_GRACE, SliceLock, Watch
from .staging import StagedShard, make_staging, missing_indices, reusable_shards, staged_shard
from .teams import Plan, Team
from .tree import CacheTree
from .waiting import Wait
from .writer import decode_shards, publish_build

logger = logging.getLogger(__name__)


class _Build:
    """One member's part in a cooperative build of one cache.

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
        return self.tree.names.find(self.key.digest) is not None

    def run(self) -> None:
        """This member's part; the caller holds its slice lock."""
        try:
            if self.team.is_coordinator:
                self._coordinate()
            else:
                self._take_part()
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

    # ---- the coordinator ----------------------------------------------------------------

    def _coordinate(self) -> None:
        digest = self.key.digest
        with BuildLock(self.tree.names.lock(digest), self.name, self.lock_timeout):
            damaged = self.published()
            existing = open_or_clear(self.tree, self.key, self.name)
            if existing is not None:  # another job published it meanwhile
                existing.close()
                self.slice_lock.release(forget=True)
                return
            end_abandoned_builds(
                self.files.locks,
                digest,
                keep=self.team.job,
                timeout=self.lock_timeout,
                name=self.name,
            )
            with make_staging(self.tree, digest) as staging:
                reused = reusable_shards(staging, len(self.share.items))
                missing = missing_indices(len(self.share.items), reused)
                # A damaged cache (now discarded) may have sent the others on as if
                # published: then this rank decodes everything, and waits for nobody.
                members = 1 if damaged else len(self.team.members)
                plan = Plan.split(self.team.job, len(self.share.items), missing, members)
                self.files.write_plan(plan)
                self._log_plan(plan, len(missing))
                others = [part for part in plan.working() if part != self.team.me]
                mine, chosen = self._decode(staging, plan, watched=others)
                theirs, their_bytes = self._wait_for_slices(staging, plan, others)
                shards = sorted([*reused, *mine, *theirs], key=lambda shard: shard.info.start)
                self._check_tiling(shards)
                _remove_unlisted(staging, shards)
                publish_build(
                    tree=self.tree,
                    staging=staging,
                    name=self.name,
                    subset=self.share.subset,
                    items=self.share.items,
                    key=self.key,
                    shards=shards,
                    options=self.options,
                    chosen_bytes=chosen if mine else max(their_bytes, default=chosen),
                )
            # Its own files first: then the others never see "lock free, owner file there".
            self.slice_lock.release(forget=True)
            self.files.remove_all()
        with contextlib.suppress(OSError):
            os.rmdir(STAGING_DIR, dir_fd=self.tree.root.fd)  # tidy when no build is staged

    def _log_plan(self, plan: Plan, missing: int) -> None:
        logger.info(
            "building %s (%d samples, %d in verified shards) with %d ranks: %s",
            self.name,
            len(self.share.items),
            len(self.share.items) - missing,
            len(self.team.members),
            ", ".join(
                f"{member.rank}: {len(plan.indices(part))}"
                for part, member in enumerate(self.team.members)
            ),
        )

    def _wait_for_slices(
        self, staging: Directory, plan: Plan, others: list[int]
    ) -> tuple[list[StagedShard], list[int]]:
        """The shards of the ``others`` once all are done (a dead member ends the build)."""
        wait = Wait(self.lock_timeout)
        pending = list(others)
        shards: list[StagedShard] = []
        chosen: list[int] = []
        while True:
            for part in list(pending):
                done = self.files.read_done(part)
                if done is None:
                    continue
                pending.remove(part)
                shards += [self._staged(staging, plan, part, info) for info in done.shards]
                if done.shards:
                    chosen.append(done.shard_bytes)
            if not pending:
                return shards, chosen
            self.watch.check(pending)
            waiting = ", ".join(self.watch.liveness.describe(part) for part in pending)
            wait.tick(
                f"{waiting} to finish their slices of {self.name} ({plan.to_decode} samples in all)"
            )

    def _staged(self, staging: Directory, plan: Plan, part: int, info: ShardInfo) -> StagedShard:
        """A member's shard, checked against its slice, its header read back."""
        mine = plan.slices[part] if part < len(plan.slices) else ()
        if not any(start <= info.start and info.stop <= stop for start, stop in mine):
            raise CorruptCacheError(
                f"{self.files.path(f'{part}.done.json')}: lists {info.file}, samples "
                f"[{info.start}, {info.stop}) outside slice {part} of the plan"
            )
        return staged_shard(staging, info)

    def _check_tiling(self, shards: list[StagedShard]) -> None:
        expected = 0
        for shard in shards:
            if shard.info.start != expected:
                raise CorruptCacheError(
                    f"the slices of {self.name} do not tile its samples: {shard.info.file} "
                    f"follows sample {expected}"
                )
            expected = shard.info.stop
        if expected != len(self.share.items):
            raise CorruptCacheError(
                f"the slices of {self.name} cover {expected} of {len(self.share.items)} samples"
            )

    # ---- every member ---------------------------------------------------------------------

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

    def _take_part(self) -> None:
        plan = self._wait_for_plan()
        if plan is None:
            self.slice_lock.release(forget=True)
            return
        # The coordinator made the staging directory before it wrote the plan.
        with self.tree.staging(self.key.digest) as staging:
            written, chosen = self._decode(staging, plan, watched=[0])
        self.files.write_done(self.team, [shard.info for shard in written], chosen)
        self.slice_lock.release()  # the done file speaks for this member from now on
        self._wait_for_publication()

    def _wait_for_plan(self) -> Plan | None:
        """The coordinator's plan, or None when the cache is published meanwhile."""
        # The coordinator may itself wait up to lock_timeout for another job's build lock.
        wait = Wait(self.lock_timeout + START_GRACE)
        coordinator = self.team.coordinator
        logger.info("%s waits for %s to plan %s", self.team.member, coordinator, self.name)

        def waiting() -> str:
            holder = read_owner(owner_path(self.tree.names.lock(self.key.digest)))
            return (
                f"{coordinator} to plan the build of {self.name}; its build lock is held by "
                f"{describe_owner(holder)}"
            )

        while True:
            if self.published():
                return None
            plan = self.files.read_plan()
            if plan is not None:
                if (plan.job, plan.num_items) != (self.team.job, len(self.share.items)):
                    raise CorruptCacheError(
                        f"{self.files.path('plan.json')}: a plan of job {plan.job} for "
                        f"{plan.num_items} samples, not of job {self.team.job} for "
                        f"{len(self.share.items)}"
                    )
                return plan
            self.watch.check([0], finished=self.published)
            wait.tick(waiting)

    def _wait_for_publication(self) -> None:
        wait = Wait(self.lock_timeout + START_GRACE)
        while not self.published():
            self.watch.check([0], finished=self.published)
            wait.tick(f"{self.team.coordinator} to publish {self.name}")


def _remove_unlisted(staging: Directory, shards: list[StagedShard]) -> None:
    """Nothing but the listed shards goes into the published directory."""
    listed = {shard.info.file for shard in shards}
    for name, _ in staging.entries():
        if name not in listed and (SHARD_NAME.match(name) or name.startswith(TEMPORARY_PREFIX)):
            staging.remove_tree(name)


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


def build_together(
    cache_dir: str | os.PathLike[str],
    shares: Sequence[Share],
    *,
    shard_bytes: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    narrow: bool = True,
    peer_timeout: float = PEER_TIMEOUT,
) -> None:
    """Publish each share's cache in ``cache_dir`` with its team, one cache after another.

    Returns once every one is published (open them with `store.cache.ensure_cache`). Every
    member calls this with its own teams (the same members and job, its own position), its
    shares in the same order as the others. It first takes its slice lock of every cache,
    so that a member still busy with an earlier cache counts as alive for a later one.
    Arguments as for `ensure_cache`; ``peer_timeout`` as `slices.PEER_TIMEOUT`.

    Raises:
        PeerFailedError: another member died or failed; the build is abandoned.
        LockTimeoutError: a wait outlasted ``lock_timeout``.
    """
    path = Path(cache_dir).absolute()
    options = ShardOptions(target_bytes=shard_bytes, narrowing=narrow)
    keyed = [(share, share.cache_key()) for share in shares]
    with prepare_tree(path, None) as tree:
        missing = [(share, key) for share, key in keyed if tree.names.find(key.digest) is None]
        if not missing:
            return
        with tree.locks(create=True) as locks, contextlib.ExitStack() as stack:
            builds = [
                _Build(
                    tree,
                    locks,
                    share,
                    key,
                    options=options,
                    lock_timeout=lock_timeout,
                    peer_timeout=peer_timeout,
                )
                for share, key in missing
            ]
            for build in builds:
                stack.enter_context(build.slice_lock)
            for build in builds:
                build.run()
