"""The book's small split of Kaggle's dogs-vs-cats ``train`` images (``cat.N.jpg``, ``dog.N.jpg``).

Per class, images are ordered by their numeric id N; the first ``train`` go to ``train/``, the next
``val`` to ``val/``, the next ``test`` to ``test/`` (the book: ids 0-999, 1000-1499, 1500-1999).
The result only depends on the file names, so every run on the same source gives the same split.
The source is a folder (searched recursively) or a zip archive, read without extracting it whole.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from lightning_transfer.data.folders import IMAGE_EXTENSIONS
from lightning_transfer.data.staging import staged_output
from lightning_transfer.utils.errors import UserError

# Kaggle's naming: <class>.<id>.<ext>, e.g. cat.1234.jpg
KAGGLE_NAME = re.compile(r"^(?P<label>[A-Za-z]+)\.(?P<id>\d+)\.(?P<ext>\w+)$")


class ImageSource:
    """Image files of a folder or zip, by name; ``copy`` writes one of them to a path."""

    def __init__(self, source: Path) -> None:
        self.source = source
        if source.is_dir():
            self.zip = None
            self.members = {str(p.relative_to(source)): p.name for p in source.rglob("*") if p.is_file()}
        elif zipfile.is_zipfile(source):
            self.zip = zipfile.ZipFile(source)
            self.members = {i.filename: PurePosixPath(i.filename).name for i in self.zip.infolist() if not i.is_dir()}
        else:
            raise UserError(
                f"--source {str(source)!r} is neither a folder nor a zip archive; pass the folder or zip of "
                "Kaggle's dogs-vs-cats train images (cat.0.jpg, dog.0.jpg, ...)"
            )

    def copy(self, member: str, destination: Path) -> None:
        if self.zip is None:
            shutil.copyfile(self.source / member, destination)
        else:
            with self.zip.open(member) as reader, destination.open("wb") as writer:
                shutil.copyfileobj(reader, writer)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def kaggle_images(source: ImageSource) -> dict[str, list[str]]:
    """Member names per class label, ordered by numeric id; duplicates of an id are refused."""
    by_label: dict[str, dict[int, str]] = defaultdict(dict)
    for member, name in source.members.items():
        match = KAGGLE_NAME.match(name)
        if match is None or f".{match['ext'].lower()}" not in IMAGE_EXTENSIONS:
            continue
        label, image_id = match["label"].lower(), int(match["id"])
        if image_id in by_label[label]:
            first = by_label[label][image_id]
            raise UserError(f"{label} image id {image_id} appears twice in --source: {first!r} and {member!r}")
        by_label[label][image_id] = member
    return {label: [ids[i] for i in sorted(ids)] for label, ids in sorted(by_label.items())}


def plan_split(images: dict[str, list[str]], counts: dict[str, int]) -> dict[str, dict[str, list[str]]]:
    """split -> class -> member names: consecutive slices of each class's id-ordered images."""
    needed = sum(counts.values())
    if len(images) < 2:
        found = ", ".join(f"{label} ({len(names)})" for label, names in images.items()) or "none"
        raise UserError(
            f"need images of at least two classes named like cat.0.jpg and dog.0.jpg in --source; found: "
            f"{found} (for Kaggle's dogs-vs-cats.zip, pass the train.zip inside it)"
        )
    for label, names in images.items():
        if len(names) < needed:
            raise UserError(
                f"--source has {len(names)} {label} images but the split needs {needed} per class "
                f"({', '.join(f'--{split} {count}' for split, count in counts.items())}); pass smaller counts"
            )
    plan: dict[str, dict[str, list[str]]] = {}
    start = 0
    for split, count in counts.items():
        if count:
            plan[split] = {label: names[start : start + count] for label, names in images.items()}
        start += count
    return plan


def prepare_split(
    source: Path, out: Path, counts: dict[str, int], overwrite: bool = False
) -> dict[str, dict[str, int]]:
    """Copy the book's split of ``source`` into ``out/{train,val,test}/<class>/``; counts written."""
    source, out = source.expanduser(), out.expanduser()
    if not source.exists():
        raise UserError(f"--source {str(source)!r} does not exist")
    images = ImageSource(source)
    try:
        plan = plan_split(kaggle_images(images), counts)
        with staged_output(out, overwrite) as stage:
            total = sum(len(members) for classes in plan.values() for members in classes.values())
            with tqdm(total=total, unit="img", desc=f"writing {out}") as progress:
                for split, classes in plan.items():
                    for label, members in classes.items():
                        folder = stage / split / label
                        folder.mkdir(parents=True)
                        for member in members:
                            images.copy(member, folder / images.members[member])
                            progress.update()
    finally:
        images.close()
    return {split: {label: len(members) for label, members in classes.items()} for split, classes in plan.items()}
