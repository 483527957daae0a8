"""Formats rebuilt through Pillow's writers (all but PNG and GIF, kept exact by image_streams).

Each frame is taken as Pillow decodes it: its mode, its samples (model planes where they are
8-bit or 16-bit intensities, a classical codec otherwise), its palette and its info (duration,
transparency, ICC, EXIF, comments...). ``join`` writes the same format again with those values;
``images._verify`` then checks the result, so a writer that cannot keep something is caught.

Lossy sources (JPEG, lossy WebP, AVIF, JPEG 2000, JPEG-in-TIFF) keep their decoded pixels
exactly; they are written as PNG (TIFF for modes PNG lacks, lossless WebP for WebP) and flagged.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image, TiffImagePlugin

from bswd.image_side import (
    BlobWriter,
    SideDataError,
    allocate_samples,
    assemble_samples,
    blob_at,
    decode_array,
    encode_array,
    from_json,
    to_json,
)

# formats Pillow writes without loss, and the extension of the rebuilt file
LOSSLESS = {"BMP": ".bmp", "DIB": ".dib", "TIFF": ".tif", "WEBP": ".webp",
            "PPM": ".ppm", "TGA": ".tga", "PCX": ".pcx", "SGI": ".sgi", "QOI": ".qoi",
            "IM": ".im", "XBM": ".xbm"}
LOSSY = {"JPEG", "MPO", "AVIF", "JPEG2000"}
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}
# modes whose raw bytes are interleaved uint8 / 16-bit samples; the rest are stored raw
_MODEL_COLOUR = {"L": 1, "LA": 1, "RGB": 3, "RGBA": 3, "I;16": 1, "I;16L": 1, "I;16B": 1}
_U16 = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}
_U8 = {"L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "La", "CMYK", "YCbCr", "LAB", "HSV"}
_TIFF_LOSSY = {"jpeg", "tiff_jpeg", "webp", "jpeg2000"}
_TIFF_LAYOUT = {254, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 292, 293, 317, 320,
                322, 323, 324, 325, 330, 338, 339, 347, 513, 514, 530, 531, 532, 34665, 34675,
                34853}
_EXIF_IFDS = (0x8769, 0x8825)  # Exif and GPS sub-IFDs


class Budget(Protocol):
    name: str

    def charge(self, size: tuple[int, int], frames: int = 1) -> None:
        """Count frames × (width, height) pixels against the limit, before any decoding."""


class Refused(ValueError):
    """This module cannot keep the image; images.py turns it into UnsupportedImageError."""


# --- split -------------------------------------------------------------------------------------


def split(im: Image.Image, data: bytes, budget: Budget) -> dict[str, Any]:
    """Take every frame of an opened (not yet loaded) image apart; see the module docstring.
    Decoder errors propagate for images.py to name."""
    fmt = im.format or "unknown"
    n_frames = int(getattr(im, "n_frames", 1))
    lossy = _is_lossy(fmt, data, im)
    if fmt not in LOSSLESS and not lossy:
        raise Refused(f"cannot write {fmt} files back, and converting would change the format")
    out_fmt = _output_format(fmt, lossy, im.mode, n_frames)
    out, lines, frames = BlobWriter(), [], []
    planes: list[np.ndarray] = []
    for index, frame in enumerate(_frames(im, n_frames, budget)):
        _check_hidden_depth(fmt, data, frame)
        lossy = lossy or _tiff_page_is_lossy(frame)  # each TIFF page has its own compression
        label = f"frame {index}" if n_frames > 1 else "image"
        meta, more = _split_frame(frame, fmt, out, planes, label)
        frames.append(meta)
        lines += more
    lines[:0] = [f"source: {fmt} {im.size[0]}×{im.size[1]} {im.mode}, {n_frames} frame(s)"]
    lines += _metadata_lines(frames, out, out_fmt if out_fmt != fmt else "")
    header = {"kind": "pillow", "frames": frames, "source_format": fmt,
              "output_format": out_fmt, "extension": _extension(out_fmt, frames)}
    return {"header": header, "blobs": out.blobs, "planes": planes, "lines": lines,
            "lossy": lossy}


def _frames(im: Image.Image, n_frames: int, budget: Budget) -> Iterator[Image.Image]:
    """Seek to each frame and charge its pixels to the budget; the caller loads it."""
    for index in range(n_frames):
        im.seek(index)
        budget.charge(im.size)
        yield im


def _split_frame(frame: Image.Image, fmt: str, out: BlobWriter, planes: list[np.ndarray],
                 label: str) -> tuple[dict[str, Any], list[str]]:
    orientation = _tiff_orientation(frame)
    frame.load()
    im = _as_stored(frame, orientation)
    mode = im.mode
    meta: dict[str, Any] = {"mode": mode, "size": list(im.size), "info": _info(frame, out)}
    lines: list[str]
    if mode in _U8 or mode in _U16:
        samples = np.asarray(im)
        samples = samples.reshape(im.size[1], im.size[0], -1)
        if mode in _U16:
            samples = samples.astype(np.uint16)
        kind = "" if mode in _MODEL_COLOUR else f"{mode} samples"
        meta["samples"], lines = allocate_samples(samples, _MODEL_COLOUR.get(mode, 0), out,
                                                  planes, label, kind)
    else:  # "1", "I", "F" and other packed or wide modes: their raw bytes, deflated
        raw = np.frombuffer(im.tobytes(), np.uint8)
        meta["raw"] = encode_array(raw, out)
        lines = [f"{label}: {mode} raw bytes via zlib ({len(out.blobs[-1])} B)"]
    if im.palette is not None and mode in ("P", "PA"):
        palette_mode = im.palette.mode
        meta["palette"] = {"mode": palette_mode,
                           **out.ref(bytes(im.getpalette(rawmode=palette_mode) or []))}
    if isinstance(frame, TiffImagePlugin.TiffImageFile):
        meta["tags"] = out.ref(_tiff_tags(frame, orientation))
    if orientation in _UNDO_ORIENTATION:
        lines.append(f"{label}: EXIF orientation {orientation} kept as a tag, pixels stored "
                     "as in the file")
    return meta, lines


# Pillow rotates TIFF pages by their Orientation tag on load and drops the tag; undoing it
# keeps the file's own pixels and tag, so a viewer still applies the orientation exactly once
_UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _tiff_orientation(im: Image.Image) -> int | None:
    """A TIFF page's Orientation tag, read before load() consumes it."""
    if isinstance(im, TiffImagePlugin.TiffImageFile):
        value = im.tag_v2.get(0x0112)
        return value if isinstance(value, int) else None
    return None


