"""Real filesystems for fault tests: a size-limited tmpfs, a read-only bind mount.

Mounting needs root: without it, or where the kernel refuses, the test is skipped (not
failed) with the reason. Every mount is undone when the context ends, lazily (``umount
-l``) when something still holds it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *arguments], capture_output=True, text=True, check=False)


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``) at ``path`` for the duration."""
    _need_root("mounting a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        _unmount(path)


def remount(path: Path, options: str) -> None:
    """Remount ``path`` with ``options`` (``ro``, ``size=64m``...), or skip the test."""
    remounted = _mount("-o", f"remount,{options}", str(path))
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount {path} with {options}: {remounted.stderr.strip()}")


@contextlib.contextmanager
def readonly_bind(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (a bind mount) for the duration."""
    _need_root("bind mounts")
    target.mkdir(parents=True, exist_ok=True)
    bound = _mount("--bind", str(source), str(target))
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        remount(target, "bind,ro")
        yield target
    finally:
        _unmount(target)
