"""A real Lightning DDP job on CPU (gloo), one launcher per simulated node, and its reports.

``python -m support.lightning_job CONFIG.json`` is one node's launcher: Lightning's own
launcher starts the node's other local ranks by running the same command with
``LOCAL_RANK`` set. `run_job` starts one per node, as a cluster would on each machine,
with Lightning's environment variables (``NODE_RANK``, ``MASTER_ADDR``, a shared
``MASTER_PORT``, no ``LOCAL_RANK``), each in a session of its own: at the end, or at the
deadline, the whole process group of every node is killed.

Each rank serves `support.loaders.SeededLoader` samples (decodes logged in the job's own
log) from a disk-tier `CachingDataModule` whose cache directory is ``SHARDCACHE_DIR`` (one
per node, or one shared), and reports
(``rank-<global rank>.json``): its pid and ranks, and digests of the whole unshuffled
training and validation sets it serves. In ``setup`` it first writes ``pid-<global rank>``,
so that a test can find a rank's process and kill it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import subprocess_env

JOB_DEADLINE = 240.0
"""Seconds a whole job (importing Lightning on every rank included) may take."""

DISTRIBUTED_VARIABLES = (
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "GLOBAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


@dataclass
class JobResult:
    """What a job left: each node's exit code and output, each rank's report."""

    returncodes: list[int]
    outputs: list[str]
    reports: dict[int, dict[str, Any]]
    seconds: float

    def tail(self) -> str:
        """The end of every node's output, for an assertion message."""
        return "\n".join(f"--- node {n} ---\n{out[-3000:]}" for n, out in enumerate(self.outputs))


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for the job's rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def job_config(out_dir: Path, **settings: Any) -> dict[str, Any]:
    """A job's configuration: it reports in ``out_dir``, logs decodes to ``out_dir/decodes.log``.

    Settings: ``nodes`` and ``devices`` (2, 2), ``per_node`` (``prepare_data_per_node``,
    True), ``train`` and ``validation`` (split sizes, 64 and 16), ``delay`` (seconds per
    decode), ``shard_bytes``, ``parallel`` (-1), ``loader`` (``"pair"``: `SeededLoader`
    samples; ``"dict"``: mednet-like `DictImageLoader` dict samples, without a delay).
    """
    config: dict[str, Any] = {
        "out_dir": str(out_dir),
        "log": str(out_dir / "decodes.log"),
        "nodes": 2,
        "devices": 2,
        "per_node": True,
        "train": 64,
        "validation": 16,
        "delay": 0.0,
        "shard_bytes": None,
        "parallel": -1,
        "loader": "pair",
    }
    config.update(settings)
    return config


def run_job(
    config: dict[str, Any],
    cache_dirs: list[Path],
    *,
    env: dict[str, str] | None = None,
    during: Any = None,
    deadline: float = JOB_DEADLINE,
) -> JobResult:
    """Run a job of ``config["nodes"]`` nodes; node ``n`` caches in ``cache_dirs[n]``.

    ``during(processes)``, when given, runs while the job does (e.g. to kill a rank). Every
    node's process group is killed at the end, whatever happened.
    """
    out = Path(config["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    config_path.write_text(json.dumps(config))
    port = free_port()
    started = time.monotonic()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for node in range(config["nodes"]):
            node_env = subprocess_env(**(env or {}))
            for name in DISTRIBUTED_VARIABLES:  # a fresh job, whatever this process inherited
                node_env.pop(name, None)
            node_env.update(
                NODE_RANK=str(node),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                SHARDCACHE_DIR=str(cache_dirs[node]),
                OMP_NUM_THREADS="1",
            )
            with (out / f"node-{node}.log").open("wb") as output:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "support.lightning_job", str(config_path)],
                        env=node_env,
                        cwd=out,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: see the finally
                    )
                )
        if during is not None:
            during(processes)
        end = started + deadline
        for process in processes:
            try:
                process.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the job did not end within {deadline:.0f} s") from None
    finally:
        for process in processes:  # the node's launcher and the ranks it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reports = {
        int(path.stem.split("-")[1]): json.loads(path.read_text())
        for path in out.glob("rank-*.json")
    }
    return JobResult(
        [process.returncode for process in processes],
        [(out / f"node-{n}.log").read_text(errors="replace") for n in range(len(processes))],
        reports,
        time.monotonic() - started,
    )


