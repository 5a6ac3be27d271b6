"""Ready-made loaders on real PNG and JPEG files, and the JSON and CSV split readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png, write_file

from shardcache import CachingDataModule, SplitError
from shardcache.loaders import ImageFileLoader, read_csv_split, read_json_split

HEIGHT, WIDTH = 6, 9


def gradient(channels: int) -> torch.Tensor:
    """A smooth uint8 image (JPEG keeps it within a few levels), distinct per channel."""
    rows = torch.arange(HEIGHT).view(1, HEIGHT, 1) * 20
    columns = torch.arange(WIDTH).view(1, 1, WIDTH) * 10
    offsets = torch.arange(channels).view(channels, 1, 1) * 40
    return (rows + columns + offsets + 10).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Writes images under a root; maps each relative path to the pixels it holds."""
    root = tmp_path_factory.mktemp("images")
    originals = {
        "gray.png": gradient(1),
        "rgb.png": gradient(3),
        "sub/dir/gray.jpg": gradient(1),
        "sub/rgb.jpeg": gradient(3),
    }
    for name, pixels in originals.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = encode_png(pixels) if name.endswith(".png") else encode_jpeg(pixels, quality=95)
        write_file(str(path), data)
    return {"root": root, **originals}  # type: ignore[dict-item]


def root_of(images: dict[str, torch.Tensor]) -> Path:
    return images["root"]  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("name", "mode", "channels"),
    [
        ("gray.png", "gray", 1),
        ("gray.png", "rgb", 3),
        ("gray.png", "unchanged", 1),
        ("rgb.png", "rgb", 3),
        ("rgb.png", "unchanged", 3),
        ("rgb.png", "gray", 1),
    ],
)
def test_png_decodes_to_float_in_unit_range(
    images: dict[str, torch.Tensor], name: str, mode: str, channels: int
) -> None:
    loader = ImageFileLoader(root_of(images), mode=mode)  # type: ignore[arg-type]
    tensor, metadata = loader.sample([name, 1])
    assert tensor.shape == (channels, HEIGHT, WIDTH)
    assert tensor.dtype == torch.float32
    assert 0.0 <= float(tensor.min()) <= float(tensor.max()) <= 1.0
    assert metadata == {"name": name, "label": 1}
    original = images[name]
    if original.shape[0] == channels:  # PNG is lossless: exactly the pixels written, / 255
        assert torch.equal(tensor, original.to(torch.float32) / 255)
    elif channels == 3:  # gray to RGB repeats the one channel
        assert torch.equal(tensor, (original.to(torch.float32) / 255).expand(3, -1, -1))


@pytest.mark.parametrize(("name", "channels"), [("sub/dir/gray.jpg", 1), ("sub/rgb.jpeg", 3)])
def test_jpeg_decodes_close_to_the_original(
    images: dict[str, torch.Tensor], name: str, channels: int
) -> None:
    loader = ImageFileLoader(root_of(images), mode="unchanged")
    tensor, metadata = loader.sample({"path": name, "label": 0})
    assert tensor.shape == (channels, HEIGHT, WIDTH)
    assert tensor.dtype == torch.float32
    assert 0.0 <= float(tensor.min()) <= float(tensor.max()) <= 1.0
    error = (tensor - images[name].to(torch.float32) / 255).abs().mean()
    assert float(error) < 0.03
    assert metadata == {"name": name, "label": 0}


@pytest.mark.parametrize(("mode", "channels"), [("gray", 1), ("rgb", 3)])
def test_resize(images: dict[str, torch.Tensor], mode: str, channels: int) -> None:
    loader = ImageFileLoader(root_of(images), mode=mode, size=(3, 4))  # type: ignore[arg-type]
    assert loader.size == [3, 4]
    tensor, _ = loader.sample(["rgb.png", 0])
    assert tensor.shape == (channels, 3, 4)
    assert tensor.dtype == torch.float32
    assert 0.0 <= float(tensor.min()) <= float(tensor.max()) <= 1.0
    # Downsizing a gradient keeps it a gradient: top left darkest, bottom right brightest.
    assert float(tensor[0, 0, 0]) < float(tensor[0, -1, -1])


