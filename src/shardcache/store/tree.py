"""A cache directory opened for use: its descriptor, its trust policy, its subdirectories.

`CacheTree.open` opens the cache directory once (its path made absolute) and checks it
(`trust`); every directory below is then opened through it, never through a symlink, and
checked by the same policy. Names come from `layout`; creating a directory gives it the
policy's mode.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from ..core.errors import CacheDirError
from .fs import Directory
from .layout import LOCKS_DIR, STAGING_DIR, TRASH_DIR, CacheRoot
from .trust import Policy, open_trusted


class CacheTree:
    """An open cache directory; a context manager that closes it.

    Attributes:
        root: the cache directory's `Directory` (checks every subdirectory it opens).
        policy: what it trusts, and the modes of what is created in it.
        names: the names of everything in it.
    """

    def __init__(self, root: Directory, policy: Policy) -> None:
        self.root = root
        self.policy = policy
        self.names = CacheRoot(root.path)

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> CacheTree:
        """Open (``create``: and first make) the cache directory ``path``.

        Raises:
            FileNotFoundError: it does not exist and ``create`` is False.
            CacheDirError: it cannot be made, is not a directory, or is not trusted.
        """
        absolute = path.absolute()
        if create:
            try:
                absolute.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as error:
                raise CacheDirError(
                    f"cache directory {absolute} cannot be created: a parent is a regular "
                    f"file ({error}). Set cache_dir or SHARDCACHE_DIR to a directory"
                ) from error
            except OSError as error:
                raise CacheDirError(
                    f"cache directory {absolute} cannot be created: {error}"
                ) from error
        root, policy = open_trusted(absolute)
        return cls(root, policy)

    def __enter__(self) -> CacheTree:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the cache directory's descriptor."""
        self.root.close()

    @property
    def path(self) -> Path:
        """The cache directory (absolute)."""
        return self.root.path

    def subdir(self, name: str, *, create: bool = False) -> Directory:
        """The directory ``name`` of the cache directory (created with the policy's mode)."""
        return self.root.subdir(name, create=create, mode=self.policy.directory_mode)

    def staging_root(self, *, create: bool = False) -> Directory:
        """``.staging``: every build's staging directory is in it."""
        return self.subdir(STAGING_DIR, create=create)

    def locks(self, *, create: bool = False) -> Directory:
        """``.locks``: lock, owner and lease files."""
        return self.subdir(LOCKS_DIR, create=create)

    def trash(self, *, create: bool = False) -> Directory:
        """``.trash``: caches being deleted."""
        return self.subdir(TRASH_DIR, create=create)

    def staging(self, key: str, *, create: bool = False) -> Directory:
        """``.staging/<key>``: the build directory of ``key``."""
        with self.staging_root(create=create) as staging_root:
            return staging_root.subdir(key, create=create, mode=self.policy.directory_mode)
