"""PNG and APNG at the chunk level: keep every chunk but the pixel data byte for byte.

Pillow hides what a PNG really holds (16-bit RGB opens as 8-bit RGB, 2-bit grey as scaled
8-bit L, APNG frames come back composited), so re-saving through Pillow cannot promise the same
file. Here a PNG is split into

* a *skeleton*: every chunk in file order (IHDR, PLTE, tRNS, iCCP, eXIf, tEXt/zTXt/iTXt, pHYs,
  acTL, fcTL, private chunks...), copied verbatim, with one marker per pixel stream;
* *streams*: the default image (IDAT) and each APNG frame (fdAT), decoded to their raw samples
  (H×W×C, uint8 or big-endian-faithful uint16, sub-byte depths as small integers).

Rebuilding re-encodes only the streams, in the original bit depth and colour type, and puts them
back between the untouched chunks. The result is pixel- and metadata-identical; only the deflate
bytes (and Adam7 interlacing, which is dropped) may differ.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_VALID_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_IHDR = struct.Struct(">IIBBBBB")
_FCTL_SIZE = struct.Struct(">II")  # width, height right after the sequence number
STREAM_MARKER = b"\x00stream"  # skeleton marker; never a real chunk type (those are letters)
_MAX_CHUNK = 1 << 30


class PngFormatError(ValueError):
    """A PNG that cannot be taken apart; ``truncated`` tells a cut file from a damaged one."""

    def __init__(self, reason: str, *, truncated: bool = False) -> None:
        super().__init__(reason)
        self.truncated = truncated


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    depth: int
    ctype: int
    interlace: int

    @property
    def channels(self) -> int:
        return CHANNELS[self.ctype]


@dataclass(frozen=True)
class PngParts:
    """A PNG taken apart: verbatim chunks with stream markers, and the streams' geometry."""

    header: PngHeader
    skeleton: tuple[tuple[bytes, bytes], ...]  # (type, payload); payload unused for markers
    stream_sizes: tuple[tuple[int, int], ...]  # (height, width) per stream, in file order
    stream_data: tuple[bytes, ...]  # each stream's zlib data, as in the file


def read_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """All chunks up to IEND, CRC-checked; a cut file is reported as truncated."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngFormatError("not a PNG signature")
    chunks, pos = [], len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise PngFormatError("PNG ends before its IEND chunk", truncated=True)
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF:
            raise PngFormatError(f"PNG chunk {ctype!r} has an invalid length")
        if end > len(data):
            raise PngFormatError(f"PNG chunk {ctype.decode('latin-1')} is cut short",
                                 truncated=True)
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(ctype + payload) != crc:
            raise PngFormatError(f"PNG chunk {ctype.decode('latin-1')} has a bad CRC")
        chunks.append((ctype, payload))
        pos = end
        if ctype == b"IEND":
            return chunks


def parse_header(payload: bytes) -> PngHeader:
    if len(payload) != _IHDR.size:
        raise PngFormatError("PNG IHDR has the wrong length")
    width, height, depth, ctype, comp, filt, interlace = _IHDR.unpack(payload)
    if ctype not in CHANNELS or depth not in _VALID_DEPTHS[ctype]:
        raise PngFormatError(f"PNG colour type {ctype} with bit depth {depth} is invalid")
    if comp or filt or interlace > 1:
        raise PngFormatError("PNG uses an unknown compression, filter or interlace method")
    if width == 0 or height == 0:
        raise PngFormatError("PNG declares an empty image")
    return PngHeader(width, height, depth, ctype, interlace)


def declared_header(data: bytes) -> PngHeader:
    """IHDR of a PNG from its first 33 bytes: size and true bit depth before any decoding."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise PngFormatError("PNG has no IHDR chunk", truncated=len(data) < 33)
    return parse_header(data[16:29])


def take_apart(data: bytes) -> PngParts:
    """Split a PNG into a skeleton and zlib streams (no pixels are decoded here)."""
    chunks = read_chunks(data)
    if chunks[0][0] != b"IHDR":
        raise PngFormatError("PNG does not start with IHDR")
    header = parse_header(chunks[0][1])
    skeleton: list[tuple[bytes, bytes]] = []
    sizes: list[tuple[int, int]] = []
    streams: list[list[bytes]] = []
    frame_size: tuple[int, int] | None = None
    previous = b""
    for ctype, payload in chunks:
        if ctype == b"fcTL":
            if len(payload) != 26:
                raise PngFormatError("APNG fcTL chunk has the wrong length")
            width, height = _FCTL_SIZE.unpack_from(payload, 4)
            frame_size = (height, width)
        if ctype in (b"IDAT", b"fdAT"):
            if ctype != previous:  # a new stream starts
                size = (header.height, header.width) if ctype == b"IDAT" else frame_size
                if size is None or size[0] == 0 or size[1] == 0:
                    raise PngFormatError("APNG fdAT without a valid fcTL before it")
                skeleton.append((STREAM_MARKER, ctype))
                sizes.append(size)
                streams.append([])
                frame_size = None
            streams[-1].append(payload if ctype == b"IDAT" else payload[4:])
        else:
            skeleton.append((ctype, payload))
        previous = ctype
    if not any(kind == b"IDAT" for marker, kind in skeleton if marker == STREAM_MARKER):
        raise PngFormatError("PNG has no IDAT chunk", truncated=True)
    return PngParts(header, tuple(skeleton), tuple(sizes), tuple(b"".join(s) for s in streams))


