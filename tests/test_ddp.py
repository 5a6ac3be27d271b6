"""DDP with two CPU ranks (gloo): one decode per item for the whole job, none the next time.

The job is a script in ``tmp_path`` run in a subprocess, since Lightning's DDP launcher
starts rank 1 by running the same script again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _store_helpers import (
    CountingLoader,
    dataset_checksum,
    decode_count,
    simple_items,
    subprocess_env,
)
from shardcache.tiers.none import RawDataset

TRAIN, VALIDATION = 24, 8

JOB = """
import json, os, sys
from pathlib import Path

import lightning
import torch
from lightning.pytorch.strategies import DDPStrategy

from _store_helpers import CountingLoader, dataset_checksum, simple_items
from shardcache import CachingDataModule


class Model(lightning.LightningModule):
    def __init__(self, out_dir):
        super().__init__()
        self.layer = torch.nn.Linear(64, 1)
        self.out_dir = out_dir

    def training_step(self, batch, batch_index):
        tensor, _ = batch
        return self.layer(tensor.flatten(1)).mean()

    def validation_step(self, batch, batch_index):
        tensor, _ = batch
        self.layer(tensor.flatten(1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_start(self):
        # Every rank checks the whole unshuffled training set, not only its shard of it.
        datamodule = self.trainer.datamodule
        train = datamodule.unshuffled_train_dataloader().dataset
        validation = datamodule.val_dataloader()["validation"].dataset
        report = {
            "rank": self.global_rank,
            "pid": os.getpid(),
            "world_size": self.trainer.world_size,
            "train": dataset_checksum(train),
            "validation": dataset_checksum(validation),
            "caches": [train.path.name, validation.path.name],
        }
        Path(self.out_dir, f"rank-{self.global_rank}.json").write_text(json.dumps(report))


def main():
    cache_dir, log, out_dir, train, validation = sys.argv[1:6]
    split = {"train": simple_items(int(train)), "validation": simple_items(int(validation), "val")}
    datamodule = CachingDataModule(
        split, CountingLoader(log), batch_size=4, cache="disk", cache_dir=cache_dir
    )
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_epochs=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    trainer.fit(Model(out_dir), datamodule=datamodule)


if __name__ == "__main__":
    main()
"""

DISTRIBUTED_VARIABLES = (
    "LOCAL_RANK",
    "NODE_RANK",
    "GLOBAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def run_job(script: Path, cache_dir: Path, log: Path, out_dir: Path) -> list[dict[str, object]]:
    """Run one 2-rank job; return each rank's report, by rank."""
    out_dir.mkdir()
    env = subprocess_env()
    for name in DISTRIBUTED_VARIABLES:  # a fresh job, whatever this process inherited
        env.pop(name, None)
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(cache_dir),
            str(log),
            str(out_dir),
            str(TRAIN),
            str(VALIDATION),
        ],
        env=env,
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads(path.read_text()) for path in sorted(out_dir.glob("rank-*.json"))]
    assert [report["rank"] for report in reports] == [0, 1], result.stderr[-4000:]
    return reports


@pytest.mark.slow
def test_two_ddp_ranks_decode_each_item_once_and_serve_equal_data(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    cache_dir = tmp_path / "cache"
    expected = {
        "train": dataset_checksum(
            RawDataset("train", simple_items(TRAIN), CountingLoader(tmp_path / "x"))
        ),
        "validation": dataset_checksum(
            RawDataset(
                "validation", simple_items(VALIDATION, "val"), CountingLoader(tmp_path / "x")
            )
        ),
    }

    first = run_job(script, cache_dir, tmp_path / "first.log", tmp_path / "first")
    second = run_job(script, cache_dir, tmp_path / "second.log", tmp_path / "second")

    decodes = (decode_count(tmp_path / "first.log"), decode_count(tmp_path / "second.log"))
    assert decodes == (TRAIN + VALIDATION, 0)
    reports = first + second
    assert len({report["pid"] for report in reports}) == 4  # two real ranks per job
    assert {report["world_size"] for report in reports} == {2}
    assert [{"train": r["train"], "validation": r["validation"]} for r in reports] == [expected] * 4
    assert len({tuple(report["caches"]) for report in reports}) == 1
    assert sorted(
        path.name for path in cache_dir.iterdir() if path.is_dir() and path.name[0] != "."
    ) == (sorted(first[0]["caches"]))
