"""The image-folder layout training reads: ``root/{train,val,test}/<class>/*.jpg``.

Class names come from ``train/``; every other split must have the same classes. Hidden files and
folders (``.DS_Store``, ``.ipynb_checkpoints/``) are never images or classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from lightning_transfer.utils.errors import UserError

# torchvision's list plus GIF, which PIL decodes like the others
IMAGE_EXTENSIONS = frozenset((*IMG_EXTENSIONS, ".gif"))
SPLITS = ("train", "val", "test")
NO_DATA_ROOT = "no data root given; pass --data.root DIR (a folder with train/ and val/)"

Sample = tuple[Path, int]


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def is_hidden(path: Path, folder: Path) -> bool:
    """Whether ``path`` or a folder above it (up to ``folder``) is hidden: ``.DS_Store``, ``.git/``..."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def class_names_of(split_dir: str | Path) -> list[str]:
    """Sorted sub-folder names of a split folder.

    Not torchvision's ``find_classes``: it would count hidden folders (``.ipynb_checkpoints``) as classes.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(
            f"{str(split_dir)!r} is not a folder; the data root needs train/ and val/ (and optionally "
            "test/), each with one sub-folder per class"
        )
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UserError(f"{str(split_dir)!r} has no class sub-folders (e.g. {split_dir}/cat/*.jpg)")
    return names


def list_images(split_dir: Path, class_names: Sequence[str], max_per_class: int | None = None) -> list[Sample]:
    """(path, label) pairs of a split, checking it has exactly the expected classes."""
    found = class_names_of(split_dir)
    if found != list(class_names):
        raise UserError(
            f"{str(split_dir)!r} has classes {found} but train/ has {list(class_names)}; "
            "every split needs the same class folders"
        )
    listed = make_dataset(
        split_dir,
        {name: label for label, name in enumerate(class_names)},
        is_valid_file=lambda path: is_image_file(Path(path)) and not is_hidden(Path(path), split_dir),
        allow_empty=True,
    )
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        files = [Path(path) for path, index in listed if index == label]
        if not files:
            raise UserError(f"class folder {str(split_dir / name)!r} holds no images")
        samples.extend((path, label) for path in files[:max_per_class])
    return samples


def non_image_files(split_dir: Path, class_names: Sequence[str]) -> list[Path]:
    """Visible files in the class folders that are not images: ignored for training, but reported."""
    return sorted(
        path
        for name in class_names
        for path in (split_dir / name).rglob("*")
        if path.is_file() and not is_image_file(path) and not is_hidden(path, split_dir)
    )


def list_predict_images(path: str | Path) -> list[Path]:
    """One image file, or every image under a folder (recursively), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if is_image_file(p) and not is_hidden(p, path))
        if files:
            return files
        raise UserError(f"no images found under {str(path)!r}")
    raise UserError(f"{str(path)!r} does not exist; pass an image file or a folder of images")
