"""Build a cache: decode into shards in a staging directory, then publish it with one rename.

Crash safety, step by step (a ``kill -9`` at any point leaves no published cache or a
complete one):

1. Shards are written to a temporary name, fsynced, and renamed to a name that carries
   their sample range and checksum; a shard under its final name is complete.
2. A later build resumes from every final-named shard whose header and checksum hold,
   and decodes only the samples they do not cover (`staging`).
3. The manifest is written last, fsynced, and the staging directory is renamed into place:
   a reader sees the whole cache or nothing.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__
from ..core.decoding import decode
from ..core.types import RawDataLoader, Transform
from ..core.units import format_size
from .atomic import write_atomically
from .codec import encode
from .format import Manifest
from .fs import Directory
from .header import Storage, storage_of
from .key import CacheKey, canonical_json
from .layout import ITEMS_NAME, MANIFEST_NAME
from .locking import BuildLock
from .options import ShardOptions
from .shardwriter import NO_SPACE, ShardWriter, no_space
from .staging import StagedShard, make_staging, missing_indices, reusable_shards
from .tree import CacheTree

logger = logging.getLogger(__name__)


def decode_shards(
    staging: Directory,
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    indices: Sequence[int],
    *,
    progress: Callable[[int], None],
    parallel: int,
    options: ShardOptions,
    transforms: Sequence[Transform] = (),
    build_samples: int | None = None,
) -> tuple[list[StagedShard], int]:
    """Decode ``items[i]`` for each ``i`` in ``indices`` into new shards in ``staging``.

    Returns the shards written and the shard size the writer chose. ``progress`` gets the
    count of samples written so far. ``build_samples``: samples of the whole build when
    this is a part of it (a cooperative build's slice), for the size estimates.
    """
    writer = ShardWriter(staging, options, len(indices), build_samples)
    prepare = functools.partial(encode, narrowing=options.narrowing)
    try:
        decoded = decode(
            subset,
            items,
            loader,
            prepare,
            indices=indices,
            parallel=parallel,
            transforms=transforms,
        )
        for sample in decoded:
            writer.add(sample)
            progress(writer.samples_written)
    finally:
        # Keeps what was decoded before a failure, for the next build to resume.
        writer.close()
    return writer.written, writer.shard_bytes


def _decode_missing(
    staging: Directory,
    name: str,
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    lock: BuildLock,
    parallel: int,
    options: ShardOptions,
    transforms: Sequence[Transform],
) -> tuple[list[StagedShard], int]:
    """Every shard of the build, and the shard size the writer chose.

    The shards: verified ones already in ``staging``, and those decoded now.
    """
    reused = reusable_shards(staging, len(items))
    missing = missing_indices(len(items), reused)
    if reused:
        logger.info(
            "resuming the build of %s: %d shards (%d samples) reused, %d to decode",
            name,
            len(reused),
            len(items) - len(missing),
            len(missing),
        )
    else:
        logger.info("building %s (%d samples) in %s", name, len(items), staging.path.parent.parent)
    if not missing:
        return sorted(reused, key=lambda shard: shard.info.start), options.target_bytes or 0
    before = len(items) - len(missing)
    written, chosen = decode_shards(
        staging,
        subset,
        items,
        loader,
        missing,
        progress=lambda done: lock.report_progress(before + done, len(items)),
        parallel=parallel,
        options=options,
        transforms=transforms,
    )
    return sorted([*reused, *written], key=lambda shard: shard.info.start), chosen


def _publish(
    tree: CacheTree, staging: Directory, name: str, manifest: Manifest, items: Sequence[Any]
) -> Path:
    """Write the items and the manifest, then rename ``staging`` to ``name``; its path."""
    # The manifest goes last: its presence is what makes the directory a cache.
    for file_name, text in (
        (ITEMS_NAME, canonical_json(list(items))),
        (MANIFEST_NAME, manifest.to_json()),
    ):
        try:
            write_atomically(staging, file_name, text.encode())
        except OSError as error:
            # A disk that fills up after the last shard must still give the clear error.
            if error.errno in NO_SPACE:
                raise no_space(error, file_name, staging) from error
            raise
    mode = tree.policy.published_mode
    if mode is not None:  # a team's caches: nobody changes one once it is published
        for file_name, _ in staging.walk_files():
            os.chmod(file_name, mode, dir_fd=staging.fd)
    staging.fsync()
    with tree.staging_root() as staging_root:
        # One atomic step from "building" to "published", of the directory this build
        # made (renamed through descriptors: never a symlink planted in its place).
        staging_root.rename(manifest.key, tree.root, name)
    tree.root.fsync()
    return tree.path / name


def _describe(storage: Storage) -> str:
    """``4 shards, 25.0 MiB (served 100.0 MiB: 400 of 400 tensors stored narrow)``."""
    text = format_size(storage.stored_bytes)
    if storage.narrow_tensors:
        text += (
            f" (served {format_size(storage.served_bytes)}: {storage.narrow_tensors} of "
            f"{storage.tensors} tensors stored narrow, exactly)"
        )
    return text


def publish_build(
    *,
    tree: CacheTree,
    staging: Directory,
    name: str,
    subset: str,
    items: Sequence[Any],
    key: CacheKey,
    shards: Sequence[StagedShard],
    options: ShardOptions,
    chosen_bytes: int,
) -> Path:
    """Write the manifest of ``shards`` (in order, tiling every sample) and publish ``name``."""
    storage = sum((storage_of(shard.header) for shard in shards), Storage())
    manifest = Manifest(
        key=key.digest,
        subset=subset,
        num_samples=len(items),
        shards=tuple(shard.info for shard in shards),
        labels=tuple(record.get("label") for s in shards for record in s.header.records),
        key_inputs=key.inputs,
        library_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        storage=vars(storage),
        shard_options=options.record(chosen_bytes),
    )
    final = _publish(tree, staging, name, manifest, items)
    logger.info(
        "published %s: %d samples, %d shards, %s", name, len(items), len(shards), _describe(storage)
    )
    return final


def build(
    *,
    tree: CacheTree,
    name: str,
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    key: CacheKey,
    lock: BuildLock,
    parallel: int,
    options: ShardOptions,
    transforms: Sequence[Transform] = (),
) -> Path:
    """Build and publish the cache ``name`` in ``tree``; the caller holds ``lock``."""
    with make_staging(tree, key.digest) as staging:
        shards, chosen_bytes = _decode_missing(
            staging, name, subset, items, loader, lock, parallel, options, transforms
        )
        return publish_build(
            tree=tree,
            staging=staging,
            name=name,
            subset=subset,
            items=items,
            key=key,
            shards=shards,
            options=options,
            chosen_bytes=chosen_bytes,
        )
