"""Messy image folders: unusual images decode to the right RGB, broken ones are found before training.

The zoo of files is generated here (no binaries in the repo).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_dataset, run_cli, synthetic_photo
from lightning_transfer.data import ImageFolderDataModule, image_check, is_image_file, load_rgb
from lightning_transfer.data.image_check import find_bad_images, problem_with
from lightning_transfer.utils.errors import UserError

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own ``$XDG_CACHE_HOME`` (also inherited by CLI subprocesses)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    return tmp_path / "xdg_cache" / "lightning-transfer" / "image-check"


def write_png16_rgb(path: Path, rgb: np.ndarray) -> None:
    """16-bit-per-channel RGB PNG written by hand (PIL cannot save one)."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def make_unusual(folder: Path) -> dict[str, tuple[tuple[int, int], tuple[int, int, int], int]]:
    """Good-but-unusual images; returns name -> (pixel to probe, expected RGB there, tolerance)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (32, 32), 100).save(folder / "gray.jpg", quality=95)
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(folder / "palette.png")
    palette.save(folder / "palette_transparent.png", transparency=1)
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red: shows as white
    rgba.paste((0, 0, 255, 255), (0, 0, 16, 32))
    rgba.save(folder / "rgba.png")
    Image.new("LA", (32, 32), (50, 255)).save(folder / "la.png")
    Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(folder / "cmyk_cyan.jpg", quality=95)
    Image.new("CMYK", (32, 32), (0, 0, 0, 128)).save(folder / "cmyk_gray.jpg", quality=95)
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(folder / "gray16.png")
    write_png16_rgb(folder / "rgb16.png", np.full((32, 32, 3), [65535, 32768, 0], dtype=np.uint16))
    rotated = Image.new("RGB", (40, 20), RED)  # stored landscape, left red / right blue ...
    rotated.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # ... shown rotated 90 degrees clockwise: portrait, red on top
    rotated.save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    return {
        "gray.jpg": ((5, 5), (100, 100, 100), 2),
        "palette.png": ((5, 5), (10, 200, 30), 0),
        "palette_transparent.png": ((5, 5), WHITE, 0),
        "rgba.png": ((5, 5), BLUE, 0),
        "la.png": ((5, 5), (50, 50, 50), 0),
        "cmyk_cyan.jpg": ((5, 5), (0, 255, 255), 3),
        "cmyk_gray.jpg": ((5, 5), (127, 127, 127), 3),
        "gray16.png": ((5, 5), (128, 128, 128), 0),
        "rgb16.png": ((5, 5), (255, 128, 0), 0),
        "exif_rotated.jpg": ((10, 5), RED, 6),
    }


def make_broken(folder: Path, photo: Path) -> dict[str, str]:
    """Unreadable files; returns name -> a fragment of the reason the check must give."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    data = photo.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not a picture\n")
    return {"empty.jpg": "empty file", "truncated.jpg": "truncated", "text.jpg": "not an image format"}


