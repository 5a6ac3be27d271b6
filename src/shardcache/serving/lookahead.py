"""Ask the disk for the next batches' bytes while the current ones load (a cold first epoch).

A cold cache is read through page faults: each DataLoader worker (or the main process)
waits for the disk, then computes, then waits again, and the disk idles while it computes.
The main process knows which batches come next: it draws them from the batch sampler before
any worker reads them. Hinting them then (`CacheDataset.will_need`, ``MADV_WILLNEED``) keeps
the disk busy ahead of the readers: a cold epoch of a 2 GiB cache (2,000 x 1 MiB) took
8-17% less time, with or without workers (medians of 6 interleaved runs each).

Only the first epoch's worth of samples is hinted (``len(dataset)`` indices per loader):
after it a cache that fits in memory is warm, and each hint would cost a residency check.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader

AHEAD = 2
"""Batches hinted ahead of the one being drawn (beyond those a DataLoader draws ahead for
its workers: ``prefetch_factor`` per worker)."""


class LookaheadBatches:
    """``batches`` in order; each hinted (``will_need``) ``ahead`` batches early.

    Past the first ``skip`` batches of a pass, each draw hints the batch drawn and draws
    and hints up to ``ahead`` more. The first ``skip`` go out unhinted, so that nothing
    queues before their reads: their readers hint them (`CacheDataset.prefetch`), and a
    DataLoader with workers draws that many at once when it starts. Each batch is hinted
    once, until ``budget`` indices were hinted in all; then the batches pass through.
    """

    def __init__(
        self,
        batches: Iterable[list[int]],
        will_need: Callable[[Sequence[int]], None],
        *,
        budget: int,
        skip: int,
        ahead: int = AHEAD,
    ) -> None:
        self.batches = batches
        self.will_need = will_need
        self.budget = budget
        self.skip = skip
        self.ahead = ahead

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        source = iter(self.batches)
        drawn: deque[list[int]] = deque()  # drawn and hinted, not yet yielded
        count = 0  # batches drawn in this pass
        while True:
            while count >= self.skip and self.budget > 0 and len(drawn) <= self.ahead:
                batch = next(source, None)
                if batch is None:
                    break
                count += 1
                self.will_need(batch)
                self.budget -= len(batch)
                drawn.append(batch)
            if drawn:
                yield drawn.popleft()
                continue
            batch = next(source, None)
            if batch is None:
                return
            count += 1
            yield batch


class LookaheadLoader(DataLoader[Any]):
    """A DataLoader whose dataset is asked for its next batches' bytes ahead of the reads.

    Takes DataLoader's arguments. With a dataset that has ``will_need`` (the disk tier's)
    and batches drawn by a batch sampler, the batches go through `LookaheadBatches`;
    otherwise it is a plain DataLoader. Lightning re-creates it with its distributed sampler
    (it keeps a DataLoader's class), so each rank hints its own batches.
    """

    @property
    def _index_sampler(self) -> Any:
        batches = super()._index_sampler
        will_need = getattr(self.dataset, "will_need", None)
        if will_need is None or not self._auto_collation:
            return batches
        # One per loader (the budget spans epochs); a new batch sampler gets a new one.
        lookahead = self.__dict__.get("_lookahead")
        if lookahead is None or lookahead.batches is not batches:
            # What a DataLoader draws when it starts (its workers' prefetch) and as each
            # worker's first batch arrives: the first batch waits for none of the hints
            # (the main process parses the headers they need). Without workers, one.
            skip = self.num_workers * ((self.prefetch_factor or 0) + 1) or 1
            budget = len(self.dataset)  # type: ignore[arg-type]
            lookahead = LookaheadBatches(batches, will_need, budget=budget, skip=skip)
            self.__dict__["_lookahead"] = lookahead
        return lookahead