def test_items_and_labels(images: dict[str, torch.Tensor]) -> None:
    loader = ImageFileLoader(root_of(images))
    assert loader.label(["gray.png", 3]) == 3
    assert loader.label(("gray.png", "2", "extra")) == 2
    assert loader.label({"path": "gray.png", "label": 1}) == 1
    _, metadata = loader.sample("gray.png")  # a bare path: no label in the metadata
    assert metadata == {"name": "gray.png"}
    with pytest.raises(TypeError, match=r"split item 'gray.png' has no 'label'"):
        loader.label("gray.png")


def test_unknown_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mode='cmyk': expected one of gray, rgb, unchanged"):
        ImageFileLoader(tmp_path, mode="cmyk")  # type: ignore[arg-type]


def test_split_file_and_image_loader_feed_the_datamodule(
    images: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    protocol = tmp_path / "protocol.json"
    protocol.write_text(json.dumps({"train": [["gray.png", 0], ["rgb.png", 1]]}))
    loader = ImageFileLoader(root_of(images), mode="rgb", size=(4, 4))
    dm = CachingDataModule(
        read_json_split(protocol), loader, batch_size=2, cache="disk", cache_dir=tmp_path
    )
    dm.prepare_data()
    dm.setup("fit")
    tensor, metadata = next(iter(dm.unshuffled_train_dataloader()))
    assert tensor.shape == (2, 3, 4, 4)
    assert metadata["name"] == ["gray.png", "rgb.png"]
    assert metadata["label"].tolist() == [0, 1]


# ---- split files ---------------------------------------------------------------------------


def test_read_json_split(tmp_path: Path) -> None:
    split = {
        "train": [["a.png", 0], ["b.png", 1]],
        "validation": [{"path": "c.png", "label": 1}],
        "monitor-train": [],
    }
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(split))
    assert read_json_split(path) == split
    assert list(read_json_split(str(path))) == ["train", "validation", "monitor-train"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"train": [["a.png", 0]', "not valid JSON"),
        ('[["a.png", 0]]', "a split maps subset names to lists of items"),
        ('{"train": {"a.png": 0}}', "a split maps subset names to lists of items"),
        ('{"train": "a.png"}', "a split maps subset names to lists of items"),
    ],
    ids=["truncated", "list", "dict-subset", "string-subset"],
)
def test_read_json_split_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "protocol.json"
    path.write_text(text)
    with pytest.raises(SplitError) as caught:
        read_json_split(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_read_csv_split(tmp_path: Path) -> None:
    path = tmp_path / "protocol.csv"
    path.write_text(
        "split,path,label,weight\ntrain,a.png,0,0.5\nvalidation,c.png,1,1\ntrain,b.png,1,\n"
        "train,0001,-2,nan\n"
    )
    # Plain integers become ints (labels); everything else stays as written, so an id
    # like "0001" keeps its zeros and "nan" never reaches the key as a float.
    assert read_csv_split(path) == {
        "train": [["a.png", 0, "0.5"], ["b.png", 1, ""], ["0001", -2, "nan"]],
        "validation": [["c.png", 1, 1]],
    }


def test_read_csv_split_with_another_subset_column(tmp_path: Path) -> None:
    path = tmp_path / "protocol.csv"
    path.write_text("path,subset,label\na.png,test,1\nb.png,test,0\n")
    assert read_csv_split(path, subset_column="subset") == {"test": [["a.png", 1], ["b.png", 0]]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the header has no 'split' column"),
        ("path,label\na.png,0\n", "the header has no 'split' column"),
        ("split,path,label\ntrain,a.png,0\n,b.png,1\n", "3: empty 'split' cell"),
        (
            "split,path,label\ntrain,a.png,0\ntrain,b.png\n",
            "3: 2 cells, but the header has 3 columns",
        ),
        ("split,path,label\ntrain,a.png,0,9\n", "2: 4 cells, but the header has 3 columns"),
    ],
    ids=["empty-file", "no-split-column", "empty-cell", "short-row", "long-row"],
)
def test_read_csv_split_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "protocol.csv"
    path.write_text(text)
    with pytest.raises(SplitError) as caught:
        read_csv_split(path)
    separator = "" if message[0].isdigit() else " "  # a line number follows the path directly
    assert str(caught.value) == f"{path}:{separator}{message}"
