"""Decoding image files the way every image reaches the model: 8-bit RGB, EXIF orientation applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lightning_transfer.utils.errors import UserError


def load_rgb(path: str | Path, max_pixels: int | None = None, max_side: int | None = None) -> Image.Image:
    """Decode any PIL-readable image as RGB, with a one-line UserError for files that do not decode.

    ``max_pixels`` refuses bigger images from their header, before decoding (a small compressed
    file can expand to gigabytes; servers such as the demo need that bound). ``max_side`` shrinks
    larger images to fit in that many pixels each way, keeping their shape.
    """
    try:
        return decode_rgb(path, max_pixels=max_pixels, max_side=max_side)
    except UserError:
        raise
    except Exception as err:  # broken files raise OSError, SyntaxError, ValueError, struct.error...
        raise UserError(f"cannot read image {str(path)!r}: {describe_error(err)}") from None


def decode_rgb(
    path: str | Path, draft: bool = False, max_pixels: int | None = None, max_side: int | None = None
) -> Image.Image:
    """Decode ``path`` as 8-bit RGB, the way every image reaches the model; raises what PIL raises.

    Images above ``PIL.Image.MAX_IMAGE_PIXELS`` are refused (PIL only warns up to twice that), and
    above ``max_pixels`` with a UserError, both from the header, before decoding. ``draft`` lets
    JPEGs decode at 1/8 scale: enough to prove the file is whole, several times faster.
    ``max_side`` shrinks larger images to fit in a ``max_side`` square (PIL's ``thumbnail``); JPEGs
    decode straight at the smallest of 1/2, 1/4 or 1/8 scale that is still at least that large.
    """
    with Image.open(path) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise UserError(
                f"image {str(path)!r} is {image.width}x{image.height} pixels, more than the "
                f"{max_pixels / 1e6:g} megapixels allowed; downscale it first"
            )
        limit = Image.MAX_IMAGE_PIXELS
        if limit and image.width * image.height > limit:
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} = {image.width * image.height} pixels is above the "
                f"decompression-bomb limit of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
            )
        if draft or max_side is not None:
            image.draft(None, (1, 1) if draft else (max_side, max_side))
        rgb = to_rgb(ImageOps.exif_transpose(image))
        if max_side is not None:
            rgb.thumbnail((max_side, max_side))
        return rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, fixing the two conversions PIL gets wrong for photos.

    16-bit grayscale keeps its top 8 bits (PIL clips it, turning most pixels white); transparent
    pixels are put over white (PIL drops alpha, which usually leaves black). Palette, grayscale and
    CMYK (Adobe-inverted JPEGs included) use PIL's own conversion.
    """
    if image.mode.startswith("I"):  # I;16, I;16B, I: 16-bit (or wider) integer grayscale
        image = Image.fromarray((np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def describe_error(err: BaseException) -> str:
    """One line saying why a file could not be decoded."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
