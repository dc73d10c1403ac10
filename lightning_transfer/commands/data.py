"""lightning-transfer data {prepare,download,summary}: get a dataset in the layout training reads.

prepare   the book's small split of Kaggle's dogs-vs-cats train images (folder or zip)
download  the public cats_and_dogs_filtered archive (or --url), extracted as train/ and val/
summary   images per split and class, image sizes, unreadable files
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from lightning_transfer.data.download import CATS_AND_DOGS_FILTERED_URL, describe_counts, download_dataset
from lightning_transfer.data.kaggle_split import prepare_split
from lightning_transfer.data.summary import summarize


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


def run_prepare(args: argparse.Namespace) -> None:
    counts = {"train": args.train, "val": args.val, "test": args.test}
    written = prepare_split(args.source, args.out, counts, args.overwrite)
    print(f"wrote {args.out}:")
    for split, classes in written.items():
        print(f"  {split}: " + ", ".join(f"{label} {n}" for label, n in classes.items()))


def run_download(args: argparse.Namespace) -> None:
    counts = download_dataset(args.url, args.out, args.overwrite, args.keep_archive, args.md5)
    print(f"wrote {args.out}: {describe_counts(counts)}")


def run_summary(args: argparse.Namespace) -> None:
    print(summarize(args.root).table())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-transfer data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prepare,download,summary}")

    prepare = commands.add_parser("prepare", help="split Kaggle's dogs-vs-cats train images as in the book")
    prepare.add_argument("--source", type=Path, required=True, help="folder or zip with cat.N.jpg / dog.N.jpg")
    prepare.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    prepare.add_argument("--train", type=at_least(1), default=1000, help="images per class for train/ (default 1000)")
    prepare.add_argument("--val", type=at_least(1), default=500, help="next images per class for val/ (default 500)")
    prepare.add_argument(
        "--test", type=at_least(0), default=500, help="next images per class for test/ (default 500; 0: none)"
    )
    prepare.add_argument("--overwrite", action="store_true", help="replace train/ val/ test/ in a non-empty --out")
    prepare.set_defaults(run=run_prepare)

    download = commands.add_parser("download", help="download and extract cats_and_dogs_filtered (or --url)")
    download.add_argument("--url", default=CATS_AND_DOGS_FILTERED_URL, help="zip archive (default: %(default)s)")
    download.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    download.add_argument("--overwrite", action="store_true", help="replace train/ val/ test/ in a non-empty --out")
    download.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip next to --out")
    download.add_argument("--md5", help="the archive's MD5 checksum; a download that does not match is refused")
    download.set_defaults(run=run_download)

    summary = commands.add_parser("summary", help="images per split and class, sizes, unreadable files")
    summary.add_argument("root", type=Path, help="dataset folder with train/ val/ [test/]")
    summary.set_defaults(run=run_summary)
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)
