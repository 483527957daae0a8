"""Image files in and out: split a file into model planes plus side data, and join them back.

The learned model codes 8-bit planes of one or three channels; an image file is more than that.
``split_image`` turns any file Pillow opens into

* ``planes``: what the model codes (RGB, grey, the high bytes of 16-bit samples), and
* ``side``: versioned bytes with everything else (see ``image_side``), including alpha, palette
  indices, 16-bit low bytes and raw float/int data coded by a classical lossless codec,

and ``join_image`` rebuilds a file that reopens with the same mode, size, frames, palette,
transparency, bit depth, pixels, ICC profile, EXIF and text. Before ``split_image`` returns, it
rebuilds the file itself and compares the two (``image_check``), so a case this module gets wrong
is refused with a reason instead of ever being reported as a lossless success.

Safety rules kept here: the declared pixel count is checked before any pixel is decoded, Pillow's
own decompression-bomb check stays on, a truncated file raises instead of being padded with black
(``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched), and EXIF orientation is kept as a tag:
pixels are never rotated, so a viewer applies it exactly once.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
from PIL import Image, UnidentifiedImageError

from bswd import image_check, image_pillow, image_streams
from bswd import image_gif as gif
from bswd import image_png as png
from bswd.image_side import SideDataError, pack_side, unpack_side

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "CorruptImageError",
    "EmptyImageError",
    "ImageInputError",
    "NotAnImageError",
    "SideDataError",
    "SplitImage",
    "TooManyPixelsError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "join_image",
    "pixel_checksum",
    "split_image",
]

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default limit, so both checks agree out of the box


class ImageInputError(ValueError):
    """An input file that cannot be compressed losslessly; the message names file and reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class UnsupportedImageError(ImageInputError):
    """A real image this module cannot bring back exactly (mode, depth or format)."""


class TooManyPixelsError(ImageInputError):
    """The declared size is over the pixel limit (checked before decoding pixels)."""


class TruncatedImageError(ImageInputError):
    """The file ends before its pixel data does."""


class CorruptImageError(ImageInputError):
    """The file is damaged (bad checksum, broken structure)."""


class NotAnImageError(ImageInputError):
    """No image format recognises the bytes."""


class EmptyImageError(ImageInputError):
    """The file has no bytes, or the image has no pixels."""


@dataclass(frozen=True)
class SplitImage:
    """An image file as model planes plus side data (see the module docstring)."""

    planes: tuple[np.ndarray, ...]  # each uint8, C-contiguous, H×W×C with C in {1, 3}
    side: bytes
    description: tuple[str, ...]  # human lines for `bswd inspect`
    source_format: str  # Pillow's name, e.g. "PNG"
    lossy_source: bool  # True for JPEG and lossy WebP/AVIF/JPEG 2000
    output_format: str = ""  # what join_image writes, e.g. "PNG" (also "PNG" for a JPEG)
    extension: str = ""  # suggested extension of the rebuilt file, e.g. ".png"


# --- public API -------------------------------------------------------------------------------


def split_image(data: bytes, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                verify: bool = True) -> SplitImage:
    """Split an image file into model planes and side data, or raise ImageInputError.

    ``verify`` rebuilds the file with the identity codec and compares it with the input; leave it
    on unless the caller verifies the real round trip itself.
    """
    if not data:
        raise EmptyImageError(name, "the file is empty (0 bytes)")
    limit = _effective_limit(max_pixels)
    if data.startswith(png.PNG_SIGNATURE):
        _check_png_header(data, name, limit)
    _check_riff_length(data, name)
    with _open(data, name) as im:
        _check_pixels(name, im.size, limit)
        split = _finish(_split_opened(im, data, _Budget(name, limit)))
    if verify:
        _verify(data, split, name, limit)
    return split


def raw_sample_bytes(side: bytes) -> int:
    """Bytes of the image's samples as stored uncompressed (16-bit samples count 2 bytes, alpha
    and palette indices count too), from the side data's sample records; 0 if it has none."""
    header, _ = unpack_side(side)
    total = 0

    def walk(node: Any) -> None:
        nonlocal total
        if isinstance(node, dict):
            if {"shape", "dtype", "colour"} <= node.keys():  # one allocate_samples record
                total += int(np.prod(node["shape"])) * np.dtype(node["dtype"]).itemsize
                return
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                walk(item)

    walk(header)
    return total


