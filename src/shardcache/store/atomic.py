"""Durable file operations: write to a temporary name, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from .layout import TEMPORARY_PREFIX


def fsync_directory(path: Path) -> None:
    """Persist a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(final: Path) -> Path:
    """A unique sibling of ``final`` that readers and resume scans ignore."""
    return final.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{final.name}")


class PendingFile:
    """A file written under a temporary name that becomes final only by `commit`.

    The final name may be chosen after writing (a shard's name carries its checksum). On
    leaving the ``with`` block without a commit, or on any error, the temporary file is
    removed, so a full disk or a crash leaves no file under a final name.

    Args:
        like: a path in the target directory; the temporary name is derived from it.
        durable: fsync before the rename.
    """

    def __init__(self, like: Path, *, durable: bool = True) -> None:
        self.path = temporary_name(like)
        self.durable = durable
        self.stream: BinaryIO = self.path.open("xb")
        self._committed = False

    def commit(self, final: Path) -> None:
        """Make the written content appear at ``final``, whole."""
        self.stream.flush()
        if self.durable:
            # Without fsync before rename, a power loss can publish an empty file under
            # the final name (ext4 delayed allocation).
            os.fsync(self.stream.fileno())
        self.stream.close()
        self.path.replace(final)
        self._committed = True

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._committed:
            # Closing flushes, and on a full disk fails again: the file goes all the same.
            with contextlib.suppress(OSError):
                self.stream.close()
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(final: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a stream whose content appears at ``final`` whole, or not at all."""
    with PendingFile(final, durable=durable) as pending:
        yield pending.stream
        pending.commit(final)


def write_atomically(final: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``final`` through `atomic_output`."""
    with atomic_output(final, durable=durable) as stream:
        stream.write(data)
