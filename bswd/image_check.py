"""Is a rebuilt image file the same image as the original? (the check of cases/README.md)

Both files are reopened with Pillow and compared frame by frame: mode, size, pixels (hashed),
palette, info values (transparency, ICC, EXIF, durations, text...), TIFF descriptive tags with
the bit depth, and for PNG also the raw samples (Pillow shows 16-bit RGB as 8-bit) and every
non-pixel chunk. Only encoding details that do not change the image are ignored; each is listed
in ``_IGNORED_INFO`` with its reason.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

from PIL import Image, TiffImagePlugin

from bswd import image_png as png

# info keys that describe how a file was encoded, not what it holds
_IGNORED_INFO = {
    "compression",  # TIFF/BMP/TGA codec: re-encoding may pick another lossless one
    "interlace",  # PNG Adam7 is dropped on rewrite; pixels are the same
    "version",  # GIF87a vs GIF89a header
    "extension",  # GIF NETSCAPE extension position (loop is compared)
    "timestamp",  # WebP frame start time, derived from the compared durations
}
# TIFF tags that only describe the storage layout (strips, codec, colour map, IFD offsets);
# bit depth (258), samples per pixel (277), extra samples (338) and sample format (339) stay
_TIFF_LAYOUT = {259, 262, 266, 273, 278, 279, 284, 292, 293, 317, 320, 322, 323, 324, 325,
                330, 347, 513, 514, 34665, 34853}
# in a TIFF, getexif() also shows the image structure: compared elsewhere (mode, size, tags)
_EXIF_SKIP = _TIFF_LAYOUT | {254, 256, 257, 258, 277, 338, 339, 34675}


def first_difference(original: bytes, rebuilt: bytes, *, same_format: bool,
                     limit: int) -> str | None:
    """None if the two files hold the same image; otherwise the first difference, in words.

    With ``same_format`` false (a lossy source written as PNG/TIFF) only what survives any
    lossless container is compared: frames, mode, size, pixels, ICC profile and EXIF.
    """
    left = list(_facts(original, same_format, limit))
    right = list(_facts(rebuilt, same_format, limit))
    if len(left) != len(right):
        return f"frame count {len(left) - 1} became {len(right) - 1}"
    for a, b in zip(left, right):
        for key in a.keys() | b.keys():
            if a.get(key) != b.get(key):
                return f"{key} differs ({_short(a.get(key))} vs {_short(b.get(key))})"
    return None


def _facts(data: bytes, full: bool, limit: int) -> Iterator[dict[str, Any]]:
    """One dict per frame (plus one for the file), every value comparable with ==."""
    with Image.open(io.BytesIO(data)) as im:
        head: dict[str, Any] = {"format": im.format} if full else {}
        if full and im.format == "PNG":
            head.update(_png_facts(data))
        if full:
            head.update(_header_depth(im.format, data))
        yield head
        budget = limit
        for index in range(int(getattr(im, "n_frames", 1))):
            im.seek(index)
            budget -= im.size[0] * im.size[1]
            if budget < 0:
                raise ValueError("too many pixels to compare")
            im.load()
            yield _frame_facts(im, full)


def _frame_facts(im: Image.Image, full: bool) -> dict[str, Any]:
    facts: dict[str, Any] = {"mode": im.mode, "size": im.size,
                             "pixels": hashlib.sha256(im.tobytes()).hexdigest()}
    facts["icc_profile"] = _value(im.info.get("icc_profile"))
    exif = im.getexif()
    facts["exif tags"] = _exif_facts(exif)
    if not full:
        return facts
    if im.palette is not None and im.mode in ("P", "PA"):
        facts["palette"] = (im.palette.mode, _value(bytes(im.getpalette(im.palette.mode) or [])))
    for key, value in im.info.items():
        if isinstance(key, str) and key not in _IGNORED_INFO:
            facts[f"info {key}"] = _value(value)
    if hasattr(im, "disposal_method"):
        facts["disposal"] = im.disposal_method
    if isinstance(im, TiffImagePlugin.TiffImageFile):
        tags = im.tag_v2
        facts.update({f"tiff tag {t}": _value(tags[t]) for t in tags if t not in _TIFF_LAYOUT})
    return facts


def _exif_facts(exif: Image.Exif) -> dict[int, Any]:
    """EXIF as tag -> value, with the Exif/GPS sub-IFDs, minus TIFF layout tags."""
    facts = {tag: _value(v) for tag, v in exif.items() if tag not in _EXIF_SKIP}
    for group in (0x8769, 0x8825):
        sub = exif.get_ifd(group)
        if sub:
            facts[group] = {tag: _value(v) for tag, v in sub.items()}
    return facts


def _png_facts(data: bytes) -> dict[str, Any]:
    """Raw samples of every stream and every non-pixel chunk, byte for byte."""
    parts = png.take_apart(data)
    header = parts.header
    facts: dict[str, Any] = {"PNG bit depth": header.depth, "PNG colour type": header.ctype}
    chunks = []
    for ctype, payload in parts.skeleton:
        if ctype == b"IHDR" or png.is_stream_marker(ctype):
            continue
        if ctype == b"fcTL":
            payload = payload[4:]  # the sequence number is renumbered on rewrite
        chunks.append((ctype, hashlib.sha256(payload).hexdigest()))
    facts["PNG chunks"] = chunks
    plte = png.palette_chunk(parts)
    for index, (size, zdata) in enumerate(zip(parts.stream_sizes, parts.stream_data)):
        samples = png.decode_stream(header, size, zdata, plte)
        facts[f"PNG stream {index} samples"] = (samples.shape,
                                                hashlib.sha256(samples.tobytes()).hexdigest())
    return facts


def _header_depth(fmt: str | None, data: bytes) -> dict[str, Any]:
    """Bit-depth fields Pillow does not report (it shows 4-bit BMP as 8-bit P, 16-bit BMP and
    TGA as RGB): the rebuilt file must have the same ones."""
    def u16le(pos: int) -> int:
        return int.from_bytes(data[pos : pos + 2], "little")

    if fmt in ("BMP", "DIB"):
        start = 14 if fmt == "BMP" else 0
        header_size = int.from_bytes(data[start : start + 4], "little")
        return {"BMP bits per pixel": u16le(start + (10 if header_size == 12 else 14))}
    if fmt == "TGA":
        return {"TGA pixel depth": data[16], "TGA alpha bits": data[17] & 0x0F}
    if fmt == "PCX":
        return {"PCX bits per plane": data[3], "PCX planes": data[65]}
    if fmt == "SGI":
        return {"SGI bytes per channel": data[3]}
    return {}


def _value(value: Any) -> Any:
    """A comparable, printable form: bytes by hash and length, numbers by repr."""
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} B sha256:{hashlib.sha256(value).hexdigest()[:16]}"
    if isinstance(value, (tuple, list)):
        return tuple(_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _value(v) for k, v in value.items()}
    return repr(value)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
