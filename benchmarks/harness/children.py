"""Measurements in fresh child processes, with a timeout and a process-group kill.

Both sides of the protocol live here:

    parent: run_child("benchmarks.measure", spec, timeout=...)
            -> python -m benchmarks.measure SPEC.json OUT.json
    child:  child_main(run_task)
            -> reads SPEC.json, OUT.json <- run_task(spec)

A child runs in its own session, and its whole process group is killed when it times out
and when it ends: a hung DataLoader worker, or a writer process left behind by a crash,
would otherwise keep a core busy under the next measurement. The page cache does carry
over between children, on purpose: "warm" figures are about files the kernel holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
"""The repository: children run there, with it first on ``PYTHONPATH`` (it is not installed)."""

TAIL_LINES = 25
"""Lines of a failed child's output kept in its outcome."""

POLL_S = 0.01
"""How often children run together are checked for one that ended."""


# ---- child processes: the parent's side ------------------------------------------------------


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, with the repository first on ``PYTHONPATH``."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def error_line(output: str) -> str:
    """The exception line of a traceback (its last line naming an error), else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) or head.startswith(
            "Traceback"
        ):
            return line
    return lines[-1] if lines else "no output"


class Child:
    """One process started in its own session, so that its whole group can be killed.

    Args:
        argv: the command.
        env: its environment (default: this process's).
        log: where its stdout and stderr go together; without it, stdout is discarded and
            stderr kept in a temporary file. Either way a failure's message comes from it.
    """

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.argv, self.log = list(argv), log
        # Open as long as the child runs; `finish` reads and closes it.
        self._output: IO[str] = (
            log.open("w+", errors="replace") if log else tempfile.TemporaryFile("w+")  # noqa: SIM115
        )
        self.started = time.perf_counter()
        try:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=None if env is None else dict(env),
                stdout=self._output if log else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if log else self._output,
                start_new_session=True,  # its own process group: see `kill`
            )
        except BaseException:
            self._output.close()
            raise

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Kill the child's process group (its workers too) and reap the child."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def finish(self, *, deadline: float, stop_reason: str | None = None) -> dict[str, Any]:
        """Wait until ``deadline`` (`time.perf_counter`), or stop it now for ``stop_reason``.

        Returns ``{"ok", "seconds", "returncode"}`` and, unless ok, ``"error"`` (one line)
        and ``"stderr_tail"`` (the output's last lines).
        """
        error = None
        try:
            if stop_reason is None:
                self.process.wait(timeout=max(deadline - time.perf_counter(), 0.0))
            elif self.running:
                error = stop_reason
        except subprocess.TimeoutExpired:
            error = f"timed out after {deadline - self.started:.0f} s (hung?); killed"
        finally:
            self.kill()  # also what a crash left behind: DataLoader workers, writers
        seconds = time.perf_counter() - self.started
        self._output.seek(0)
        text = self._output.read()
        self._output.close()
        if error is None and self.process.returncode != 0:
            error = error_line(text)
        outcome: dict[str, Any] = {"ok": error is None, "seconds": round(seconds, 2)}
        outcome["returncode"] = self.process.returncode
        if error is not None:
            outcome.update(error=error, stderr_tail=text.splitlines()[-TAIL_LINES:])
        return outcome


def run_process(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """Run ``argv`` in its own session; kill the whole session at ``timeout`` (see `Child`)."""
    child = Child(argv, env=env, log=log)
    return child.finish(deadline=child.started + timeout)


@dataclass(frozen=True)
class ChildRun:
    """What one `run_children` child gave: its outcome and, when ok, its JSON result."""

    name: str
    outcome: dict[str, Any]
    result: Any = None
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.outcome["ok"])

    def record(self) -> dict[str, Any]:
        """The result with the child's wall time, or the outcome naming its error."""
        if self.ok:
            return {**self.result, "process_s": self.outcome["seconds"]}
        return self.outcome

    def expect(self) -> Any:
        """The result; raises `RuntimeError` with the output's tail when the child failed."""
        if self.ok:
            return self.result
        where = f" (output: {self.log})" if self.log else ""
        tail = "\n".join(self.outcome["stderr_tail"])
        raise RuntimeError(
            f"measurement {self.name} failed{where}: {self.outcome['error']}\n{tail}"
        )


def run_children(
    module: str,
    specs: Sequence[tuple[str, dict[str, Any]]],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    scratch: Path | None = None,
    logs: Path | None = None,
) -> list[ChildRun]:
    """Run ``python -m MODULE SPEC OUT`` for each ``(name, spec)``, all at once.

    The children share one deadline (the ranks of a DDP job run together); when one fails,
    the others are stopped at once, since they may wait for it forever. ``scratch`` keeps
    the spec and result files (a failed spec can be rerun by hand), else a temporary
    directory does; ``logs`` keeps each child's output as ``NAME.log``.
    """
    with contextlib.ExitStack() as stack:
        if scratch is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        scratch.mkdir(parents=True, exist_ok=True)
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
        children = {}
        for name, spec in specs:
            spec_path, out = scratch / f"{name}.spec.json", scratch / f"{name}.out.json"
            spec_path.write_text(json.dumps(spec, indent=1))
            out.unlink(missing_ok=True)
            argv = [sys.executable, "-m", module, str(spec_path), str(out)]
            children[name] = Child(argv, env=env, log=logs and logs / f"{name}.log")
        outcomes = _finish_all(children, deadline=time.perf_counter() + timeout)
        return [
            ChildRun(
                name,
                outcome,
                json.loads((scratch / f"{name}.out.json").read_text()) if outcome["ok"] else None,
                children[name].log,
            )
            for name, outcome in outcomes.items()
        ]


def _finish_all(children: dict[str, Child], *, deadline: float) -> dict[str, dict[str, Any]]:
    """Outcomes of children run together, each as it ends; after a failure, the rest stop."""
    outcomes: dict[str, dict[str, Any]] = {}
    pending = dict(children)
    failed = None
    while pending:
        if failed is not None or len(pending) == 1 or time.perf_counter() >= deadline:
            ended = list(pending)  # one child: `finish` waits for it, no polling
        else:
            ended = [name for name, child in pending.items() if not child.running]
            if not ended:
                time.sleep(POLL_S)
                continue
        for name in ended:
            stop = None if failed is None else f"stopped: {failed} failed"
            outcomes[name] = pending.pop(name).finish(deadline=deadline, stop_reason=stop)
            if failed is None and not outcomes[name]["ok"]:
                failed = name
    return {name: outcomes[name] for name in children}


def run_child(
    module: str,
    spec: dict[str, Any],
    *,
    timeout: float,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    scratch: Path | None = None,
    logs: Path | None = None,
) -> ChildRun:
    """One child of `run_children`; ``name`` defaults to the spec's task."""
    name = name or str(spec.get("task", "child"))
    return run_children(
        module, [(name, spec)], timeout=timeout, env=env, scratch=scratch, logs=logs
    )[0]


# ---- child processes: the child's side -------------------------------------------------------


Task = Callable[[dict[str, Any]], dict[str, Any]]
"""A child's measurement: its spec in, its JSON-able result out."""


def child_main(
    tasks: Mapping[str, Task], argv: Sequence[str] | None = None, *, record_threads: bool = False
) -> None:
    """The child's entry point: ``tasks[spec["task"]](spec)`` for argv's SPEC, its JSON to OUT.

    The spec's ``torch_threads``, when set, is applied before the task runs (measured
    processes choose their intra-op threads, see `benchmarks.tiers`); ``record_threads``
    adds to the result the number of threads the task ran with.
    """
    spec_path, out_path = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(spec_path).read_text())
    threads = spec.get("torch_threads")
    if threads:
        import torch  # the child's import: the parent stays without torch

        torch.set_num_threads(threads)
    result = tasks[spec["task"]](spec)
    if record_threads:
        import torch

        result.setdefault("torch_threads", torch.get_num_threads())
    Path(out_path).write_text(json.dumps(result, indent=1))
