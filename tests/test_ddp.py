"""DDP with two CPU ranks (gloo): one decode per item for the whole job, none the next time.

The job is a script in ``tmp_path`` run in a subprocess, since Lightning's DDP launcher
starts rank 1 by running the same script again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardcache.tiers.none import RawDataset
from support.decodes import decode_count
from support.loaders import DictImageLoader, SeededLoader, make_items
from support.processes import run_python, subprocess_env
from support.samples import dataset_digest

TRAIN, VALIDATION = 24, 8

JOB = """
import json, os, sys
from pathlib import Path

import lightning
import torch
from lightning.pytorch.strategies import DDPStrategy

from shardcache import CachingDataModule
from support.loaders import DictImageLoader, SeededLoader, make_items
from support.samples import dataset_digest


def images(batch):
    return batch["image"] if isinstance(batch, dict) else batch[0]


class Model(lightning.LightningModule):
    def __init__(self, out_dir):
        super().__init__()
        self.layer = torch.nn.Linear(64, 1)
        self.out_dir = out_dir

    def training_step(self, batch, batch_index):
        return self.layer(images(batch).flatten(1)).mean()

    def validation_step(self, batch, batch_index):
        self.layer(images(batch).flatten(1))

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
            "train": dataset_digest(train),
            "validation": dataset_digest(validation),
            "caches": [train.path.name, validation.path.name],
        }
        Path(self.out_dir, f"rank-{self.global_rank}.json").write_text(json.dumps(report))


def main():
    cache_dir, log, out_dir, train, validation, kind = sys.argv[1:7]
    split = {"train": make_items(int(train)), "validation": make_items(int(validation), "val")}
    loader = DictImageLoader(log) if kind == "dict" else SeededLoader(log)
    datamodule = CachingDataModule(split, loader, batch_size=4, cache="disk", cache_dir=cache_dir)
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


def run_job(
    script: Path, cache_dir: Path, log: Path, out_dir: Path, kind: str
) -> list[dict[str, object]]:
    """Run one 2-rank job; return each rank's report, by rank."""
    out_dir.mkdir()
    env = subprocess_env()
    for name in DISTRIBUTED_VARIABLES:  # a fresh job, whatever this process inherited
        env.pop(name, None)
    result = run_python(
        script, cache_dir, log, out_dir, TRAIN, VALIDATION, kind, env=env, cwd=out_dir, timeout=240
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads(path.read_text()) for path in sorted(out_dir.glob("rank-*.json"))]
    assert [report["rank"] for report in reports] == [0, 1], result.stderr[-4000:]
    return reports


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pair", "dict"])
def test_two_ddp_ranks_decode_each_item_once_and_serve_equal_data(
    tmp_path: Path, cache_dir: Path, kind: str
) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    loader = DictImageLoader(tmp_path / "x") if kind == "dict" else SeededLoader(tmp_path / "x")
    expected = {
        "train": dataset_digest(RawDataset("train", make_items(TRAIN), loader)),
        "validation": dataset_digest(
            RawDataset("validation", make_items(VALIDATION, "val"), loader)
        ),
    }

    first = run_job(script, cache_dir, tmp_path / "first.log", tmp_path / "first", kind)
    second = run_job(script, cache_dir, tmp_path / "second.log", tmp_path / "second", kind)

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
