"""The one way into a cache directory: no symlink followed, no FIFO opened, every kind checked.

Everything below the cache directory is reached through a `Directory`: a descriptor of a
directory opened with ``O_NOFOLLOW``, relative to which files are opened, created, renamed
and removed (``dir_fd=``), the way ``shutil.rmtree`` avoids symlink attacks. So a symlink
planted at ``.trash``, ``.staging``, ``.staging/<key>`` or a cache's own files is never
followed: it is an error that names it (`CacheDirError`), and a removal unlinks the link,
never its target. The cache directory itself may be a symlink (``~/.cache`` pointing at a
scratch disk): it is followed once, when it is opened.

Files are opened ``O_NONBLOCK`` and checked with ``fstat`` before a byte is read, so a FIFO,
socket or device where a file is expected is named, never waited on (filelock opens its
lock files the same way).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from ..core.errors import CacheDirError

DirectoryCheck = Callable[[Path, os.stat_result], None]
"""Called with each directory opened below the root and its ``fstat``: raises if untrusted."""

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFREG: "a regular file",
}


def kind(mode: int) -> str:
    """``a FIFO``, ``a symbolic link``, ...: what an ``st_mode`` says a path is."""
    return _KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")


class WrongKindError(CacheDirError):
    """A path in the cache tree is not the kind of file shardcache put there.

    ``found`` says what it is (``a FIFO``), ``expected`` what it should be.
    """

    found = ""
    expected = ""


def _wrong_kind(path: Path, found: str, expected: str) -> WrongKindError:
    error = WrongKindError(
        f"{path} is {found}, where shardcache keeps {expected}: nothing was followed or "
        "read; remove it"
    )
    error.found, error.expected = found, expected
    return error


def _found_kind(path: Path, dir_fd: int | None, name: str) -> str:
    """What ``name`` is, for a message after an open refused it."""
    try:
        return kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return f"not openable ({path})"


def _open_regular(path: Path, name: str, dir_fd: int | None, flags: int, mode: int) -> int:
    """A descriptor of the regular file ``name`` (relative to ``dir_fd``), never blocking."""
    try:
        fd = os.open(name, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _wrong_kind(path, kind(stat.S_IFLNK), "a regular file") from error
        if error.errno in {errno.ENXIO, errno.EISDIR}:  # a socket, or a directory
            found = _found_kind(path, dir_fd, name)
            raise _wrong_kind(path, found, "a regular file") from error
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _wrong_kind(path, kind(info.st_mode), "a regular file")
        # Reads of a regular file never block; a writer wants them blocking all the same.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """A descriptor of the regular file at ``path``; its last component is never followed.

    Raises:
        WrongKindError: ``path`` is a symlink, FIFO, socket, device or directory.
        OSError: it cannot be opened (missing, no permission).
    """
    return _open_regular(path, str(path), None, flags, mode)


def _read_all(fd: int, path: Path, limit: int | None) -> bytes:
    size = os.fstat(fd).st_size
    if limit is not None and size > limit:
        raise CacheDirError(f"{path} is {size} bytes, more than the {limit} expected there")
    chunks = []
    while chunk := os.read(fd, max(size, 1 << 16)):
        chunks.append(chunk)
        if limit is not None and sum(map(len, chunks)) > limit:
            raise CacheDirError(f"{path} grew past the {limit} bytes expected there")
    return b"".join(chunks)


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at ``path`` (at most ``limit``), never blocking."""
    fd = open_regular(path)
    try:
        return _read_all(fd, path, limit)
    finally:
        os.close(fd)


