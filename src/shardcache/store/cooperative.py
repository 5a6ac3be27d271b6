"""Build one cache with several ranks of a job: each decodes a slice, one publishes it all.

For the ranks of a `Team` (those that miss the cache and share its directory):

1. Every member takes its slice lock (`slices.SliceLock`) of every cache it builds.
2. The coordinator (the lowest rank) takes the key's build lock, as a single builder does:
   it opens what another job published meanwhile, ends abandoned builds of the key, scans
   the staging directory for verified shards to resume from, and writes the plan: the
   missing samples in one consecutive part per member.
3. Every member decodes its part (``parallel`` processes, as a single builder) into shards
   of its own in the staging directory, then writes its done file.
4. The coordinator waits for every done file, checks that the shards tile every sample,
   and publishes the cache with one rename, as a single builder does; the others wait for
   the published cache.

Files and locks only, with the caller's deadlines (``lock_timeout``), never a collective:
nothing here imports torch.distributed or Lightning. Whoever waits watches the others
(`slices.Watch`): a member that died with its part unfinished, or one that failed (the
job's failure marker), ends the build on every member with `PeerFailedError`. Its shards
stay in the staging directory and the next build resumes from them, so an item is never
decoded twice in one job.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..core.settings import DEFAULT_LOCK_TIMEOUT
from .cache import prepare_tree
from .coordinator import Coordinator
from .options import ShardOptions
from .participant import Participant
from .slicebuild import Share
from .slices import PEER_TIMEOUT


def build_together(
    cache_dir: str | os.PathLike[str],
    shares: Sequence[Share],
    *,
    shard_bytes: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    narrow: bool = True,
    peer_timeout: float = PEER_TIMEOUT,
) -> None:
    """Publish each share's cache in ``cache_dir`` with its team, one cache after another.

    Returns once every one is published (open them with `store.cache.ensure_cache`). Every
    member calls this with its own teams (the same members and job, its own position), its
    shares in the same order as the others. It first takes its slice lock of every cache,
    so that a member still busy with an earlier cache counts as alive for a later one.
    Arguments as for `ensure_cache`; ``peer_timeout`` as `slices.PEER_TIMEOUT`.

    Raises:
        PeerFailedError: another member died or failed; the build is abandoned.
        LockTimeoutError: a wait outlasted ``lock_timeout``.
    """
    path = Path(cache_dir).absolute()
    options = ShardOptions(target_bytes=shard_bytes, narrowing=narrow)
    keyed = [(share, share.cache_key()) for share in shares]
    with prepare_tree(path, None) as tree:
        missing = [(share, key) for share, key in keyed if tree.names.find(key.digest) is None]
        if not missing:
            return
        with tree.locks(create=True) as locks, contextlib.ExitStack() as stack:
            builds = [
                (Coordinator if share.team.is_coordinator else Participant)(
                    tree,
                    locks,
                    share,
                    key,
                    options=options,
                    lock_timeout=lock_timeout,
                    peer_timeout=peer_timeout,
                )
                for share, key in missing
            ]
            for build in builds:
                stack.enter_context(build.slice_lock)
            for build in builds:
                build.run()
