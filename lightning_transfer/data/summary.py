"""What is in a dataset folder: images per split and class, image sizes, files that cannot be read."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from PIL.ExifTags import Base as ExifTag
from tqdm import tqdm

from lightning_transfer.data.folders import SPLITS, class_names_of, is_hidden, is_image_file
from lightning_transfer.data.image_check import find_bad_images
from lightning_transfer.utils.errors import UserError

SHOWN_BAD_FILES = 20
ROTATED_A_QUARTER = {5, 6, 7, 8}
"""EXIF orientations that swap width and height when applied (as training does)."""


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as training sees the image (EXIF orientation applied), read from the header."""
    with Image.open(path) as image:
        width, height = image.size
        return (height, width) if image.getexif().get(ExifTag.Orientation) in ROTATED_A_QUARTER else (width, height)


@dataclass
class DatasetSummary:
    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> readable images
    sizes: list[tuple[int, int]] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)  # "path: reason"
    other_files: int = 0  # files without an image extension, ignored by training

    def table(self) -> str:
        class_names = sorted({name for classes in self.counts.values() for name in classes})
        rows = [["split", *class_names, "total"]]
        for split, classes in self.counts.items():
            counts = [classes.get(name, 0) for name in class_names]
            rows.append([split, *map(str, counts), str(sum(counts))])
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        if self.sizes:
            ws, hs = zip(*self.sizes)
            lines.append(
                f"image size (width x height): min {min(ws)}x{min(hs)}, median {statistics.median(ws):g}x"
                f"{statistics.median(hs):g}, max {max(ws)}x{max(hs)}"
            )
        if self.other_files:
            lines.append(f"other files (not images, ignored): {self.other_files}")
        lines.append(f"bad files (cannot be read as images): {len(self.bad_files)}")
        lines.extend(f"  {problem}" for problem in self.bad_files[:SHOWN_BAD_FILES])
        if len(self.bad_files) > SHOWN_BAD_FILES:
            lines.append(f"  ... and {len(self.bad_files) - SHOWN_BAD_FILES} more")
        return "\n".join(lines)


def summarize(root: Path) -> DatasetSummary:
    """Check every image under ``root/{train,val,test}/<class>/`` (as training would) and tally them."""
    root = root.expanduser()
    splits = [split for split in SPLITS if (root / split).is_dir()]
    if not splits:
        raise UserError(f"{str(root)!r} has no train/, val/ or test/ folder; pass a dataset root")
    summary = DatasetSummary(root)
    files = {
        (split, name): sorted(p for p in (root / split / name).rglob("*") if p.is_file() and not is_hidden(p, root))
        for split in splits
        for name in class_names_of(root / split)
    }
    images = [path for paths in files.values() for path in paths if is_image_file(path)]
    bad = find_bad_images(images)  # the same verdict (and cache) as the check before training
    summary.bad_files = [f"cannot read image {str(path)!r}: {reason}" for path, reason in bad.items()]
    with tqdm(total=len(images) - len(bad), unit="img", desc=f"reading sizes in {root}") as progress:
        for (split, name), paths in files.items():
            readable = [path for path in paths if is_image_file(path) and path not in bad]
            summary.other_files += sum(not is_image_file(path) for path in paths)
            for path in readable:
                summary.sizes.append(image_size(path))
                progress.update()
            summary.counts.setdefault(split, {})[name] = len(readable)
    return summary
