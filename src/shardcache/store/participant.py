"""Every other member of a cooperative build: wait for the plan, decode, wait for publication."""

from __future__ import annotations

import logging

from ..core.errors import CorruptCacheError
from .owners import describe_owner, owner_path, read_owner
from .slicebuild import SliceBuild
from .slices import START_GRACE
from .teams import Plan
from .waiting import Wait

logger = logging.getLogger(__name__)


class Participant(SliceBuild):
    """A member that decodes the slice the coordinator's plan gives it."""

    def _build(self) -> None:
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
