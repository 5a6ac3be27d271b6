"""What every subcommand shares: exit statuses and how a subcommand's parser is made."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

EXIT_STATUS_HELP = """\
exit status:
  0  success
  1  problems found: a damaged cache, a cache that could not be removed,
     a prune limit that could not be reached, a declined confirmation
  2  usage error: a bad option or an unknown cache name"""


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
