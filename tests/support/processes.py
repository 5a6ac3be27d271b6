"""Child processes with deadlines: their environment, forked and exec'd children, waits.

Two ways to run ``target(spec)`` in a child (``spec`` a JSON-able dict):

- `fork_child`: forked from a multiprocessing ``forkserver`` that imported torch,
  shardcache and the target's module once, so a child starts in ~40 ms instead of ~3 s and
  holds no state but imported modules: each child is a fresh "next run".
- `exec_child`: a brand-new interpreter in a session (and process group) of its own, for a
  test that needs one (a real ``kill -9`` of a process group).

Either way the test gets a `Child`, whose `Child.wait` has a deadline: a hung child fails
the test instead of hanging the suite. A child reports through a JSON file named by
``spec["result"]`` (`write_result`, read back with `Child.result`).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent.parent
"""``tests/``: children need it on ``sys.path`` to import ``support`` and its loaders."""

DEADLINE = 60.0
"""Seconds a test waits for another process's file, event or exit before failing."""

CHILD_DEADLINE = 120.0
"""Seconds a child run (a whole build) may take before the test kills it and fails."""


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: this one, ``tests/`` importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_python(
    *arguments: str | Path | int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 2 * DEADLINE,
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``arguments`` (by default in `subprocess_env`); output captured."""
    return subprocess.run(
        [sys.executable, *map(str, arguments)],
        env=subprocess_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(
    path: Path, process: subprocess.Popen[Any] | None = None, deadline: float = DEADLINE
) -> None:
    """Wait until ``path`` exists; fail early when ``process`` exits first, or at the deadline."""
    end = time.monotonic() + deadline
    while not path.exists():
        if process is not None and process.poll() is not None:
            _, err = process.communicate()
            text = err.decode() if isinstance(err, bytes) else err
            raise AssertionError(f"the child exited with {process.returncode}: {text}")
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear within {deadline} s")
        time.sleep(0.005)


def raised_by(iterable: Iterable[Any]) -> BaseException:
    """The exception that iterating ``iterable`` (e.g. a DataLoader) raises.

    Its traceback is dropped here: it holds the DataLoader iterator in a reference cycle
    with the exception (torch's ``ExceptionWrapper.reraise`` keeps it in a local), and an
    iterator freed later by the garbage collector finds its queues already closed and
    waits 5 s per worker before killing it.
    """
    try:
        for _ in iterable:
            pass
    except Exception as error:
        error.__traceback__ = None
        return error
    raise AssertionError(f"iterating {iterable!r} raised nothing")


# ---- children running target(spec) ---------------------------------------------------------


class Child:
    """A child running ``target(spec)``: its spec, its process, and how to end it."""

    def __init__(self, spec: dict[str, Any], process: Any) -> None:
        self.spec = spec
        self.process = process

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def name(self) -> str:
        return str(self.spec.get("tag", self.pid))

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
                raise AssertionError(f"child {self.name} hung") from None
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise AssertionError(f"child {self.name} hung")
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
        """What the child wrote with `write_result`."""
        return dict(json.loads(Path(self.spec["result"]).read_text()))


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a child's report whole (by rename), so that the test never reads half of it."""
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(json.dumps(result))
    temporary.replace(path)


_FORKSERVER: Any = None


def _forkserver(preload: str) -> Any:
    """The forkserver context; its server imports ``preload`` (and so torch) once.

    One server per test session, started by the first `fork_child`: a later target from
    another module is imported by each of its children instead.
    """
    global _FORKSERVER  # noqa: PLW0603 (one server per test session)
    if _FORKSERVER is None:
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["shardcache.store", preload])
        # Python 3.11's forkserver ignores the sys.path it is given, so it would not find
        # the support package (its children do: they get sys.path from the parent).
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), saved]))
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        _FORKSERVER = context
    return _FORKSERVER


def fork_child(target: Callable[[dict[str, Any]], None], spec: dict[str, Any]) -> Child:
    """Start ``target(spec)`` in a process forked from the preloaded forkserver."""
    context = _forkserver(target.__module__)
    process = context.Process(target=target, args=(spec,), name=spec.get("tag"))
    process.start()
    return Child(spec, process)


def exec_child(target: Callable[[dict[str, Any]], None], spec: dict[str, Any]) -> Child:
    """Start ``target(spec)`` in a new interpreter, in a session (and process group) of its own."""
    module, name = target.__module__, target.__qualname__
    code = f"import json, sys, {module}; {module}.{name}(json.loads(sys.argv[1]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        env=subprocess_env(),
        start_new_session=True,
    )
    return Child(spec, process)
