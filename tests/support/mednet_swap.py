"""pytest plugin: mednet 2.1.0's own tests, with only the data module swapped for ours.

Loaded with ``-p support.mednet_swap`` while pytest parses its command line, before any
conftest or test module of mednet's, it replaces ``mednet.data.datamodule.CachingDataModule``
by a subclass of `shardcache.mednet.CachingDataModule`; mednet's database modules
(``montgomery.DataModule`` and the others) bind their base class when first imported, so
they subclass ours (one already imported is rebased). Optionally (``SHARDCACHE_SWAP_DATASET=1``)
``mednet.data.datamodule.CachedDataset``, which ``tests/test_dataset.py`` builds directly, is
replaced by `shardcache.mednet.CachedDataset`.

Proof that the swap took effect: every mednet data module built or set up during a test is
recorded, and a test that used one not derived from ours fails at teardown; the session
writes the counts per test to ``SHARDCACHE_SWAP_REPORT`` (JSON), for the driving test.

Settings (the environment: ``-p`` plugins are imported before options exist):
``SHARDCACHE_SWAP_KWARGS``, a JSON object of keywords every swapped data module receives
(e.g. ``{"cache": "disk", "cache_dir": "/tmp/x"}``).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mednet.data.datamodule as _mednet
import pytest

import shardcache.mednet as _ours

_ORIGINAL = _mednet.CachingDataModule
_KWARGS: dict[str, Any] = json.loads(os.environ.get("SHARDCACHE_SWAP_KWARGS", "{}"))


class SwappedCachingDataModule(_ours.CachingDataModule):
    """`shardcache.mednet.CachingDataModule` with the session's keywords."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for key, value in _KWARGS.items():
            kwargs.setdefault(key, value)
        super().__init__(*args, **kwargs)


_mednet.CachingDataModule = SwappedCachingDataModule  # type: ignore[misc]
REBASED: list[str] = []
for _name, _module in list(sys.modules.items()):
    if not _name.startswith("mednet.") or _module is _mednet:
        continue
    if getattr(_module, "CachingDataModule", None) is _ORIGINAL:
        _module.CachingDataModule = SwappedCachingDataModule  # type: ignore[attr-defined]
    for _value in list(vars(_module).values()):
        if isinstance(_value, type) and _value.__bases__ == (_ORIGINAL,):
            _value.__bases__ = (SwappedCachingDataModule,)
            REBASED.append(f"{_value.__module__}.{_value.__qualname__}")
if os.environ.get("SHARDCACHE_SWAP_DATASET") == "1":
    _mednet.CachedDataset = _ours.CachedDataset  # type: ignore[misc]

# --- the proof ------------------------------------------------------------------------------

_events: list[tuple[str, type]] = []
_per_test: dict[str, dict[str, int]] = {}
_depth: collections.Counter[str] = collections.Counter()


def _observe(kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _depth[kind]:  # a super() chain counts once
            _events.append((kind, type(self)))
        _depth[kind] += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            _depth[kind] -= 1

    return wrapper


for _kind, _attribute in (("built", "__init__"), ("setup", "setup")):
    for _cls in {_mednet.ConcatDataModule, _ours.CachingDataModule}:
        if _attribute in vars(_cls):
            setattr(_cls, _attribute, _observe(_kind, vars(_cls)[_attribute]))


@pytest.fixture(autouse=True)
def _swap_took_effect(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail (at teardown) a test that used a mednet data module that is not ours."""
    _events.clear()
    yield
    counts: collections.Counter[str] = collections.Counter()
    strangers = set()
    for kind, cls in _events:
        ours = issubclass(cls, _ours.CachingDataModule)
        counts[f"{kind}:{'ours' if ours else 'mednet'}"] += 1
        if not ours and issubclass(cls, _mednet.ConcatDataModule):
            strangers.add(f"{kind} {cls.__module__}.{cls.__qualname__}")
    _per_test[request.node.nodeid] = dict(counts)
    assert not strangers, f"mednet data modules used without the swap: {sorted(strangers)}"


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"mednet_swap: mednet's CachingDataModule -> shardcache.mednet, keywords {_KWARGS}",
        f"mednet_swap: CachedDataset swapped: {os.environ.get('SHARDCACHE_SWAP_DATASET') == '1'}",
        f"mednet_swap: rebased {REBASED}",
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report = os.environ.get("SHARDCACHE_SWAP_REPORT")
    if report:
        Path(report).write_text(json.dumps(_per_test, indent=1))
