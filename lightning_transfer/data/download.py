"""Download and extract an image-folder dataset archive (default: cats_and_dogs_filtered).

The archive is written to ``<name>.part`` and renamed only when complete, so a file under its
final name is always whole; a partial file is resumed with an HTTP Range request when the server
supports it (else downloaded again). Not torchvision's ``download_url``: it writes straight to the
final name and cannot resume. With an MD5 given, the archive is checked with torchvision's
``check_integrity`` before it is used. Extraction goes through a staging folder and the layout is
checked before anything appears in the destination.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from torchvision.datasets.utils import check_integrity
from tqdm import tqdm

from lightning_transfer.data.folders import SPLITS, class_names_of, list_images
from lightning_transfer.data.staging import check_output_dir, staged_output
from lightning_transfer.utils.errors import UserError

# The archive Lightning's transfer-learning example uses: 1000/500 cats and dogs (train/validation).
CATS_AND_DOGS_FILTERED_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
# Split folder names used by archives -> ours.
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
CHUNK = 1 << 16
OFFLINE_ADVICE = "offline? pass --url to a reachable copy, e.g. file:///path/to/archive.zip"


def fetch(url: str, dest: Path, timeout: float = 30.0, offline_advice: str = OFFLINE_ADVICE) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial download if any."""
    if dest.is_file():  # only ever renamed into place when complete
        print(f"using the already downloaded {dest}")
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            if response.status != 206:  # no resume offered: start over
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            part.parent.mkdir(parents=True, exist_ok=True)
            with part.open("ab" if offset else "wb") as handle, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=f"downloading {dest.name}"
            ) as progress:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    progress.update(len(chunk))
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file is not a prefix we can extend: start over
            part.unlink()
            return fetch(url, dest, timeout, offline_advice)
        raise UserError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        if part.is_file():
            advice = f"{part.stat().st_size} bytes are kept in {part}; run again to resume"
        else:
            advice = offline_advice
        raise UserError(f"cannot download {url}: {reason} ({advice})") from None
    if total is not None and part.stat().st_size != total:
        raise UserError(f"download of {url} stopped at {part.stat().st_size} of {total} bytes; run again to resume")
    os.replace(part, dest)
    return dest


def find_dataset_root(folder: Path) -> Path | None:
    """The extracted folder holding ``train/``: the top level or one folder down."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir():
            return candidate
    return None


def check_layout(root: Path) -> dict[str, int]:
    """Check ``root/{train,val[,test]}/<class>/`` holds images with the same classes; count them."""
    if not (root / "val").is_dir():
        raise UserError("it has train/ but no val/ (or validation/) folder")
    class_names = class_names_of(root / "train")
    return {split: len(list_images(root / split, class_names)) for split in SPLITS if (root / split).is_dir()}


def extract_dataset(archive: Path, out: Path, overwrite: bool = False) -> dict[str, int]:
    """Unzip ``archive`` and move its train/val(idation)/test folders into ``out``; image counts.

    ``zipfile``, not torchvision's ``extract_archive``: that one also opens tar files, without
    tarfile's ``data`` filter, so a crafted archive could write outside the folder.
    """
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.extract-") as extracted:
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(extracted)
        except zipfile.BadZipFile as err:
            raise UserError(f"{str(archive)!r} is not a zip archive ({err}); delete it and download again") from None
        root = find_dataset_root(Path(extracted))
        if root is None:
            raise UserError(f"{str(archive)!r} has no train/ folder (at the top or one folder down)")
        with staged_output(out, overwrite) as stage:
            for entry in root.iterdir():
                if entry.is_dir() and entry.name in SPLIT_ALIASES:
                    entry.rename(stage / SPLIT_ALIASES[entry.name])
            try:
                return check_layout(stage)
            except UserError as err:
                raise UserError(f"{str(archive)!r} is not an image-folder dataset: {err}") from None


def download_dataset(
    url: str,
    out: Path,
    overwrite: bool = False,
    keep_archive: bool = False,
    md5: str | None = None,
    offline_advice: str = OFFLINE_ADVICE,
) -> dict[str, int]:
    """Download the zip at ``url`` next to ``out``, extract it into ``out``; image counts per split."""
    out = out.expanduser()
    check_output_dir(out, overwrite)  # before spending time on the download
    archive = out.parent / (Path(urlparse(url).path).name or "dataset.zip")
    downloaded_now = not archive.is_file()  # an archive that was already there is never deleted
    fetch(url, archive, offline_advice=offline_advice)
    if md5 is not None and not check_integrity(archive, md5):
        if downloaded_now:
            archive.unlink()
        raise UserError(
            f"{str(archive)!r} from {url} does not have the MD5 {md5}; "
            + ("it was deleted, run again to download it anew" if downloaded_now else "delete it and run again")
        )
    try:
        return extract_dataset(archive, out, overwrite)
    finally:
        if downloaded_now and not keep_archive:
            archive.unlink()


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{split} {n} images" for split, n in counts.items())


def ensure_dataset(root: Path, url: str | None, md5: str | None = None) -> None:
    """Download ``url`` into ``root`` when ``root`` has no ``train/`` yet (and a URL is given).

    Only into a folder named after the archive (``.../cats_and_dogs_filtered`` for
    ``cats_and_dogs_filtered.zip``): a mistyped ``--data.root`` is an error, not a new folder
    filled with a dataset the user did not mean.
    """
    if url is None or (root / "train").is_dir():
        return
    name = Path(urlparse(url).path).stem
    if root.name != name:
        raise UserError(
            f"data root {str(root)!r} has no train/ folder; pass --data.root DIR, a folder with train/ and val/ "
            f"(data.url is downloaded only into a folder named {name})"
        )
    advice = f"offline? pass --data.root DIR, a folder with train/ and val/, instead of {str(root)!r}"
    counts = download_dataset(url, root, md5=md5, offline_advice=advice)
    print(f"downloaded {url} into {root}: {describe_counts(counts)}")
