"""Reading image files defensively, and finding the unreadable ones before training starts.

A truncated JPEG or a text file named ``.jpg`` would otherwise crash a DataLoader worker halfway
through an epoch. ``find_bad_images`` decodes every file once up front (JPEGs at 1/8 scale, which
still reads every byte of the stream) in threads, and caches the verdict on disk keyed by the file
list, so later runs and the other DDP processes get it for free. ``screen_images`` turns the verdict
into a report and a warning (skip) or a one-line error (strict).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import PIL
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from lightning_transfer.data.images import decode_rgb, describe_error
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.files import default_cache_dir, write_atomically

CHECK_VERSION = 1
"""Bump when what counts as readable changes, so cached verdicts are redone."""

OnBadImage = Literal["skip", "error"]


def problem_with(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        decode_rgb(path, draft=True)
    except UnidentifiedImageError:
        return "not an image format PIL can identify"
    except Exception as err:  # broken files raise OSError, SyntaxError, ValueError, struct.error...
        return describe_error(err)
    return None


def _cache_entry(absolute_paths: Sequence[str]) -> Path:
    """Cache file named by the file list (absolute paths, sizes, mtimes) and what the check depends on."""
    entries = []
    for path in sorted(set(absolute_paths)):
        try:
            stat = os.stat(path)
            entries.append((path, stat.st_size, stat.st_mtime_ns))
        except OSError:
            entries.append((path, -1, -1))
    key = json.dumps([CHECK_VERSION, PIL.__version__, Image.MAX_IMAGE_PIXELS, entries])
    return default_cache_dir() / "image-check" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def _read_cached(entry: Path) -> dict[str, str] | None:
    try:
        bad = json.loads(entry.read_text())["bad"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return bad if isinstance(bad, dict) else None


def find_bad_images(paths: Sequence[Path]) -> dict[Path, str]:
    """The unreadable images among ``paths``, each with its reason; checked once per file list.

    Decodes in threads (PIL releases the GIL while decoding) with a progress bar on a terminal.
    """
    paths = [Path(path) for path in paths]
    absolute = [os.path.abspath(path) for path in paths]
    entry = _cache_entry(absolute)
    cached = _read_cached(entry)
    if cached is None:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            problems = tqdm(
                pool.map(problem_with, paths), total=len(paths), desc="checking images", unit="img", disable=None
            )
            cached = {name: problem for name, problem in zip(absolute, problems) if problem}
        try:
            text = json.dumps({"version": CHECK_VERSION, "checked": len(paths), "bad": cached})
            write_atomically(entry, lambda temp: temp.write_text(text))
        except OSError as err:
            warnings.warn(f"could not cache the image check in {str(entry.parent)!r} ({err}); it will be redone")
    return {path: cached[name] for path, name in zip(paths, absolute) if name in cached}


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def write_report(report: Path, where: str, bad: dict[Path, str], ignored: Sequence[Path], action: str) -> None:
    """Plain-text list of the unreadable images (with reasons) and the ignored non-image files."""
    lines = [f"image check of {where}", f"{_plural(len(bad), 'unreadable image')}, {action}:"]
    lines += [f"  {path.absolute()}: {reason}" for path, reason in bad.items()]
    lines += [f"{_plural(len(ignored), 'non-image file')} in the class folders, ignored:"]
    lines += [f"  {path.absolute()}" for path in ignored]
    text = "\n".join(lines) + "\n"
    write_atomically(report, lambda temp: temp.write_text(text))


def screen_images(
    where: str,
    paths: Sequence[Path],
    ignored: Sequence[Path],
    on_bad_image: OnBadImage,
    report: Path,
    write: bool = True,
) -> dict[Path, str]:
    """Check ``paths``; report what is wrong, then warn and return the unreadable ones (skip) or raise (error).

    ``ignored`` are non-image files found beside the images: reported, never an error. ``write``
    is False on all but one process, so the report is written and the warning shown once.
    """
    bad = find_bad_images(paths)
    if not bad and not ignored:
        return bad
    action = "left out" if on_bad_image == "skip" else "stopping the run"
    if write:
        write_report(report, where, bad, ignored, action)
    examples = "; ".join(f"{path}: {reason}" for path, reason in list(bad.items())[:3])
    unreadable = f"{_plural(len(bad), 'unreadable image')} ({examples}{'; ...' if len(bad) > 3 else ''})"
    if bad and on_bad_image == "error":
        raise UserError(
            f"{where}: {unreadable}; full list in {report}; fix or remove them, or pass --data.on_bad_image skip"
        )
    problems = [f"{unreadable} {action}"] if bad else []
    if ignored:
        problems.append(f"{_plural(len(ignored), 'non-image file')} ignored")
    rank_zero_warn(f"{where}: {', '.join(problems)}; full list in {report}")
    return bad
