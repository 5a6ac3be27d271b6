"""Loaders and machinery of the trust regression tests (`test_trust_*.py`).

Loader classes live in this importable module because the cache key hashes their class
source. Everything here uses shardcache's public interface only.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

# ---- loaders ------------------------------------------------------------------------------


class TinyLoader:
    """Sample ``i``: ``width`` float32 counting up from ``1000 * i``; label ``i % 3``."""

    def __init__(self, width: int = 16) -> None:
        self.width = width

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.arange(self.width, dtype=torch.float32) + 1000 * item, {
            "label": item % 3,
            "name": f"item-{item}",
        }

    def label(self, item: int) -> int:
        return item % 3


def tiny_sample_id(tensor: torch.Tensor) -> int:
    """The item a `TinyLoader` tensor (or a row of a batch of them) was made from."""
    return int(tensor.reshape(-1)[0].item()) // 1000


class PrivateSizeLoader:
    """The sample's length comes from a *private* attribute (finding 2)."""

    def __init__(self, size: int) -> None:
        self._size = size

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.full((self._size,), float(item)), {"label": 0}

    def label(self, item: int) -> int:
        return 0


class PrivateCallableLoader:
    """A private attribute the key cannot describe: a post-processing callable."""

    def __init__(self, scale: float) -> None:
        self._postprocess = lambda tensor: tensor * scale

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self._postprocess(torch.ones(2) * item), {"label": 0}

    def label(self, item: int) -> int:
        return 0


class ReaderLoader:
    """Holds an open file in a private attribute: nothing the key can describe."""

    def __init__(self, path: str) -> None:
        self._reader = Path(path).open("rb")  # noqa: SIM115 (closed by the test)

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.ones(1) * item, {"label": 0}

    def label(self, item: int) -> int:
        return 0


class TypoIgnoresLoader(TinyLoader):
    """Lists an attribute it does not have in ``shardcache_key_ignores`` (a typo of _log)."""

    shardcache_key_ignores = ("_lgo",)

    def __init__(self) -> None:
        super().__init__()
        self._log = "decodes.log"


class SelfCountingLoader(TinyLoader):
    """Counts its own decodes in a private attribute: its attributes change while decoding."""

    def __init__(self) -> None:
        super().__init__()
        self._decoded = 0

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        self._decoded += 1
        return super().sample(item)


class Scale(torch.nn.Module):
    """A transform with a buffer: multiplies a sample's tensor by ``factor``."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.register_buffer("factor", torch.tensor(factor))

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.factor


KEY_IGNORES = "shardcache_key_ignores"
"""The class attribute naming attributes that do not change samples."""


class DeclaredLogLoader:
    """Declares that ``_log`` (a decode log path) does not change its samples."""

    shardcache_key_ignores = ("_log",)

    def __init__(self, size: int, log: str) -> None:
        self._size = size
        self._log = log

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.full((self._size,), float(item)), {"label": 0}

    def label(self, item: int) -> int:
        return 0


class FlakyLoader(TinyLoader):
    """A `TinyLoader` that fails from item ``FAIL_FROM`` on: leaves a build to resume.

    The switch is a class attribute, so the failing and the resuming run share one key.
    """

    FAIL_FROM: int | None = None

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if FlakyLoader.FAIL_FROM is not None and item >= FlakyLoader.FAIL_FROM:
            raise OSError(f"item {item}: the network share went away")
        return super().sample(item)


class BulkyMetadataLoader:
    """A 4-byte tensor and ``chars`` characters of JSON metadata per sample (findings 14, 15)."""

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self._text = "x" * chars  # one string object, shared by every sample

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.tensor([item], dtype=torch.int32), {"label": item % 2, "text": self._text}

    def label(self, item: int) -> int:
        return item % 2


DECODES = [0]
"""Decodes done by `CountedLoader` in this process (forked children start from the parent's)."""


class CountedLoader(TinyLoader):
    """A `TinyLoader` that counts its decodes in `DECODES[0]` (not an attribute: not in the key)."""

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        DECODES[0] += 1
        return super().sample(item)


class GoodLoader:
    """What the victim means to cache: ones. Identified by ``fingerprint()`` alone."""

    def fingerprint(self) -> str:
        return "images-v1"

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.ones(4), {"label": 0}

    def label(self, item: int) -> int:
        return 0


class PoisonLoader(GoodLoader):
    """Another user's loader that claims the same identity and serves zeros.

    (Equivalent to editing a built cache's shards and re-writing their checksums: the key of
    a cache is predictable, so anyone who can write the directory can publish under it.)
    """

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.zeros(4), {"label": 0}


# ---- files --------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (relative) and its kind, without following symlinks."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        kind = "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"
        found[str(path.relative_to(root))] = kind
    return found


def make_victim(root: Path) -> dict[str, str]:
    """A directory of someone's files (a file and a subdirectory with one); its tree."""
    (root / "thesis").mkdir(parents=True)
    (root / "precious.txt").write_text("years of work")
    (root / "thesis" / "chapter1.tex").write_text("\\chapter{One}")
    return tree(root)


def replace_with_fifo(path: Path) -> None:
    """Put a FIFO where ``path`` was."""
    path.unlink(missing_ok=True)
    os.mkfifo(path)


class FifoWatchdog:
    """Unblock whatever is stuck opening ``fifos`` after ``grace`` seconds, and remember it.

    A process that opens a FIFO for reading blocks until a writer comes. After ``grace``
    seconds the watchdog opens each FIFO for writing (non-blocking) and closes it again,
    over and over until the block ends: the stuck reader gets an empty file and the test
    goes on instead of hanging. ``fired`` says the code under test blocked.
    """

    def __init__(self, fifos: Iterable[Path], grace: float = 3.0) -> None:
        self.fifos = list(fifos)
        self.grace = grace
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self.grace):
            return
        while not self._stop.is_set():
            for fifo in self.fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue  # ENXIO: nobody is reading it right now
                self.fired = True
                os.close(fd)
            self._stop.wait(0.05)

    def __enter__(self) -> FifoWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def outcome(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """``(result, None)`` or ``(None, error)``."""
    try:
        return call(), None
    except Exception as error:
        return None, error


# ---- other users --------------------------------------------------------------------------


def run_as(uid: int, gid: int, groups: list[int], call: Callable[[], Any], timeout: float = 60):
    """Run ``call()`` in a forked child as ``uid``/``gid``; its JSON-able result or error.

    Returns ``{"ok": True, "value": ...}`` or ``{"ok": False, "type": ..., "mro": [...],
    "message": ...}``. The child inherits the imported modules (the interpreter under
    /root is not readable by other users, so a fresh one could not start).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            payload: dict[str, Any] = {"ok": True, "value": call()}
        except BaseException as error:
            payload = {
                "ok": False,
                "type": type(error).__name__,
                "mro": [klass.__name__ for klass in type(error).__mro__],
                "message": str(error),
            }
        try:
            data = json.dumps(payload, default=str).encode()
            while data:
                data = data[os.write(write_end, data) :]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"the child running as uid {uid} took over {timeout} s")
            ready, _, _ = select.select([read_end], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return json.loads(
        b"".join(chunks) or b'{"ok": false, "type": "?", "mro": [], "message": "no result"}'
    )
