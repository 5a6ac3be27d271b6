"""Machinery shared by the fault tests: deterministic loaders, child builds, crash hooks, mounts.

Children are real processes. Most are forked from a multiprocessing ``forkserver`` that has
imported torch and shardcache once (a child then starts in ~40 ms instead of ~3 s), so each
"next run" is a fresh process with no state but imported modules; `start_exec` starts a
brand-new interpreter instead (``subprocess`` with ``start_new_session=True``) where a test
needs one. A child reports through a JSON file: decodes it caused, a digest of every sample
it served, or the error it got.

Decodes are counted across processes (DataLoader workers included) by appending one line per
decode, tagged with the run's name, to a file opened with ``O_APPEND``.

Loader classes live here, in an importable module, because the cache key hashes their class
source; every process imports them as ``_fault_helpers``. Settings that do not change the
samples (the count file, the delay, crash points) are private attributes, so that they stay
out of the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from shardcache.store import ensure_cache
from shardcache.store.layout import SHARD_NAME

TESTS = Path(__file__).resolve().parent
CRASH_EXIT = 77
"""The exit status of a child that reached its crash point."""

N_ITEMS = 40
SHARD_BYTES = 2048
"""About three samples per shard: a build of `N_ITEMS` writes a dozen shards."""

CHILD_DEADLINE = 120.0
"""Seconds a child may take before the test kills it and fails."""


# ---- items, samples and digests ---------------------------------------------------------


def make_items(n: int = N_ITEMS, prefix: str = "img") -> list[list[Any]]:
    """Split items as a JSON protocol file has them: ``["img/0003.png", label]``."""
    return [[f"{prefix}/{i:04d}.png", i % 3] for i in range(n)]


def item_index(item: Any) -> int:
    return int(re.search(r"(\d+)\.png$", item[0])[1])  # type: ignore[index]


def reference_sample(item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """The sample of ``item``, a pure function of it: what every cache must serve, bitwise."""
    index = item_index(item)
    generator = torch.Generator().manual_seed(7919 * index + 17)
    rows = 6 + index % 5
    tensor = torch.randn(1, rows, 16, generator=generator)
    if index % 7 == 3:  # values that must survive bit for bit
        tensor[0, 0, :4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0])
    mask = (torch.rand(rows, 16, generator=generator) > 0.5).to(torch.uint8)
    metadata: dict[str, Any] = {
        "label": item[1],
        "name": item[0],
        "mask": mask,
        "score": index / 3,
        "tags": [item[0], index, None],
    }
    if index % 5 == 0:
        metadata["nan"] = float("nan")
        metadata["counts"] = torch.arange(index + 1, dtype=torch.int64)
    return tensor, metadata


def _update_tensor(hasher: Any, tensor: torch.Tensor) -> None:
    hasher.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
    hasher.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def update_sample(hasher: Any, tensor: torch.Tensor, metadata: dict[str, Any]) -> None:
    """Feed a sample to ``hasher``: dtypes, shapes, bytes, metadata in its order."""
    _update_tensor(hasher, tensor)
    for name, value in metadata.items():
        hasher.update(f"K{name}".encode())
        if isinstance(value, torch.Tensor):
            _update_tensor(hasher, value)
        else:
            hasher.update(json.dumps(value, allow_nan=True).encode())


def dataset_digest(dataset: Any) -> str:
    """SHA-256 over every sample a dataset serves, in order, and its labels."""
    hasher = hashlib.sha256()
    for index in range(len(dataset)):
        update_sample(hasher, *dataset[index])
    hasher.update(json.dumps(list(dataset.labels())).encode())
    return hasher.hexdigest()


def reference_digest(items: Sequence[Any], sample: Any = reference_sample) -> str:
    """What `dataset_digest` gives for a correct cache of ``items``."""
    hasher = hashlib.sha256()
    for item in items:
        update_sample(hasher, *sample(item))
    hasher.update(json.dumps([item[1] for item in items]).encode())
    return hasher.hexdigest()


# ---- counting decodes -------------------------------------------------------------------


def record_decode(count_file: str, tag: str, item: Any) -> None:
    """Append one line; ``O_APPEND`` writes of one short line never interleave."""
    fd = os.open(count_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{tag}\t{os.getpid()}\t{item[0]}\n".encode())
    finally:
        os.close(fd)


def decode_lines(count_file: str | Path, tag: str | None = None) -> list[list[str]]:
    try:
        text = Path(count_file).read_text()
    except FileNotFoundError:
        return []
    rows = [line.split("\t") for line in text.splitlines()]
    return [row for row in rows if tag is None or row[0] == tag]


def count_decodes(count_file: str | Path, tag: str | None = None) -> int:
    return len(decode_lines(count_file, tag))


# ---- loaders ----------------------------------------------------------------------------


class SlowLoader:
    """`reference_sample` with a short sleep per decode, so that builds last long enough.

    Args:
        count_file: where each decode appends a line.
        tag: the run's name in that file.
        delay: seconds of sleep per decode.
        crash_at_decode: ``os._exit(CRASH_EXIT)`` at this decode of this process (0: never).
    """

    shardcache_key_ignores = ("_count_file", "_tag", "_delay", "_crash_at_decode", "_decoded")

    def __init__(
        self, count_file: str | Path, tag: str = "run", delay: float = 0.0, crash_at_decode: int = 0
    ) -> None:
        self._count_file = str(count_file)
        self._tag = tag
        self._delay = delay
        self._crash_at_decode = crash_at_decode
        self._decoded = 0

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        self._decoded += 1
        record_decode(self._count_file, self._tag, item)
        if self._decoded == self._crash_at_decode:
            os._exit(CRASH_EXIT)
        if self._delay:
            time.sleep(self._delay)
        return reference_sample(item)

    def label(self, item: Any) -> int:
        return int(item[1])


def sized_sample(item: Any, small: int, large: int, switch_at: int) -> tuple[torch.Tensor, dict]:
    """A float32 sample of ``small`` bytes before index ``switch_at``, ``large`` from there."""
    index = item_index(item)
    nbytes = small if index < switch_at else large
    tensor = (torch.arange(nbytes // 4, dtype=torch.int32) * 31 + index).view(torch.float32)
    return tensor, {"label": item[1]}


class SizedLoader:
    """Samples of chosen sizes: ``small`` bytes for the first ``switch_at`` items, then ``large``.

    A build's free-space estimate comes from its first samples, so small-then-large fools it.
    """

    shardcache_key_ignores = ("_count_file", "_tag")

    def __init__(
        self,
        count_file: str | Path,
        small: int,
        large: int,
        switch_at: int = 0,
        tag: str = "run",
    ) -> None:
        self.small = small
        self.large = large
        self.switch_at = switch_at
        self._count_file = str(count_file)
        self._tag = tag

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        record_decode(self._count_file, self._tag, item)
        return sized_sample(item, self.small, self.large, self.switch_at)

    def label(self, item: Any) -> int:
        return int(item[1])


OPEN_FILES: list[Any] = []
"""Files `BadLoader` opened in this process, for the test to close."""


class BadLoader:
    """Returns something unusable for the items whose index is in ``bad``.

    Modes: ``non_tensor`` (an int as the sample), ``non_pair`` (a bare tensor),
    ``non_dict`` (a string as metadata), ``open_file`` (an open file object as metadata),
    ``raises`` (the loader raises).
    """

    shardcache_key_ignores = ("_count_file",)

    def __init__(self, count_file: str | Path, mode: str, bad: Sequence[int]) -> None:
        self.mode = mode
        self.bad = sorted(bad)
        self._count_file = str(count_file)

    def sample(self, item: Any) -> Any:
        record_decode(self._count_file, "run", item)
        tensor, metadata = reference_sample(item)
        if item_index(item) not in self.bad:
            return tensor, metadata
        if self.mode == "non_tensor":
            return 1234, metadata
        if self.mode == "non_pair":
            return tensor
        if self.mode == "non_dict":
            return tensor, "label=1"
        if self.mode == "open_file":
            handle = Path(os.devnull).open()  # noqa: SIM115 (the unstorable value itself)
            OPEN_FILES.append(handle)
            metadata["handle"] = handle
            return tensor, metadata
        if self.mode == "raises":
            raise FileNotFoundError(f"no such file: {item[0]}")
        raise AssertionError(self.mode)

    def label(self, item: Any) -> int:
        return int(item[1])


# ---- crash points -----------------------------------------------------------------------


def install_crash_hook(event: str, pattern: str, nth: int = 1) -> None:
    """``os._exit(CRASH_EXIT)`` at the ``nth`` audit ``event`` whose arguments match ``pattern``.

    The arguments are joined by spaces: ``open`` gives ``"<path> <mode> <flags>"``,
    ``os.rename`` (also raised by ``os.replace``) gives ``"<src> <dst> ..."``. The hook runs
    before the operation, so a crash "at" a rename leaves the source in place.
    """
    matcher = re.compile(pattern)
    seen = 0

    def hook(name: str, arguments: tuple[Any, ...]) -> None:
        nonlocal seen
        if name != event:
            return
        if matcher.search(" ".join(str(argument) for argument in arguments)):
            seen += 1
            if seen == nth:
                os._exit(CRASH_EXIT)

    sys.addaudithook(hook)


# Where a build can die: the audit event, a pattern its arguments match, which occurrence
# (or the loader's k-th decode). Each is a row of the crash matrix in test_faults_crash.
TMP = r"(?:^|/)\.tmp-[^/ ]*"  # files are opened relative to their directory's descriptor
CRASH_POINTS: dict[str, dict[str, Any]] = {
    "lock owner file write": {"event": "open", "pattern": TMP + r"\.owner\.json "},
    "lock owner file rename": {"event": "os.rename", "pattern": TMP + r"\.owner\.json "},
    "staging mkdir": {"event": "os.mkdir", "pattern": r"^[0-9a-f]{64} "},
    "first decode": {"decode": 1},
    "mid-build decode": {"decode": N_ITEMS // 2},
    "last decode": {"decode": N_ITEMS},
    "first shard temp open": {"event": "open", "pattern": TMP + r"shard-", "nth": 1},
    "third shard temp open": {"event": "open", "pattern": TMP + r"shard-", "nth": 3},
    "first shard rename": {"event": "os.rename", "pattern": TMP + r"shard-", "nth": 1},
    "fourth shard rename": {"event": "os.rename", "pattern": TMP + r"shard-", "nth": 4},
    "last shard rename": {"event": "os.rename", "pattern": TMP + r"shard-", "nth": "last"},
    "items.json write": {"event": "open", "pattern": TMP + r"items\.json "},
    "items.json rename": {"event": "os.rename", "pattern": TMP + r"items\.json "},
    "manifest write": {"event": "open", "pattern": TMP + r"manifest\.json "},
    "manifest rename": {"event": "os.rename", "pattern": TMP + r"manifest\.json "},
    "publish rename": {"event": "os.rename", "pattern": r"^[0-9a-f]{64} "},
    "root fsync after publish": {"event": "os.remove", "pattern": r"\.owner\.json "},
}


# ---- child runs -------------------------------------------------------------------------


def make_loader(spec: dict[str, Any]) -> Any:
    kind = spec.get("loader", "slow")
    if kind == "slow":
        return SlowLoader(
            spec["count_file"],
            tag=spec["tag"],
            delay=spec.get("delay", 0.0),
            crash_at_decode=spec.get("crash_at_decode", 0),
        )
    raise AssertionError(kind)


def _wait_barrier(directory: Path, parties: int, deadline: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / str(os.getpid())).touch()
    while len(list(directory.iterdir())) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {directory}: not all {parties} parties arrived")
        time.sleep(0.002)


def _write_result(path: Path, result: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(json.dumps(result))
    temporary.replace(path)


def run_child(spec: dict[str, Any]) -> None:
    """One run of a build, as a separate process would do it; see `start_fork`."""
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
        _wait_barrier(Path(spec["barrier"]), spec["parties"], time.monotonic() + 60)
    if spec.get("ready"):
        Path(spec["ready"]).touch()
    items = make_items(spec.get("n", N_ITEMS), spec.get("prefix", "img"))
    result: dict[str, Any] = {"pid": os.getpid()}
    try:
        dataset = ensure_cache(
            Path(spec["cache_dir"]),
            spec.get("subset", "train"),
            items,
            make_loader(spec),
            parallel=spec.get("parallel", -1),
            shard_bytes=spec.get("shard_bytes", SHARD_BYTES),
            lock_timeout=spec.get("lock_timeout", 60.0),
        )
        result.update(digest=dataset_digest(dataset), length=len(dataset), path=str(dataset.path))
        dataset.close()
    except Exception as error:  # reported to the test, which asserts on it
        result.update(error=type(error).__name__, message=str(error))
    result["decodes"] = count_decodes(spec["count_file"], spec["tag"])
    _write_result(Path(spec["result"]), result)


def hold_lock(spec: dict[str, Any]) -> None:
    """Take a key's build lock like a builder, report progress, hold it until told to stop."""
    from shardcache.store.key import cache_key
    from shardcache.store.layout import CacheRoot
    from shardcache.store.locking import BuildLock

    items = make_items(spec.get("n", N_ITEMS))
    loader = make_loader(spec)
    root = CacheRoot(Path(spec["cache_dir"]))
    key = cache_key(spec.get("subset", "train"), items, loader)
    name = root.cache_name(spec.get("subset", "train"), key.digest)
    with BuildLock(root.lock(key.digest), name, 5.0) as lock:
        lock.report_progress(*spec["progress"])
        Path(spec["ready"]).touch()
        deadline = time.monotonic() + CHILD_DEADLINE
        while not Path(spec["release"]).exists() and time.monotonic() < deadline:
            time.sleep(0.01)


