"""How the members of a cooperative build see each other: slice locks, liveness, failures.

When several ranks of one job miss the same cache, each decodes a slice of it
(`store.cooperative`). They meet through files in ``.locks`` (`jobfiles`), never through
a collective: a collective times out (30 minutes by default) before a long build ends,
while here every wait has the caller's own deadline and says in the log whom it waits for
(`waiting.Wait`).

- `SliceLock`: each member holds its slice lock for as long as it takes part; "alive"
  means "holds it". Its owner file says who and how far, and beats every `BEAT_INTERVAL`.
- `Watch`: the job's failure marker (its first error), which every member watches, so that
  all ranks fail with the root cause instead of a timeout; and the others' liveness.

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
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import filelock

from ..core.errors import LockTimeoutError, PeerFailedError
from .jobfiles import FAILED, JobFiles
from .lockbackends import backend, pid_alive
from .locking import PROGRESS_INTERVAL
from .owners import describe_owner, read_owner
from .teams import Team

logger = logging.getLogger(__name__)

BEAT_INTERVAL = 5.0
"""Seconds between two beats of a member's owner file."""

PEER_TIMEOUT = 120.0
"""Soft locks, a member on another host: seconds without a beat before it counts as dead."""

START_GRACE = 60.0
"""Seconds a member may take to take its slice lock before it counts as dead."""

CHECK_INTERVAL = 1.0
"""Least seconds between two liveness checks of the other members."""


def _slice(part: int) -> str:
    return f"{part}.slice"


def _slice_owner(part: int) -> str:
    return f"{part}.owner.json"  # as `owners.owner_path` names a lock's owner file


class SliceLock:
    """This member's slice lock, held while it takes part; a context manager.

    The owner file beside the lock says who holds it and how far its slice got; a thread
    rewrites it every `BEAT_INTERVAL` with a counter, because one decode can take longer
    than that, and with soft locks that counter is how other hosts see a member alive.

    Args:
        files: the job's files for this key.
        team: the job's team; this member's slice is ``team.me``.
        mode: the lock file's exact permissions (a team directory's policy), or None.
    """

    def __init__(self, files: JobFiles, team: Team, mode: int | None = None) -> None:
        self.files = files
        self.what = _slice(team.me)
        self.owner_what = _slice_owner(team.me)
        self.path = files.path(self.what)
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
        self._lock = backend().file_lock(self.path, mode)

    def __enter__(self) -> SliceLock:
        try:
            # Nobody else takes it: a liveness probe holds it for an instant at most.
            self._lock.acquire(timeout=START_GRACE)
        except filelock.Timeout:
            owner = read_owner(self.files.path(self.owner_what))
            raise LockTimeoutError(
                f"slice lock {self.path} is held by {describe_owner(owner)}"
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
                self.files.write(self.owner_what, json.dumps(self._owner).encode(), durable=False)
            except OSError as error:
                logger.debug("cannot update the owner file of %s: %s", self.path, error)

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
            self.files.unlink(self.owner_what)
        self._lock.release()
        if forget:
            self.files.unlink(self.what)  # a soft lock's is gone already, an fcntl one's not

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

    def __init__(self, files: JobFiles, peer_timeout: float) -> None:
        self.files = files
        self.peer_timeout = peer_timeout
        self._absent_since: dict[int, float] = {}
        self._beats: dict[int, tuple[object, float]] = {}
        self._host = socket.gethostname()

    def owner(self, part: int) -> dict[str, Any] | None:
        """The owner record of slice ``part``'s lock, if it has one."""
        return read_owner(self.files.path(_slice_owner(part)))

    def state(self, part: int) -> str:
        """`ALIVE`, `DEAD`, or `ABSENT` (never took its lock: dead only after `START_GRACE`)."""
        owner = self.owner(part)
        held = backend().held(self.files.path(_slice(part)))
        now = time.monotonic()
        if held is None:  # soft locks: the lock file exists while held, or its holder died
            exists = self.files.exists(_slice(part))
            if owner is None:
                held = True if exists else None
            elif not exists:
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
        files: the job's files for the cache's key.
        name: the cache's name, for messages.
        team: the job's team for this key.
        staging: the staging directory's path, for messages.
        peer_timeout: see `PEER_TIMEOUT`.
    """

    def __init__(
        self,
        files: JobFiles,
        name: str,
        team: Team,
        staging: object,
        peer_timeout: float = PEER_TIMEOUT,
    ) -> None:
        self.files, self.name, self.team, self.staging = files, name, team, staging
        self.liveness = Liveness(files, peer_timeout)
        self._last_check = 0.0

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
            if part == self.team.me or self.files.read_done(part) is not None:
                continue
            if self.liveness.state(part) != DEAD:
                continue
            # It may have finished between the two looks: done file first, then the lock.
            if self.files.read_done(part) is not None or (finished is not None and finished()):
                continue
            self.raise_if_failed()  # it failed cleanly and said why
            if self.liveness.owner(part) is not None:
                reason = f"{self.liveness.describe(part)} stopped while building slice {part}"
            else:
                # Ranks that read one identity but not each other's files: a copied directory.
                reason = (
                    f"{member} did not take its part (slice {part}) within {START_GRACE:.0f} s; "
                    "if it runs on another host and does not see the files here, the cache "
                    "directory's .shardcache-id was copied with it: remove the copy's"
                )
            raise self.abandon(reason, rank=member.rank)

    def raise_if_failed(self) -> None:
        """Raise this job's recorded failure, if there is one."""
        try:
            data = self.files.read(FAILED)
            if data is None:
                return
            recorded = json.loads(data)
        except (OSError, ValueError, RecursionError):
            recorded = None
        if not isinstance(recorded, dict):
            recorded = {"reason": "a rank failed (its failure marker is unreadable)"}
        raise self._error(str(recorded.get("reason")), recorded.get("rank"))

    def abandon(self, reason: str, *, rank: int | None) -> PeerFailedError:
        """Record ``reason`` as the job's failure unless one is recorded; the error to raise."""
        with contextlib.suppress(FileExistsError):
            self.files.create(FAILED, json.dumps({"reason": reason, "rank": rank}).encode())
        with contextlib.suppress(PeerFailedError):
            self.raise_if_failed()  # the first recorded failure wins
        return self._error(reason, rank)

    def _error(self, reason: str, rank: object) -> PeerFailedError:
        return PeerFailedError(
            f"the cooperative build of {self.name} was abandoned: {reason}. Shards already "
            f"written stay in {self.staging}; the next run resumes from them",
            rank=rank if isinstance(rank, int) else None,
        )
