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

The systems compared are in `benchmarks.peers_systems`; the children run through
`benchmarks.harness` (own session, timeout, process-group kill); `benchmarks.peers_report`
computes the best peer, ratios and targets, and renders the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import REPO
from benchmarks.peers_report import markdown, profile_lines, summarize, table_rows, target_lines
from benchmarks.peers_systems import CHILD_ENV, SYSTEMS, System, availability

CHILD = "benchmarks._peers_child"


def run_child(spec: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """One task of `benchmarks._peers_child` in a fresh interpreter: its result or an error."""
    env = harness.child_env({**CHILD_ENV, "HF_HOME": str(Path(spec["data_dir"]) / ".hf-home")})
    return harness.run_child(CHILD, spec, timeout=timeout, env=env).record()


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


def _summary_head(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    """What the summary says about the run before any figure: command, machine, workload."""
    import torch  # only for its version: the measurements run in children

    from benchmarks._peers_workload import Workload

    workload = Workload(args.items)
    shown_argv = list(sys.argv[1:] if argv is None else argv)
    return {
        "command": shlex.join(["python", "-m", "benchmarks.peers", *shown_argv]),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpus": harness.available_cpus(),
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


def _show(summary: dict[str, Any]) -> None:
    """The table, the targets, the failures and the profile on stdout."""
    _say("")
    _say(harness.text_table(*table_rows(summary), align="ll" + "r" * 5))
    _say("")
    for line in target_lines(summary):
        _say(line)
    for entry in summary["systems"].values():
        if "error" in entry:
            _say(f"{entry['label']}: {entry['error']}")
    if "profile" in summary:
        _say("")
        _say("\n".join(profile_lines(summary["profile"])))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    summary = _summary_head(args, argv)
    count = summary["workload"]["count"]
    base = {
        "count": count,
        "data_dir": str(args.data_dir.resolve()),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": args.torch_threads,
    }
    _say(f"peers: N={count}, data in {args.data_dir}, systems {', '.join(args.chosen)}")
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
    summary.update(summarize(systems, summary["memcpy"], summary["workload"]["sample_bytes"]))
    summary["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "peers.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.results_dir / "peers.md").write_text(markdown(summary))
    _show(summary)
    _say(f"\nwrote {args.results_dir / 'peers.json'} and {args.results_dir / 'peers.md'}")
    return summary


if __name__ == "__main__":
    main()