_CONTEXT: Any = None


def _forkserver() -> Any:
    """The forkserver context; its server imports this module (and so torch) once."""
    global _CONTEXT  # noqa: PLW0603 (one server per test session)
    if _CONTEXT is None:
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["shardcache.store", "_fault_helpers"])
        # Python 3.11's forkserver ignores the sys.path it is given, so it would not find
        # this module (its children do: they get sys.path from the parent).
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), saved]))
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        _CONTEXT = context
    return _CONTEXT


class Child:
    """A child run: its spec, its process, and its JSON result once it has ended."""

    def __init__(self, spec: dict[str, Any], process: Any) -> None:
        self.spec = spec
        self.process = process

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def running(self) -> bool:
        if isinstance(self.process, subprocess.Popen):
            return self.process.poll() is None
        return self.process.exitcode is None

    def wait(self, timeout: float = CHILD_DEADLINE) -> int:
        """Wait for the exit; return the exit code (negative: killed by that signal)."""
        if isinstance(self.process, subprocess.Popen):
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
                self.process.wait()
                raise AssertionError(f"child {self.spec['tag']} hung") from None
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise AssertionError(f"child {self.spec['tag']} hung")
        return int(self.process.exitcode)

    def kill_group(self) -> bool:
        """SIGKILL the child's whole process group (it must have started its own session)."""
        if not self.running():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
            return True
        return False

    def result(self) -> dict[str, Any]:
        return dict(json.loads(Path(self.spec["result"]).read_text()))