def palette_chunk(parts: PngParts) -> bytes | None:
    return next((p for c, p in parts.skeleton if c == b"PLTE"), None)


def decode_stream(header: PngHeader, size: tuple[int, int], zdata: bytes,
                  plte: bytes | None) -> np.ndarray:
    """Raw samples of one stream as H×W×C (uint16 for 16-bit, small integers below 8 bits)."""
    height, width = size
    ihdr = _IHDR.pack(width, height, header.depth, header.ctype, 0, 0, header.interlace)
    body = _chunk(b"IHDR", ihdr)
    if plte is not None and header.ctype == 3:
        body += _chunk(b"PLTE", plte)
    synthetic = PNG_SIGNATURE + body + _chunk(b"IDAT", zdata) + _chunk(b"IEND", b"")
    if header.depth == 16:
        samples = np.asarray(imagecodecs.png_decode(synthetic))
    else:
        samples = _decode_low_depth(synthetic, header)
    return np.ascontiguousarray(samples.reshape(height, width, header.channels))


def _decode_low_depth(synthetic: bytes, header: PngHeader) -> np.ndarray:
    """Pillow decodes depths up to 8 exactly; undo its scaling of 2- and 4-bit grey."""
    with Image.open(io.BytesIO(synthetic)) as im:
        im.load()
        samples = np.asarray(im)
    if samples.dtype == bool:
        return samples.astype(np.uint8)
    if header.ctype == 0 and header.depth in (2, 4):
        return samples // (255 // ((1 << header.depth) - 1))
    return samples


def encode_stream(header: PngHeader, samples: np.ndarray) -> bytes:
    """Deflate data for one stream in the header's depth and colour type, not interlaced."""
    height, width, channels = samples.shape
    if header.depth >= 8 and header.ctype != 3:
        image = samples[..., 0] if channels == 1 else samples
        try:
            encoded = bytes(imagecodecs.png_encode(np.ascontiguousarray(image)))
        except Exception:  # imagecodecs refuses some shapes (e.g. H x 1, H >= ~300): zlib below
            encoded = b""
        chunks = read_chunks(encoded) if encoded else []
        expect = _IHDR.pack(width, height, header.depth, header.ctype, 0, 0, 0)
        if chunks and chunks[0] == (b"IHDR", expect):
            return b"".join(p for c, p in chunks if c == b"IDAT")
    rows = _pack_rows(samples, header.depth)
    filtered = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)
    return zlib.compress(filtered.tobytes(), 9)  # filter 0: best for palettes and low depths


def _pack_rows(samples: np.ndarray, depth: int) -> np.ndarray:
    """Scanline bytes (without filter byte) for any PNG depth."""
    height = samples.shape[0]
    if depth == 16:
        return samples.astype(">u2").view(np.uint8).reshape(height, -1)
    flat = samples.reshape(height, -1).astype(np.uint8)
    if depth == 8:
        return flat
    per_byte = 8 // depth
    pad = (-flat.shape[1]) % per_byte
    groups = np.pad(flat, ((0, 0), (0, pad))).reshape(height, -1, per_byte)
    shifts = np.arange(per_byte - 1, -1, -1, dtype=np.uint8) * depth
    return np.bitwise_or.reduce(groups << shifts, axis=2).astype(np.uint8)


def build(parts_skeleton: tuple[tuple[bytes, bytes], ...], streams: list[bytes]) -> bytes:
    """Put re-encoded streams back into the skeleton; APNG sequence numbers are renumbered
    because a stream may now take a different number of fdAT chunks."""
    out = [PNG_SIGNATURE]
    sequence = 0
    pending = iter(streams)
    for ctype, payload in parts_skeleton:
        if ctype == STREAM_MARKER:
            zdata = next(pending)
            for start in range(0, max(len(zdata), 1), _MAX_CHUNK):
                piece = zdata[start : start + _MAX_CHUNK]
                if payload == b"IDAT":
                    out.append(_chunk(b"IDAT", piece))
                else:
                    out.append(_chunk(b"fdAT", struct.pack(">I", sequence) + piece))
                    sequence += 1
        elif ctype == b"fcTL":
            out.append(_chunk(b"fcTL", struct.pack(">I", sequence) + payload[4:]))
            sequence += 1
        elif ctype == b"IHDR":
            out.append(_chunk(b"IHDR", payload[:12] + b"\x00"))  # written non-interlaced
        else:
            out.append(_chunk(ctype, payload))
    return b"".join(out)


def is_stream_marker(ctype: bytes) -> bool:
    return ctype == STREAM_MARKER


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload)
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)
