"""The files through which the members of a cooperative build meet, in ``.locks``.

A job's files for one key are ``<key>.<job>.<what>`` (`layout.JOB_FILE`): the plan, each
slice's lock, owner and done files, and the job's failure marker. All are opened through
the ``.locks`` `Directory` (never through a symlink); each is written whole, by rename or
by a hard link that fails when the name exists. The cache directory's identity file
(`directory_identity`) lives beside the caches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import CorruptCacheError
from .atomic import PendingFile, final_name, write_atomically
from .format import ShardInfo
from .fs import Directory
from .layout import IDENTITY_NAME, JOB_FILE
from .teams import Plan, Team
from .tree import CacheTree

logger = logging.getLogger(__name__)

PLAN = "plan.json"
FAILED = "failed"
MAX_JOB_FILE_BYTES = 64 << 20
"""A plan lists runs of samples; a file larger than this is not one of ours."""


def create_new(directory: Directory, name: str, data: bytes) -> None:
    """Create ``name`` in ``directory`` holding ``data`` whole, or raise `FileExistsError`.

    A hard link of a complete temporary file is atomic, NFS included, so a reader never
    sees it half written; a filesystem without hard links gets an ``O_EXCL`` create.
    """
    with PendingFile(directory, name) as pending:
        pending.stream.write(data)
        pending.stream.flush()
        os.fsync(pending.stream.fileno())
        try:
            os.link(pending.name, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
        except FileExistsError:
            raise
        except OSError:
            fd = directory.open_file(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


def directory_identity(cache_dir: Path) -> str | None:
    """The identity token of ``cache_dir``, created by the first process to ask.

    Ranks that read the same token share the directory, whatever path each mounts it at.
    None when the directory cannot hold one (not creatable, read-only, not trusted): the
    ranks that use it then build alone, each under the build lock, as without cooperation.
    """
    try:
        with CacheTree.open(cache_dir, create=True) as tree:
            if not tree.root.exists(IDENTITY_NAME):
                with contextlib.suppress(FileExistsError):  # another rank was first
                    create_new(tree.root, IDENTITY_NAME, secrets.token_hex(16).encode())
            for _ in range(20):  # an O_EXCL create shows its content a moment later
                token = tree.root.read_bytes(IDENTITY_NAME, 64).decode("ascii").strip()
                if token:
                    return token
                time.sleep(0.05)
    except (OSError, UnicodeDecodeError) as error:
        logger.debug("no identity for cache directory %s: %s", cache_dir, error)
    return None


@dataclass(frozen=True)
class DoneSlice:
    """What a done file says: the shards of a finished slice and the shard size chosen."""

    shards: tuple[ShardInfo, ...]
    shard_bytes: int


class JobFiles:
    """Job ``job``'s files of its cooperative build of ``key``, in the ``.locks`` directory.

    Args:
        locks: the cache directory's ``.locks``, open (the caller closes it).
        key: the cache's key.
        job: the job's id.
    """

    def __init__(self, locks: Directory, key: str, job: str) -> None:
        self.locks, self.key, self.job = locks, key, job

    def name(self, what: str) -> str:
        """The file name of ``what`` (``plan.json``, ``3.slice``...)."""
        return f"{self.key}.{self.job}.{what}"

    def path(self, what: str) -> Path:
        """Its path, for locks (which open by path) and messages."""
        return self.locks.child(self.name(what))

    def exists(self, what: str) -> bool:
        """Whether ``what`` exists (a symlink planted there exists, and is never read)."""
        return self.locks.exists(self.name(what))

    def read(self, what: str) -> bytes | None:
        """The bytes of ``what``, or None while there is none."""
        try:
            return self.locks.read_bytes(self.name(what), MAX_JOB_FILE_BYTES)
        except FileNotFoundError:
            return None

    def write(self, what: str, data: bytes, *, durable: bool = True) -> None:
        """Write ``what`` whole (replacing it)."""
        write_atomically(self.locks, self.name(what), data, durable=durable)

    def create(self, what: str, data: bytes) -> None:
        """Create ``what`` whole; `FileExistsError` when someone else created it first."""
        create_new(self.locks, self.name(what), data)

    def unlink(self, what: str) -> None:
        """Remove ``what`` if it exists."""
        self.locks.unlink(self.name(what), missing_ok=True)

    def remove_all(self) -> None:
        """Delete every file of this job's build of this key (its build is over).

        Temporary ones too: a member killed while it rewrote its owner file leaves one.
        """
        prefix = self.name("")
        for name, _ in self.locks.entries():
            if final_name(name).startswith(prefix):
                self.locks.unlink(name, missing_ok=True)

    # ---- the plan and the done files --------------------------------------------------------

    def write_plan(self, plan: Plan) -> None:
        """Write the coordinator's plan."""
        self.write(PLAN, plan.to_json().encode())

    def read_plan(self) -> Plan | None:
        """The coordinator's plan, or None while there is none."""
        data = self.read(PLAN)
        return None if data is None else Plan.from_json(data, self.path(PLAN))

    def write_done(self, team: Team, shards: Sequence[ShardInfo], shard_bytes: int) -> None:
        """Say that this member's slice is written (durably: the coordinator publishes on it)."""
        done = {
            "rank": team.member.rank,
            "shards": [asdict(shard) for shard in shards],
            "shard_bytes": shard_bytes,
        }
        self.write(f"{team.me}.done.json", json.dumps(done).encode())

    def read_done(self, part: int) -> DoneSlice | None:
        """The done file of slice ``part``, or None while there is none."""
        what = f"{part}.done.json"
        data = self.read(what)
        if data is None:
            return None
        try:
            done = json.loads(data)
            shards = tuple(ShardInfo(**shard) for shard in done["shards"])
            return DoneSlice(shards, int(done["shard_bytes"]))
        except (ValueError, KeyError, TypeError, RecursionError) as error:
            raise CorruptCacheError(
                f"{self.path(what)}: not a slice's done file ({error})"
            ) from error


def job_names(locks: Directory, key: str) -> dict[str, list[str]]:
    """The file names of every job's cooperative build of ``key``, by job."""
    jobs: dict[str, list[str]] = {}
    for name, _ in locks.entries():
        match = JOB_FILE.match(name)
        if match and match["key"] == key:
            jobs.setdefault(match["job"], []).append(name)
    return jobs