# ---- one rank of the job (run as a module) ------------------------------------------------


def make_loader(kind: str, log: str | Path, delay: float = 0.0) -> Any:
    """The job's raw loader: ``"pair"`` (`SeededLoader`) or ``"dict"`` (`DictImageLoader`)."""
    from .loaders import DictImageLoader, SeededLoader

    if kind == "dict":
        return DictImageLoader(log)
    return SeededLoader(log, delay=delay)


def _loader_report(loader: Any) -> dict[str, Any]:
    """The classes of the train loader Lightning uses, of its batches and their sampler."""
    batches = loader._index_sampler
    sampler = getattr(getattr(batches, "batches", batches), "sampler", None)
    return {
        "loader": type(loader).__name__,
        "batches": type(batches).__name__,
        "sampler": type(sampler).__name__,
        "replicas": getattr(sampler, "num_replicas", None),
        "rank": getattr(sampler, "rank", None),
    }


def _main(config_path: str) -> None:
    import lightning
    import torch
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    from shardcache import CachingDataModule

    from .loaders import make_items
    from .samples import dataset_digest
    from .trainers import quiet_trainer

    config = json.loads(Path(config_path).read_text())
    out = Path(config["out_dir"])

    class Reporting(CachingDataModule):
        def setup(self, stage: str) -> None:
            assert self.trainer is not None
            (out / f"pid-{self.trainer.global_rank}").write_text(str(os.getpid()))
            super().setup(stage)

    class Model(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
            tensor = batch["image"] if isinstance(batch, dict) else batch[0]
            return self.layer(tensor.mean(dim=(1, 2, 3))[:, None]).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def on_train_start(self) -> None:
            # Every rank checks the whole unshuffled training set, not only its shard of it.
            datamodule = self.trainer.datamodule
            train = datamodule.unshuffled_train_dataloader().dataset
            validation = datamodule.val_dataloader()["validation"].dataset
            report = {
                "rank": self.trainer.global_rank,
                "node": self.trainer.node_rank,
                "pid": os.getpid(),
                "world_size": self.trainer.world_size,
                "train": dataset_digest(train),
                "validation": dataset_digest(validation),
                "caches": [str(train.path), str(validation.path)],
                "train_loader": _loader_report(self.trainer.train_dataloader),
            }
            path = out / f"rank-{self.trainer.global_rank}.json"
            path.with_suffix(".part").write_text(json.dumps(report))
            path.with_suffix(".part").replace(path)

    split = {
        "train": make_items(config["train"]),
        "validation": make_items(config["validation"], "val"),
    }
    loader = make_loader(config.get("loader", "pair"), config["log"], config["delay"])
    datamodule = Reporting(
        split,
        loader,
        batch_size=4,
        parallel=config["parallel"],
        cache="disk",
        shard_bytes=config["shard_bytes"],
    )
    datamodule.prepare_data_per_node = config["per_node"]
    trainer = quiet_trainer(
        max_epochs=1,
        devices=config["devices"],
        num_nodes=config["nodes"],
        strategy=DDPStrategy(process_group_backend="gloo"),
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )
    trainer.fit(Model(), datamodule=datamodule)
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # Interpreter teardown takes seconds here (Lightning, torch): every rank is done.
    os._exit(0)


def expected_digests(
    scratch: Path, train: int = 64, validation: int = 16, kind: str = "pair"
) -> dict[str, str]:
    """What every rank's report must say: digests of the samples decoded directly."""
    from shardcache.tiers.none import RawDataset

    from .loaders import make_items
    from .samples import dataset_digest

    loader = make_loader(kind, scratch / "reference-decodes.log")
    return {
        "train": dataset_digest(RawDataset("train", make_items(train), loader)),
        "validation": dataset_digest(
            RawDataset("validation", make_items(validation, "val"), loader)
        ),
    }


if __name__ == "__main__":
    _main(sys.argv[1])
