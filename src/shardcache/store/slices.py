"""The files and locks through which the ranks of a cooperative build meet.

When several ranks of one job miss the same cache, each decodes a slice of it
(`store.cooperative`). They coordinate through files under the cache directory (names in
`layout`), never through a collective: a collective times out (30 minutes by default)
before a long build ends, while here every wait has the caller's own deadline and says in
the log whom it waits for.

- `directory_identity`: ranks that read the same token share the directory, whatever path
  each mounts it at (node-local directories often share a path; one NFS export may not).
- `SliceLock`: each member holds its slice lock for as long as it takes part; "alive"
  means "holds it". Its owner file says who and how far, and beats every `BEAT_INTERVAL`.
- `Plan`: the coordinator's split of the missing samples, one run of equal count per member.
- done files: a member's slice is written (its shards listed).
- the failure marker: the job's first error, which every member watches (`Watch`), so that
  all ranks fail with the root cause instead of a timeout.

Liveness of a member whose slice is not done (`Liveness`): with ``fcntl`` locks, the kernel
(or the NFS server, once the client's lease ends) releases a dead holder's lock; with soft
locks, a holder on this host is alive while its pid is, and one on another host while its
beat moves (`PEER_TIMEOUT`). A member that never took its lock is dead after `START_GRACE`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import filelock

from ..core.errors import CorruptCacheError, LockTimeoutError, PeerFailedError
from .atomic import temporary_name, write_atomically
from .format import ShardInfo
from .layout import JOB_FILE, CacheRoot
from .locking import (
    PROGRESS_INTERVAL,
    WAIT_LOG_INTERVAL,
    backend,
    describe_owner,
    owner_path,
    pid_alive,
    read_owner,
)

logger = logging.getLogger(__name__)

BEAT_INTERVAL = 5.0
"""Seconds between two beats of a member's owner file."""

PEER_TIMEOUT = 120.0
"""Soft locks, a member on another host: seconds without a beat before it counts as dead."""

START_GRACE = 60.0
"""Seconds a member may take to take its slice lock before it counts as dead."""

CHECK_INTERVAL = 1.0
"""Least seconds between two liveness checks of the other members."""

MAX_POLL = 0.5
"""Longest sleep between two looks at a file someone else writes."""

PLAN = "plan.json"
FAILED = "failed"


def new_job_id() -> str:
    """A random job id (one per job: the members take global rank 0's)."""
    return secrets.token_hex(8)


