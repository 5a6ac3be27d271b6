"""The coordinator of a cooperative build: plan the slices, then publish them as one cache."""

from __future__ import annotations

import contextlib
import logging
import os

from ..core.errors import CorruptCacheError
from .abandoned import end_abandoned_builds
from .cache import open_or_clear
from .format import ShardInfo
from .fs import Directory
from .layout import SHARD_NAME, STAGING_DIR, TEMPORARY_PREFIX
from .locking import BuildLock
from .slicebuild import SliceBuild
from .staging import StagedShard, make_staging, missing_indices, reusable_shards, staged_shard
from .teams import Plan
from .waiting import Wait
from .writer import publish_build

logger = logging.getLogger(__name__)


class Coordinator(SliceBuild):
    """The lowest rank: it plans under the key's build lock, decodes its slice, publishes."""

    def _build(self) -> None:
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


def _remove_unlisted(staging: Directory, shards: list[StagedShard]) -> None:
    """Nothing but the listed shards goes into the published directory."""
    listed = {shard.info.file for shard in shards}
    for name, _ in staging.entries():
        if name not in listed and (SHARD_NAME.match(name) or name.startswith(TEMPORARY_PREFIX)):
            staging.remove_tree(name)
