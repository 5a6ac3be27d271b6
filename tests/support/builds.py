"""A cache build run as a child process, and what builds leave in a cache directory.

A child build (`child_build`) is one run of `ensure_cache` as a separate process would do
it, described by a JSON-able spec (`child_spec`): which items, loader settings, crash or
pause point, barrier, and a `team_spec` when it is a member of a cooperative build (then
`build_together` runs first). It reports through a JSON file: the decodes it caused, a
digest of every sample it served, or the error it got. Start one with
``processes.fork_child(child_build, spec)`` (or `run_build` to wait for its result).

After a crash, `verify_recovery` checks the next two runs: the first serves the reference
samples exactly and decodes exactly what the staging directory lacks, the second decodes
nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

from shardcache.store import ensure_cache
from shardcache.store.cooperative import build_together
from shardcache.store.key import cache_key
from shardcache.store.layout import SHARD_NAME, CacheRoot
from shardcache.store.locking import BuildLock
from shardcache.store.slicebuild import Share
from shardcache.store.teams import Member, Team

from .crash import install_crash_hook, install_pause_hook
from .decodes import decode_count
from .loaders import N_ITEMS, BadLoader, SlowLoader, make_items
from .processes import CHILD_DEADLINE, DEADLINE, fork_child, write_result
from .samples import dataset_digest

SHARD_BYTES = 2048
"""About three `reference_sample` samples per shard: a build of `N_ITEMS` writes a dozen."""


# ---- looking at a cache directory ---------------------------------------------------------


def published(cache_dir: Path) -> list[Path]:
    """Every entry of ``cache_dir`` but the hidden ones (``.locks``, ``.staging``...) and the
    cache directory's tag (``CACHEDIR.TAG``), by name.

    Published caches, and anything else a build should not have left there.
    """
    if not cache_dir.is_dir():
        return []
    return sorted(
        path
        for path in cache_dir.iterdir()
        if not path.name.startswith(".") and path.name != "CACHEDIR.TAG"
    )


def staged_samples(cache_dir: Path) -> int:
    """Samples covered by final-named shards, summed over every staging directory."""
    covered: set[tuple[str, int]] = set()
    for path in cache_dir.glob(".staging/*/shard-*"):
        match = SHARD_NAME.match(path.name)
        if match:
            covered.update((path.parent.name, i) for i in range(int(match[1]), int(match[2])))
    return len(covered)


def leftovers(cache_dir: Path) -> list[str]:
    """Temp files anywhere under the cache directory."""
    return sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob(".tmp-*"))


def expected_decodes(cache_dir: Path, n: int = N_ITEMS) -> int:
    """What the next run must decode: nothing if a cache is published, else what staging lacks.

    A shard under its final name was fsynced and renamed whole, so resume must reuse every
    one of them (after checking it) and decode exactly the rest.
    """
    return 0 if published(cache_dir) else n - staged_samples(cache_dir)


# ---- child builds -------------------------------------------------------------------------


def child_spec(workdir: Path, tag: str, **options: Any) -> dict[str, Any]:
    """A spec for `child_build`: cache in ``workdir/cache``, decodes logged in ``workdir``."""
    spec: dict[str, Any] = {
        "cache_dir": str(workdir / "cache"),
        "count_file": str(workdir / "decodes.log"),
        "tag": tag,
        "result": str(workdir / f"result-{tag}.json"),
    }
    spec.update(options)
    return spec


def team_spec(job: str, ranks: list[int], me: int) -> dict[str, Any]:
    """A `Team` as a JSON-able spec value: members ``ranks`` on this host, this one ``me``."""
    return {"job": job, "ranks": ranks, "me": me}


def team_of(spec: dict[str, Any]) -> Team:
    """The `Team` a `team_spec` describes (the member pids are not known ahead: 0)."""
    members = tuple(Member(rank, socket.gethostname(), 0) for rank in spec["ranks"])
    return Team(spec["job"], members, spec["me"])


def _loader(spec: dict[str, Any]) -> SlowLoader | BadLoader:
    if spec.get("bad"):  # a loader that raises for those items (its decodes tagged "run")
        return BadLoader(spec["count_file"], "raises", spec["bad"])
    return SlowLoader(
        spec["count_file"],
        tag=spec["tag"],
        delay=spec.get("delay", 0.0),
        crash_at_decode=spec.get("crash_at_decode", 0),
    )


def _wait_barrier(directory: Path, parties: int) -> None:
    """Arrive at a file barrier and wait until all ``parties`` have."""
    deadline = time.monotonic() + DEADLINE
    directory.mkdir(parents=True, exist_ok=True)
    (directory / str(os.getpid())).touch()
    while len(list(directory.iterdir())) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {directory}: not all {parties} parties arrived")
        time.sleep(0.002)


def child_build(spec: dict[str, Any]) -> None:
    """One run of a build, as a separate process would do it; reports to ``spec["result"]``."""
    if spec.get("setsid"):
        os.setsid()
    # A forkserver child inherits "forkserver" as its default start method: DataLoader
    # workers would then start outside this process group (and outlive a kill of it).
    # A user's process on Linux forks them.
    multiprocessing.set_start_method("fork", force=True)
    os.environ.update(spec.get("env", {}))
    crash = spec.get("crash")
    if crash:
        install_crash_hook(crash["event"], crash["pattern"], crash.get("nth", 1))
    pause = spec.get("pause")
    if pause:
        install_pause_hook(**pause)
    if spec.get("barrier"):
        _wait_barrier(Path(spec["barrier"]), spec["parties"])
    if spec.get("ready"):
        Path(spec["ready"]).touch()
    items = make_items(spec.get("n", N_ITEMS), spec.get("prefix", "img"))
    result: dict[str, Any] = {"pid": os.getpid()}
    try:
        if spec.get("team"):  # first this member's part in a cooperative build
            share = Share(
                spec.get("subset", "train"),
                items,
                _loader(spec),
                team_of(spec["team"]),
                spec.get("parallel", -1),
            )
            build_together(
                Path(spec["cache_dir"]),
                [share],
                shard_bytes=spec.get("shard_bytes", SHARD_BYTES),
                lock_timeout=spec.get("lock_timeout", 60.0),
            )
        dataset = ensure_cache(
            Path(spec["cache_dir"]),
            spec.get("subset", "train"),
            items,
            _loader(spec),
            parallel=spec.get("parallel", -1),
            shard_bytes=spec.get("shard_bytes", SHARD_BYTES),
            lock_timeout=spec.get("lock_timeout", 60.0),
        )
        result.update(digest=dataset_digest(dataset), length=len(dataset), path=str(dataset.path))
        dataset.close()
    except Exception as error:  # reported to the test, which asserts on it
        result.update(error=type(error).__name__, message=str(error))
        result["rank_at_fault"] = getattr(error, "rank", None)
    result["decodes"] = decode_count(spec["count_file"], spec["tag"])
    write_result(Path(spec["result"]), result)


def child_rank(spec: dict[str, Any]) -> None:
    """One rank of a job without Lightning: a gloo group, then the disk tier's `open_all`
    with ``distributed`` options, as ``CachingDataModule.setup`` calls it in a DDP job.

    Spec: ``rank``, ``world``, ``init`` (the ``file://`` rendezvous), and as for
    `child_build`. Reports the digest it serves, its decodes and when ``open_all`` returned.
    """
    import torch.distributed as dist

    from shardcache.tiers import Subset, TierOptions, make_tier

    multiprocessing.set_start_method("fork", force=True)
    os.environ.update(spec.get("env", {}))
    dist.init_process_group(
        "gloo", init_method=f"file://{spec['init']}", rank=spec["rank"], world_size=spec["world"]
    )
    items = make_items(spec.get("n", N_ITEMS))
    options = TierOptions(
        spec["cache_dir"], 60.0, spec.get("shard_bytes", SHARD_BYTES), distributed=True
    )
    result: dict[str, Any] = {"pid": os.getpid()}
    try:
        (dataset,) = make_tier("disk", options).open_all([Subset("train", items, _loader(spec))])
        result["returned"] = time.time()
        result.update(digest=dataset_digest(dataset), path=str(dataset.path))
        dataset.close()
    except Exception as error:  # reported to the test, which asserts on it
        result.update(error=type(error).__name__, message=str(error))
    finally:
        dist.destroy_process_group()
    result["decodes"] = decode_count(spec["count_file"], spec["tag"])
    write_result(Path(spec["result"]), result)


def hold_lock(spec: dict[str, Any]) -> None:
    """Take a key's build lock like a builder, report progress, hold it until told to stop."""
    items = make_items(spec.get("n", N_ITEMS))
    root = CacheRoot(Path(spec["cache_dir"]))
    key = cache_key(spec.get("subset", "train"), items, _loader(spec))
    name = root.cache_name(spec.get("subset", "train"), key.digest)
    with BuildLock(root.lock(key.digest), name, 5.0) as lock:
        lock.report_progress(*spec["progress"])
        Path(spec["ready"]).touch()
        deadline = time.monotonic() + CHILD_DEADLINE
        while not Path(spec["release"]).exists() and time.monotonic() < deadline:
            time.sleep(0.01)


def run_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a child build to its end and return its result; it must exit cleanly."""
    child = fork_child(child_build, spec)
    code = child.wait()
    assert code == 0, f"child {spec['tag']} exited with {code}"
    return child.result()


def verify_recovery(workdir: Path, tag: str, reference: str, **options: Any) -> dict[str, Any]:
    """The next run serves the reference exactly; the run after it decodes nothing."""
    cache_dir = workdir / "cache"
    expected = expected_decodes(cache_dir, options.get("n", N_ITEMS))
    # A stale lock that blocked would end the run in LockTimeoutError, not hang the suite.
    options = {"lock_timeout": 30.0, **options}
    first = run_build(child_spec(workdir, f"{tag}-next", **options))
    assert "error" not in first, first
    assert first["digest"] == reference, f"{tag}: the next run served other samples"
    assert first["decodes"] == expected, (tag, first["decodes"], expected)
    second = run_build(child_spec(workdir, f"{tag}-after", **options))
    assert "error" not in second, second
    assert (second["decodes"], second["digest"]) == (0, reference), tag
    assert leftovers(cache_dir) == [], leftovers(cache_dir)
    assert not list((cache_dir / ".staging").glob("*")), "staging left after a finished build"
    return {"next_decodes": first["decodes"], "after_decodes": second["decodes"]}