def child_spec(workdir: Path, tag: str, **options: Any) -> dict[str, Any]:
    """A spec for `run_child`: cache in ``workdir/cache``, decodes counted in ``workdir``."""
    spec: dict[str, Any] = {
        "cache_dir": str(workdir / "cache"),
        "count_file": str(workdir / "decodes.log"),
        "tag": tag,
        "result": str(workdir / f"result-{tag}.json"),
    }
    spec.update(options)
    return spec


def start_fork(spec: dict[str, Any], target: Any = run_child) -> Child:
    """Start ``target(spec)`` in a process forked from the preloaded forkserver."""
    process = _forkserver().Process(target=target, args=(spec,), name=spec.get("tag"))
    process.start()
    return Child(spec, process)


def start_exec(spec: dict[str, Any]) -> Child:
    """Start `run_child` in a new interpreter, in a session (and process group) of its own."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import _fault_helpers; "
        "_fault_helpers.run_child(json.loads(sys.argv[2]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(TESTS), json.dumps(spec)], start_new_session=True
    )
    return Child(spec, process)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a child to its end and return its result; it must exit cleanly."""
    child = start_fork(spec)
    code = child.wait()
    assert code == 0, f"child {spec['tag']} exited with {code}"
    return child.result()


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.002)


# ---- looking at a cache directory -------------------------------------------------------


