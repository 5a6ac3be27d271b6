"""Issue 11, "silent wrong data": findings 2, 3 and 4.

A cache key must describe everything that changes a loader's samples (or refuse), must keep
values of different types apart, and building a cache must not change the caller's random
state.
"""

from __future__ import annotations

import enum
import gc
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from shardcache import FingerprintError, SplitError
from shardcache.core.decoding import decode
from shardcache.store import cache_key, ensure_cache
from support.loaders import AttributeLoader
from support.trust import (
    KEY_IGNORES,
    DeclaredLogLoader,
    PrivateCallableLoader,
    PrivateSizeLoader,
    ReaderLoader,
    Scale,
    SelfCountingLoader,
    TinyLoader,
    TypoIgnoresLoader,
    outcome,
    tiny_sample_id,
)

# ---- finding 2: private attributes ---------------------------------------------------------


def test_f02_private_attribute_setting_gets_its_own_cache(tmp_path: Path) -> None:
    """``Loader(_size=3)`` then ``Loader(_size=5)``: the second run must see 5 values."""
    first = ensure_cache(tmp_path, "train", [0, 1], PrivateSizeLoader(3))
    first.close()
    second = ensure_cache(tmp_path, "train", [0, 1], PrivateSizeLoader(5))
    tensor, _ = second[1]
    second.close()
    assert tuple(tensor.shape) == (5,), (
        f"PrivateSizeLoader(_size=5) was served the cache of _size=3: shape {tuple(tensor.shape)}"
    )


def test_f02_private_attribute_the_key_cannot_describe_is_refused(tmp_path: Path) -> None:
    """An open file in a private attribute cannot be hashed: fail closed, name it and the fixes."""
    (tmp_path / "data.bin").write_bytes(b"raw")
    loader = ReaderLoader(str(tmp_path / "data.bin"))
    try:
        _, error = outcome(lambda: cache_key("train", [0], loader))
    finally:
        loader._reader.close()
    assert isinstance(error, FingerprintError), (
        f"expected a FingerprintError naming ReaderLoader._reader, got {error!r}: the key "
        "silently ignores a private attribute"
    )
    assert "ReaderLoader._reader" in str(error), error
    assert "fingerprint()" in str(error), error
    assert KEY_IGNORES in str(error), error


def test_f02_private_callable_enters_the_key_with_its_closure() -> None:
    """A private lambda is described by its source and the values it closes over."""
    first = cache_key("train", [0], PrivateCallableLoader(2.0)).digest
    again = cache_key("train", [0], PrivateCallableLoader(2.0)).digest
    other = cache_key("train", [0], PrivateCallableLoader(3.0)).digest
    assert first == again
    assert first != other, "a private lambda's closed-over scale must change the key"


def test_f02_an_ignored_name_that_does_not_exist_is_refused() -> None:
    """A typo in ``shardcache_key_ignores`` would leave a real setting out: refuse it."""
    _, error = outcome(lambda: cache_key("train", [0], TypoIgnoresLoader()))
    assert isinstance(error, FingerprintError), error
    assert "'_lgo'" in str(error), error


def test_f02_a_loader_changing_itself_while_decoding_keeps_its_cache(tmp_path: Path) -> None:
    """prepare_data builds, setup opens the same cache, though decoding changed ``_decoded``.

    (A guard for the fix: with private attributes in the key, a key computed again in
    setup would miss the cache prepare_data built. 10340c7 ignored private attributes.)
    """
    from shardcache import CachingDataModule

    loader = SelfCountingLoader()
    module = CachingDataModule({"train": list(range(6))}, loader, cache="disk", cache_dir=tmp_path)
    module.prepare_data()
    module.setup("fit")
    module.teardown("fit")
    assert loader._decoded == 6, f"setup decoded again under another key: {loader._decoded}"
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("train-")]) == 1


def test_f02_declared_sample_neutral_attribute_stays_out_of_the_key(tmp_path: Path) -> None:
    """``shardcache_key_ignores`` keeps a decode log out of the key; ``_size`` stays in.

    The first assert holds on 10340c7 too (every private attribute is ignored there); it
    keeps the fix from putting declared bookkeeping attributes into the key.
    """
    assert DeclaredLogLoader.__dict__[KEY_IGNORES] == ("_log",)
    first = cache_key("train", [0], DeclaredLogLoader(3, str(tmp_path / "a.log")))
    second = cache_key("train", [0], DeclaredLogLoader(3, str(tmp_path / "b.log")))
    other_size = cache_key("train", [0], DeclaredLogLoader(4, str(tmp_path / "a.log")))
    assert first.digest == second.digest
    assert first.digest != other_size.digest, "the undeclared private _size must enter the key"


# ---- finding 3: key collisions -------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [{1: "x"}, {True: "x"}, {None: "x"}, {1.5: "x"}, ["ok", {"nested": {2: "y"}}]],
    ids=["int-key", "bool-key", "none-key", "float-key", "nested-int-key"],
)
def test_f03_item_dict_with_non_string_key_is_refused(item: Any) -> None:
    """JSON cannot hold a non-string key: ``{1: "x"}`` and ``{"1": "x"}`` got one key."""
    _, error = outcome(lambda: cache_key("train", ["a", item], TinyLoader()))
    assert isinstance(error, SplitError), (
        f"{item!r} was hashed as {json_twin(item)!r} instead of refused; got {error!r}"
    )
    assert "train[1]" in str(error), f"the error must name the item: {error}"


def json_twin(item: Any) -> Any:
    """What ``json.dumps`` makes of ``item`` (string keys): the value it collides with."""
    import json

    return json.loads(json.dumps(item))


class Mode(enum.Enum):
    GRAY = "gray"