def _as_stored(im: Image.Image, orientation: int | None) -> Image.Image:
    """The page as the file stores it: undo Pillow's rotation, which it signals by deleting
    the tag from ``tag_v2`` once applied."""
    applied = isinstance(im, TiffImagePlugin.TiffImageFile) and 0x0112 not in im.tag_v2
    if orientation in _UNDO_ORIENTATION and applied:
        return im.transpose(_UNDO_ORIENTATION[orientation])
    return im


def _info(im: Image.Image, out: BlobWriter) -> dict[str, Any]:
    """Every info value that can be stored; the few that cannot are left to the verifier."""
    info = dict(im.info)
    if isinstance(im, TiffImagePlugin.TiffImageFile):
        # Pillow keeps page 0's profile in info on later pages; trust the page's own tag
        info.pop("icc_profile", None)
        if 34675 in im.tag_v2:
            info["icc_profile"] = im.tag_v2[34675]
    kept = {}
    for key, value in info.items():
        if not isinstance(key, str):
            continue
        try:
            kept[key] = to_json(value, out)
        except TypeError:
            continue
    return kept


def _tiff_tags(im: Image.Image, orientation: int | None) -> bytes:
    """The page's descriptive tags (not layout) and its Exif/GPS sub-IFDs, as EXIF bytes."""
    exif = im.getexif()
    kept = Image.Exif()
    if orientation is not None:
        kept[0x0112] = orientation
    for tag, value in exif.items():
        if tag not in _TIFF_LAYOUT:
            kept[tag] = value
    for group in _EXIF_IFDS:
        sub = exif.get_ifd(group)
        if sub:
            kept.get_ifd(group).update(sub)
    return kept.tobytes()


