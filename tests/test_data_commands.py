"""``lightning-transfer data prepare|download|summary`` on generated tiny JPEGs and a local HTTP server."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from lightning_transfer import ImageFolderDataModule, UserError
from lightning_transfer.commands.cli import main

# Numeric order differs from text order (10 < 2 as text), so the split must sort by id.
IDS = [0, 1, 2, 3, 10, 11, 100]


def jpeg_bytes(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def cli(*args: str) -> None:
    """The real entry point, in process (fast); a UserError surfaces as SystemExit whose code is the
    one line the command printed last on stderr ('error: ...')."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            main(["data", *args])
    except SystemExit as exit:
        lines = stderr.getvalue().strip().splitlines()
        raise SystemExit(lines[-1] if exit.code == 1 and lines else exit.code) from None


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture()
def kaggle_folder(tmp_path: Path) -> Path:
    """Kaggle-style train/ folder: cat.N.jpg, dog.N.jpg for IDS, plus files the split must ignore."""
    folder = tmp_path / "kaggle" / "train"
    folder.mkdir(parents=True)
    for label, color in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        for image_id in IDS:
            (folder / f"{label}.{image_id}.jpg").write_bytes(jpeg_bytes(color=color))
    (folder / "notes.txt").write_text("not an image")
    (folder / "1.jpg").write_bytes(jpeg_bytes())  # test1-style name without a label
    return folder


# ---------------------------------------------------------------- prepare


