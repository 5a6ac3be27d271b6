"""Issue 11, "never delete or write outside what shardcache created": findings 7, 8 and 9.

Real symlinks planted in the cache tree, a home directory passed as ``--cache-dir``, and
names a shell produces by mistake.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shardcache import CacheDirError
from shardcache.cli import main
from shardcache.store import cache_key, ensure_cache
from support.trust import TinyLoader, make_victim, outcome, tree

CACHEDIR_TAG_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
"""The first line of a CACHEDIR.TAG (https://bford.info/cachedir/)."""


def build(cache_dir: Path, subset: str = "train", items: list[int] | None = None) -> Path:
    dataset = ensure_cache(cache_dir, subset, items or [0, 1, 2], TinyLoader())
    dataset.close()
    return dataset.path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and all output of ``shardcache argv`` (run in this process)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out + err


# ---- finding 7: symlinks in the cache tree --------------------------------------------------


def test_f07_build_never_empties_a_trash_symlink_target(tmp_path: Path) -> None:
    """``.trash -> ~/victim``: every build emptied the target."""
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    before = make_victim(victim)
    cache.mkdir()
    (cache / ".trash").symlink_to(victim, target_is_directory=True)
    _, error = outcome(lambda: build(cache))
    assert tree(victim) == before, f"a build deleted files behind .trash (build: {error!r})"
    assert error is None or (isinstance(error, CacheDirError) and ".trash" in str(error))


def test_f07_clear_all_never_empties_a_trash_symlink_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``clear --all`` emptied what ``.trash`` pointed to."""
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    build(cache)
    before = make_victim(victim)
    (cache / ".trash").symlink_to(victim, target_is_directory=True)
    status, output = cli(capsys, "clear", "--all", "--yes", "--cache-dir", str(cache))
    assert tree(victim) == before, f"clear --all deleted files behind .trash: {status} {output}"


@pytest.mark.parametrize(
    "command",
    [["clear", "--all", "--yes"], ["prune", "--max-size", "0"]],
    ids=["clear-all", "prune"],
)
def test_f07_staging_symlink_target_is_never_cleared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """``.staging -> ~/victim``: clear and prune took its subdirectories for stale builds."""
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    build(cache)
    before = make_victim(victim)
    (cache / ".staging").symlink_to(victim, target_is_directory=True)
    status, output = cli(capsys, *command, "--cache-dir", str(cache))
    assert tree(victim) == before, (
        f"{command[0]} deleted files behind .staging ({status}): {output}"
    )


def test_f07_planted_staging_symlink_is_never_written_through(tmp_path: Path) -> None:
    """``.staging/<key> -> another user's dir``: the build wrote its shards there."""
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    victim.mkdir()
    key = cache_key("train", [0, 1, 2], TinyLoader()).digest
    (cache / ".staging").mkdir(parents=True)
    (cache / ".staging" / key).symlink_to(victim, target_is_directory=True)
    _, error = outcome(lambda: build(cache))
    assert tree(victim) == {}, f"the build wrote into the symlink's target (build: {error!r})"
    assert error is None or (isinstance(error, CacheDirError) and key in str(error))


# ---- finding 8: only directories shardcache made, only entries it made ---------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A user's home directory: a folder that looks like a cache, and a ``.trash``."""
    home = tmp_path / "home"
    (home / "upload-507f1f77bcf86cd799439011").mkdir(parents=True)
    (home / "upload-507f1f77bcf86cd799439011" / "photo.jpg").write_bytes(b"\xff\xd8 jpeg")
    (home / ".trash").mkdir()
    (home / ".trash" / "notes.txt").write_text("do not lose")
    (home / "thesis.tex").write_text("\\documentclass{article}")
    return home


@pytest.mark.parametrize(
    "command",
    [["clear", "--all", "--yes"], ["prune", "--max-size", "0"], ["verify", "--repair"]],
    ids=["clear-all", "prune", "verify-repair"],
)
def test_f08_removing_commands_refuse_an_untagged_directory(
    home: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """``--cache-dir ~``: a directory without CACHEDIR.TAG is refused with exit status 2."""
    before = tree(home)
    status, output = cli(capsys, *command, "--cache-dir", str(home))
    assert tree(home) == before, f"{' '.join(command)} --cache-dir ~ removed files: {output}"
    assert status == 2, f"expected a usage error (2) for an untagged directory: {output}"


def test_f08_first_build_tags_the_cache_directory(tmp_path: Path) -> None:
    """The Cache Directory Tagging standard: backup tools skip it, shardcache knows it."""
    cache = tmp_path / "cache"
    build(cache)
    tag = cache / "CACHEDIR.TAG"
    assert tag.is_file(), f"no CACHEDIR.TAG in {cache} after its first build: {sorted(tree(cache))}"
    assert tag.read_bytes().startswith(CACHEDIR_TAG_SIGNATURE)


def test_f08_clear_all_keeps_look_alike_directories_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a real cache directory, ``<x>-<24 hex>/`` without our manifest is not ours."""
    cache = tmp_path / "cache"
    build(cache)
    foreign = cache / "upload-507f1f77bcf86cd799439011"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"\xff\xd8 jpeg")
    status, output = cli(capsys, "clear", "--all", "--yes", "--cache-dir", str(cache))
    assert (foreign / "photo.jpg").exists(), (
        f"clear --all removed a directory it did not make ({status}): {output}"
    )


# ---- finding 9: empty and too-short names ---------------------------------------------------


@pytest.mark.parametrize("name", ["", "t"], ids=["empty", "one-letter"])
def test_f09_empty_or_too_short_name_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """``shardcache clear "$UNSET"`` removed the cache: a name must say which one."""
    cache = tmp_path / "cache"
    published = build(cache)
    status, output = cli(capsys, "clear", name, "--yes", "--cache-dir", str(cache))
    assert published.is_dir(), f"clear {name!r} removed {published.name}: {output}"
    assert status == 2, output
