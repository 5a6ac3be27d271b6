"""Ready raw data loaders and split ("protocol") file readers for the common case.

A split item is a list ``[relative_path, label, ...]`` (mednet's convention) or a dict
with ``"path"`` and ``"label"`` keys.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import resize

from .core.errors import SplitError
from .core.types import DatabaseSplit, Sample

ImageMode = Literal["gray", "rgb", "unchanged"]
_RANGES = {torch.uint8: 255, torch.uint16: 65535}
"""The largest value of each integer dtype torchvision decodes images into."""
_READ_MODES = {
    "gray": ImageReadMode.GRAY,
    "rgb": ImageReadMode.RGB,
    "unchanged": ImageReadMode.UNCHANGED,
}


def _field(item: Any, key: str, position: int) -> Any:
    if isinstance(item, dict):
        return item[key]
    if isinstance(item, list | tuple):
        return item[position]
    if position == 0 and isinstance(item, str):
        return item
    raise TypeError(f"split item {item!r} has no {key!r} (expected [path, label] or a dict)")


class ImageFileLoader:
    """Decode PNG or JPEG files with ``torchvision.io`` into tensors.

    Args:
        root: directory the items' paths are relative to.
        mode: ``"gray"`` ([1, H, W]), ``"rgb"`` ([3, H, W]) or ``"unchanged"``.
        size: ``(height, width)`` to resize to (antialiased), or None to keep the size.
        dtype: ``torch.float32`` (or another float): values in [0, 1], the decoded integers
            divided by their range (255 for 8-bit, 65535 for 16-bit images; the disk tier
            stores such floats as the integers, exactly); ``torch.uint8`` or
            ``torch.uint16``: the decoded integers as they are (the image's bit depth).

    Metadata: ``{"name": <relative path>, "label": <int>}`` when items carry a label.
    """

    def __init__(
        self,
        root: str | PathLike[str],
        *,
        mode: ImageMode = "gray",
        size: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if mode not in _READ_MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(_READ_MODES)}")
        if not (dtype.is_floating_point or dtype in _RANGES):
            raise ValueError(f"dtype={dtype}: expected a floating dtype, torch.uint8 or uint16")
        self.root = Path(root)
        self.mode = mode
        self.size = None if size is None else [int(n) for n in size]
        self.dtype = dtype

    def sample(self, item: Any) -> Sample:
        """Read, decode, optionally resize, and scale one image."""
        name = str(_field(item, "path", 0))
        image = decode_image(read_file(str(self.root / name)), mode=_READ_MODES[self.mode])
        if self.size is not None:
            image = resize(image, self.size, antialias=True)
        metadata: dict[str, Any] = {"name": name}
        label = self._label_or_none(item)
        if label is not None:
            metadata["label"] = label
        return self._converted(image, name), metadata

    def _converted(self, image: torch.Tensor, name: str) -> torch.Tensor:
        """The decoded integers as ``dtype``: divided by their range for floats."""
        if self.dtype.is_floating_point:
            return image.to(self.dtype).div_(float(_RANGES[image.dtype]))
        if image.dtype != self.dtype:
            raise ValueError(
                f"{self.root / name} decodes to {image.dtype}, not dtype={self.dtype}: use "
                f"dtype={image.dtype} or a float dtype"
            )
        return image

    def _label_or_none(self, item: Any) -> int | None:
        try:
            return int(_field(item, "label", 1))
        except (IndexError, KeyError, TypeError):
            return None

    def label(self, item: Any) -> int:
        """The item's integer label (its second element, or its ``"label"`` key)."""
        return int(_field(item, "label", 1))


def _check_split(split: Any, source: Path) -> DatabaseSplit:
    if not isinstance(split, dict) or not all(
        isinstance(name, str) and isinstance(items, list) for name, items in split.items()
    ):
        raise SplitError(f"{source}: a split maps subset names to lists of items")
    return split


def read_json_split(path: str | PathLike[str]) -> DatabaseSplit:
    """Read a mednet-style JSON protocol: ``{"train": [["a.png", 0], ...], ...}``."""
    source = Path(path)
    try:
        split = json.loads(source.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SplitError(f"{source}: not valid JSON ({error})") from error
    return _check_split(split, source)


def _cell(text: str) -> int | str:
    """An integer cell as int (labels); anything else, ``"0001"`` included, as written."""
    stripped = text.strip()
    if stripped.lstrip("-").isdigit() and str(int(stripped)) == stripped:
        return int(stripped)
    return text


def read_csv_split(path: str | PathLike[str], *, subset_column: str = "split") -> DatabaseSplit:
    """Read a CSV protocol with a header row; ``subset_column`` names each row's subset.

    Each row becomes the item ``[other columns in order]``; cells written as plain integers
    become ints (so ``a.png,1`` gives ``["a.png", 1]``), every other cell stays a string.
    """
    source = Path(path)
    split: dict[str, list[Any]] = {}
    with source.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or subset_column not in reader.fieldnames:
            raise SplitError(f"{source}: the header has no {subset_column!r} column")
        columns = [name for name in reader.fieldnames if name != subset_column]
        for row in reader:
            line = reader.line_num  # counts physical lines, as an editor shows them
            if None in row or None in row.values():  # DictReader's fill for extra/missing cells
                cells = sum(value is not None for key, value in row.items() if key is not None)
                cells += len(row.get(None) or ())
                raise SplitError(
                    f"{source}:{line}: {cells} cells, but the header has "
                    f"{len(reader.fieldnames)} columns"
                )
            subset = row[subset_column]
            if not subset:
                raise SplitError(f"{source}:{line}: empty {subset_column!r} cell")
            split.setdefault(subset, []).append([_cell(row[name]) for name in columns])
    return split