def _is_lossy(fmt: str, data: bytes, im: Image.Image) -> bool:
    if fmt in LOSSY:
        return True
    if fmt == "WEBP":
        return _webp_has_lossy_chunk(data)
    return _tiff_page_is_lossy(im)


def _tiff_page_is_lossy(im: Image.Image) -> bool:
    if not isinstance(im, TiffImagePlugin.TiffImageFile):
        return False
    return str(im.info.get("compression", "")) in _TIFF_LOSSY


def _webp_has_lossy_chunk(data: bytes) -> bool:
    """A 'VP8 ' chunk (top level or inside ANMF) is lossy; 'VP8L' is lossless."""
    pos = 12
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if fourcc == b"VP8 ":
            return True
        if fourcc == b"ANMF" and _webp_has_lossy_chunk(b"\0" * 12 + data[pos + 24 : pos + 8
                                                                            + size]):
            return True
        pos += 8 + size + (size & 1)
    return False


def _check_hidden_depth(fmt: str, data: bytes, im: Image.Image) -> None:
    """Refuse files whose true bit depth Pillow silently reduces or rescales (each TIFF page
    is checked after seeking to it, before it is decoded)."""
    if fmt == "PPM":
        maxval = _pnm_maxval(data)
        if maxval is not None and maxval > 255 and im.mode == "RGB":
            raise Refused("unsupported bit depth 16 (16-bit PPM RGB; Pillow reads 8 bits)")
        if maxval is not None and maxval not in (255, 65535):
            raise Refused(f"unsupported PNM maxval {maxval} (Pillow rescales the samples)")
    if isinstance(im, TiffImagePlugin.TiffImageFile):
        bits = im.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        if max(bits) > 8 and im.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
            raise Refused(f"unsupported bit depth {max(bits)} ({im.mode} TIFF; Pillow reads "
                          f"8 bits)")


def _pnm_maxval(data: bytes) -> int | None:
    """maxval of a P2/P3/P5/P6 header (None for bitmaps and PAM)."""
    text = re.sub(rb"#[^\n\r]*", b" ", data[:1024])
    tokens = text.split()
    if len(tokens) < 4 or tokens[0] not in (b"P2", b"P3", b"P5", b"P6"):
        return None
    try:
        return int(tokens[3])
    except ValueError:
        return None


def _output_format(fmt: str, lossy: bool, mode: str, n_frames: int) -> str:
    if not lossy:
        return fmt
    if fmt in ("WEBP", "TIFF"):
        return fmt  # rewritten with lossless compression in the same container
    if n_frames > 1:
        raise Refused(f"multi-frame lossy {fmt} is not supported")
    return "PNG" if mode in PNG_MODES else "TIFF"


def _extension(fmt: str, frames: list[dict[str, Any]]) -> str:
    if fmt == "PNG":
        return ".png"
    if fmt == "PPM":
        mode = frames[0]["mode"]
        return ".pbm" if mode == "1" else ".ppm" if mode == "RGB" else ".pgm"
    return LOSSLESS.get(fmt, "." + fmt.lower())


def _metadata_lines(frames: list[dict[str, Any]], out: BlobWriter, converted_to: str) -> list[str]:
    """Say which metadata comes back; when the format changes, also what does not."""
    info = frames[0]["info"]
    carried = _CARRIED.get(converted_to, set(info))
    lines = []
    for key, value in info.items():
        size = len(out.blobs[value["blob"]]) if isinstance(value, dict) and "blob" in value else 0
        if key in carried and key in _METADATA:
            lines.append(f"{key} {size} B kept" if size else f"{key} kept")
        elif key not in carried and key not in _CODEC_DETAILS:
            lines.append(f"{key} not carried into {converted_to}")
    if len(frames) > 1:
        durations = [f["info"].get("duration") for f in frames]
        if any(d is not None for d in durations):
            lines.append(f"frame durations kept: {durations}")
    return lines


