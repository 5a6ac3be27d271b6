"""Durable file operations: write to a temporary name, fsync, rename, fsync the directory.

Files are created inside a `Directory` (``O_EXCL``, never through a symlink) and renamed
relative to its descriptor, so a planted link can neither receive the data nor be
replaced by it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

from .fs import Directory
from .layout import TEMPORARY_PREFIX


def temporary_name(final: str) -> str:
    """A unique sibling name of ``final`` that readers and resume scans ignore."""
    return f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{final}"


def final_name(name: str) -> str:
    """The final name that a `temporary_name` stands for; any other name, as it is."""
    fields = name.removeprefix(TEMPORARY_PREFIX).split("-", 2)  # pid, token, final name
    if name.startswith(TEMPORARY_PREFIX) and len(fields) == 3:
        pid, token, final = fields
        if pid.isdigit() and len(token) == 8 and final:
            return final
    return name


class PendingFile:
    """A file written under a temporary name that becomes final only by `commit`.

    The final name may be chosen after writing (a shard's name carries its checksum). On
    leaving the ``with`` block without a commit, or on any error, the temporary file is
    removed, so a full disk or a crash leaves no file under a final name.

    Args:
        directory: where the file is written.
        like: a name in that directory; the temporary name is derived from it.
        durable: fsync before the rename.
        mode: the file's exact permissions (default: 0o666 less the umask).
    """

    def __init__(
        self, directory: Directory, like: str, *, durable: bool = True, mode: int | None = None
    ) -> None:
        self.directory = directory
        self.name = temporary_name(like)
        self.durable = durable
        fd = directory.open_file(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            self.stream: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            directory.unlink(self.name, missing_ok=True)
            raise
        self._committed = False

    def commit(self, final: str) -> None:
        """Make the written content appear as ``final`` in the directory, whole."""
        self.stream.flush()
        if self.durable:
            # Without fsync before rename, a power loss can publish an empty file under
            # the final name (ext4 delayed allocation).
            os.fsync(self.stream.fileno())
        self.stream.close()
        self.directory.rename(self.name, self.directory, final)
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
            self.directory.unlink(self.name, missing_ok=True)


@contextlib.contextmanager
def atomic_output(
    directory: Directory, final: str, *, durable: bool = True, mode: int | None = None
) -> Iterator[BinaryIO]:
    """Yield a stream whose content appears as ``final`` in ``directory`` whole, or not at all."""
    with PendingFile(directory, final, durable=durable, mode=mode) as pending:
        yield pending.stream
        pending.commit(final)


def write_atomically(
    directory: Directory, final: str, data: bytes, *, durable: bool = True, mode: int | None = None
) -> None:
    """Write ``data`` as ``final`` in ``directory`` through `atomic_output`."""
    with atomic_output(directory, final, durable=durable, mode=mode) as stream:
        stream.write(data)
