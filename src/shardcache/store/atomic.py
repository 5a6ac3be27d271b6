"""Durable file operations: write to a temporary name, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_directory(path: Path) -> None:
    """Persist a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(final: Path) -> Path:
    """A unique sibling of ``final`` that readers and resume scans ignore."""
    return final.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{final.name}")


@contextlib.contextmanager
def atomic_output(final: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a stream whose content appears at ``final`` whole, or not at all.

    On any error the temporary file is removed, so a full disk leaves no partial file.
    """
    temporary = temporary_name(final)
    try:
        with temporary.open("xb") as stream:
            yield stream
            stream.flush()
            if durable:
                # Without fsync before rename, a power loss can publish an empty file
                # under the final name (ext4 delayed allocation).
                os.fsync(stream.fileno())
        temporary.replace(final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(final: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``final`` through `atomic_output`."""
    with atomic_output(final, durable=durable) as stream:
        stream.write(data)
