"""Cache keys: stable across processes and hash seeds, changed by every input that matters.

Unhashable splits and loaders are errors that name the culprit and the fix, never a random
key (which would miss on every run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shardcache import CachingDataModule, FingerprintError, SplitError
from shardcache.store import FORMAT_VERSION, cache_key, loader_identity
from shardcache.store.key import canonical_json
from support.decodes import decode_count
from support.loaders import AttributeLoader, FingerprintLoader, SeededLoader, make_items
from support.processes import subprocess_env

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
split_items = st.lists(json_values, min_size=1, max_size=6)
attribute_names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(
    lambda name: name not in {"sample", "label", "fingerprint"}
)
loader_attributes = st.dictionaries(attribute_names, json_values, max_size=3)


def key_of(items: list[Any], attributes: dict[str, Any], subset: str = "train") -> str:
    return cache_key(subset, items, AttributeLoader(**attributes)).digest


# ---- stable across processes ----------------------------------------------------------------


KEY_SERVER = """
import json, sys

from shardcache.store import cache_key
from support.loaders import AttributeLoader

for line in sys.stdin:
    request = json.loads(line)
    loader = AttributeLoader(**request["attributes"])
    digest = cache_key(request["subset"], request["items"], loader).digest
    print(json.dumps({"digest": digest, "str_hash": hash("shardcache")}), flush=True)