def staged_samples(cache_dir: Path) -> int:
    """Samples covered by final-named shards under every staging directory."""
    staging = cache_dir / ".staging"
    if not staging.is_dir():
        return 0
    covered: set[int] = set()
    for path in staging.glob("*/shard-*"):
        match = SHARD_NAME.match(path.name)
        if match:
            covered.update(range(int(match[1]), int(match[2])))
    return len(covered)


def published(cache_dir: Path) -> list[Path]:
    from shardcache.store.layout import CacheRoot

    return list(CacheRoot(cache_dir).published())


def leftovers(cache_dir: Path) -> list[str]:
    """Temp files anywhere under the cache directory."""
    return sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob(".tmp-*"))


# ---- filesystems ------------------------------------------------------------------------


def _mount(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *arguments], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at ``path`` for the duration; the caller skips when it fails."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    import pytest

    remounted = _mount("-o", f"remount,{options}", str(path))
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount {path} with {options}: {remounted.stderr.strip()}")


# ---- the random-kill loop (test_soak and test_faults_crash) ------------------------------


def expected_decodes(cache_dir: Path, n: int = N_ITEMS) -> int:
    """What the next run must decode: nothing if a cache is published, else what staging lacks.

    A shard under its final name was fsynced and renamed whole, so resume must reuse every
    one of them (after checking it) and decode exactly the rest.
    """
    return 0 if published(cache_dir) else n - staged_samples(cache_dir)


