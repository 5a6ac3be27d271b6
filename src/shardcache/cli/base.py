"""What every subcommand shares: exit statuses and how a subcommand's parser is made."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import CacheDirError
from ..store.fs import Directory
from ..store.layout import TAG_NAME
from ..store.tagging import is_tagged
from .arguments import UsageError

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

EXIT_STATUS_HELP = """\
exit status:
  0  success
  1  problems found: a damaged cache, a cache that could not be removed,
     a prune limit that could not be reached, a declined confirmation
  2  usage error: a bad option or an unknown cache name
     (also: clear, prune or verify --repair in a directory without CACHEDIR.TAG)"""


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str = "",
) -> argparse.ArgumentParser:
    """A subcommand's parser, with the common options and the exit statuses in its help."""
    return commands.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\n{description}".strip(),
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )


def require_cache_directory(cache_dir: Path) -> None:
    """Refuse (exit 2) to remove anything from a directory shardcache has not tagged.

    A slip such as ``--cache-dir ~`` must remove nothing: shardcache tags every directory
    it builds caches in with ``CACHEDIR.TAG``. A missing directory holds nothing to remove.
    """
    try:
        root = Directory.open_root(cache_dir)
    except FileNotFoundError:
        return
    except CacheDirError as error:
        raise UsageError(str(error)) from error
    with root:
        if not is_tagged(root):
            raise UsageError(
                f"{root.path} is not a shardcache cache directory (no {TAG_NAME}): nothing "
                "was removed. Check --cache-dir and SHARDCACHE_DIR. (A directory of caches "
                "made before shardcache tagged them is tagged by the next run that uses it.)"
            )
