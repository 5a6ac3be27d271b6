"""Where a warm in-process epoch of a shardcache DataLoader goes, every stage timed where it runs.

`instrumented` replaces, for the duration of a ``with`` block, the real functions of each
stage (the sampler's ``next``, the DataLoader's iterator and fetcher, ``ServedDataset``'s
fetch, the collator's passes, its copy, its slot bookkeeping, the metadata's collate
functions) with timing wrappers. A wrapper keeps *exclusive* time: its call's wall time
minus that of the timed calls inside it. So no two stages count the same nanosecond, none
can be negative, and their sum is the part of the epoch the timers saw. What they did not
see (the ``for`` loop itself, resuming the sampler's generator, the wrappers' own
bookkeeping) is the measured epoch minus that sum, and is reported under that name.

`profile_loader` alternates plain epochs (no timers) with instrumented ones and times, apart,
the same DataLoader over a trivial dataset: the DataLoader's own cost per batch, for the
"DataLoader machinery" and "sampler" rows to be read against. Only ``num_workers=0``: every
stage then runs in this process. Nothing here imports torch at module level.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

STAGES: tuple[tuple[str, str], ...] = (
    ("sampler", "sampler: `next` of `BatchSampler` over `RandomSampler`"),
    (
        "dataloader",
        "DataLoader machinery: `__iter__`, `__next__`, `_next_data`, `_next_index`, fetcher",
    ),
    ("fetch", "fetch: `ServedDataset.__getitems__` (`CacheDataset.lazy_sample` per sample)"),
    ("collator", "collator: `BatchCollator.__call__`, its own code"),
    ("plan", "collator, first pass: `fields.plan` (find the fields, check them, lay out)"),
    ("walk", "collator, second pass: `Plan.collate` (torch's `collate` recursion)"),
    ("copy", "copy / widen into the batch buffer: `fields._copy`"),
    ("slots", "slot bookkeeping: `SlotPool.take`, `deliver_own`, `_release`"),
    ("metadata", "metadata: `default_collate`'s int / float / str functions"),
)
"""The stages, in the order a batch meets them: key and what is timed."""

UNACCOUNTED = "not inside any timed function (measured epoch minus the stages)"


class StageClock:
    """Exclusive wall time and calls per stage, from the wrappers `timed` makes."""

    def __init__(self) -> None:
        self.seconds = {stage: 0.0 for stage, _ in STAGES}
        self.calls = {stage: 0 for stage, _ in STAGES}
        self._inner: list[float] = []  # per open timed call: time of the timed calls inside

    def timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, its exclusive time counted to ``stage``."""
        inner, seconds, calls, clock = self._inner, self.seconds, self.calls, time.perf_counter

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            inner.append(0.0)
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = clock() - start
                seconds[stage] += elapsed - inner.pop()
                calls[stage] += 1
                if inner:
                    inner[-1] += elapsed

        return wrapper


def _targets() -> list[tuple[object, str, str]]:
    """``(owner, attribute, stage)`` of every function timed."""
    from torch.utils.data import dataloader
    from torch.utils.data._utils import fetch

    from shardcache.serving import collate, fields, served, slots

    return [
        (dataloader.DataLoader, "__iter__", "dataloader"),
        (dataloader._BaseDataLoaderIter, "__next__", "dataloader"),
        (dataloader._BaseDataLoaderIter, "_next_index", "dataloader"),
        (dataloader._SingleProcessDataLoaderIter, "_next_data", "dataloader"),
        (fetch._MapDatasetFetcher, "fetch", "dataloader"),
        (served.ServedDataset, "__getitems__", "fetch"),
        (collate.BatchCollator, "__call__", "collator"),
        (fields, "plan", "plan"),
        (fields.Plan, "collate", "walk"),
        (fields, "_copy", "copy"),
        (slots.SlotPool, "take", "slots"),
        (slots.SlotPool, "deliver_own", "slots"),
        (slots.SlotPool, "_release", "slots"),
    ]