@pytest.mark.parametrize(
    ("converted", "plain"),
    [(math.inf, "inf"), (Mode.GRAY, "gray"), (torch.float32, "torch.float32")],
    ids=["inf-vs-str", "enum-vs-value", "dtype-vs-str"],
)
def test_f03_loader_attribute_conversions_keep_types_apart(converted: Any, plain: str) -> None:
    """A converted loader setting (inf, an Enum, a dtype) must not collide with a string."""
    left = cache_key("train", [0], AttributeLoader(setting=converted)).digest
    right = cache_key("train", [0], AttributeLoader(setting=plain)).digest
    assert left != right, f"setting={converted!r} and setting={plain!r} share one cache key"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([1, 2], (1, 2)),
        ({1: "x"}, {"1": "x"}),
        (Path("a.png"), "a.png"),
        (b"raw", "raw"),
        (torch.zeros(2), torch.zeros(3)),
        (torch.zeros(2), torch.zeros(2, dtype=torch.float64)),
    ],
    ids=[
        "list-vs-tuple",
        "int-key-vs-str-key",
        "path-vs-str",
        "bytes-vs-str",
        "tensor-shape",
        "tensor-dtype",
    ],
)
def test_f03_loader_attribute_descriptions_are_injective(left: Any, right: Any) -> None:
    """Values of different types or contents get different keys (none is refused)."""
    keys = [
        cache_key("train", [0], AttributeLoader(setting=value)).digest for value in (left, right)
    ]
    assert keys[0] != keys[1], f"setting={left!r} and setting={right!r} share one cache key"


# ---- transforms applied before storing: part of the key -------------------------------------


def test_transforms_enter_the_key_and_are_applied(tmp_path: Path) -> None:
    plain = cache_key("train", [1], TinyLoader(width=4))
    halved = cache_key("train", [1], TinyLoader(width=4), transforms=[Scale(0.5)])
    quartered = cache_key("train", [1], TinyLoader(width=4), transforms=[Scale(0.25)])
    assert "transforms" not in plain.inputs
    assert len({plain.digest, halved.digest, quartered.digest}) == 3
    linear = torch.nn.Linear(1, 1)
    before = cache_key("train", [1], TinyLoader(), transforms=[linear]).digest
    with torch.no_grad():
        linear.weight.add_(1.0)
    assert cache_key("train", [1], TinyLoader(), transforms=[linear]).digest != before

    dataset = ensure_cache(tmp_path, "train", [1], TinyLoader(width=4), transforms=[Scale(0.5)])
    tensor, _ = dataset[0]
    dataset.close()
    assert tensor.tolist() == [500.0, 500.5, 501.0, 501.5]


def test_a_changed_transform_is_named_when_a_cache_misses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_cache(tmp_path, "train", [1], TinyLoader(width=4), transforms=[Scale(0.5)]).close()
    with caplog.at_level("INFO", logger="shardcache"):
        ensure_cache(tmp_path, "train", [1], TinyLoader(width=4), transforms=[Scale(0.25)]).close()
    assert "transform [0] (support.trust.Scale)" in caplog.text, caplog.text


# ---- finding 4: decoding must not consume the caller's random state ------------------------

ITEMS = list(range(24))


def first_epoch_order(tier: str, cache_dir: Path) -> list[int]:
    """The items of the first shuffled epoch after ``seed_everything(1234)`` and setup."""
    import lightning

    from shardcache import CachingDataModule

    lightning.seed_everything(1234, verbose=False)
    module = CachingDataModule(
        {"train": ITEMS}, TinyLoader(), cache=tier, cache_dir=cache_dir, batch_size=4
    )
    module.setup("fit")
    order = [tiny_sample_id(row) for tensor, _ in module.train_dataloader() for row in tensor]
    module.teardown("fit")
    return order


def test_f04_seeded_epoch_order_is_the_same_in_every_tier_and_cache_state(
    tmp_path: Path,
) -> None:
    """Same seed, same batch order: whether the cache was built, found, or not used."""
    orders = {
        "none": first_epoch_order("none", tmp_path),
        "memory": first_epoch_order("memory", tmp_path),
        "disk, built": first_epoch_order("disk", tmp_path),
        "disk, found": first_epoch_order("disk", tmp_path),
    }
    distinct = {tuple(order) for order in orders.values()}
    assert len(distinct) == 1, "seeded first epochs differ:\n" + "\n".join(
        f"  {name:12} {order}" for name, order in orders.items()
    )


class GlobalRandomLoader(TinyLoader):
    """Draws from the global generators while decoding (what a careless loader does)."""

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        random.random()
        torch.rand(1)
        return super().sample(item)


def test_f04_an_abandoned_decode_never_rewinds_the_callers_random_state() -> None:
    """A decode whose consumer stopped half-way (a failed build) is closed whenever the
    garbage collector gets to it: that must not put back the random state of its start."""
    decoding = decode("train", ITEMS, GlobalRandomLoader(), lambda sample: sample)
    next(decoding)
    random.seed(7)
    torch.manual_seed(7)
    python_state, torch_state = random.getstate(), torch.random.get_rng_state()
    del decoding
    gc.collect()
    assert random.getstate() == python_state
    assert torch.equal(torch.random.get_rng_state(), torch_state)


def test_f04_a_loader_drawing_from_the_global_generators_leaves_them_as_they_were() -> None:
    random.seed(3)
    torch.manual_seed(3)
    python_state, torch_state = random.getstate(), torch.random.get_rng_state()
    decoded = list(decode("train", ITEMS, GlobalRandomLoader(), lambda sample: sample))
    assert len(decoded) == len(ITEMS)
    assert random.getstate() == python_state
    assert torch.equal(torch.random.get_rng_state(), torch_state)
