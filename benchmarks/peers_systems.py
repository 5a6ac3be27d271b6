"""The systems `benchmarks.peers` compares: one row each, and whether it is installed.

How each one writes and reads the workload is in `benchmarks._peers_formats`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class System:
    """One row of the comparison.

    Attributes:
        name: the key used on the command line and in the JSON.
        label: what the table calls it.
        module: the module it needs (missing: "not installed").
        distribution: the package whose version is shown.
        peer: a peer (else one of shardcache's tiers).
        how: how it is written and read, for the report.
    """

    name: str
    label: str
    module: str
    distribution: str
    peer: bool
    how: str


SYSTEMS = (
    System(
        "shardcache-disk",
        "shardcache disk tier",
        "shardcache",
        "shardcache",
        False,
        "`ensure_cache` (64 MiB safetensors shards); "
        "`CachingDataModule(cache='disk').train_dataloader()`",
    ),
    System(
        "shardcache-memory",
        "shardcache memory tier",
        "shardcache",
        "shardcache",
        False,
        "`CachingDataModule(cache='memory').train_dataloader()` (decoded into RAM at setup)",
    ),
    System(
        "litdata",
        "LitData",
        "litdata",
        "litdata",
        True,
        "`optimize` (64 MiB chunks); `StreamingDataset(shuffle=True)` + `StreamingDataLoader`",
    ),
    System(
        "hf-datasets",
        "HF datasets (torch format)",
        "datasets",
        "datasets",
        True,
        "`Dataset.from_generator` (Array3D) + `save_to_disk`; "
        "`load_from_disk(...).with_format('torch')` + torch `DataLoader(shuffle=True)`",
    ),
    System(
        "hf-datasets-numpy",
        "HF datasets (numpy format)",
        "datasets",
        "datasets",
        True,
        "the same files, `with_format('numpy')`: torch's `default_collate` makes the tensors",
    ),
    System(
        "mosaicml-streaming",
        "MosaicML Streaming",
        "streaming",
        "mosaicml-streaming",
        True,
        "`MDSWriter` (ndarray column, 64 MiB shards); "
        "`StreamingDataset(local=..., shuffle=True)` + torch `DataLoader`",
    ),
)

CHILD_ENV = {
    # Nothing may reach a hub: every system reads local files only.
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def availability(system: System) -> tuple[bool, str | None]:
    """Whether ``system``'s module is importable (without importing it), and its version."""
    try:
        installed = importlib.util.find_spec(system.module) is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        return False, None
    try:
        return True, importlib.metadata.version(system.distribution)
    except importlib.metadata.PackageNotFoundError:
        return True, None
