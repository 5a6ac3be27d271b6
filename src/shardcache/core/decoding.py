"""Decode split items with ``parallel`` processes, exactly once each, in order.

Used by the memory tier's load and the disk tier's build. A failing item does not stop the
run: every item is decoded, then one `BadSamplesError` lists the failures, so a user fixes
all of them in one go. Decoding never consumes the caller's random state: a seeded run
shuffles the same whether it built its cache, found it, or decodes on every access.
"""

from __future__ import annotations

import logging
import operator
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .errors import BadSamplesError
from .samples import Where, canonical_sample, describe
from .transforms import transform_sample
from .types import RawDataLoader, Sample, Transform
from .workers import num_workers, worker_context

logger = logging.getLogger(__name__)

MAX_REPORTED_FAILURES = 20
"""Failures listed in a `BadSamplesError` message; the count covers all of them."""

Payload = TypeVar("Payload")
Result = TypeVar("Result")

_DONE: Any = object()
"""What a finished DataLoader's next step returns."""


@dataclass(frozen=True)
class Decoded(Generic[Payload]):
    """One decoded item: its position in the subset, what was made of it, and its label."""

    index: int
    value: Payload
    label: int | None


@dataclass(frozen=True)
class _Failure:
    index: int
    message: str


def _as_label(value: object) -> int | None:
    """An int label from ``label()``'s int or ``target()``'s tensor (argmax if one-hot)."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            number = value.item()
            return int(number) if float(number).is_integer() else None
        flat = value.reshape(-1)
        if flat.numel() == 0:
            return None
        return int(torch.argmax(flat).item())
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def read_label(loader: RawDataLoader, item: Any) -> int | None:
    """``item``'s class without decoding pixels, or None when the loader cannot say.

    From ``loader.label(item)``, else ``loader.target(item)`` (a scalar's value, a one-hot
    vector's argmax).
    """
    for method in ("label", "target"):
        read = getattr(loader, method, None)
        if callable(read):
            return _as_label(read(item))
    return None


class _DecodingDataset(Dataset[Decoded[Payload] | _Failure]):
    """Decodes, checks and prepares one item per index; failures come back as values."""

    def __init__(
        self,
        subset: str,
        items: Sequence[Any],
        indices: Sequence[int],
        loader: RawDataLoader,
        prepare: Callable[[Sample], Payload],
        transforms: Sequence[Transform],
    ) -> None:
        self.subset = subset
        self.items = items
        self.indices = indices
        self.loader = loader
        self.prepare = prepare
        self.transforms = tuple(transforms)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Decoded[Payload] | _Failure:
        index = self.indices[position]
        item = self.items[index]
        try:
            where = Where(self.subset, index, item)
            sample = canonical_sample(self.loader.sample(item), where)
            if self.transforms:
                sample = canonical_sample(transform_sample(sample, self.transforms), where)
            value = self.prepare(sample)
            label = read_label(self.loader, item)
        except Exception as error:  # noqa: BLE001 (reported with its item once all are decoded)
            message = str(error)
            if not message.startswith(f"{self.subset}["):
                message = f"{describe(self.subset, index, item)}: {type(error).__name__}: {error}"
            return _Failure(index, message)
        return Decoded(index, value, label)


def _as_is(value: Any) -> Any:
    """With ``batch_size=None`` the DataLoader passes single results: keep them whole."""
    return value


@dataclass
class _RandomStates:
    """Torch's, Python's and NumPy's global random states, captured or applied at once."""

    torch_state: torch.Tensor
    python_state: Any
    numpy_state: Any

    @classmethod
    def capture(cls) -> _RandomStates:
        numpy = _numpy()
        return cls(
            torch.random.get_rng_state(),
            random.getstate(),
            None if numpy is None else numpy.random.get_state(),
        )

    def apply(self) -> None:
        torch.random.set_rng_state(self.torch_state)
        random.setstate(self.python_state)
        numpy = _numpy()
        if numpy is not None and self.numpy_state is not None:
            numpy.random.set_state(self.numpy_state)


class _OwnRandomStates:
    """Runs each step of a decode on random states of its own, the caller's in between.

    The DataLoader below draws its base seed from its own generator, but a raw loader run
    in this process (``parallel=-1``) may draw from the global generators. Its states start
    as the caller's and go on from step to step; after every step the caller's are put
    back. Nothing is held across a ``yield``: a decode abandoned half-way (its consumer
    failed) must not restore stale states whenever the garbage collector closes it.
    """

    def __init__(self) -> None:
        self._own: _RandomStates | None = None

    def step(self, action: Callable[[], Result]) -> Result:
        """``action()`` on the decode's random states."""
        callers = _RandomStates.capture()
        if self._own is not None:
            self._own.apply()
        try:
            return action()
        finally:
            self._own = _RandomStates.capture()
            callers.apply()


def _results(batches: Iterator[Any], states: _OwnRandomStates | None) -> Iterator[Any]:
    """The DataLoader's results, one by one, so that each reaches the shard writer at once.

    With ``states`` (the loader runs in this process) each is decoded on the decode's own
    random states; results from workers touch no random state here, and skip the swap.
    """
    while True:
        if states is None:
            result = next(batches, _DONE)
        else:
            result = states.step(lambda: next(batches, _DONE))
        if result is _DONE:
            return
        yield result


def _numpy() -> Any:
    """NumPy if something imported it (then its global state is the caller's too)."""
    return sys.modules.get("numpy")


def _fail(subset: str, total: int, failures: list[_Failure]) -> BadSamplesError:
    listed = [failure.message for failure in failures[:MAX_REPORTED_FAILURES]]
    more = len(failures) - len(listed)
    lines = "\n  ".join(listed + ([f"... and {more} more"] if more else []))
    return BadSamplesError(
        f"{len(failures)} of {total} items of subset {subset!r} could not be decoded:\n  {lines}",
        failures=tuple(listed),
    )


def decode(
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    prepare: Callable[[Sample], Payload],
    *,
    indices: Sequence[int] | None = None,
    parallel: int = -1,
    transforms: Sequence[Transform] = (),
) -> Iterator[Decoded[Payload]]:
    """Yield ``prepare(sample)`` of each ``items[i]`` for ``i`` in ``indices``, in order.

    Args:
        subset: the subset's name, for messages and the progress bar.
        items: the subset's split items.
        loader: the raw data loader.
        prepare: what to make of each checked sample, in the decoding process (the disk
            tier encodes it for a shard there).
        indices: which items to decode (default: all); each is decoded exactly once.
        parallel: worker processes, as in `CachingDataModule`.
        transforms: applied to each checked sample before ``prepare`` (see `transforms`).

    Raises:
        BadSamplesError: after the last item, when any item failed.
    """
    chosen = range(len(items)) if indices is None else indices
    workers = num_workers(parallel)
    dataset = _DecodingDataset(subset, items, chosen, loader, prepare, transforms)
    failures: list[_Failure] = []
    states = _OwnRandomStates()
    batches = states.step(
        lambda: iter(
            DataLoader(
                dataset,
                batch_size=None,
                shuffle=False,
                num_workers=workers,
                collate_fn=_as_is,
                multiprocessing_context=worker_context(workers),
                prefetch_factor=4 if workers else None,
                generator=torch.Generator(),  # its base seed is not drawn from the caller's RNG
            )
        )
    )
    with tqdm(total=len(chosen), desc=f"decoding {subset}", unit="sample", disable=None) as bar:
        for result in _results(batches, states if workers == 0 else None):
            bar.update()
            if isinstance(result, _Failure):
                failures.append(result)
                logger.debug("%s", result.message)
                continue
            yield result
    if failures:
        raise _fail(subset, len(items), failures)