@contextlib.contextmanager
def instrumented(clock: StageClock) -> Iterator[StageClock]:
    """Every stage's functions timed by ``clock`` inside the block; the originals after."""
    from torch.utils.data import sampler
    from torch.utils.data._utils.collate import default_collate_fn_map

    saved: list[tuple[object, str, Any]] = []

    def replace(owner: object, name: str, value: Any) -> None:
        saved.append((owner, name, vars(owner)[name]))  # each is the owner's own attribute
        setattr(owner, name, value)

    for owner, name, stage in _targets():
        replace(owner, name, clock.timed(stage, vars(owner)[name]))
    batch_iter = sampler.BatchSampler.__iter__
    step = clock.timed("sampler", next)

    def timed_batches(self: Any) -> Iterator[list[int]]:
        indices = batch_iter(self)
        while True:
            try:
                batch = step(indices)
            except StopIteration:
                return
            yield batch

    replace(sampler.BatchSampler, "__iter__", timed_batches)
    # BatchCollator's second pass copies torch's map per batch: it picks up these wrappers.
    leaves: dict[Any, Callable[..., Any]] = {
        kind: fn for kind, fn in default_collate_fn_map.items() if kind in (int, float, str)
    }
    for kind, function in leaves.items():
        default_collate_fn_map[kind] = clock.timed("metadata", function)
    try:
        yield clock
    finally:
        default_collate_fn_map.update(leaves)
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


# ---- the profile -----------------------------------------------------------------------------


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _epoch(loader: Any) -> tuple[float, int]:
    """Seconds of one full epoch of ``loader``, and the samples it served."""
    served = 0
    started = time.perf_counter()
    for batch in loader:
        served += len(batch[0])
    return time.perf_counter() - started, served


class _Trivial:
    """A dataset that costs nothing: ``__getitems__`` returns its indices."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index

    def __getitems__(self, indices: list[int]) -> list[int]:
        return indices


def _as_is(batch: list[int]) -> list[list[int]]:
    return [batch]  # ``len(batch[0])`` samples, as `_epoch` counts them


def trivial_epoch_s(loader: Any) -> float:
    """An epoch of the same DataLoader set-up over `_Trivial`: its machinery and sampler."""
    from torch.utils.data import DataLoader

    trivial: DataLoader[int] = DataLoader(
        _Trivial(len(loader.dataset)),  # type: ignore[arg-type]
        batch_size=loader.batch_size,
        shuffle=True,
        drop_last=loader.drop_last,
        collate_fn=_as_is,
    )
    _epoch(trivial)
    return statistics.median(_epoch(trivial)[0] for _ in range(5))


def copy_rate_gb_s(tensors: list[Any], buffer: Any) -> float:
    """GB/s of the collator's copy (one ``memmove`` per sample into a batch buffer)."""
    from benchmarks.harness import timed_rates

    rows = buffer[: len(tensors)]
    row_bytes = rows[0].nbytes
    pairs = [(rows.data_ptr() + i * row_bytes, t.data_ptr()) for i, t in enumerate(tensors)]

    def copy() -> None:
        for target, source in pairs:
            ctypes.memmove(target, source, row_bytes)

    return statistics.median(timed_rates(copy, amount=row_bytes * len(pairs))) / 1e9


def profile_loader(loader: Any, rounds: int) -> dict[str, Any]:
    """Plain and instrumented epochs of ``loader`` (``num_workers=0``), alternated.

    Every figure is a median over the rounds, each row apart (a load spike lands in one
    stage of one round, and the median drops it): rows add up to the epoch only roughly;
    ``accounted_s`` and ``unaccounted_s`` are medians of each round's sum and rest.
    """
    if loader.num_workers:
        raise ValueError("the stage profile runs in-process: num_workers must be 0")
    _epoch(loader)  # warm-up: maps the shards, allocates the batch buffers
    runs: list[dict[str, Any]] = []
    for _ in range(rounds):
        faults = _minor_faults()
        plain_s, served = _epoch(loader)
        faults = _minor_faults() - faults
        clock = StageClock()
        with instrumented(clock):
            instrumented_s, _ = _epoch(loader)
        accounted = sum(clock.seconds.values())
        runs.append(
            {
                "epoch_s": plain_s,
                "instrumented_epoch_s": instrumented_s,
                "stages_s": dict(clock.seconds),
                "calls": dict(clock.calls),
                "accounted_s": accounted,
                "unaccounted_s": instrumented_s - accounted,
                "minor_faults": faults,
                "served": served,
            }
        )

    def median_of(key: str) -> float:
        return float(statistics.median(float(run[key]) for run in runs))

    return {
        "samples": len(loader.dataset),
        "batches": len(loader),
        "rounds": rounds,
        "epoch_s": median_of("epoch_s"),
        "instrumented_epoch_s": median_of("instrumented_epoch_s"),
        "stages_s": {
            stage: statistics.median(run["stages_s"][stage] for run in runs) for stage, _ in STAGES
        },
        "calls": runs[0]["calls"],
        "accounted_s": median_of("accounted_s"),
        "unaccounted_s": median_of("unaccounted_s"),
        "runs": runs,
        "trivial_epoch_s": trivial_epoch_s(loader),
        "loader_minor_faults": [run["minor_faults"] for run in runs],
    }
