"""Issue 11, "shared cache directories (several users)": findings 16 and 17.

Two real users (``useradd``) run shardcache in forked children that drop root with
``setgroups``/``setgid``/``setuid``; skipped when not root or without ``useradd``.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shardcache import CacheDirError
from shardcache.cli import main
from shardcache.store import ensure_cache
from support import trust
from support.trust import CountedLoader, GoodLoader, PoisonLoader, TinyLoader, outcome, run_as

pytestmark = pytest.mark.timeout(120)

TEAM_GROUP = "sctrust"
"""The team's group in the team-sharing tests."""


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: list[int]
    home: Path

    def run(self, call: Callable[[], Any]) -> dict[str, Any]:
        """``call()`` as this user (HOME set to a directory of theirs)."""

        def as_user() -> Any:
            os.environ["HOME"] = str(self.home)
            for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
                os.environ.pop(name, None)
            return call()

        return run_as(self.uid, self.gid, self.groups, as_user)


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


@pytest.fixture(scope="session")
def base() -> Iterator[Path]:
    """A directory every test user can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="sctrust-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def users(base: Path) -> Iterator[dict[str, User]]:
    """alice and bob: real users, each with their own group, both in `TEAM_GROUP`."""
    if os.geteuid() != 0:
        pytest.skip("creating users needs root")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("useradd/groupadd are not available")
    created_users: list[str] = []
    created_group = False
    try:
        try:
            grp.getgrnam(TEAM_GROUP)
        except KeyError:
            _run("groupadd", TEAM_GROUP)
            created_group = True
        found: dict[str, User] = {}
        for short in ("alice", "bob"):
            name = f"sctrust_{short}"
            try:
                pwd.getpwnam(name)
            except KeyError:
                _run("useradd", "-M", "-U", "-G", TEAM_GROUP, "-s", "/usr/sbin/nologin", name)
                created_users.append(name)
            record = pwd.getpwnam(name)
            home = base / f"home-{short}"
            home.mkdir(exist_ok=True)
            os.chown(home, record.pw_uid, record.pw_gid)
            groups = [record.pw_gid, grp.getgrnam(TEAM_GROUP).gr_gid]
            found[short] = User(name, record.pw_uid, record.pw_gid, groups, home)
        yield found
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot create test users: {error.stderr.strip()}")
    finally:
        for name in created_users:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        if created_group:
            subprocess.run(["groupdel", TEAM_GROUP], check=False, capture_output=True)


def sticky_shared_dir(base: Path, name: str) -> Path:
    """A /tmp-like directory (1777) that every user may create entries in."""
    path = base / name
    path.mkdir()
    path.chmod(0o1777)
    return path


def read_all(cache_dir: Path, items: list[int], loader: Any) -> list[list[float]]:
    dataset = ensure_cache(cache_dir, "train", items, loader)
    try:
        return [dataset[index][0].tolist() for index in range(len(dataset))]
    finally:
        dataset.close()


def names_user(result: dict[str, Any], user: User) -> bool:
    return user.name in result.get("message", "") or str(user.uid) in result.get("message", "")


# ---- finding 16: another user's cache is not trusted silently --------------------------------


def test_f16_cache_published_by_another_user_is_not_served_silently(
    base: Path, users: dict[str, User]
) -> None:
    """bob publishes zeros under the key alice will compute; alice must not train on them."""
    alice, bob = users["alice"], users["bob"]
    shared = sticky_shared_dir(base, "poison")
    planted = bob.run(lambda: read_all(shared, [0, 1], PoisonLoader()))
    assert planted["ok"], planted
    served = alice.run(lambda: read_all(shared, [0, 1], GoodLoader()))
    good = [[1.0] * 4] * 2
    refused = not served["ok"] and "CacheDirError" in served["mro"] and names_user(served, bob)
    assert (served["ok"] and served["value"] == good) or refused, (
        f"alice was served bob's cache without a word: {served}"
    )


def test_f16_world_writable_cache_directory_is_refused_with_the_remedy(tmp_path: Path) -> None:
    """0777 without the sticky bit: anyone may swap a cache. Say so, and how to fix it."""
    cache = tmp_path / "open"
    cache.mkdir()
    cache.chmod(0o777)
    _, error = outcome(lambda: read_all(cache, [0, 1], TinyLoader()))
    assert isinstance(error, CacheDirError), (
        f"a cache directory writable by every user was used silently: {error!r}"
    )
    assert "writable" in str(error), error


def share(base: Path, owner: User) -> tuple[Path, dict[str, Any]]:
    """A directory of ``owner``'s, made a team cache directory with ``shardcache share``."""
    team = base / f"team-{os.urandom(3).hex()}"
    team.mkdir()
    os.chown(team, owner.uid, owner.gid)
    status = owner.run(lambda: main(["share", "--group", TEAM_GROUP, "--cache-dir", str(team)]))
    return team, status


