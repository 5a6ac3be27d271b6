"""The manifest: the format version, and every field a reader relies on, checked in one place.

A published cache holds a ``manifest.json`` beside its shards (names in `layout`); a reader
trusts nothing without it, and this module is the one parser of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import CorruptCacheError, FormatVersionError
from .fs import Directory, WrongKindError, read_regular
from .layout import MANIFEST_NAME, SHARD_NAME

MAX_MANIFEST_BYTES = 1 << 30
"""A manifest lists shards and one label per sample: far less than this for any cache."""

FORMAT_NAME = "shardcache"
FORMAT_VERSION = 2
"""2: samples of any structure (pairs or dicts, tv_tensors kept), exact narrow storage, the
manifest records storage and shard options. 1: (tensor, metadata) pairs only."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    file: str
    start: int
    stop: int
    bytes: int
    xxh3_128: str


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to serve a cache, and what its key was made of."""

    key: str
    subset: str
    num_samples: int
    shards: tuple[ShardInfo, ...]
    labels: tuple[int | None, ...]
    key_inputs: dict[str, Any]
    library_version: str
    created: str
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    storage: dict[str, int] = field(default_factory=dict)
    shard_options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest file's text."""
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @property
    def total_bytes(self) -> int:
        """Bytes of all shards."""
        return sum(shard.bytes for shard in self.shards)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read and check ``path``; `CorruptCacheError` names the file and the field at fault.

        Its last component is never followed, nor waited on (a FIFO is named).
        """
        return cls._parse(lambda: read_regular(path, MAX_MANIFEST_BYTES), path)

    @classmethod
    def read_in(cls, directory: Directory) -> Manifest:
        """Read and check the manifest of the opened cache ``directory`` (see `read`)."""
        path = directory.child(MANIFEST_NAME)
        return cls._parse(lambda: directory.read_bytes(MANIFEST_NAME, MAX_MANIFEST_BYTES), path)

    @classmethod
    def _parse(cls, read: Callable[[], bytes], path: Path) -> Manifest:
        try:
            text = read().decode("utf-8")
        except FileNotFoundError as error:
            raise CorruptCacheError(f"{path}: manifest is missing", path=path) from error
        except WrongKindError as error:
            raise CorruptCacheError(
                f"{path}: manifest is {error.found}, not a regular file", path=path
            ) from error
        except (OSError, UnicodeDecodeError) as error:
            raise CorruptCacheError(
                f"{path}: manifest cannot be read: {error}", path=path
            ) from error
        return cls.from_json(text, source=path)

    @classmethod
    def from_json(cls, text: str, *, source: Path) -> Manifest:
        """Parse a manifest, checking each field it promises."""

        def fail(problem: str) -> CorruptCacheError:
            return CorruptCacheError(f"{source}: {problem}", path=source)

        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise fail(f"manifest is not valid JSON ({error})") from error
        except RecursionError as error:
            raise fail("manifest is not valid JSON (nested too deeply)") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise fail(f"not a {FORMAT_NAME} manifest")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            hint = "upgrade shardcache" if newer else "it will be rebuilt"
            raise FormatVersionError(
                f"{source}: unsupported cache format version {version!r}; this shardcache "
                f"reads version {FORMAT_VERSION} ({hint}, or remove it with `shardcache clear`)",
                path=source,
            )
        try:
            shards = tuple(ShardInfo(**shard) for shard in data["shards"])
            manifest = cls(
                key=data["key"],
                subset=data["subset"],
                num_samples=data["num_samples"],
                shards=shards,
                labels=tuple(data["labels"]),
                key_inputs=data["key_inputs"],
                library_version=data["library_version"],
                created=data["created"],
                storage=data["storage"],
                shard_options=data["shard_options"],
                extra=data.get("extra", {}),
            )
        except (KeyError, TypeError) as error:
            raise fail(f"manifest field missing or malformed: {error}") from error
        manifest._check(fail)
        return manifest

    def _check(self, fail: Any) -> None:
        if not isinstance(self.storage, dict) or not all(
            type(value) is int for value in self.storage.values()
        ):
            raise fail("manifest storage is not a table of byte and tensor counts")
        if not isinstance(self.shard_options, dict):
            raise fail("manifest shard_options is not an object")
        if not isinstance(self.key, str) or not re.fullmatch(r"[0-9a-f]{64}", self.key):
            raise fail("manifest key is not a SHA-256 hex digest")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise fail(f"manifest num_samples={self.num_samples!r} is not a positive int")
        if len(self.labels) != self.num_samples:
            raise fail(f"manifest has {len(self.labels)} labels for {self.num_samples} samples")
        expected_start = 0
        for shard in self.shards:
            match = SHARD_NAME.match(shard.file)
            if match is None:
                raise fail(f"manifest lists an unexpected shard file name {shard.file!r}")
            named = (int(match[1]), int(match[2]), match[3])
            if named != (shard.start, shard.stop, shard.xxh3_128):
                raise fail(f"shard {shard.file} does not match its manifest entry")
            if shard.start != expected_start or shard.stop <= shard.start:
                raise fail(f"shard {shard.file} does not follow sample {expected_start}")
            if not isinstance(shard.bytes, int) or shard.bytes <= 8:
                raise fail(f"shard {shard.file} has an impossible size {shard.bytes!r}")
            expected_start = shard.stop
        if expected_start != self.num_samples:
            raise fail(f"shards cover {expected_start} of {self.num_samples} samples")
