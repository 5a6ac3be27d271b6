"""`store.waiting.Wait`: the deadline, the log line and the lazy description of every wait."""

from __future__ import annotations

import logging

import pytest

from shardcache.core.errors import LockTimeoutError
from shardcache.store import waiting
from shardcache.store.waiting import Wait


def test_tick_sleeps_until_the_deadline_then_names_what_it_waited_for():
    wait = Wait(0.2)
    ticks = []

    def wait_forever() -> None:
        while True:
            wait.tick("rank 1 to plan")
            ticks.append(1)

    with pytest.raises(LockTimeoutError, match=r"gave up after 0 s waiting for rank 1 to plan"):
        wait_forever()
    assert len(ticks) >= 3  # polls start short (10 ms), not at MAX_POLL
    assert wait.remaining() <= 0


def test_the_description_is_built_only_for_the_log_line_or_the_error(monkeypatch, caplog):
    monkeypatch.setattr(waiting, "WAIT_LOG_INTERVAL", 3600.0)
    calls = []

    def describe() -> str:
        calls.append(1)
        return "the coordinator"

    wait = Wait(60.0)
    for _ in range(3):
        wait.tick(describe)
    assert calls == []
    monkeypatch.setattr(waiting, "WAIT_LOG_INTERVAL", 0.0)
    wait = Wait(60.0)
    with caplog.at_level(logging.WARNING, logger="shardcache.store.waiting"):
        wait.tick(describe)
    assert calls == [1]
    assert caplog.records[-1].getMessage().startswith("waiting for the coordinator (giving up in ")
