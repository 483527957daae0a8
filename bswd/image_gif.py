"""GIF at the block level: keep every block but the LZW pixel data byte for byte.

Pillow shows an animated GIF composited (later frames as RGB/RGBA, transparency and disposal
applied), and re-saving those frames does not reproduce the same animation. So, as for PNG, a
GIF is split into a *skeleton* (header, screen descriptor, colour tables, graphic-control,
comment and application extensions, image descriptors, trailer: all verbatim) and *streams*:
each image's LZW data, decoded to its raw palette indices (H×W uint8).

Rebuilding LZW-encodes the indices again (Pillow's encoder on a one-frame GIF, whose data is
lifted out) and clears the interlace flag, since the new data is written row by row. Every
disposal method, delay, transparency index and palette stays exactly as it was.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

_HEADERS = (b"GIF87a", b"GIF89a")
_DESCRIPTOR = struct.Struct("<HHHHB")  # left, top, width, height, packed flags
_INTERLACED = 0x40
# decode/encode streams against a 256-colour, non-grey palette, so Pillow keeps raw indices
# ("P" mode) and any index 0..255 is valid whatever the file's own colour tables hold
_NEUTRAL_PALETTE = bytes(v for i in range(256) for v in (i, 255 - i, 7))


class GifFormatError(ValueError):
    """A GIF that cannot be taken apart; ``truncated`` tells a cut file from a damaged one."""

    def __init__(self, reason: str, *, truncated: bool = False) -> None:
        super().__init__(reason)
        self.truncated = truncated


@dataclass(frozen=True)
class GifParts:
    """Verbatim pieces (``None`` marks where a stream goes) and the streams' geometry."""

    canvas: tuple[int, int]  # (height, width) of the logical screen
    pieces: tuple[bytes | None, ...]
    stream_sizes: tuple[tuple[int, int], ...]  # (height, width)
    stream_interlaced: tuple[bool, ...]
    stream_data: tuple[bytes, ...]  # LZW minimum code size byte + data sub-blocks


def take_apart(data: bytes) -> GifParts:
    """Walk the block structure; no pixels are decoded here."""
    if data[:6] not in _HEADERS:
        raise GifFormatError("not a GIF header")
    _need(data, 13)
    width, height, packed = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (_table_size(packed) if packed & 0x80 else 0)
    _need(data, pos)
    pieces: list[bytes | None] = [data[:pos]]
    sizes, laced, streams = [], [], []
    while pos < len(data):
        kind = data[pos]
        if kind == 0x3B:  # trailer
            pieces.append(data[pos:])
            break
        if kind == 0x21:  # extension: label, then data sub-blocks
            end = _skip_sub_blocks(data, pos + 2)
            pieces.append(data[pos:end])
        elif kind == 0x2C:  # image descriptor, optional local table, LZW data
            _need(data, pos + 10)
            _, _, w, h, flags = _DESCRIPTOR.unpack_from(data, pos + 1)
            if w == 0 or h == 0:
                raise GifFormatError("GIF image descriptor declares an empty image")
            head_end = pos + 10 + (_table_size(flags) if flags & 0x80 else 0)
            end = _skip_sub_blocks(data, head_end + 1)
            pieces += [data[pos:head_end], None]
            sizes.append((h, w))
            laced.append(bool(flags & _INTERLACED))
            streams.append(data[head_end:end])
        else:
            raise GifFormatError(f"unknown GIF block 0x{kind:02x}")
        pos = end
    if not streams:
        raise GifFormatError("GIF holds no image", truncated=True)
    return GifParts((height, width), tuple(pieces), tuple(sizes), tuple(laced), tuple(streams))


def decode_stream(size: tuple[int, int], interlaced: bool, lzw: bytes) -> np.ndarray:
    """Raw palette indices (H×W uint8) of one image's LZW data."""
    with Image.open(io.BytesIO(_one_frame_gif(size, interlaced, lzw))) as im:
        im.load()
        if im.mode != "P":
            raise GifFormatError(f"GIF frame decoded as {im.mode}, not palette indices")
        return np.ascontiguousarray(np.asarray(im), dtype=np.uint8)


def encode_stream(indices: np.ndarray) -> bytes:
    """LZW data (code size byte + sub-blocks) for an index raster, not interlaced."""
    im = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
    im.putpalette(_NEUTRAL_PALETTE)
    buffer = io.BytesIO()
    im.save(buffer, "GIF", optimize=False, interlace=False)
    parts = take_apart(buffer.getvalue())
    return parts.stream_data[0]


def build(pieces: tuple[bytes | None, ...], streams: list[bytes]) -> bytes:
    """Put streams back; each stream's image descriptor loses its interlace flag."""
    out: list[bytes] = []
    pending = iter(streams)
    for index, piece in enumerate(pieces):
        if piece is None:
            out.append(next(pending))
            continue
        following = index + 1 < len(pieces) and pieces[index + 1] is None
        if following and piece[:1] == b"\x2c":
            piece = piece[:9] + bytes([piece[9] & ~_INTERLACED & 0xFF]) + piece[10:]
        out.append(piece)
    return b"".join(out)


def _one_frame_gif(size: tuple[int, int], interlaced: bool, lzw: bytes) -> bytes:
    height, width = size
    screen = struct.pack("<HHBBB", width, height, 0xF7, 0, 0)
    flags = _INTERLACED if interlaced else 0
    descriptor = b"\x2c" + _DESCRIPTOR.pack(0, 0, width, height, flags)
    return b"GIF89a" + screen + _NEUTRAL_PALETTE + descriptor + lzw + b"\x3b"


def _table_size(flags: int) -> int:
    return 3 << ((flags & 0x07) + 1)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """Position after a run of data sub-blocks and its zero terminator."""
    while True:
        _need(data, pos + 1)
        length = data[pos]
        pos += 1
        if length == 0:
            return pos
        pos += length


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise GifFormatError("GIF ends in the middle of a block", truncated=True)
