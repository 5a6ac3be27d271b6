"""The peers comparison's figures and report: best peer, ratios, targets, tables, profile.

`summarize` adds to `benchmarks.peers`' summary the best peer per column and every row's
ratio to it (`benchmarks.harness.ratio`), and the targets; `markdown` renders
``peers.md``, `table_rows` the table that stdout shows too.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import markdown_table, meets, ratio
from benchmarks.stages import STAGES, UNACCOUNTED

TARGETS = (
    ("disk tier w0 >= 3x the best peer's w0", 3.0, "x"),
    ("disk tier w0 >= 40% of memcpy bandwidth", 0.4, "of memcpy"),
    ("disk tier w2 >= 2x the best peer's w2", 2.0, "x"),
)

TABLE_ALIGN = "llrrrrr"
"""The comparison table's columns: names left, figures right."""


def _figure(entry: dict[str, Any], key: str, field: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, dict) and field in value:
        return float(value[field])
    return None


def summarize(systems: dict[str, Any], memcpy: dict[str, Any], sample_bytes: int) -> dict[str, Any]:
    """Best peer per column, each row's ratios to it, and the targets."""
    best: dict[str, tuple[str, float] | None] = {}
    for key in ("w0", "w2"):
        candidates = [
            (name, value)
            for name, entry in systems.items()
            if entry["peer"] and (value := _figure(entry, key, "samples_per_s")) is not None
        ]
        best[key] = max(candidates, key=lambda pair: pair[1]) if candidates else None
    for entry in systems.values():
        w0 = _figure(entry, "w0", "samples_per_s")
        entry["w0_gb_s"] = None if w0 is None else w0 * sample_bytes / 1e9
        for key in ("w0", "w2"):
            top = best[key]
            mine = _figure(entry, key, "samples_per_s")
            entry[f"ratio_{key}"] = ratio(mine, None if top is None else top[1])
    disk = systems.get("shardcache-disk", {})
    values = (
        disk.get("ratio_w0"),
        ratio(disk.get("w0_gb_s"), memcpy.get("gb_s")),
        disk.get("ratio_w2"),
    )
    targets = []
    for (name, goal, unit), value in zip(TARGETS, values, strict=True):
        passed = meets(value, goal)
        status = "n/a" if passed is None else ("PASS" if passed else "MISS")
        targets.append(
            {"target": name, "value": value, "goal": goal, "unit": unit, "status": status}
        )
    return {
        "best_peer": {
            key: None if value is None else {"system": value[0], "samples_per_s": value[1]}
            for key, value in best.items()
        },
        "targets": targets,
    }


def target_lines(summary: dict[str, Any]) -> list[str]:
    """``STATUS: target (measured VALUE)``, one per target."""
    lines = []
    for target in summary["targets"]:
        value = target["value"]
        shown = (
            "n/a"
            if value is None
            else (f"{value:.2f}x" if target["unit"] == "x" else f"{100 * value:.0f}% of memcpy")
        )
        lines.append(f"{target['status']}: {target['target']} (measured {shown})")
    return lines


# ---- tables ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _cell(entry: dict[str, Any], key: str, field: str, digits: int = 0) -> str:
    value = entry.get(key)
    if isinstance(value, dict) and "error" in value:
        return "timed out" if "timed out" in value["error"] else "failed"
    return _num(_figure(entry, key, field), digits)


def _row(entry: dict[str, Any]) -> list[str]:
    if entry["status"] in {"not installed", "failed"} and "w0" not in entry:
        return [entry["label"], entry["version"] or "-", entry["status"], "", "", "", ""]
    ratios = " / ".join(
        "-" if entry.get(f"ratio_{key}") is None else f"{entry[f'ratio_{key}']:.2f}x"
        for key in ("w0", "w2")
    )
    return [
        entry["label"],
        entry["version"] or "-",
        _cell(entry, "w0", "samples_per_s"),
        _cell(entry, "w2", "samples_per_s"),
        _cell(entry, "sequential", "reads_per_s"),
        _num(entry.get("w0_gb_s"), 2),
        ratios,
    ]


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
    rows = [_row(entry) for entry in summary["systems"].values()]
    memcpy = summary["memcpy"]
    memcpy_cell = _num(memcpy.get("gb_s"), 2) if "error" not in memcpy else "failed"
    torch_version = f"torch {summary['machine']['torch']}"
    rows.append(
        ["memcpy reference (copy_ of a 32 MiB batch)", torch_version, "", "", "", memcpy_cell, ""]
    )
    return header, rows


