"""How a build writes shards: options that travel together, checked once, recorded once.

A `ShardOptions` value goes from the DataModule to the writer and into the manifest
(``shard_options``), so ``shardcache info`` shows how a cache was written. A new option (a
codec, another checksum) is a new field here, not a new parameter in every layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import ConfigurationError

DEFAULT_SHARD_BYTES = 64 << 20
"""The largest shard target, as LitData and MosaicML Streaming chose: it bounds what a
crash loses."""

MIN_SHARD_BYTES = 4 << 20
"""The smallest automatic shard target: fewer files and fsyncs for small builds."""

CHECKSUM = "xxh3_128"
"""The checksum in every shard's name and manifest entry (~15 GB/s here, sha256 ~1.5)."""


def automatic_shard_bytes(total_bytes: int) -> int:
    """A 32nd of the build, between `MIN_SHARD_BYTES` and `DEFAULT_SHARD_BYTES`.

    The last shard's write and fsync cannot overlap decoding; a small build with 64 MiB
    shards would wait for most of its data at the end.
    """
    return max(MIN_SHARD_BYTES, min(DEFAULT_SHARD_BYTES, total_bytes // 32))


@dataclass(frozen=True)
class ShardOptions:
    """How shards are cut and checked.

    Attributes:
        target_bytes: bytes of tensor data per shard; None: `automatic_shard_bytes` of the
            build's estimated size.
        checksum: the whole-file checksum of each shard.
        narrowing: store float tensors as uint8/uint16 where that is exact (see `codec`).
    """

    target_bytes: int | None = None
    checksum: str = CHECKSUM
    narrowing: bool = True

    def __post_init__(self) -> None:
        size = self.target_bytes
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigurationError(
                f"shard_bytes={size!r}: expected a positive number of bytes, or None for "
                "an automatic size"
            )
        if self.checksum != CHECKSUM:
            raise ConfigurationError(f"checksum={self.checksum!r}: only {CHECKSUM} is supported")

    def record(self, chosen_bytes: int) -> dict[str, Any]:
        """What the manifest records: these options, and the shard size the build chose."""
        return asdict(self) | {"chosen_bytes": chosen_bytes}