def make_ignored(folder: Path) -> None:
    """A non-image file (reported) and hidden files and folders (silently ignored, even broken .jpgs)."""
    (folder / "notes.txt").write_text("labelling notes\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    (folder / ".hidden.jpg").write_text("not a picture either")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "copy.jpg").write_text("nor this")
    (folder / ".ipynb_checkpoints" / "notes-checkpoint.txt").write_text("labelling notes\n")


@pytest.fixture()
def messy_data(tmp_path: Path) -> dict:
    """Tiny real dataset whose train/cat folder also holds the whole zoo."""
    root = make_tiny_dataset(tmp_path / "messy", {"train": 4, "val": 2})
    cat = root / "train" / "cat"
    unusual = make_unusual(cat)
    broken = make_broken(cat, next(cat.glob("cat.*.jpg")))
    make_ignored(cat)
    return {"root": root, "unusual": unusual, "broken": broken}


def test_unusual_images_decode_to_the_rgb_a_viewer_shows(tmp_path: Path) -> None:
    for name, (xy, expected, tolerance) in make_unusual(tmp_path).items():
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB", name
        assert np.abs(np.subtract(image.getpixel(xy), expected)).max() <= tolerance, (name, image.getpixel(xy))
        assert problem_with(tmp_path / name) is None, name


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    make_unusual(tmp_path)
    image = load_rgb(tmp_path / "exif_rotated.jpg")
    assert image.size == (20, 40)  # portrait, as a viewer shows it
    assert np.abs(np.subtract(image.getpixel((10, 35)), BLUE)).max() <= 6  # blue at the bottom


def test_broken_files_are_found_with_a_reason_and_refused_by_load_rgb(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    synthetic_photo(0, 0, size=256).save(photo)
    broken = make_broken(tmp_path, photo)
    for name, reason in broken.items():
        assert reason in problem_with(tmp_path / name), name
        with pytest.raises(UserError, match="cannot read image") as caught:
            load_rgb(tmp_path / name)
        assert name in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, before the refusal
def test_images_above_the_decompression_bomb_limit_are_refused(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    Image.new("RGB", (60, 60)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 100x100 is above it, 60x60 is not
    assert "decompression-bomb limit of 5000" in problem_with(tmp_path / "big.png")
    assert problem_with(tmp_path / "small.png") is None
    with pytest.raises(UserError, match="big.png"):
        load_rgb(tmp_path / "big.png")


def test_skip_mode_leaves_broken_images_out_reports_them_and_every_item_loads(messy_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no trainer: the report goes to the working directory
    data = ImageFolderDataModule(str(messy_data["root"]), image_size=32, num_workers=0, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"3 unreadable images .* left out, 1 non-image file ignored") as caught:
        data.setup("fit")
    report = tmp_path / "bad_images_train.txt"
    assert str(report) in str(caught[0].message)
    names = {Path(path).name for path in data.datasets["train"].paths}
    assert set(messy_data["unusual"]) <= names
    assert not names & set(messy_data["broken"]) and not names & {".hidden.jpg", "copy.jpg"}
    text = report.read_text()
    assert "3 unreadable images, left out:" in text and "1 non-image file in the class folders, ignored:" in text
    for name, reason in messy_data["broken"].items():
        assert any(name in line and reason in line for line in text.splitlines()), name
    assert "notes.txt" in text and not any(hidden in text for hidden in (".DS_Store", ".hidden.jpg", ".ipynb"))
    for index in range(len(data.datasets["train"])):  # what a DataLoader worker will do: nothing raises
        assert data.datasets["train"][index]["image"].shape == (3, 32, 32)


def test_error_mode_stops_with_the_list(messy_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ImageFolderDataModule(str(messy_data["root"]), image_size=32, num_workers=0, on_bad_image="error")
    with pytest.raises(UserError, match=r"3 unreadable images \(.*empty.jpg: empty file") as caught:
        data.setup("fit")
    assert "--data.on_bad_image skip" in str(caught.value) and "\n" not in str(caught.value)
    assert "3 unreadable images, stopping the run:" in (tmp_path / "bad_images_train.txt").read_text()


def test_clean_folders_give_no_warning_and_no_report(tiny_data, tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)
    ImageFolderDataModule(str(tiny_data), image_size=32, num_workers=0).setup("fit")
    assert not [w for w in recwarn if "unreadable" in str(w.message) or "non-image" in str(w.message)]
    assert not list(tmp_path.glob("bad_images_*.txt"))


def test_check_runs_once_per_file_list_and_again_when_a_file_changes(messy_data, private_cache, tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    checked: list[Path] = []
    real_problem_with = image_check.problem_with
    monkeypatch.setattr(image_check, "problem_with", lambda path: checked.append(path) or real_problem_with(path))
    data = ImageFolderDataModule(str(messy_data["root"]), image_size=32, num_workers=0)
    data.prepare_data()  # what Lightning runs once per machine before setup on every process
    listed = len(data._listed_samples("train")) + len(data._listed_samples("val"))
    assert len(checked) == listed
    with pytest.warns(UserWarning):
        data.setup("fit")  # every process's setup reads the cached verdict
    assert len(checked) == listed
    assert not list(private_cache.glob("*.tmp")) and len(list(private_cache.glob("*.json"))) == 2

    truncated = messy_data["root"] / "train" / "cat" / "truncated.jpg"
    os.utime(truncated, ns=(truncated.stat().st_atime_ns, truncated.stat().st_mtime_ns + 10**9))
    find_bad_images([path for path, _ in data._listed_samples("train")])
    assert len(checked) == listed + len(data._listed_samples("train"))


def test_a_damaged_cache_entry_is_not_trusted(messy_data, private_cache):
    paths = sorted(path for path in (messy_data["root"] / "train" / "cat").iterdir() if is_image_file(path))
    expected = find_bad_images(paths)
    (entry,) = private_cache.glob("*.json")
    entry.write_text(entry.read_text()[:20])  # half-written
    assert find_bad_images(paths) == expected and len(expected) == 3
    assert entry.read_text().startswith('{"version"')  # rewritten whole


def test_clear_one_line_errors_for_broken_layouts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # where a report goes without a trainer
    def error_of(root: Path, stage: str = "fit") -> str:
        with pytest.raises(UserError) as caught:
            ImageFolderDataModule(str(root), image_size=32, num_workers=0).setup(stage)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    no_train = make_tiny_dataset(tmp_path / "no_train", {"val": 1})
    assert f"{no_train / 'train'}' is not a folder" in error_of(no_train)

    empty_class = make_tiny_dataset(tmp_path / "empty_class", {"train": 1, "val": 1})
    for path in (empty_class / "train" / "dog").iterdir():
        path.unlink()
    (empty_class / "train" / "dog" / ".DS_Store").write_bytes(b"junk")
    assert f"{empty_class / 'train' / 'dog'}' holds no images" in error_of(empty_class)

    extra_class = make_tiny_dataset(tmp_path / "extra_class", {"train": 1, "val": 1})
    (extra_class / "val" / "bird").mkdir()
    assert f"{extra_class / 'val'}' has classes ['bird', 'cat', 'dog'] but train/ has ['cat', 'dog']" in error_of(
        extra_class
    )

    only_broken = make_tiny_dataset(tmp_path / "only_broken", {"train": 1, "val": 1})
    for path in (only_broken / "train" / "dog").iterdir():
        path.write_bytes(b"")
    with pytest.warns(UserWarning, match="1 unreadable image"):
        assert f"{only_broken / 'train' / 'dog'}' holds no readable images" in error_of(only_broken)


@pytest.mark.slow
def test_fit_skips_or_stops_on_the_zoo_from_the_command_line(messy_data, tmp_path):
    args = (
        "fit", "--data.root", str(messy_data["root"]), "--data.image_size", "32", "--data.num_workers", "0",
        "--model.weights", "none", "--model.backbone", "vgg16", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    )
    (tmp_path / "strict_run").mkdir()
    strict = run_cli(*args, "--data.on_bad_image", "error", cwd=tmp_path / "strict_run")
    assert strict.returncode != 0
    assert strict.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in strict.stderr
    assert "3 unreadable images" in strict.stderr
    assert not list((tmp_path / "strict_run").rglob("*.ckpt"))  # stopped before training

    (tmp_path / "skip_run").mkdir()
    skip = run_cli(*args, cwd=tmp_path / "skip_run")
    assert skip.returncode == 0, skip.stderr[-3000:]
    run_dir = tmp_path / "skip_run" / "lightning_logs" / "version_0"
    assert "truncated.jpg" in (run_dir / "bad_images_train.txt").read_text()
    assert str(run_dir / "bad_images_train.txt") in skip.stderr
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