def profile_lines(profile: dict[str, Any]) -> list[str]:
    """The disk tier w0 profile (`benchmarks.stages`) as markdown: every stage measured."""
    if "error" in profile:
        return [f"Profile failed: {profile['error']}"]
    count, batches = profile["samples"], profile["batches"]
    epoch = profile["instrumented_epoch_s"]
    stages, calls = profile["stages_s"], profile["calls"]

    def row(label: str, seconds: float, called: str) -> list[str]:
        return [
            label,
            f"{seconds * 1e3:,.1f}",
            f"{100 * seconds / epoch:.1f}%",
            f"{1e6 * seconds / count:,.2f}",
            called,
        ]

    rows = [row(label, stages[key], f"{calls[key]:,}") for key, label in STAGES]
    rows.append(row("**accounted for** (sum of the stages)", profile["accounted_s"], ""))
    rows.append(row(UNACCOUNTED, profile["unaccounted_s"], ""))
    header = ["stage", "wall ms / epoch", "% of the epoch", "us / sample", "timed calls"]
    others = [(stages[key], label) for key, label in STAGES if key != "copy"]
    largest_s, largest = max(others)
    machinery = stages["sampler"] + stages["dataloader"]
    trivial = profile["trivial_epoch_s"]
    return [
        f"Loader epoch without timers (median of {profile['rounds']}): "
        f"{profile['epoch_s'] * 1e3:,.0f} ms ({count / profile['epoch_s']:,.0f} samples/s) for "
        f"{count:,} samples in {batches} batches; minor page faults per epoch: "
        f"{', '.join(str(n) for n in profile['loader_minor_faults'])}. With timers: "
        f"{epoch * 1e3:,.0f} ms (the epoch the shares are of). Each stage is the exclusive "
        "time of the functions named (time inside other timed functions is theirs), so "
        "rows cannot overlap or go negative; each row is its median over the rounds, so "
        "they add up to the epoch only roughly.",
        "",
        markdown_table(header, rows, align="lrrrr"),
        "",
        f"The same DataLoader over a trivial dataset (same batch size and shuffling; "
        f"`__getitems__` and `collate_fn` return their input): {trivial * 1e3:,.1f} ms per "
        f"epoch ({1e6 * trivial / batches:,.0f} us per batch), against {machinery * 1e3:,.1f} "
        "ms for the sampler and DataLoader machinery rows above (those run right after "
        "each batch's copy, on caches it has just evicted).",
        "",
        f"Largest share apart from the copy: {largest} ({100 * largest_s / epoch:.1f}%).",
        "",
        f"The copy alone (one `memmove` per sample of 32, {profile['torch_threads']} torch "
        f"threads): {profile['copy_from_mmap_gb_s']:.2f} GB/s from the cache's mappings, "
        f"{profile['copy_from_memory_gb_s']:.2f} GB/s from anonymous memory.",
    ]


def markdown(summary: dict[str, Any]) -> str:
    """``peers.md``: the run, the table, the targets, how each system is used, failures."""
    workload, machine = summary["workload"], summary["machine"]
    lines = [
        "# shardcache beside its peers",
        "",
        f"Run {summary['started']} on {machine['cpus']} CPUs "
        f"(Python {machine['python']}, torch {machine['torch']}): `{summary['command']}`.",
        "",
        f"Workload: {workload['count']:,} samples float32 {workload['shape']} "
        f"({workload['sample_bytes'] / 2**20:.0f} MiB each), 2 classes 70/30; batch "
        f"{workload['batch_size']}, shuffled; medians of {workload['repeats']} passes after a "
        "warm-up pass (warm page cache), each figure in a fresh process.",
        "",
        markdown_table(*table_rows(summary), align=TABLE_ALIGN),
        "",
        "## Targets",
        "",
        *(f"- {line}" for line in target_lines(summary)),
        "",
        "## How each system is written and read",
        "",
        *(f"- {e['label']} (`{name}`): {e['how']}" for name, e in summary["systems"].items()),
    ]
    errors = [(e["label"], e["error"]) for e in summary["systems"].values() if "error" in e]
    if errors:
        lines += ["", "## Failures", "", *(f"- {label}: {error}" for label, error in errors)]
    if "profile" in summary:
        lines += [
            "",
            "## Where the disk tier's w0 epoch goes",
            "",
            *profile_lines(summary["profile"]),
        ]
    return "\n".join(lines) + "\n"
