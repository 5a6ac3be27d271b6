"""`benchmarks.collate`'s tables and targets, from its results (no torch needed)."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import meets, text_table


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def targets(results: dict[str, Any]) -> list[tuple[str, float | None, float, bool | None]]:
    """``(name, value, limit, passed)``: the issue's targets that this run measures."""
    lines = []
    paths = results.get("paths", {})
    if "w0" in paths and paths["w0"]["float32_vs_stock"] is not None:
        value = paths["w0"]["float32_vs_stock"]
        lines.append(("float32 train_dataloader w0 vs stock DataLoader", value, 3.0))
    for key in ("w0", "w2"):
        if key in paths and paths[key]["narrow_vs_float32"] is not None:
            value = paths[key]["narrow_vs_float32"]
            lines.append((f"narrow vs float32 train_dataloader {key} (goal 1.3x)", value, 1.0))
    if "held" in results:
        value = results["held"]["held_vs_plain"]
        lines.append(("held batches vs none held, 2 workers", value, 0.9))
    return [(name, value, limit, meets(value, limit)) for name, value, limit in lines]


def report(results: dict[str, Any]) -> str:
    """The tables and target lines printed at the end."""
    out = []
    paths = results.get("paths", {})
    if paths:
        rows = []
        for key in ("w0", "w2"):
            figures = paths[key]["samples_per_s"]
            rows.append(
                [
                    key,
                    _rate(figures.get("stock")),
                    _rate(figures.get("float32")),
                    _times(paths[key]["float32_vs_stock"]),
                    _rate(figures.get("narrow")),
                    _times(paths[key]["narrow_vs_float32"]),
                ]
            )
        header = [
            "workers",
            "stock DataLoader, safetensors views",
            "train_dataloader, float32",
            "vs stock",
            "train_dataloader, narrow",
            "narrow vs float32",
        ]
        out += [
            f"{results['items']} samples of 1 MiB served (8-bit noise as float32 / 255), batch "
            f"32, shuffled; samples/s, medians of {results['rounds']} alternated epochs:",
            text_table(header, rows, align="lrrrrr"),
        ]
        if "identical" in paths:
            out.append(f"narrow and float32 batches bit-identical: {paths['identical']}")
        out.append("")
    if "held" in results:
        h = results["held"]
        rows = [
            [name, _rate(h["samples_per_s"][name]), str(h["fresh_batches_seen"][name])]
            for name in ("plain", "held")
        ]
        out += [
            f"{results['held_items']} samples of 256 KiB, 2 workers, batch 32, "
            f"{results['held_epochs']} epochs each, alternated; the held loader's caller keeps "
            f"the first batch of every {h['hold_every']}th epoch ({h['batches_kept']} kept); "
            "samples/s of the epochs after the first hold:",
            text_table(["loader", "samples/s", "batches not in a lent buffer"], rows, align="lrr"),
            "",
        ]
    for name, profile in results.get("profile", {}).items():
        shares = ", ".join(
            f"{stage} {100 * seconds / profile['instrumented_epoch_s']:.1f}%"
            for stage, seconds in profile["stages_s"].items()
        )
        out.append(
            f"profile w0, {name}: {profile['samples'] / profile['epoch_s']:,.0f} samples/s "
            f"without timers; {shares}; unaccounted "
            f"{100 * profile['unaccounted_s'] / profile['instrumented_epoch_s']:.1f}%"
        )
    for name, value, limit, passed in targets(results):
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[passed]
        out.append(f"{verdict}: {name}: {_times(value)} (target >= {limit}x)")
    return "\n".join(out)