SHARED = {"ok": True, "value": 0}
"""What ``shardcache share`` run as the directory's owner returns."""


def _use_counted(cache_dir: Path, items: list[int]) -> dict[str, Any]:
    trust.DECODES[0] = 0
    dataset = ensure_cache(cache_dir, "train", items, CountedLoader())
    try:
        shards = [p for p in dataset.path.iterdir() if p.name.startswith("shard-")]
        return {
            "decodes": trust.DECODES[0],
            "ids": [int(dataset[i][0][0]) // 1000 for i in range(len(dataset))],
            "writable_files": [p.name for p in shards if p.stat().st_mode & 0o222],
        }
    finally:
        dataset.close()


def test_f16_team_directory_shares_caches_between_members(
    base: Path, users: dict[str, User]
) -> None:
    """bob builds, alice uses bob's cache as is; published files are read-only."""
    alice, bob = users["alice"], users["bob"]
    team_dir, shared = share(base, alice)
    assert shared == SHARED, f"`shardcache share --group {TEAM_GROUP} --cache-dir DIR`: {shared}"
    items = list(range(6))
    built = bob.run(lambda: _use_counted(team_dir, items))
    assert built["ok"], built
    assert built["value"]["decodes"] == 6, built
    used = alice.run(lambda: _use_counted(team_dir, items))
    assert used["ok"], f"alice cannot use bob's cache in the team directory: {used}"
    assert used["value"] == {"decodes": 0, "ids": items, "writable_files": []}, used


def test_f16_team_member_verifies_checksums_on_first_use(
    base: Path, users: dict[str, User]
) -> None:
    """A shard damaged in place (same size) is caught the first time another member uses it."""
    alice, bob = users["alice"], users["bob"]
    team_dir, shared = share(base, alice)
    assert shared == SHARED, f"`shardcache share --group {TEAM_GROUP} --cache-dir DIR`: {shared}"
    items = list(range(6))
    built = bob.run(lambda: _use_counted(team_dir, items))
    assert built["ok"], built
    shard = next(team_dir.rglob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last tensor byte: same size, same header
    mode = stat.S_IMODE(shard.stat().st_mode)
    shard.chmod(0o644)
    shard.write_bytes(bytes(data))
    shard.chmod(mode)
    used = alice.run(lambda: _use_counted(team_dir, items))
    assert not used["ok"], f"alice was served a damaged shard of bob's: {used}"
    assert "CorruptCacheError" in used["mro"], used
    assert shard.name in used["message"], used


# ---- finding 17: a bare PermissionError on another user's .locks ---------------------------


def test_f17_other_users_locks_directory_gives_a_named_error(
    base: Path, users: dict[str, User]
) -> None:
    """alice's ``.locks`` (0755 under umask 022) made bob's build fail with a bare error."""
    alice, bob = users["alice"], users["bob"]
    shared = sticky_shared_dir(base, "locks")
    first = alice.run(lambda: read_all(shared, [0, 1], TinyLoader()))
    assert first["ok"], first
    second = bob.run(lambda: read_all(shared, [5, 6], TinyLoader()))
    named = "CacheDirError" in second["mro"] and ".locks" in second.get("message", "")
    assert second["ok"] or named, f"bob's build failed without naming .locks and a fix: {second}"