def _create_new(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` whole, or raise `FileExistsError`.

    A hard link of a complete temporary file is atomic, NFS included, so a reader never
    sees it half written; a filesystem without hard links gets an ``O_EXCL`` create.
    """
    temporary = temporary_name(path)
    temporary.write_bytes(data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    finally:
        temporary.unlink(missing_ok=True)


def directory_identity(root: CacheRoot) -> str | None:
    """The identity token of ``root``'s directory, created by the first process to ask.

    None when the directory cannot hold one (not creatable, read-only): the ranks that use
    it then build alone, each under the build lock, as without cooperation.
    """
    path = root.identity()
    try:
        root.path.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            with contextlib.suppress(FileExistsError):  # another rank was first
                _create_new(path, secrets.token_hex(16).encode())
        for _ in range(20):  # an O_EXCL create shows its content a moment later
            token = path.read_text(encoding="ascii").strip()
            if token:
                return token
            time.sleep(0.05)
    except (OSError, UnicodeDecodeError) as error:
        logger.debug("no identity for cache directory %s: %s", root.path, error)
    return None


# ---- who builds what ------------------------------------------------------------------------


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
    def read(cls, path: Path) -> Plan:
        """Read a plan file (written whole, by rename); `CorruptCacheError` if it is not one."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                str(data["job"]),
                int(data["num_items"]),
                int(data["to_decode"]),
                tuple(tuple((int(a), int(b)) for a, b in runs) for runs in data["slices"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptCacheError(f"{path}: not a cooperative build plan ({error})") from error


@dataclass(frozen=True)
class DoneSlice:
    """What a done file says: the shards of a finished slice and the shard size chosen."""

    shards: tuple[ShardInfo, ...]
    shard_bytes: int


def write_done(root: CacheRoot, key: str, team: Team, shards: list[ShardInfo], size: int) -> None:
    """Say that this member's slice is written (durably: the coordinator publishes on it)."""
    done = {"rank": team.member.rank, "shards": [asdict(s) for s in shards], "shard_bytes": size}
    path = root.job_file(key, team.job, f"{team.me}.done.json")
    write_atomically(path, json.dumps(done).encode())


def read_done(root: CacheRoot, key: str, job: str, part: int) -> DoneSlice | None:
    """The done file of slice ``part``, or None while there is none."""
    path = root.job_file(key, job, f"{part}.done.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return DoneSlice(tuple(ShardInfo(**s) for s in data["shards"]), int(data["shard_bytes"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorruptCacheError(f"{path}: not a slice's done file ({error})") from error


def remove_job_files(root: CacheRoot, key: str, job: str) -> None:
    """Delete every file of job ``job``'s build of ``key`` (its build is over)."""
    for path in root.job_files(key):
        match = JOB_FILE.match(path.name)
        if match and match["job"] == job:
            path.unlink(missing_ok=True)


# ---- the slice lock ------------------------------------------------------------------------


class SliceLock:
    """This member's slice lock, held while it takes part; a context manager.

    The owner file beside the lock says who holds it and how far its slice got; a thread
    rewrites it every `BEAT_INTERVAL` with a counter, because one decode can take longer
    than that, and with soft locks that counter is how other hosts see a member alive.
    """

    def __init__(self, root: CacheRoot, key: str, team: Team) -> None:
        self.path = root.job_file(key, team.job, f"{team.me}.slice")
        self.owner_path = owner_path(self.path)
        self._owner: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "rank": team.member.rank,
            "slice": team.me,
            "beat": 0,
        }
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False
        self._last_progress = 0.0
        self._lock = backend().file_lock(self.path)

    def __enter__(self) -> SliceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Nobody else takes it: a liveness probe holds it for an instant at most.
            self._lock.acquire(timeout=START_GRACE)
        except filelock.Timeout:
            raise LockTimeoutError(
                f"slice lock {self.path} is held by {describe_owner(read_owner(self.owner_path))}"
            ) from None
        self._held = True
        self._write_owner(since=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self._thread = threading.Thread(target=self._beat, name="shardcache-beat", daemon=True)
        self._thread.start()
        return self

    def _write_owner(self, **changes: Any) -> None:
        """Update the owner record and write it; best effort, as for the build lock.

        The beat thread and the decoding thread both call this: one at a time.
        """
        with self._mutex:
            self._owner.update(changes)
            try:
                data = json.dumps(self._owner).encode()
                write_atomically(self.owner_path, data, durable=False)
            except OSError as error:
                logger.debug("cannot update the owner file %s: %s", self.owner_path, error)

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_INTERVAL):
            self._write_owner(beat=self._owner["beat"] + 1)

    def report_progress(self, done: int, total: int) -> None:
        """Record progress in the owner file, at most every `PROGRESS_INTERVAL` seconds."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_INTERVAL and done < total:
            return
        self._last_progress = now
        self._write_owner(done=done, total=total)

    def release(self, *, forget: bool = False) -> None:
        """Let go of the lock (idempotent); ``forget`` first removes its files.

        Forgetting removes the owner file before the lock is free, so that no member ever
        sees "lock free, owner file present", which is what a dead member leaves.
        """
        if not self._held:
            return
        self._held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if forget:
            self.owner_path.unlink(missing_ok=True)
        self._lock.release()
        if forget:
            self.path.unlink(missing_ok=True)  # a soft lock's is gone already, an fcntl one's not

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- watching the others --------------------------------------------------------------------

ALIVE, DEAD, ABSENT = "alive", "dead", "absent"


class Liveness:
    """Whether the members of one job's build of one key are alive (see the module docstring).

    It remembers what it saw: when each member was first found without a lock, and when
    each one's beat last moved, on this process's monotonic clock (clocks of other hosts
    never matter).
    """

    def __init__(self, root: CacheRoot, key: str, job: str, peer_timeout: float) -> None:
        self.root, self.key, self.job = root, key, job
        self.peer_timeout = peer_timeout
        self._absent_since: dict[int, float] = {}
        self._beats: dict[int, tuple[object, float]] = {}
        self._host = socket.gethostname()

    def owner(self, part: int) -> dict[str, Any] | None:
        """The owner record of slice ``part``'s lock, if it has one."""
        return read_owner(owner_path(self.root.job_file(self.key, self.job, f"{part}.slice")))

    def state(self, part: int) -> str:
        """`ALIVE`, `DEAD`, or `ABSENT` (never took its lock: dead only after `START_GRACE`)."""
        lock = self.root.job_file(self.key, self.job, f"{part}.slice")
        owner = self.owner(part)
        held = backend().held(lock)
        now = time.monotonic()
        if held is None:  # soft locks: the lock file exists while held, or its holder died
            if owner is None:
                held = True if lock.exists() else None
            elif not lock.exists():
                held = False
            elif owner.get("host") == self._host:
                held = pid_alive(int(owner.get("pid", 0)))
            else:
                beat, since = self._beats.get(part, (None, now))
                if owner.get("beat") != beat:
                    self._beats[part] = (owner.get("beat"), now)
                    since = now
                held = now - since < self.peer_timeout
        if held:
            self._absent_since.pop(part, None)
            return ALIVE
        if owner is not None and held is False:
            return DEAD
        first = self._absent_since.setdefault(part, now)
        return DEAD if now - first > START_GRACE else ABSENT

    def describe(self, part: int) -> str:
        """``rank 3 (pid 12 on host n1, 120/250 samples)``, as far as it is known."""
        owner = self.owner(part) or {}
        text = f"rank {owner.get('rank', '?')} (pid {owner.get('pid')} on host {owner.get('host')}"
        if owner.get("total"):
            text += f", {owner.get('done', 0)}/{owner['total']} samples"
        return text + ")"


class Watch:
    """What one member checks while it works or waits: the failure marker, the others' lives.

    Args:
        root: the cache directory.
        key: the cache's key.
        name: the cache's name, for messages.
        team: the job's team for this key.
        peer_timeout: see `PEER_TIMEOUT`.
    """

    def __init__(
        self, root: CacheRoot, key: str, name: str, team: Team, peer_timeout: float = PEER_TIMEOUT
    ) -> None:
        self.root, self.key, self.name, self.team = root, key, name, team
        self.liveness = Liveness(root, key, team.job, peer_timeout)
        self._last_check = 0.0

    @property
    def marker(self) -> Path:
        """This job's failure marker for this key."""
        return self.root.job_file(self.key, self.team.job, FAILED)

    def done(self, part: int) -> DoneSlice | None:
        """Slice ``part``'s done file, or None while there is none."""
        return read_done(self.root, self.key, self.team.job, part)

    def check(
        self,
        parts: Iterable[int],
        *,
        finished: Callable[[], bool] | None = None,
        force: bool = False,
    ) -> None:
        """Raise `PeerFailedError` if the job failed, or a member of ``parts`` died undone.

        At most every `CHECK_INTERVAL` unless ``force``. ``finished`` tells whether what the
        caller waits for has happened meanwhile (then a free lock is a member that finished).
        """
        now = time.monotonic()
        if not force and now - self._last_check < CHECK_INTERVAL:
            return
        self._last_check = now
        self.raise_if_failed()
        for part in parts:
            member = self.team.members[part]
            if part == self.team.me or self.done(part) is not None:
                continue
            if self.liveness.state(part) != DEAD:
                continue
            # It may have finished between the two looks: done file first, then the lock.
            if self.done(part) is not None or (finished is not None and finished()):
                continue
            self.raise_if_failed()  # it failed cleanly and said why
            if self.liveness.owner(part) is not None:
                reason = f"{self.liveness.describe(part)} stopped while building slice {part}"
            else:
                # Ranks that read one identity but not each other's files: a copied directory.
                reason = (
                    f"{member} did not take its part (slice {part}) within {START_GRACE:.0f} s; "
                    f"if it runs on another host and does not see the files here, "
                    f"{self.root.identity()} was copied with the directory: remove the copy's"
                )
            raise self.abandon(reason, rank=member.rank)

    def raise_if_failed(self) -> None:
        """Raise this job's recorded failure, if there is one."""
        try:
            recorded = json.loads(self.marker.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            recorded = {"reason": "a rank failed (its failure marker is unreadable)"}
        raise self._error(str(recorded.get("reason")), recorded.get("rank"))

    def abandon(self, reason: str, *, rank: int | None) -> PeerFailedError:
        """Record ``reason`` as the job's failure unless one is recorded; the error to raise."""
        with contextlib.suppress(FileExistsError):
            _create_new(self.marker, json.dumps({"reason": reason, "rank": rank}).encode())
        with contextlib.suppress(PeerFailedError):
            self.raise_if_failed()  # the first recorded failure wins
        return self._error(reason, rank)

    def _error(self, reason: str, rank: object) -> PeerFailedError:
        return PeerFailedError(
            f"the cooperative build of {self.name} was abandoned: {reason}. Shards already "
            f"written stay in {self.root.staging(self.key)}; the next run resumes from them",
            rank=rank if isinstance(rank, int) else None,
        )


class Poll:
    """Sleeps between looks at a file: short at first, then up to `MAX_POLL`."""

    def __init__(self) -> None:
        self._sleep = 0.01

    def sleep(self) -> None:
        """Sleep, a little longer each time."""
        time.sleep(self._sleep)
        self._sleep = min(MAX_POLL, self._sleep * 1.5)


class WaitLog:
    """A waiter's deadline, and its log line every `WAIT_LOG_INTERVAL` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._next_log = time.monotonic() + WAIT_LOG_INTERVAL

    def remaining(self) -> float:
        """Seconds left."""
        return self.deadline - time.monotonic()

    def due(self) -> bool:
        """Whether a log line is due now (every `WAIT_LOG_INTERVAL` seconds)."""
        now = time.monotonic()
        if now < self._next_log:
            return False
        self._next_log = now + WAIT_LOG_INTERVAL
        return True


# ---- builds that nobody finishes ------------------------------------------------------------


def end_abandoned_builds(
    root: CacheRoot, key: str, *, keep: str | None, timeout: float, name: str
) -> None:
    """End other jobs' cooperative builds of ``key`` that nobody will finish; remove their files.

    The caller holds ``key``'s build lock, so a job that wrote a plan and no longer holds
    that lock has lost its coordinator: its members may still be writing shards into the
    staging directory, and the caller's resume scan must not run under them. Each such job
    gets its failure marker (its members stop at their next check) and is waited for. A
    job without a plan whose members are alive is left alone: its coordinator waits for
    this very lock.
    """
    jobs: dict[str, list[Path]] = {}
    for path in root.job_files(key):
        match = JOB_FILE.match(path.name)
        if match and match["job"] != keep:
            jobs.setdefault(match["job"], []).append(path)
    for job, files in jobs.items():
        parts = sorted(
            {int(p.name.split(".")[2]) for p in files if p.name.endswith((".slice", ".owner.json"))}
        )
        liveness = Liveness(root, key, job, PEER_TIMEOUT)
        planned = any(p.name.endswith(f".{PLAN}") for p in files)
        if not planned and any(liveness.state(part) == ALIVE for part in parts):
            continue
        if planned:
            reason = "its coordinator stopped; a later build of the same cache ended it"
            with contextlib.suppress(OSError):  # FileExistsError: it has one already
                _create_new(
                    root.job_file(key, job, FAILED), json.dumps({"reason": reason}).encode()
                )
        wait = WaitLog(timeout)
        poll = Poll()
        while alive := [p for p in parts if liveness.state(p) == ALIVE]:
            if wait.remaining() <= 0:
                raise LockTimeoutError(
                    f"gave up after {timeout:.0f} s waiting for the members of an abandoned "
                    f"build of {name} to stop writing: "
                    + ", ".join(liveness.describe(part) for part in alive)
                )
            if wait.due():
                logger.warning(
                    "waiting for %s, members of an abandoned build of %s, to stop (giving up in "
                    "%.0f s)",
                    ", ".join(liveness.describe(part) for part in alive),
                    name,
                    wait.remaining(),
                )
            poll.sleep()
        remove_job_files(root, key, job)
