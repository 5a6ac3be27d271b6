"""DDP with two CPU ranks (gloo): one decode per item for the whole job, none the next time.

The job runs in a subprocess (`support.lightning_job`), since Lightning's DDP launcher
starts rank 1 by running the same command again. Both ranks miss the cache on the first
run, so they build it together (`shardcache.store.cooperative`): each decodes a slice.
Both sample kinds: (tensor, metadata) pairs and mednet-like dicts of `tv_tensors`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.builds import published
from support.decodes import decodes
from support.lightning_job import expected_digests, job_config, run_job

TRAIN, VALIDATION = 24, 8


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pair", "dict"])
def test_two_ddp_ranks_decode_each_item_once_and_serve_equal_data(
    tmp_path: Path, cache_dir: Path, kind: str
) -> None:
    settings = {"nodes": 1, "devices": 2, "train": TRAIN, "validation": VALIDATION, "loader": kind}
    first = run_job(job_config(tmp_path / "first", **settings), [cache_dir])
    second = run_job(job_config(tmp_path / "second", **settings), [cache_dir])
    for result in (first, second):
        assert result.returncodes == [0], result.tail()
        assert sorted(result.reports) == [0, 1], result.tail()

    first_decodes = decodes(tmp_path / "first" / "decodes.log")
    assert (len(first_decodes), len(decodes(tmp_path / "second" / "decodes.log"))) == (
        TRAIN + VALIDATION,
        0,
    )
    assert len({str(decode.item) for decode in first_decodes}) == TRAIN + VALIDATION
    ranks = [report["pid"] for report in first.reports.values()]
    assert {decode.pid for decode in first_decodes} == set(ranks)  # both ranks decoded
    reports = [*first.reports.values(), *second.reports.values()]
    assert len({report["pid"] for report in reports}) == 4  # two real ranks per job
    assert {report["world_size"] for report in reports} == {2}
    served = expected_digests(tmp_path, TRAIN, VALIDATION, kind)
    assert [{"train": r["train"], "validation": r["validation"]} for r in reports] == [served] * 4
    assert len({tuple(report["caches"]) for report in reports}) == 1
    # Lightning re-creates the train loader with its distributed sampler and keeps its
    # class: each rank hints the batches it draws, its own (`serving.lookahead`).
    assert [report["train_loader"] for report in reports] == [
        {
            "loader": "LookaheadLoader",
            "batches": "LookaheadBatches",
            "sampler": "DistributedSampler",
            "replicas": 2,
            "rank": report["rank"],
        }
        for report in reports
    ]
    assert [str(path) for path in published(cache_dir)] == sorted(reports[0]["caches"])
