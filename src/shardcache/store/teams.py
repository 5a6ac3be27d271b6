"""Who builds what in a cooperative build: the members of a team, and the coordinator's plan.

Plain values, the same on every member (`tiers.distributed.form_teams` makes the teams;
the coordinator writes the plan, `jobfiles`). The build itself is `cooperative`.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass

from ..core.errors import CorruptCacheError


def new_job_id() -> str:
    """A random job id (one per job: the members take global rank 0's)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Member:
    """One rank of a team."""

    rank: int
    host: str
    pid: int

    def __str__(self) -> str:
        return f"rank {self.rank} (pid {self.pid} on host {self.host})"


@dataclass(frozen=True)
class Team:
    """The ranks of one job that build one missing cache together.

    Attributes:
        job: the job's id, the same on every member.
        members: sorted by rank; member ``s`` decodes slice ``s``, member 0 coordinates.
        me: this process's position in ``members``.
    """

    job: str
    members: tuple[Member, ...]
    me: int

    def __post_init__(self) -> None:
        ranks = [member.rank for member in self.members]
        if ranks != sorted(set(ranks)) or not 0 <= self.me < len(ranks):
            raise ValueError(f"not a team: members {ranks}, me {self.me}")
        if not re.fullmatch(r"[0-9a-f]+", self.job):
            raise ValueError(f"job id {self.job!r} is not hexadecimal")

    @property
    def member(self) -> Member:
        """This process."""
        return self.members[self.me]

    @property
    def coordinator(self) -> Member:
        """The member that plans and publishes."""
        return self.members[0]

    @property
    def is_coordinator(self) -> bool:
        """Whether this process plans and publishes."""
        return self.me == 0


def _runs(indices: list[int]) -> tuple[tuple[int, int], ...]:
    """Sorted indices as ``[start, stop)`` runs."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][1] == index:
            runs[-1][1] += 1
        else:
            runs.append([index, index + 1])
    return tuple((start, stop) for start, stop in runs)


@dataclass(frozen=True)
class Plan:
    """Which samples each member decodes: the missing ones, in equal consecutive parts.

    Attributes:
        job: the job's id.
        num_items: samples of the whole cache.
        to_decode: samples missing when the plan was made (the others are in verified shards).
        slices: per member, its samples as ``[start, stop)`` runs.
    """

    job: str
    num_items: int
    to_decode: int
    slices: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def split(cls, job: str, num_items: int, missing: list[int], members: int) -> Plan:
        """``missing`` in ``members`` consecutive parts of equal size, give or take one."""
        count = len(missing)
        bounds = [-(-count * part // members) for part in range(members + 1)]  # first ones larger
        slices = tuple(_runs(missing[bounds[s] : bounds[s + 1]]) for s in range(members))
        return cls(job, num_items, count, slices)

    def indices(self, part: int) -> list[int]:
        """The samples of slice ``part``, in order (none for a member beyond the plan's)."""
        runs = self.slices[part] if part < len(self.slices) else ()
        return [index for start, stop in runs for index in range(start, stop)]

    def working(self) -> list[int]:
        """The slices that hold samples to decode."""
        return [part for part, runs in enumerate(self.slices) if runs]

    def to_json(self) -> str:
        """The plan file's text."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes, source: object) -> Plan:
        """Parse a plan file's bytes; `CorruptCacheError` naming ``source`` if it is not one."""
        try:
            fields = json.loads(data)
            plan = cls(
                str(fields["job"]),
                int(fields["num_items"]),
                int(fields["to_decode"]),
                tuple(tuple((int(a), int(b)) for a, b in runs) for runs in fields["slices"]),
            )
        except (ValueError, KeyError, TypeError, RecursionError) as error:
            raise CorruptCacheError(f"{source}: not a cooperative build plan ({error})") from error
        for runs in plan.slices:
            for start, stop in runs:
                if not 0 <= start < stop <= plan.num_items:
                    raise CorruptCacheError(
                        f"{source}: slice [{start}, {stop}) is outside the cache's "
                        f"{plan.num_items} samples"
                    )
        return plan