"""


class KeyServer:
    """A Python process with its own PYTHONHASHSEED that computes keys on request.

    Each request is a JSON line ``{"subset", "items", "attributes"}``; the answer has the key
    and ``hash()`` of a string, which that seed salts, to show the processes really differ.
    """

    def __init__(self, hash_seed: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", KEY_SERVER],
            env=subprocess_env(PYTHONHASHSEED=hash_seed),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ask(self, items: list[Any], attributes: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        request = {"subset": "train", "items": items, "attributes": attributes}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            _, error = self.process.communicate(timeout=10)
            pytest.fail(f"the key server died: {error}")
        return json.loads(answer)

    def close(self) -> None:
        try:
            self.process.communicate(timeout=10)  # closes stdin, which ends the server's loop
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


@pytest.fixture(scope="module")
def key_servers() -> Iterator[list[KeyServer]]:
    servers = [KeyServer("0"), KeyServer("12345")]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.mark.slow
def test_the_servers_really_salt_hash_differently(key_servers: list[KeyServer]) -> None:
    answers = [server.ask(["a"], {}) for server in key_servers]

    assert answers[0]["str_hash"] != answers[1]["str_hash"]
    assert answers[0]["digest"] == answers[1]["digest"] == key_of(["a"], {})


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(items=split_items, attributes=loader_attributes)
def test_the_key_is_the_same_in_processes_with_other_hash_seeds(
    key_servers: list[KeyServer], items: list[Any], attributes: dict[str, Any]
) -> None:
    expected = key_of(items, attributes)

    digests = [server.ask(items, attributes)["digest"] for server in key_servers]

    assert digests == [expected, expected]


# ---- every input changes it (in-process, cheap) -------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(items=split_items, attributes=loader_attributes, data=st.data())
def test_changing_one_item_changes_the_key(
    items: list[Any], attributes: dict[str, Any], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(items) - 1))
    replacement = data.draw(json_values)
    assume(canonical_json(replacement) != canonical_json(items[index]))
    changed = [*items[:index], replacement, *items[index + 1 :]]

    assert key_of(changed, attributes) != key_of(items, attributes)


@settings(max_examples=50, deadline=None)
@given(items=split_items, data=st.data())
def test_changing_the_order_changes_the_key(items: list[Any], data: st.DataObject) -> None:
    reordered = data.draw(st.permutations(items))
    assume([canonical_json(i) for i in reordered] != [canonical_json(i) for i in items])

    assert key_of(reordered, {}) != key_of(items, {})


@settings(max_examples=50, deadline=None)
@given(items=split_items, attributes=loader_attributes, name=attribute_names, data=st.data())
def test_changing_or_adding_a_loader_attribute_changes_the_key(
    items: list[Any], attributes: dict[str, Any], name: str, data: st.DataObject
) -> None:
    value = data.draw(json_values)
    assume(name not in attributes or canonical_json(attributes[name]) != canonical_json(value))

    assert key_of(items, {**attributes, name: value}) != key_of(items, attributes)


@settings(max_examples=50, deadline=None)
@given(items=split_items, attributes=loader_attributes)
def test_dict_key_order_does_not_change_the_key(
    items: list[Any], attributes: dict[str, Any]
) -> None:
    def reverse_dicts(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: reverse_dicts(value[key]) for key in reversed(list(value))}
        if isinstance(value, list):
            return [reverse_dicts(element) for element in value]
        return value

    assert key_of(reverse_dicts(items), reverse_dicts(attributes)) == key_of(items, attributes)


def test_the_key_covers_the_format_version_and_not_the_subset_name() -> None:
    items = make_items(3)
    key = cache_key("train", items, AttributeLoader(size=4))

    assert key.inputs["format_version"] == FORMAT_VERSION
    assert key.digest == cache_key("monitor-train", items, AttributeLoader(size=4)).digest
    assert key.digest != cache_key("train", items, AttributeLoader(size=5)).digest
    assert key.short == key.digest[:24]


def test_a_loader_class_edit_changes_the_key() -> None:
    class Edited(AttributeLoader):
        pass

    edited = cache_key("train", ["a"], Edited()).inputs["loader"]
    original = cache_key("train", ["a"], AttributeLoader()).inputs["loader"]

    assert edited["source_sha256"] != original["source_sha256"]
    assert edited["class"].endswith("Edited")


def test_a_fingerprint_replaces_class_and_attributes(tmp_path: Path) -> None:
    loader = FingerprintLoader(tmp_path / "log", version="7")

    assert loader_identity(loader) == {"fingerprint": "synthetic-v7"}
    assert (
        cache_key("train", ["a"], loader).digest
        == cache_key("train", ["a"], FingerprintLoader(tmp_path / "other", "7", scale=9)).digest
    )


def test_a_fingerprint_that_is_not_a_string_is_refused() -> None:
    class Numbered(AttributeLoader):
        def fingerprint(self) -> int:
            return 3

    with pytest.raises(FingerprintError, match=r"fingerprint\(\) returned int, expected str"):
        cache_key("train", ["a"], Numbered())


# ---- unhashable splits and loaders ----------------------------------------------------------


def test_an_unhashable_item_names_the_subset_index_and_fix(tmp_path: Path, cache_dir: Path) -> None:
    log = tmp_path / "log"
    split = {"train": [["a.png", 0], ["b.png", 1], object()]}
    datamodule = CachingDataModule(split, SeededLoader(log), cache="disk", cache_dir=cache_dir)

    with pytest.raises(SplitError) as raised:
        datamodule.prepare_data()

    message = str(raised.value)
    assert message.startswith("train[2] (<object object at")
    assert "must be JSON values" in message
    assert "Convert the item" in message
    assert decode_count(log) == 0


@pytest.mark.parametrize(
    ("item", "shown"),
    [
        (Path("img/a.png"), "PosixPath('img/a.png')"),
        ({"values": {1, 2}}, "{'values': {1, 2}}"),
        (float("nan"), "nan"),
        ("\ud800", "'\\ud800'"),  # a lone surrogate, as json.loads('"\\ud800"') gives
    ],
)
def test_other_non_json_items_are_split_errors(item: Any, shown: str) -> None:
    with pytest.raises(SplitError, match=r"^validation\[1\] \(") as raised:
        cache_key("validation", ["fine", item], AttributeLoader())

    assert shown in str(raised.value)


def test_an_opaque_attribute_names_the_attribute_and_suggests_fingerprint(
    tmp_path: Path, cache_dir: Path
) -> None:
    log = tmp_path / "log"
    loader = SeededLoader(log)
    loader.augment = threading.Lock()  # type: ignore[attr-defined]
    datamodule = CachingDataModule(
        {"train": make_items(2)}, loader, cache="disk", cache_dir=cache_dir
    )

    with pytest.raises(FingerprintError) as raised:
        datamodule.prepare_data()

    message = str(raised.value)
    assert "SeededLoader.augment" in message
    assert "_thread.lock" in message
    assert "fingerprint() -> str" in message
    assert "shardcache_key_ignores" in message
    assert decode_count(log) == 0


def test_a_private_lambda_attribute_enters_the_key(tmp_path: Path) -> None:
    loader = SeededLoader(tmp_path / "log")
    loader._augment = lambda x: x  # type: ignore[attr-defined]

    assert (
        cache_key("train", ["a"], loader).digest
        != cache_key("train", ["a"], SeededLoader(tmp_path / "log")).digest
    )
