"""PNG/APNG and GIF as verbatim structure plus pixel streams (see image_png and image_gif).

Both formats are kept at the chunk/block level because Pillow cannot write them back exactly
(16-bit and low-depth PNG, APNG frame rectangles, GIF disposal and transparency). This module
connects their parsers to the side data: each stream's samples are allocated to model planes or
the classical codec, and the verbatim pieces become blobs.

Parse errors (``PngFormatError``, ``GifFormatError``) and decoder errors propagate; images.py
turns them into named ImageInputErrors.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from bswd import image_gif as gif
from bswd import image_png as png
from bswd.image_side import (
    BlobWriter,
    SideDataError,
    allocate_samples,
    assemble_samples,
    blob_at,
)

_PNG_COLOUR = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
_PNG_MODEL_CHANNELS = {0: 1, 2: 3, 4: 1, 6: 3}  # palette (3) is never given to the model
_PNG_NAMES = {b"iCCP": "icc_profile", b"eXIf": "exif", b"tEXt": "text", b"zTXt": "text",
              b"iTXt": "text", b"tRNS": "transparency", b"PLTE": "palette"}


class Budget(Protocol):
    def charge(self, size: tuple[int, int], frames: int = 1) -> None:
        """Count frames × (width, height) pixels against the limit, before any decoding."""


Parts = dict[str, Any]  # {"header", "blobs", "planes", "lines", "lossy"}


# --- PNG / APNG --------------------------------------------------------------------------------


def split_png(data: bytes, budget: Budget) -> Parts:
    parts = png.take_apart(data)
    header = parts.header
    _charge_png_frames(parts, budget)
    out, lines, streams = BlobWriter(), [], []
    planes: list[np.ndarray] = []
    colour = _PNG_MODEL_CHANNELS.get(header.ctype, 0) if header.depth >= 8 else 0
    plte = png.palette_chunk(parts)
    many = len(parts.stream_sizes) > 1
    for index, (size, zdata) in enumerate(zip(parts.stream_sizes, parts.stream_data)):
        samples = png.decode_stream(header, size, zdata, plte)
        kind = "palette indices" if header.ctype == 3 else ""
        meta, more = allocate_samples(samples, colour, out, planes,
                                      f"frame {index}" if many else "image", kind)
        streams.append(meta)
        lines += more
    skeleton = [{"stream": payload.decode("ascii")} if png.is_stream_marker(ctype)
                else {"chunk": ctype.decode("latin-1"), **out.ref(payload)}
                for ctype, payload in parts.skeleton]
    lines.insert(0, f"source: PNG {header.width}×{header.height}, {header.depth}-bit "
                    f"{_PNG_COLOUR[header.ctype]}, {len(streams)} pixel stream(s)")
    lines += _png_chunk_lines(parts)
    return {"header": {"kind": "png", "skeleton": skeleton, "streams": streams,
                       "source_format": "PNG", "output_format": "PNG", "extension": ".png"},
            "blobs": out.blobs, "planes": planes, "lines": lines, "lossy": False}


def join_png(header: dict[str, Any], planes: Sequence[np.ndarray],
             blobs: Sequence[bytes]) -> bytes:
    skeleton = []
    for entry in header["skeleton"]:
        if "stream" in entry:
            skeleton.append((png.STREAM_MARKER, entry["stream"].encode("ascii")))
        else:
            skeleton.append((entry["chunk"].encode("latin-1"), blob_at(blobs, entry)))
    if not skeleton or skeleton[0][0] != b"IHDR":
        raise SideDataError("image side data: the PNG skeleton does not start with IHDR")
    ihdr = png.parse_header(skeleton[0][1])
    streams = [png.encode_stream(ihdr, assemble_samples(meta, planes, blobs))
               for meta in header["streams"]]
    if len(streams) != sum(png.is_stream_marker(ctype) for ctype, _ in skeleton):
        raise SideDataError("image side data: PNG streams do not match the skeleton")
    return png.build(tuple(skeleton), streams)


def _charge_png_frames(parts: png.PngParts, budget: Budget) -> None:
    """Pixels a decoder materialises: the canvas once per frame (APNG frames are composited,
    and acTL may declare billions of them) and each frame's own rectangle."""
    actl = next((p for c, p in parts.skeleton if c == b"acTL"), None)
    frames = struct.unpack(">I", actl[:4])[0] if actl and len(actl) == 8 else 1
    budget.charge((parts.header.width, parts.header.height), max(frames, 1))
    for height, width in parts.stream_sizes[1:]:
        budget.charge((width, height))


def _png_chunk_lines(parts: png.PngParts) -> list[str]:
    lines = []
    for ctype, payload in parts.skeleton:
        if ctype in (b"IHDR", b"IEND") or png.is_stream_marker(ctype):
            continue
        label = _PNG_NAMES.get(ctype, "chunk")
        lines.append(f"{label} ({ctype.decode('latin-1')}) {len(payload)} B kept verbatim")
    if parts.header.interlace:
        lines.append("Adam7 interlacing dropped (pixels unchanged)")
    return lines


# --- GIF ---------------------------------------------------------------------------------------


def split_gif(data: bytes, budget: Budget) -> Parts:
    parts = gif.take_apart(data)
    canvas_h, canvas_w = parts.canvas
    for height, width in parts.stream_sizes:  # composited onto the canvas, frame by frame
        budget.charge((max(width, canvas_w), max(height, canvas_h)))
    out, lines, streams = BlobWriter(), [], []
    planes: list[np.ndarray] = []
    many = len(parts.stream_sizes) > 1
    for index, (size, laced, lzw) in enumerate(zip(parts.stream_sizes, parts.stream_interlaced,
                                                   parts.stream_data)):
        indices = gif.decode_stream(size, laced, lzw)
        meta, more = allocate_samples(indices[..., np.newaxis], 0, out, planes,
                                      f"frame {index}" if many else "image", "palette indices")
        streams.append(meta)
        lines += more
    pieces = [{"stream": "LZW"} if piece is None else out.ref(piece) for piece in parts.pieces]
    lines.insert(0, f"source: GIF {canvas_w}×{canvas_h}, {len(streams)} image(s); every "
                    "extension (delays, disposal, transparency, loop, comments) kept verbatim")
    if any(parts.stream_interlaced):
        lines.append("GIF interlacing dropped (pixels unchanged)")
    return {"header": {"kind": "gif", "pieces": pieces, "streams": streams,
                       "source_format": "GIF", "output_format": "GIF", "extension": ".gif"},
            "blobs": out.blobs, "planes": planes, "lines": lines, "lossy": False}


def join_gif(header: dict[str, Any], planes: Sequence[np.ndarray],
             blobs: Sequence[bytes]) -> bytes:
    pieces = tuple(None if "stream" in piece else blob_at(blobs, piece)
                   for piece in header["pieces"])
    streams = [gif.encode_stream(assemble_samples(meta, planes, blobs)[..., 0])
               for meta in header["streams"]]
    if len(streams) != sum(piece is None for piece in pieces):
        raise SideDataError("image side data: GIF streams do not match the skeleton")
    return gif.build(pieces, streams)
