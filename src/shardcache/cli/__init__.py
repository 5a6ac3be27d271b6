"""The ``shardcache`` command (also ``python -m shardcache``): manage the disk caches.

One module per subcommand (``register`` adds its parser, ``run`` does it); the decisions live
in `shardcache.store`, printing in `render`. Every subcommand takes ``--cache-dir`` and
``--json``; the JSON schemas are documented in the README's "Managing the cache" and kept
stable. Nothing here imports torch, so the command starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core import settings
from ..core.errors import ShardCacheError
from . import clear, info, listing, prune, share, verify
from .arguments import UsageError, parse_duration, parse_size
from .base import EXIT_PROBLEMS, EXIT_STATUS_HELP, EXIT_USAGE

COMMANDS = (listing, info, verify, clear, prune, share)
"""Each registers one subcommand, in the order ``--help`` lists them."""

__all__ = ["COMMANDS", "build_parser", "main", "parse_duration", "parse_size"]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the options work before and after the subcommand without one resetting the other.
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help=(
            f"the cache directory (default: ${settings.CACHE_DIR_VARIABLE}, else "
            f"{settings.default_cache_dir()})"
        ),
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document (a stable schema) instead of text",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``shardcache`` (the default cache directory read now)."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="shardcache",
        description=(
            "Manage shardcache's disk caches: list, inspect, verify, clear, prune and share."
        ),
        epilog=f"current cache directory: {settings.cache_dir()}\n\n{EXIT_STATUS_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    for command in COMMANDS:
        command.register(commands, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shardcache`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 problems found, 2 usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or argparse's own usage error
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    args.json = getattr(args, "json", False)
    cache_dir = settings.cache_dir(getattr(args, "cache_dir", None))
    handler: Callable[[argparse.Namespace, Path], int] = args.handler
    try:
        return handler(args, cache_dir)
    except UsageError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ShardCacheError, OSError) as error:
        if isinstance(error, BrokenPipeError):  # `shardcache list | head`: not an error
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_PROBLEMS
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