def side_extension(side: bytes) -> str:
    """The extension join_image will give the rebuilt file, read from the side data alone."""
    header, _ = unpack_side(side)
    if not isinstance(header.get("extension"), str):
        raise SideDataError("image side data names no output extension")
    return header["extension"]


def join_image(planes: Sequence[np.ndarray], side: bytes) -> tuple[bytes, str]:
    """Rebuild the file from decoded model planes and side data; returns (bytes, extension)."""
    header, blobs = unpack_side(side)
    planes = [np.asarray(p) for p in planes]
    if len(planes) != header.get("n_planes"):
        raise SideDataError(f"expected {header.get('n_planes')} model planes, got {len(planes)}")
    for plane in planes:
        if plane.dtype != np.uint8 or plane.ndim != 3 or plane.shape[2] not in (1, 3):
            raise SideDataError(f"a model plane must be uint8 H×W×1 or H×W×3, got "
                                f"{plane.dtype} {plane.shape}")
    joiner = _JOINERS.get(header.get("kind"))
    if joiner is None:
        raise SideDataError(f"unknown image side kind {header.get('kind')!r}")
    try:
        return joiner(header, planes, blobs), str(header["extension"])
    except (KeyError, TypeError, IndexError) as exc:
        raise SideDataError(f"image side data is inconsistent ({exc!r})") from exc


def pixel_checksum(planes: Sequence[np.ndarray]) -> bytes:
    """SHA-256 over every plane's shape, dtype and bytes, in order (for the container header).

    >>> a = np.zeros((1, 2, 1), np.uint8)
    >>> pixel_checksum([a]) == pixel_checksum([a.copy()]) != pixel_checksum([a.reshape(2, 1, 1)])
    True
    """
    digest = hashlib.sha256()
    digest.update(struct.pack(">Q", len(planes)))
    for plane in planes:
        array = np.ascontiguousarray(plane)
        digest.update(struct.pack(">Q", array.ndim))
        digest.update(struct.pack(f">{array.ndim}Q", *array.shape))
        digest.update(array.dtype.str.encode("ascii").ljust(8, b" "))
        digest.update(array.tobytes())
    return digest.digest()


_JOINERS: dict[Any, Callable[[dict[str, Any], Sequence[np.ndarray], Sequence[bytes]], bytes]] = {
    "png": image_streams.join_png,
    "gif": image_streams.join_gif,
    "pillow": image_pillow.join,
}


# --- opening, limits and error classes -----------------------------------------------------------

# what decoders raise on bad input: Pillow (OSError, SyntaxError, ValueError, EOFError,
# struct.error, and its bomb check, which is not an OSError), zlib, and imagecodecs' libpng
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError, Image.DecompressionBombWarning,
                  imagecodecs.PngError)


@dataclass(frozen=True)
class _Limit:
    """The pixel limit in force and, for error messages, where it comes from."""

    pixels: int
    source: str


@dataclass
class _Budget:
    """Pixels decoded so far for this file; every frame is charged before it is decoded."""

    name: str
    limit: _Limit
    used: int = 0

    def charge(self, size: tuple[int, int], frames: int = 1) -> None:
        _check_pixels(self.name, size, self.limit)
        self.used += size[0] * size[1] * frames
        if self.used > self.limit.pixels:
            raise TooManyPixelsError(self.name, f"its frames add up to more than "
                                                f"{self.limit.pixels:,} pixels, {self.limit.source}"
                                                " (checked before decoding)")


def _effective_limit(max_pixels: int) -> _Limit:
    """Our limit, never above Pillow's: an image Pillow would only warn about is refused here.
    Pillow's own check stays on; we never change Image.MAX_IMAGE_PIXELS (a process-wide
    setting that only the program's entry point may raise)."""
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is not None and int(pillow) < max_pixels:
        return _Limit(int(pillow), f"the limit (max_pixels {max_pixels:,} is capped by "
                                   "PIL.Image.MAX_IMAGE_PIXELS)")
    return _Limit(max_pixels, "the max_pixels limit")


def _check_pixels(name: str, size: tuple[int, int], limit: _Limit) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise EmptyImageError(name, f"the image has no pixels ({width}×{height})")
    if width * height > limit.pixels:
        raise TooManyPixelsError(name, f"{width}×{height} = {width * height:,} pixels exceeds "
                                       f"{limit.pixels:,}, {limit.source} (checked before "
                                       "decoding)")


