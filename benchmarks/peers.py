"""shardcache beside LitData, HF datasets and MosaicML Streaming: ``python -m benchmarks.peers``.

The workload (`benchmarks._peers_workload`): N deterministic float32 ``[1, 512, 512]``
samples (1 MiB each), two classes 70/30, written once into each system's own format
under ``bench-data/peers/`` and reused by later runs. Each figure is taken in a fresh
process with a timeout (`benchmarks._peers_child`), after a warm-up pass (warm page
cache), as the median of ``--repeats`` passes:

- samples/s through the system's DataLoader, batch 32, shuffled, 0 and 2 workers;
- sequential reads, ``ds[i]`` for every ``i``;
- the memcpy reference: ``copy_`` of a 32-sample batch into a preallocated buffer.

After timing, samples from every system are compared with the reference tensors. A
system that is not installed, fails or hangs is reported as such, and the run goes on.
Results: a table on stdout, ``bench-results/peers.json`` and ``bench-results/peers.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHILD = "benchmarks._peers_child"


@dataclass(frozen=True)
class System:
    """One row of the comparison.

    Attributes:
        name: the key used on the command line and in the JSON.
        label: what the table calls it.
        module: the module it needs (missing: "not installed").
        distribution: the package whose version is shown.
        peer: a peer (else one of shardcache's tiers).
        how: how it is written and read, for the report.
    """

    name: str
    label: str
    module: str
    distribution: str
    peer: bool
    how: str


SYSTEMS = (
    System(
        "shardcache-disk",
        "shardcache disk tier",
        "shardcache",
        "shardcache",
        False,
        "`ensure_cache` (64 MiB safetensors shards); "
        "`CachingDataModule(cache='disk').train_dataloader()`",
    ),
    System(
        "shardcache-memory",
        "shardcache memory tier",
        "shardcache",
        "shardcache",
        False,
        "`CachingDataModule(cache='memory').train_dataloader()` (decoded into RAM at setup)",
    ),
    System(
        "litdata",
        "LitData",
        "litdata",
        "litdata",
        True,
        "`optimize` (64 MiB chunks); `StreamingDataset(shuffle=True)` + `StreamingDataLoader`",
    ),
    System(
        "hf-datasets",
        "HF datasets (torch format)",
        "datasets",
        "datasets",
        True,
        "`Dataset.from_generator` (Array3D) + `save_to_disk`; "
        "`load_from_disk(...).with_format('torch')` + torch `DataLoader(shuffle=True)`",
    ),
    System(
        "hf-datasets-numpy",
        "HF datasets (numpy format)",
        "datasets",
        "datasets",
        True,
        "the same files, `with_format('numpy')`: torch's `default_collate` makes the tensors",
    ),
    System(
        "mosaicml-streaming",
        "MosaicML Streaming",
        "streaming",
        "mosaicml-streaming",
        True,
        "`MDSWriter` (ndarray column, 64 MiB shards); "
        "`StreamingDataset(local=..., shuffle=True)` + torch `DataLoader`",
    ),
)

CHILD_ENV = {
    # Nothing may reach a hub: every system reads local files only.
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def availability(system: System) -> tuple[bool, str | None]:
    """Whether ``system``'s module is importable (without importing it), and its version."""
    try:
        installed = importlib.util.find_spec(system.module) is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        return False, None
    try:
        return True, importlib.metadata.version(system.distribution)
    except importlib.metadata.PackageNotFoundError:
        return True, None


def _error_line(stderr: str) -> str:
    """The exception line of a traceback (its last line naming an error), else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) or head.startswith(
            "Traceback"
        ):
            return line
    return lines[-1] if lines else "no output"


def run_process(
    argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``argv`` in its own session; kill the whole session (workers too) at ``timeout``.

    Returns ``{"ok", "seconds", "returncode"}`` and, unless ok, ``"error"`` (one line) and
    ``"stderr_tail"``.
    """
    with tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        finally:
            # DataLoader workers or writer processes left behind by a crash.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        seconds = time.perf_counter() - started
        stderr.seek(0)
        text = stderr.read()
    result: dict[str, Any] = {
        "ok": process.returncode == 0 and not timed_out,
        "seconds": round(seconds, 2),
        "returncode": process.returncode,
    }
    if timed_out:
        result["error"] = f"timed out after {timeout:.0f} s (hung?); killed"
    elif process.returncode != 0:
        result["error"] = _error_line(text)
    if not result["ok"]:
        result["stderr_tail"] = text.splitlines()[-25:]
    return result


def run_child(spec: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """One task of `benchmarks._peers_child` in a fresh interpreter: its result or an error."""
    env = {**os.environ, **CHILD_ENV, "HF_HOME": str(Path(spec["data_dir"]) / ".hf-home")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="shardcache-peers-") as scratch:
        spec_path, out_path = Path(scratch) / "spec.json", Path(scratch) / "out.json"
        spec_path.write_text(json.dumps(spec))
        outcome = run_process(
            [sys.executable, "-m", CHILD, str(spec_path), str(out_path)],
            timeout=timeout,
            env=env,
        )
        if outcome["ok"]:
            return {**json.loads(out_path.read_text()), "process_s": outcome["seconds"]}
    return outcome


# ---- the run ---------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, flush=True)


def measure_system(
    system: System, base: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Prepare one system, then take its figures, each in a fresh process."""
    installed, version = availability(system)
    entry: dict[str, Any] = {"label": system.label, "peer": system.peer, "how": system.how}
    entry["version"] = version
    if not installed:
        entry["status"] = "not installed"
        entry["error"] = f"module {system.module!r} not found (pip install {system.distribution})"
        _say(f"[{system.name}] not installed")
        return entry
    spec = {**base, "system": system.name}
    prepared = run_child({**spec, "task": "prepare"}, timeout=args.prepare_timeout)
    entry["prepare"] = prepared
    if "error" in prepared:
        entry["status"] = "failed"
        entry["error"] = f"prepare: {prepared['error']}"
        _say(f"[{system.name}] prepare failed: {prepared['error']}")
        return entry
    action = (
        "reused" if prepared.get("reused") else f"written in {prepared.get('write_s', 0):.1f} s"
    )
    _say(f"[{system.name}] {version}: data {action} ({prepared.get('bytes', 0) / 2**30:.2f} GiB)")
    errors = []
    tasks = {
        "w0": {"task": "loader", "workers": 0},
        "w2": {"task": "loader", "workers": args.workers},
        "sequential": {"task": "sequential"},
    }
    for key, task in tasks.items():
        result = run_child({**spec, **task}, timeout=args.timeout)
        entry[key] = result
        if "error" in result:
            errors.append(f"{key}: {result['error']}")
            _say(f"[{system.name}] {key} failed: {result['error']}")
        elif key == "sequential":
            _say(f"[{system.name}] sequential: {result['reads_per_s']:,.0f} reads/s")
        else:
            _say(f"[{system.name}] loader {key}: {result['samples_per_s']:,.0f} samples/s")
    entry["status"] = "ok" if not errors else ("failed" if len(errors) == 3 else "partial")
    if errors:
        entry["error"] = "; ".join(errors)
    return entry


def _figure(entry: dict[str, Any], key: str, field: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, dict) and field in value:
        return float(value[field])
    return None


def summarize(systems: dict[str, Any], memcpy: dict[str, Any], sample_bytes: int) -> dict[str, Any]:
    """Best peer per column, each row's ratios to it, and the targets."""
    best: dict[str, tuple[str, float] | None] = {}
    for key, field in (("w0", "samples_per_s"), ("w2", "samples_per_s")):
        candidates = [
            (name, value)
            for name, entry in systems.items()
            if entry["peer"] and (value := _figure(entry, key, field)) is not None
        ]
        best[key] = max(candidates, key=lambda pair: pair[1]) if candidates else None
    for entry in systems.values():
        w0 = _figure(entry, "w0", "samples_per_s")
        entry["w0_gb_s"] = None if w0 is None else w0 * sample_bytes / 1e9
        for key in ("w0", "w2"):
            mine, top = _figure(entry, key, "samples_per_s"), best[key]
            entry[f"ratio_{key}"] = None if mine is None or top is None else mine / top[1]
    disk = systems.get("shardcache-disk", {})
    memcpy_gb_s = memcpy.get("gb_s")
    targets = []

    def target(name: str, value: float | None, goal: float, unit: str) -> None:
        status = "n/a" if value is None else ("PASS" if value >= goal else "MISS")
        targets.append(
            {"target": name, "value": value, "goal": goal, "unit": unit, "status": status}
        )

    target("disk tier w0 >= 3x the best peer's w0", disk.get("ratio_w0"), 3.0, "x")
    fraction = disk.get("w0_gb_s")
    if fraction is not None and memcpy_gb_s:
        fraction /= memcpy_gb_s
    else:
        fraction = None
    target("disk tier w0 >= 40% of memcpy bandwidth", fraction, 0.4, "of memcpy")
    target("disk tier w2 >= 2x the best peer's w2", disk.get("ratio_w2"), 2.0, "x")
    return {
        "best_peer": {
            key: None if value is None else {"system": value[0], "samples_per_s": value[1]}
            for key, value in best.items()
        },
        "targets": targets,
    }


# ---- rendering -------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _cell(entry: dict[str, Any], key: str, field: str, digits: int = 0) -> str:
    value = entry.get(key)
    if isinstance(value, dict) and "error" in value:
        return "timed out" if "timed out" in value["error"] else "failed"
    return _num(_figure(entry, key, field), digits)


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The comparison table: header and rows (the memcpy reference last)."""
    workers = summary["workload"]["workers"]
    header = [
        "system",
        "version",
        "samples/s w0",
        f"samples/s w{workers}",
        "sequential reads/s",
        "w0 GB/s",
        f"x best peer (w0 / w{workers})",
    ]
    rows = []
    for entry in summary["systems"].values():
        if entry["status"] in {"not installed", "failed"} and "w0" not in entry:
            rows.append([entry["label"], entry["version"] or "-", entry["status"], "", "", "", ""])
            continue
        ratios = " / ".join(
            "-" if entry.get(f"ratio_{key}") is None else f"{entry[f'ratio_{key}']:.2f}x"
            for key in ("w0", "w2")
        )
        rows.append(
            [
                entry["label"],
                entry["version"] or "-",
                _cell(entry, "w0", "samples_per_s"),
                _cell(entry, "w2", "samples_per_s"),
                _cell(entry, "sequential", "reads_per_s"),
                _num(entry.get("w0_gb_s"), 2),
                ratios,
            ]
        )
    memcpy = summary["memcpy"]
    rows.append(
        [
            "memcpy reference (copy_ of a 32 MiB batch)",
            f"torch {summary['machine']['torch']}",
            "",
            "",
            "",
            _num(memcpy.get("gb_s"), 2) if "error" not in memcpy else "failed",
            "",
        ]
    )
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


PROFILE_STAGES = (
    ("sampler", "sampler (RandomSampler + BatchSampler)"),
    ("getitem", "`dataset[i]` (CacheDataset.__getitem__: view + metadata dict)"),
    ("stack", "collator: `torch.stack` into the reused buffer (the one copy)"),
    ("metadata_collate", "collator: metadata `default_collate`"),
    ("collator_other", "collator: the rest (checks, slot bookkeeping)"),
    ("dataloader_other", "DataLoader machinery (fetcher, iterator: the rest of the epoch)"),
)


def profile_lines(profile: dict[str, Any]) -> list[str]:
    """The disk tier w0 profile as a markdown table (wall and CPU time per stage)."""
    if "error" in profile:
        return [f"Profile failed: {profile['error']}"]
    count = profile["samples"]
    wall, cpu = profile["wall_s"], profile["cpu_s"]
    epoch_wall, epoch_cpu = wall["loader_epoch"], cpu["loader_epoch"]
    lines = [
        f"Loader epoch (median of {profile['rounds']}): {epoch_wall * 1e3:,.0f} ms wall "
        f"({count / epoch_wall:,.0f} samples/s), {epoch_cpu * 1e3:,.0f} ms CPU, for "
        f"{count:,} samples; minor page faults per epoch: "
        f"{', '.join(str(n) for n in profile['loader_minor_faults'])}.",
        "",
        "| stage | wall ms / epoch | % of the epoch | wall us / sample | CPU ms / epoch |",
        "|---|---:|---:|---:|---:|",
    ]
    # CPU time counts every torch thread: with more than one it can exceed the wall time.
    lines += [
        f"| {label} | {wall[key] * 1e3:,.1f} | {100 * wall[key] / epoch_wall:.1f}% | "
        f"{1e6 * wall[key] / count:,.1f} | {cpu[key] * 1e3:,.1f} |"
        for key, label in PROFILE_STAGES
    ]
    lines += [
        "",
        f"`torch.stack` of 32 samples ({profile['torch_threads']} torch threads): "
        f"{profile['stack_from_mmap_gb_s']:.2f} GB/s from the cache's mappings, "
        f"{profile['stack_from_memory_gb_s']:.2f} GB/s from anonymous memory.",
    ]
    return lines


def markdown(summary: dict[str, Any]) -> str:
    workload = summary["workload"]
    header, rows = table_rows(summary)
    lines = [
        "# shardcache beside its peers",
        "",
        f"Run {summary['started']} on {summary['machine']['cpus']} CPUs "
        f"(Python {summary['machine']['python']}, torch {summary['machine']['torch']}): "
        f"`{summary['command']}`.",
        "",
        f"Workload: {workload['count']:,} samples float32 {workload['shape']} "
        f"({workload['sample_bytes'] / 2**20:.0f} MiB each), 2 classes 70/30; batch "
        f"{workload['batch_size']}, shuffled; medians of {workload['repeats']} passes after a "
        "warm-up pass (warm page cache), each figure in a fresh process.",
        "",
        markdown_table(header, rows),
        "",
        "## Targets",
        "",
    ]
    for target in summary["targets"]:
        value = target["value"]
        shown = (
            "n/a"
            if value is None
            else (f"{value:.2f}x" if target["unit"] == "x" else f"{100 * value:.0f}% of memcpy")
        )
        lines.append(f"- {target['status']}: {target['target']} (measured {shown})")
    lines += ["", "## How each system is written and read", ""]
    for name, entry in summary["systems"].items():
        lines.append(f"- {entry['label']} (`{name}`): {entry['how']}")
    errors = [
        (entry["label"], entry["error"])
        for entry in summary["systems"].values()
        if "error" in entry
    ]
    if errors:
        lines += ["", "## Failures", ""]
        lines += [f"- {label}: {error}" for label, error in errors]
    if "profile" in summary:
        lines += [
            "",
            "## Where the disk tier's w0 epoch goes",
            "",
            *profile_lines(summary["profile"]),
        ]
    return "\n".join(lines) + "\n"


# ---- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--items", type=int, help="samples, N (default 2000; --quick 400)")
    parser.add_argument("--quick", action="store_true", help="N=400")
    parser.add_argument(
        "--systems",
        help=f"comma-separated subset of {', '.join(system.name for system in SYSTEMS)}",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the warm-up")
    parser.add_argument("--workers", type=int, default=2, help="the second column's workers")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    parser.add_argument(
        "--prepare-timeout", type=float, default=3600, help="seconds to write one format"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch.set_num_threads in every measuring process (default: torch's own choice)",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench-data" / "peers")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench-results")
    args = parser.parse_args(argv)
    if args.items is None:
        args.items = 400 if args.quick else 2000
    names = [system.name for system in SYSTEMS]
    chosen = names if not args.systems else [name.strip() for name in args.systems.split(",")]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown systems {', '.join(unknown)}; choose among {', '.join(names)}")
    args.chosen = chosen
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch  # only for its version: the measurements run in children

    from benchmarks._peers_workload import Workload

    workload = Workload(args.items)
    shown_argv = list(sys.argv[1:] if argv is None else argv)
    summary: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks.peers", *shown_argv]),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpus": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "workload": {
            "count": workload.count,
            "shape": list(workload.shape),
            "sample_bytes": workload.sample_bytes,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "workers": args.workers,
            "torch_threads": args.torch_threads or "torch default",
            "seed": workload.seed,
        },
    }
    base = {
        "count": workload.count,
        "data_dir": str(args.data_dir.resolve()),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": args.torch_threads,
    }
    _say(f"peers: N={workload.count}, data in {args.data_dir}, systems {', '.join(args.chosen)}")
    summary["memcpy"] = run_child({**base, "task": "memcpy"}, timeout=args.timeout)
    if "gb_s" in summary["memcpy"]:
        _say(f"memcpy: {summary['memcpy']['gb_s']:.2f} GB/s")
    systems = {}
    for system in SYSTEMS:
        if system.name in args.chosen:
            systems[system.name] = measure_system(system, base, args)
    summary["systems"] = systems
    if args.profile and systems.get("shardcache-disk", {}).get("status") in {"ok", "partial"}:
        summary["profile"] = run_child(
            {**base, "task": "profile", "system": "shardcache-disk"}, timeout=args.timeout
        )
    summary.update(summarize(systems, summary["memcpy"], workload.sample_bytes))
    summary["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "peers.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.results_dir / "peers.md").write_text(markdown(summary))
    header, rows = table_rows(summary)
    _say("")
    _say(text_table(header, rows))
    _say("")
    for target in summary["targets"]:
        value = target["value"]
        shown = (
            "n/a"
            if value is None
            else (f"{value:.2f}x" if target["unit"] == "x" else f"{100 * value:.0f}% of memcpy")
        )
        _say(f"{target['status']}: {target['target']} (measured {shown})")
    for entry in systems.values():
        if "error" in entry:
            _say(f"{entry['label']}: {entry['error']}")
    if "profile" in summary:
        _say("")
        _say("\n".join(profile_lines(summary["profile"])))
    _say(f"\nwrote {args.results_dir / 'peers.json'} and {args.results_dir / 'peers.md'}")
    return summary


if __name__ == "__main__":
    main()