# how the source was encoded (JFIF/Adobe headers, progressive scan): nothing to carry over
_CODEC_DETAILS = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "adobe", "adobe_transform",
                  "progressive", "progression", "compression", "interlace", "mp", "mpoffset"}
_METADATA = {"icc_profile", "exif", "xmp", "comment", "dpi", "description"}
# what a converted (lossy-source) file carries over into each output format
_CARRIED = {"PNG": {"icc_profile", "exif", "dpi"}, "TIFF": {"icc_profile", "exif", "compression"},
            "WEBP": {"icc_profile", "exif", "xmp", "loop", "background", "duration",
                     "timestamp"}}


# --- join --------------------------------------------------------------------------------------


def join(header: dict[str, Any], planes: Sequence[np.ndarray], blobs: Sequence[bytes]) -> bytes:
    """Rebuild every frame and write them in the output format."""
    fmt = header["output_format"]
    frames = [_join_frame(meta, planes, blobs, fmt) for meta in header["frames"]]
    buffer = io.BytesIO()
    first, rest = frames[0], frames[1:]
    kwargs = _save_kwargs(fmt, frames)
    if rest:
        first.save(buffer, fmt, save_all=True, append_images=rest, **kwargs)
    else:
        first.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _join_frame(meta: dict[str, Any], planes: Sequence[np.ndarray], blobs: Sequence[bytes],
                fmt: str) -> Image.Image:
    mode = meta["mode"]
    size = (int(meta["size"][0]), int(meta["size"][1]))
    if "samples" in meta:
        samples = assemble_samples(meta["samples"], planes, blobs)
        raw = samples.astype(_U16[mode]).tobytes() if mode in _U16 else samples.tobytes()
    else:
        raw = decode_array(meta["raw"], blobs).tobytes()
    try:
        im = Image.frombytes(mode, size, raw)
    except ValueError as exc:
        raise SideDataError(f"image side data: pixels do not fit {mode} {size}") from exc
    if "palette" in meta:
        im.putpalette(blob_at(blobs, meta["palette"]), rawmode=meta["palette"]["mode"])
    im.info = {k: from_json(v, blobs) for k, v in meta["info"].items()}
    if fmt == "TIFF":
        exif = Image.Exif()
        tags = blob_at(blobs, meta["tags"]) if "tags" in meta else im.info.get("exif")
        if tags:
            exif.load(tags)
        im.encoderinfo = _tiff_page_kwargs(im, exif)
    return im


def _tiff_page_kwargs(im: Image.Image, exif: Image.Exif) -> dict[str, Any]:
    """Per-page TIFF options: every key is set so a page never inherits page 0's values."""
    compression = str(im.info.get("compression", "raw"))
    if compression in _TIFF_LOSSY or compression not in _TIFF_WRITABLE:
        compression = "tiff_adobe_deflate"
    if compression in ("group3", "group4", "tiff_ccitt") and im.mode != "1":
        compression = "tiff_adobe_deflate"
    return {"compression": compression, "exif": exif,
            "icc_profile": im.info.get("icc_profile")}


_TIFF_WRITABLE = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits", "group3",
                  "group4", "tiff_ccitt", "lzma", "zstd"}


def _save_kwargs(fmt: str, frames: list[Image.Image]) -> dict[str, Any]:
    """Options for Pillow's writer, taken from the stored info of the first frame."""
    info = frames[0].info
    pick = {k: info[k] for k in ("icc_profile", "exif", "xmp", "dpi") if info.get(k)}
    if fmt == "TIFF":
        return dict(frames[0].encoderinfo)
    if fmt == "PNG":
        return {k: v for k, v in pick.items() if k != "xmp"}
    if fmt == "WEBP":
        kwargs: dict[str, Any] = {"lossless": True, "exact": True, "quality": 100, **pick}
        if len(frames) > 1:
            kwargs["duration"] = [f.info.get("duration", 0) for f in frames]
            kwargs.update({k: info[k] for k in ("loop", "background") if k in info})
        return kwargs
    if fmt == "TGA":
        return {k: info[k] for k in ("compression", "id_section", "orientation") if k in info}
    if fmt in ("BMP", "DIB"):
        return {k: info[k] for k in ("dpi",) if k in info}
    return {}
