"""``shardcache info NAME``: one cache's manifest, key inputs, shards, sizes, label counts."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.units import format_size
from ..store.format import Manifest
from ..store.inventory import DAMAGED, CacheEntry, label_counts, scan
from . import render
from .arguments import NAME_HELP, resolve_names
from .base import EXIT_OK, EXIT_PROBLEMS, add_command


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser],
) -> None:
    """Add ``info`` to ``commands``."""
    parser = add_command(
        commands,
        parents,
        "info",
        "Show a cache's manifest: key inputs, shards, sizes, label counts, last use.",
    )
    parser.add_argument("name", metavar="NAME", help=NAME_HELP)
    parser.set_defaults(handler=run)


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Nested key inputs as ``a.b: value`` pairs."""
    if isinstance(value, dict) and value:
        return [
            pair
            for name in sorted(value)
            for pair in _flatten(f"{prefix}.{name}" if prefix else name, value[name])
        ]
    return [(prefix, value if isinstance(value, str) else json.dumps(value))]


def _json(entry: CacheEntry, manifest: Manifest | None) -> dict[str, Any]:
    document = render.entry_json(entry)
    if manifest is not None:
        counts = label_counts(manifest)
        document |= {
            "library_version": manifest.library_version,
            "format_version": manifest.format_version,
            "key_inputs": manifest.key_inputs,
            "storage": manifest.storage,
            "shard_options": manifest.shard_options,
            "label_counts": [{"label": label, "count": n} for label, n in counts.items()],
            "shards": [asdict(shard) for shard in manifest.shards],
        }
    return document


def _storage(manifest: Manifest) -> str:
    """``4.0x smaller than served (400 of 800 tensors stored as 8- or 16-bit, exactly)``."""
    storage = manifest.storage
    stored, served = storage.get("stored_bytes", 0), storage.get("served_bytes", 0)
    narrow, tensors = storage.get("narrow_tensors", 0), storage.get("tensors", 0)
    if not narrow:
        return f"{format_size(stored)} of tensors, stored as served"
    return (
        f"{format_size(stored)} of tensors serving {format_size(served)} "
        f"({served / max(stored, 1):.1f}x: {narrow} of {tensors} tensors stored as 8- or "
        "16-bit integers, widened exactly)"
    )


def _fields(entry: CacheEntry, manifest: Manifest | None) -> list[tuple[str, str]]:
    fields = [("path", str(entry.path)), ("state", render.state(entry)), ("key", entry.key or "-")]
    if manifest is not None:
        labels = ", ".join(
            f"{'none' if label is None else label}: {n}"
            for label, n in label_counts(manifest).items()
        )
        shards = render.plural(len(manifest.shards), "shard")
        fields += [
            ("subset", manifest.subset),
            ("samples", str(manifest.num_samples)),
            ("size", f"{format_size(entry.size)} in {shards}"),
            ("storage", _storage(manifest)),
            ("labels", labels),
            (
                "created",
                f"{render.local_time(entry.created)} by shardcache {manifest.library_version} "
                f"(format {manifest.format_version})",
            ),
            ("last used", render.local_time(entry.last_used)),
        ]
    else:
        fields += [
            ("size", format_size(entry.size)),
            ("last used", render.local_time(entry.last_used)),
        ]
    if entry.problem:
        fields.append(("problem", entry.problem))
    if entry.owner:
        fields.append(("built by", json.dumps(entry.owner, sort_keys=True)))
    return fields


def run(args: argparse.Namespace, cache_dir: Path) -> int:
    """Print one cache's details."""
    entry = resolve_names(scan(cache_dir), [args.name])[0]
    manifest = entry.manifest
    status = EXIT_PROBLEMS if entry.state == DAMAGED else EXIT_OK
    if args.json:
        render.print_json(_json(entry, manifest))
        return status
    print(entry.name)
    for line in render.fields(_fields(entry, manifest)):
        print(line)
    if manifest is not None:
        print("key inputs:")
        for line in render.fields(_flatten("", manifest.key_inputs)):
            print(line)
        print("shards:")
        rows = [
            (shard.file, f"samples {shard.start}-{shard.stop - 1}", format_size(shard.bytes))
            for shard in manifest.shards
        ]
        for line in render.table(rows, right={2}):
            print(f"  {line}")
    return status
