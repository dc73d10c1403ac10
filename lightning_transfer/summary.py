"""What is in a dataset folder: images per split and class, image sizes, files that cannot be read."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lightning_transfer.data import SPLITS, class_names_of, is_image_file, load_rgb
from lightning_transfer.errors import UserError

SHOWN_BAD_FILES = 20


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a fully decoded image; raises UserError for a file training could not read.

    The one place that decides whether an image is bad, so a stricter check can replace it.
    """
    return load_rgb(path).size


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
    """Decode every image under ``root/{train,val,test}/<class>/`` and tally what was found."""
    root = root.expanduser()
    splits = [split for split in SPLITS if (root / split).is_dir()]
    if not splits:
        raise UserError(f"{str(root)!r} has no train/, val/ or test/ folder; pass a dataset root")
    summary = DatasetSummary(root)
    files = {
        (split, name): sorted(p for p in (root / split / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        for split in splits
        for name in class_names_of(root / split)
    }
    with tqdm(total=sum(map(len, files.values())), unit="file", desc=f"reading {root}") as progress:
        for (split, name), paths in files.items():
            readable = 0
            for path in paths:
                progress.update()
                if not is_image_file(path):
                    summary.other_files += 1
                    continue
                try:
                    summary.sizes.append(image_size(path))
                    readable += 1
                except UserError as err:
                    summary.bad_files.append(str(err))
            summary.counts.setdefault(split, {})[name] = readable
    return summary
