"""``shardcache share --group G [DIR]``: make a cache directory a team directory."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import ConfigurationError
from ..store.sharing import share
from . import render
from .arguments import UsageError
from .base import EXIT_OK, EXIT_PROBLEMS, add_command


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser],
) -> None:
    """Add ``share`` to ``commands``."""
    parser = add_command(
        commands,
        parents,
        "share",
        "Make a cache directory a team directory: every member of GROUP uses its caches.",
        "Run by the directory's owner. The directory and its .staging, .locks and .trash get\n"
        "GROUP and mode 2770 (setgid: entries made in it get GROUP); the caches you own\n"
        "there join GROUP, their data read-only. Members' shardcache then trusts the caches\n"
        "of GROUP, verifying every checksum the first time a member uses a cache another\n"
        "member built. Outside a team directory, shardcache refuses caches of other users.",
    )
    parser.add_argument("directory", nargs="?", type=Path, metavar="DIR", help="(or --cache-dir)")
    parser.add_argument("--group", required=True, metavar="GROUP", help="the team's group")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, cache_dir: Path) -> int:
    """Share the directory with the group, and say what changed."""
    target = args.directory if args.directory is not None else cache_dir
    try:
        result = share(target.expanduser(), args.group)
    except ConfigurationError as error:
        raise UsageError(str(error)) from error
    if args.json:
        render.print_json(
            {
                "cache_dir": str(result.directory),
                "group": result.group,
                "gid": result.gid,
                "changed": [str(path) for path in result.changed],
                "skipped": [{"path": str(path), "reason": why} for path, why in result.skipped],
            }
        )
    else:
        for path, why in result.skipped:
            print(f"left {path} as it is: {why} (its owner can run this command too)")
        print(
            f"{result.directory} is a team directory of group {result.group} "
            f"({len(result.changed)} directories given to the group)"
        )
    return EXIT_PROBLEMS if result.skipped else EXIT_OK
