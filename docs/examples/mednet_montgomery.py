"""A mednet 2.1 datamodule config: mednet's Montgomery data on shardcache's disk tier.

    mednet train pasa docs/examples/mednet_montgomery.py -e 10 -x cpu

It is mednet's own Montgomery config written out, with one line changed: the import of
``CachingDataModule``. ``cache="disk"`` decodes every image once, ever (later runs, DataLoader
workers and DDP ranks read memory-mapped shards); without it, mednet's ``--cache-samples``
chooses between the memory tier and none.
"""

import importlib.resources

from mednet.data.classify.montgomery import RawDataLoader
from mednet.data.split import JSONDatabaseSplit

from shardcache.mednet import CachingDataModule  # was: from mednet.data.datamodule import ...

datamodule = CachingDataModule(
    JSONDatabaseSplit(
        importlib.resources.files("mednet.config.classify.data.montgomery") / "default.json"
    ),
    RawDataLoader(),
    database_name="montgomery",
    split_name="default",
    task="classification",
    num_classes=1,
    cache="disk",
)