def _check_png_header(data: bytes, name: str, limit: _Limit) -> None:
    """Read the IHDR ourselves so a PNG bomb is refused before Pillow even parses it."""
    try:
        header = png.declared_header(data)
    except png.PngFormatError as exc:
        raise _format_error(name, exc) from exc
    _check_pixels(name, (header.width, header.height), limit)


def _check_riff_length(data: bytes, name: str) -> None:
    """A RIFF file (WebP) states its length; libwebp only says 'could not create decoder'."""
    if data[:4] == b"RIFF" and len(data) >= 12:
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared > len(data):
            raise TruncatedImageError(name, f"the file is truncated ({len(data)} of {declared} "
                                            "bytes)")


def _open(data: bytes, name: str) -> Image.Image:
    """Image.open reads headers only; turn every failure into a specific ImageInputError."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        if data[:4] == b"\x89BSW":
            raise NotAnImageError(name, "already a .bsw file (bswd decompress gives back its image)") from exc
        raise NotAnImageError(name, "not an image file Pillow can identify") from exc
    except _DECODE_ERRORS as exc:
        raise _load_error(name, exc) from exc


def _split_opened(im: Image.Image, data: bytes, budget: _Budget) -> image_streams.Parts:
    """Route by format and name every failure: unsupported, truncated or damaged."""
    name = budget.name
    try:
        if im.format == "PNG":
            return image_streams.split_png(data, budget)
        if im.format == "GIF":
            return image_streams.split_gif(data, budget)
        return image_pillow.split(im, data, budget)
    except ImageInputError:
        raise
    except image_pillow.Refused as exc:
        raise UnsupportedImageError(name, str(exc)) from exc
    except (png.PngFormatError, gif.GifFormatError) as exc:
        raise _format_error(name, exc) from exc
    except _DECODE_ERRORS as exc:
        raise _load_error(name, exc) from exc


def _load_error(name: str, exc: BaseException) -> ImageInputError:
    """Classify a decoder failure: truncation is named as such, anything else is damage."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return TooManyPixelsError(name, f"Pillow refused it as a decompression bomb ({text})")
    lowered = text.lower()
    if isinstance(exc, EOFError) or "truncated" in lowered or "end of file" in lowered:
        return TruncatedImageError(name, f"the file is truncated ({text})")
    return CorruptImageError(name, f"the image data is damaged ({text})")


def _format_error(name: str, exc: png.PngFormatError | gif.GifFormatError) -> ImageInputError:
    if exc.truncated:
        return TruncatedImageError(name, f"the file is truncated ({exc})")
    return CorruptImageError(name, f"the file is damaged ({exc})")


# --- finishing and verification ---------------------------------------------------------------


def _finish(parts: image_streams.Parts) -> SplitImage:
    header = dict(parts["header"])
    header["n_planes"] = len(parts["planes"])
    lines = list(parts["lines"])
    out_fmt = header["output_format"]
    if parts["lossy"]:
        how = "lossless " if out_fmt in ("WEBP", "TIFF") else ""
        lines.append(f"lossy source ({header['source_format']}): its decoded pixels are kept "
                     f"exactly; decompress writes {how}{out_fmt}")
    lines.append(f"output: {out_fmt} ({header['extension']})")
    return SplitImage(planes=tuple(parts["planes"]), side=pack_side(header, parts["blobs"]),
                      description=tuple(lines), source_format=header["source_format"],
                      lossy_source=bool(parts["lossy"]), output_format=out_fmt,
                      extension=header["extension"])


def _verify(data: bytes, split: SplitImage, name: str, limit: _Limit) -> None:
    """Rebuild with the identity codec and compare: never call a lossy result lossless."""
    try:
        rebuilt, _ = join_image(split.planes, split.side)
    except _DECODE_ERRORS as exc:  # Pillow writers raise OSError/ValueError on what they lack
        raise UnsupportedImageError(name, f"cannot be written back as {split.output_format} "
                                          f"({exc})") from exc
    same_format = split.output_format == split.source_format and not split.lossy_source
    try:
        problem = image_check.first_difference(data, rebuilt, same_format=same_format,
                                               limit=limit.pixels)
    except _DECODE_ERRORS as exc:
        problem = f"the rebuilt file does not reopen ({exc})"
    if problem:
        raise UnsupportedImageError(name, f"cannot be stored losslessly as "
                                          f"{split.output_format}: {problem}")