def verify_recovery(workdir: Path, tag: str, reference: str, **options: Any) -> dict[str, Any]:
    """The next run serves the reference exactly; the run after it decodes nothing."""
    cache_dir = workdir / "cache"
    expected = expected_decodes(cache_dir, options.get("n", N_ITEMS))
    # A stale lock that blocked would end the run in LockTimeoutError, not hang the suite.
    options = {"lock_timeout": 30.0, **options}
    first = run(child_spec(workdir, f"{tag}-next", **options))
    assert "error" not in first, first
    assert first["digest"] == reference, f"{tag}: the next run served other samples"
    assert first["decodes"] == expected, (tag, first["decodes"], expected)
    second = run(child_spec(workdir, f"{tag}-after", **options))
    assert "error" not in second, second
    assert (second["decodes"], second["digest"]) == (0, reference), tag
    assert leftovers(cache_dir) == [], leftovers(cache_dir)
    assert not list((cache_dir / ".staging").glob("*")), "staging left after a finished build"
    return {"next_decodes": first["decodes"], "after_decodes": second["decodes"]}


def kill_loop(workdir: Path, kills: int, seed: int, delay: float = 0.01) -> dict[str, int]:
    """SIGKILL builds (and resumed builds) at seeded random moments; verify after each streak.

    Each build runs in a session of its own with ``parallel`` -1 or 2, so that the kill
    takes its DataLoader workers too. After a streak of one to three kills on the same
    directory (the later ones hit resumed builds), a fresh process must serve the reference
    samples exactly, and the run after it must decode nothing; then the directory is wiped.

    Returns:
        counts: ``kills`` delivered, ``resumed_kills`` (of a build that had shards to
        resume), ``killed_after_publish`` (the cache was complete when the kill landed),
        builds that ``finished`` before their kill time, ``verified`` recoveries.
    """
    import random
    import shutil

    rng = random.Random(seed)
    reference = reference_digest(make_items())
    counts = dict.fromkeys(
        ["kills", "resumed_kills", "killed_after_publish", "finished", "verified"], 0
    )
    attempt = 0
    streak = rng.randint(1, 3)
    while counts["kills"] < kills:
        attempt += 1
        assert attempt < 4 * kills + 10, counts
        cache_dir = workdir / "cache"
        had_staging = staged_samples(cache_dir) > 0
        ready = workdir / f"ready-{attempt}"
        parallel = rng.choice([-1, 2])
        spec = child_spec(
            workdir,
            f"kill{attempt}",
            setsid=True,
            ready=str(ready),
            delay=delay,
            parallel=parallel,
        )
        # Kill within about the time the decoding left should take, and a little after:
        # most kills land inside the build, some in its last steps or once it is done.
        decoding = (N_ITEMS - staged_samples(cache_dir)) * delay / (2 if parallel > 0 else 1)
        moment = rng.uniform(0.0, 1.2 * decoding + 0.1)
        child = start_fork(spec)
        wait_for(ready)
        time.sleep(moment)
        killed = child.kill_group() and child.wait() == -signal.SIGKILL
        if not killed:
            child.wait()
            counts["finished"] += 1
        done = bool(published(cache_dir))
        if killed:
            counts["kills"] += 1
            counts["resumed_kills"] += had_staging
            counts["killed_after_publish"] += done
            streak -= 1
        # A published cache ends the streak: the next build would have nothing to do.
        if done or streak <= 0 or counts["kills"] >= kills:
            verify_recovery(workdir, f"verify{attempt}", reference)
            counts["verified"] += 1
            shutil.rmtree(cache_dir)
            streak = rng.randint(1, 3)
    return counts


def install_pause_hook(event: str, pattern: str, nth: int, paused: str, resume: str) -> None:
    """At the ``nth`` matching audit event, touch ``paused`` and wait for ``resume`` to exist.

    It holds a process inside a race window (before the operation) for as long as the test
    needs to make the other side of the race happen.
    """
    matcher = re.compile(pattern)
    seen = 0

    def hook(name: str, arguments: tuple[Any, ...]) -> None:
        nonlocal seen
        if name != event or not matcher.search(" ".join(map(str, arguments))):
            return
        seen += 1
        if seen == nth:
            Path(paused).touch()
            deadline = time.monotonic() + 30
            while not Path(resume).exists() and time.monotonic() < deadline:
                time.sleep(0.005)

    sys.addaudithook(hook)


@contextlib.contextmanager
def readonly_bind(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (a bind mount); the caller skips on failure."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    target.mkdir(parents=True, exist_ok=True)
    bound = _mount("--bind", str(source), str(target))
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        remount(target, "bind,ro")
        yield target
    finally:
        if subprocess.run(["umount", str(target)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False)