def lstat_regular(path: Path) -> os.stat_result:
    """``lstat`` of ``path``, which must be a regular file (a symlink is not followed)."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise _wrong_kind(path, kind(info.st_mode), "a regular file")
    return info


class Directory:
    """An open directory of the cache tree: its descriptor and the path it was opened as.

    Use `open_root` for the cache directory, then `subdir` and the methods below for
    everything inside it; close it (or use it as a context manager) when done.

    Args:
        fd: the directory's descriptor (owned, closed by `close`).
        path: its path, for messages and for code that needs one.
        check: called on every directory opened below this one (trust checks).
    """

    def __init__(self, fd: int, path: Path, check: DirectoryCheck | None = None) -> None:
        self.fd = fd
        self.path = path
        self.check = check
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open_root(
        cls, path: Path, *, check: DirectoryCheck | None = None, follow: bool = True
    ) -> Directory:
        """Open the directory ``path`` (made absolute); ``check`` applies below it.

        ``follow``: the last component may be a symlink (the cache directory itself).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            CacheDirError: it is not a directory (or, with ``follow=False``, a symlink).
        """
        absolute = path.absolute()
        flags = os.O_RDONLY | _DIRECTORY | _CLOEXEC | (0 if follow else _NOFOLLOW)
        try:
            fd = os.open(absolute, flags)
        except OSError as error:
            if error.errno in {errno.ENOTDIR, errno.ELOOP}:
                found = _found_kind(absolute, None, str(absolute))
                raise _wrong_kind(absolute, found, "a directory") from error
            raise
        return cls(fd, absolute, check)

    def __enter__(self) -> Directory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        self._finalizer()

    def child(self, name: str) -> Path:
        """The path of ``name`` in this directory (for messages and path-based callers)."""
        return self.path / name

    def stat(self) -> os.stat_result:
        """``fstat`` of this directory."""
        return os.fstat(self.fd)

    def lstat(self, name: str) -> os.stat_result:
        """``lstat`` of ``name`` in this directory (a symlink is not followed)."""
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists here (a dangling symlink exists)."""
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def subdir(self, name: str, *, create: bool = False, mode: int = 0o755) -> Directory:
        """Open the subdirectory ``name``, never through a symlink; ``create`` it if missing.

        A new directory gets exactly ``mode`` (not reduced by the umask), so that a team
        directory's group can write it.

        Raises:
            FileNotFoundError: it does not exist (and ``create`` is False).
            CacheDirError: it is a symlink or not a directory, or the check refuses it.
        """
        path = self.child(name)
        created = False
        if create:
            try:
                os.mkdir(name, mode, dir_fd=self.fd)
                created = True
            except FileExistsError:
                pass
        try:
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=self.fd)
        except OSError as error:
            if error.errno in {errno.ELOOP, errno.ENOTDIR}:
                raise _wrong_kind(path, _found_kind(path, self.fd, name), "a directory") from error
            raise
        opened = Directory(fd, path, self.check)
        try:
            if created:
                os.fchmod(fd, mode)  # the umask took bits away (a team directory's g+w)
            if self.check is not None:
                self.check(path, opened.stat())
        except BaseException:
            opened.close()
            raise
        return opened

    def open_file(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        """A descriptor of the regular file ``name`` here (see `open_regular`)."""
        return _open_regular(self.child(name), name, self.fd, flags, mode)

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        """The bytes of the regular file ``name`` here (at most ``limit``)."""
        fd = self.open_file(name)
        try:
            return _read_all(fd, self.child(name), limit)
        finally:
            os.close(fd)

    def entries(self) -> list[tuple[str, int]]:
        """``(name, st_mode)`` of every entry, sorted by name; symlinks are not followed."""
        found = []
        with os.scandir(self.fd) as scan:
            for entry in scan:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    found.append((entry.name, entry.stat(follow_symlinks=False).st_mode))
        return sorted(found)

    def unlink(self, name: str, *, missing_ok: bool = False) -> None:
        """Remove the file (or symlink) ``name``."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rename(self, name: str, target: Directory, new_name: str) -> None:
        """Rename ``name`` here to ``new_name`` in ``target`` (a symlink itself, not its target)."""
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=target.fd)

    def fsync(self) -> None:
        """Persist this directory's entries (a rename is durable once its directory is)."""
        os.fsync(self.fd)

    def remove_tree(self, name: str) -> int:
        """Delete ``name`` and everything below it; the bytes of the files removed.

        Never follows a symlink: one met anywhere (``name`` included) is unlinked itself,
        and each directory is checked to be the one listed before it is entered (what
        ``shutil.rmtree`` does where ``rmtree.avoids_symlink_attacks``).
        """
        try:
            listed = self.lstat(name)
        except FileNotFoundError:
            return 0
        if not stat.S_ISDIR(listed.st_mode):
            self.unlink(name, missing_ok=True)
            return listed.st_size if stat.S_ISREG(listed.st_mode) else 0
        try:
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=self.fd)
        except OSError as error:
            if error.errno not in {errno.ELOOP, errno.ENOTDIR}:
                raise
            self.unlink(name, missing_ok=True)  # swapped for a symlink or a file meanwhile
            return 0
        freed = 0
        with Directory(fd, self.child(name)) as inner:
            if not os.path.samestat(listed, inner.stat()):
                raise CacheDirError(f"{inner.path} changed while it was being removed")
            for entry, _ in inner.entries():
                freed += inner.remove_tree(entry)
        os.rmdir(name, dir_fd=self.fd)
        return freed

    def walk_files(self) -> Iterator[tuple[str, os.stat_result]]:
        """``(name, lstat)`` of each regular file directly in this directory."""
        for name, mode in self.entries():
            if stat.S_ISREG(mode):
                with contextlib.suppress(FileNotFoundError):
                    yield name, self.lstat(name)