def test_prepare_splits_by_numeric_id(kaggle_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "small"
    cli("prepare", "--source", str(kaggle_folder), "--out", str(out), "--train", "3", "--val", "2", "--test", "1")
    expected = []
    for split, ids in (("train", [0, 1, 2]), ("val", [3, 10]), ("test", [11])):
        expected += [f"{split}/{label}/{label}.{i}.jpg" for label in ("cat", "dog") for i in ids]
    assert listing(out) == sorted(expected)
    assert (out / "train" / "cat" / "cat.0.jpg").read_bytes() == (kaggle_folder / "cat.0.jpg").read_bytes()
    printed = capsys.readouterr().out
    assert "train: cat 3, dog 3" in printed and "val: cat 2, dog 2" in printed and "test: cat 1, dog 1" in printed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_prepare_from_zip_gives_the_same_split(kaggle_folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(kaggle_folder.iterdir(), reverse=True):  # archive order must not matter
            zipped.write(path, f"train/{path.name}")
    args = ["--train", "3", "--val", "2", "--test", "0"]
    cli("prepare", "--source", str(archive), "--out", str(tmp_path / "from_zip"), *args)
    cli("prepare", "--source", str(kaggle_folder), "--out", str(tmp_path / "from_folder"), *args)
    assert listing(tmp_path / "from_zip") == listing(tmp_path / "from_folder")
    assert not (tmp_path / "from_zip" / "test").exists()
    for name in listing(tmp_path / "from_zip"):
        assert (tmp_path / "from_zip" / name).read_bytes() == (tmp_path / "from_folder" / name).read_bytes()


def test_prepare_refuses_a_non_empty_out_unless_overwrite(kaggle_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    (out / "train" / "cat").mkdir(parents=True)
    (out / "train" / "cat" / "stale.jpg").write_bytes(b"old")
    (out / "README.txt").write_text("mine")
    args = ["prepare", "--source", str(kaggle_folder), "--out", str(out), "--train", "2", "--val", "1", "--test", "1"]
    with pytest.raises(SystemExit) as refused:
        cli(*args)
    assert "is not empty; pass --overwrite" in str(refused.value.code)
    assert (out / "train" / "cat" / "stale.jpg").read_bytes() == b"old"

    cli(*args, "--overwrite")
    assert not (out / "train" / "cat" / "stale.jpg").exists()  # the old split is replaced, not mixed in
    assert (out / "README.txt").read_text() == "mine"  # files outside train/ val/ test/ are kept
    assert len(list((out / "train" / "cat").iterdir())) == 2


def test_prepare_needs_enough_images(kaggle_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    with pytest.raises(SystemExit) as failed:
        cli("prepare", "--source", str(kaggle_folder), "--out", str(out))  # the book's 2000 per class
    assert "has 7 cat images but the split needs 2000 per class" in str(failed.value.code)
    assert not out.exists()


# ---------------------------------------------------------------- download


def filtered_zip() -> bytes:
    """A miniature cats_and_dogs_filtered.zip: top folder, train/ and validation/, a stray script."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for split, count in (("train", 3), ("validation", 2)):
            for label in ("cats", "dogs"):
                for index in range(count):
                    zipped.writestr(f"cats_and_dogs_filtered/{split}/{label}/{label[:-1]}.{index}.jpg", jpeg_bytes())
        zipped.writestr("cats_and_dogs_filtered/vectorize.py", "print('hi')\n")
    return buffer.getvalue()


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves one payload; can honour Range requests and can hang up after ``cut`` bytes."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(("127.0.0.1", 0), ArchiveHandler)
        self.payload = payload
        self.supports_range = True
        self.cut: int | None = None
        self.range_headers: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/cats_and_dogs_filtered.zip"


class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer

    def do_GET(self) -> None:
        payload, requested = self.server.payload, self.headers.get("Range")
        self.server.range_headers.append(requested)
        start = 0
        if requested and self.server.supports_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if self.server.cut is None else body[: self.server.cut])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[ArchiveServer]:
    archive_server = ArchiveServer(filtered_zip())
    thread = threading.Thread(target=archive_server.serve_forever, daemon=True)
    thread.start()
    yield archive_server
    archive_server.shutdown()
    archive_server.server_close()


def assert_filtered_layout(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]  # validation/ mapped to val/
    assert len(list((out / "train" / "dogs").iterdir())) == 3
    assert len(list((out / "val" / "cats").iterdir())) == 2


def test_download_extracts_and_maps_validation_to_val(
    server: ArchiveServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "data" / "filtered"
    cli("download", "--url", server.url, "--out", str(out))
    assert_filtered_layout(out)
    assert "train 6 images, val 4 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["filtered"]  # no archive, .part or staging left


def test_interrupted_download_leaves_no_output_and_resumes(server: ArchiveServer, tmp_path: Path) -> None:
    out = tmp_path / "filtered"
    server.cut = 1000
    with pytest.raises(SystemExit) as failed:
        cli("download", "--url", server.url, "--out", str(out))
    assert "run again to resume" in str(failed.value.code)
    assert not out.exists() and not (tmp_path / "cats_and_dogs_filtered.zip").exists()
    assert (tmp_path / "cats_and_dogs_filtered.zip.part").stat().st_size == 1000

    server.cut = None
    cli("download", "--url", server.url, "--out", str(out), "--keep-archive")
    assert server.range_headers == [None, "bytes=1000-"]
    assert (tmp_path / "cats_and_dogs_filtered.zip").read_bytes() == server.payload
    assert_filtered_layout(out)


def test_download_starts_over_when_the_server_ignores_range(server: ArchiveServer, tmp_path: Path) -> None:
    server.supports_range = False
    (tmp_path / "cats_and_dogs_filtered.zip.part").write_bytes(b"garbage from an older download")
    cli("download", "--url", server.url, "--out", str(tmp_path / "filtered"))
    assert_filtered_layout(tmp_path / "filtered")


def test_download_reuses_and_keeps_an_archive_already_there(server: ArchiveServer, tmp_path: Path) -> None:
    (tmp_path / "cats_and_dogs_filtered.zip").write_bytes(server.payload)  # e.g. fetched by a browser
    cli("download", "--url", server.url, "--out", str(tmp_path / "filtered"))
    assert server.range_headers == []  # nothing requested
    assert (tmp_path / "cats_and_dogs_filtered.zip").read_bytes() == server.payload
    assert_filtered_layout(tmp_path / "filtered")


def test_download_checks_the_md5_when_given(server: ArchiveServer, tmp_path: Path) -> None:
    good = hashlib.md5(server.payload).hexdigest()
    bad = "0" * 32
    with pytest.raises(SystemExit) as failed:
        cli("download", "--url", server.url, "--out", str(tmp_path / "filtered"), "--md5", bad)
    assert f"does not have the MD5 {bad}; it was deleted" in str(failed.value.code)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the archive nor out
    cli("download", "--url", server.url, "--out", str(tmp_path / "filtered"), "--md5", good)
    assert_filtered_layout(tmp_path / "filtered")


def test_download_checks_the_layout_before_writing_out(server: ArchiveServer, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("photos/train/cats/cat.0.jpg", jpeg_bytes())  # no val/ or validation/
    server.payload = buffer.getvalue()
    with pytest.raises(SystemExit) as failed:
        cli("download", "--url", server.url, "--out", str(tmp_path / "filtered"))
    assert "is not an image-folder dataset: it has train/ but no val/" in str(failed.value.code)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no out, no staging folder, no archive


@pytest.mark.slow
def test_download_offline_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("data", "download", "--url", f"http://127.0.0.1:{port}/x.zip", "--out", "data/x", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: cannot download") and "refused" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_datamodule_downloads_a_missing_root(server: ArchiveServer, tmp_path: Path) -> None:
    data = ImageFolderDataModule(root=str(tmp_path / "cats_and_dogs_filtered"), url=server.url, image_size=32,
                                 num_workers=0)
    data.prepare_data()
    data.setup("fit")
    assert data.class_names == ["cats", "dogs"]
    assert len(data.datasets["train"]) == 6 and len(data.datasets["val"]) == 4
    data.prepare_data()  # already there: nothing is fetched again
    assert len(server.range_headers) == 1


def test_a_mistyped_root_is_not_filled_with_the_download(server: ArchiveServer, tmp_path: Path) -> None:
    data = ImageFolderDataModule(root=str(tmp_path / "cats_and_dogs_filterd"), url=server.url, num_workers=0)
    with pytest.raises(UserError) as refused:
        data.prepare_data()
    assert str(refused.value) == (
        f"data root '{tmp_path / 'cats_and_dogs_filterd'}' has no train/ folder; pass --data.root DIR, a folder "
        "with train/ and val/ (data.url is downloaded only into a folder named cats_and_dogs_filtered)"
    )
    assert list(tmp_path.iterdir()) == [] and server.range_headers == []


@pytest.mark.slow
def test_fit_downloads_a_missing_root_from_data_url(server: ArchiveServer, tmp_path: Path) -> None:
    """The CLI needs the class names before training starts, so it fetches ``--data.url`` first."""
    result = run_cli(
        "fit", "--data.root", "cats_and_dogs_filtered", "--data.url", server.url, "--model.weights", "none",
        "--data.image_size", "32", "--data.num_workers", "0", "--trainer.fast_dev_run", "1", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"downloaded {server.url} into cats_and_dogs_filtered: train 6 images, val 4 images" in result.stdout
    assert sorted(p.name for p in (tmp_path / "cats_and_dogs_filtered").iterdir()) == ["train", "val"]


# ---------------------------------------------------------------- summary


def test_summary_counts_sizes_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    for split, count in (("train", 3), ("val", 1)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                size = (20, 10) if label == "dog" else (8, 6)
                (root / split / label / f"{index}.jpg").write_bytes(jpeg_bytes(size))
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "val" / "cat" / "labels.txt").write_text("x")
    (root / "train" / "cat" / ".thumbnails").mkdir()  # hidden: training ignores it, so the summary does too
    (root / "train" / "cat" / ".thumbnails" / "0.jpg").write_bytes(jpeg_bytes((8, 6)))
    cli("summary", str(root))
    printed = capsys.readouterr().out
    assert printed.splitlines()[:3] == ["split  cat  dog  total", "train  3    3    6", "val    1    1    2"]
    assert "image size (width x height): min 8x6, median 14x8, max 20x10" in printed
    assert "other files (not images, ignored): 1" in printed
    assert "bad files (cannot be read as images): 1" in printed and "broken.jpg" in printed
