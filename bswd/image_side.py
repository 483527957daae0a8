"""Side data of a split image: the versioned, self-describing bytes that rebuild the file.

The learned model codes only 8-bit planes; everything else an image file needs to come back
(format, mode, palette, alpha and 16-bit low bytes, frame timing, ICC, EXIF, text chunks...) is
kept here. The layout is deliberately boring so that it stays readable forever:

    magic b"BSWS" | version u8 | header length u32 BE | header (UTF-8 JSON) |
    blob count u32 BE | per blob: length u64 BE, bytes

The JSON header refers to binary values by blob index (``{"blob": 3}``), so no bytes are ever
base64'd or re-encoded, and ICC/EXIF/text payloads come back byte-identical.

Planes that the model does not code go through a classical lossless codec, named in the header
so a later release can still read it: ``"png"`` (libpng via imagecodecs: filtering plus
deflate, good for alpha, palette indices and 16-bit low bytes) for uint8/uint16 arrays with 1-4
channels, and ``"zlib"`` over the raw little-endian bytes for anything else.

>>> side = pack_side({"format": "PNG"}, [b"abc"])
>>> unpack_side(side)
({'format': 'PNG'}, [b'abc'])
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import imagecodecs
import numpy as np

SIDE_MAGIC = b"BSWS"
SIDE_VERSION = 1
_HEAD = struct.Struct(">4sBI")
_COUNT = struct.Struct(">I")
_LEN = struct.Struct(">Q")


class SideDataError(ValueError):
    """The side data is malformed, of an unknown version, or does not fit the planes."""


def pack_side(header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    """Serialize a JSON header and its binary blobs (see the module docstring for the layout)."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False)
    head = text.encode("utf-8")
    parts = [_HEAD.pack(SIDE_MAGIC, SIDE_VERSION, len(head)), head, _COUNT.pack(len(blobs))]
    for blob in blobs:
        parts += [_LEN.pack(len(blob)), bytes(blob)]
    return b"".join(parts)


def unpack_side(side: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of pack_side; every length is checked so a damaged side fails loudly."""
    view = memoryview(side)
    if len(view) < _HEAD.size:
        raise SideDataError("image side data is too short")
    magic, version, head_len = _HEAD.unpack_from(view, 0)
    if magic != SIDE_MAGIC:
        raise SideDataError("image side data has a bad magic")
    if version != SIDE_VERSION:
        raise SideDataError(f"image side data version {version} is not supported")
    pos = _HEAD.size
    try:
        header = json.loads(_take(view, pos, head_len).decode("utf-8"))
    except ValueError as exc:  # bad UTF-8 or JSON
        raise SideDataError(f"image side data header is not JSON ({exc})") from exc
    pos += head_len
    (count,) = _COUNT.unpack(_take(view, pos, _COUNT.size))
    pos += _COUNT.size
    blobs = []
    for _ in range(count):
        (length,) = _LEN.unpack(_take(view, pos, _LEN.size))
        pos += _LEN.size
        blobs.append(_take(view, pos, length))
        pos += length
    if pos != len(view):
        raise SideDataError("image side data has trailing bytes")
    if not isinstance(header, dict):
        raise SideDataError("image side data header is not an object")
    return header, blobs


def _take(view: memoryview, pos: int, length: int) -> bytes:
    if pos + length > len(view):
        raise SideDataError("image side data is truncated")
    return bytes(view[pos : pos + length])


class BlobWriter:
    """Collects blobs while a header is built; ``ref`` returns the JSON reference to one."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def ref(self, data: bytes) -> dict[str, int]:
        self.blobs.append(bytes(data))
        return {"blob": len(self.blobs) - 1}


def blob_at(blobs: Sequence[bytes], ref: Any) -> bytes:
    """Resolve a ``{"blob": i}`` reference, refusing anything else."""
    if not (isinstance(ref, dict) and isinstance(ref.get("blob"), int)):
        raise SideDataError(f"image side data: expected a blob reference, got {ref!r}")
    index = ref["blob"]
    if not 0 <= index < len(blobs):
        raise SideDataError(f"image side data: blob {index} is missing")
    return blobs[index]


# --- JSON values that may hold bytes and tuples (Pillow info values) -------------------------


def to_json(value: Any, out: BlobWriter) -> Any:
    """Encode an info value: bytes become blob refs, tuples are tagged so they come back as
    tuples (Pillow cares: ``dpi`` and ``transparency`` are tuples), other types are refused."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError("non-finite float")
        return value
    if isinstance(value, (bytes, bytearray)):
        return out.ref(bytes(value))
    if isinstance(value, (tuple, list)):
        items = [to_json(v, out) for v in value]
        return {"tuple": items} if isinstance(value, tuple) else {"list": items}
    raise TypeError(f"cannot store a {type(value).__name__}")


def from_json(value: Any, blobs: Sequence[bytes]) -> Any:
    """Inverse of to_json."""
    if isinstance(value, dict):
        if "blob" in value:
            return blob_at(blobs, value)
        if "tuple" in value:
            return tuple(from_json(v, blobs) for v in value["tuple"])
        if "list" in value:
            return [from_json(v, blobs) for v in value["list"]]
        raise SideDataError(f"image side data: unknown value {value!r}")
    return value


# --- classical lossless plane codec ----------------------------------------------------------


def encode_array(array: np.ndarray, out: BlobWriter) -> dict[str, Any]:
    """Code one array losslessly and return its JSON description (codec, dtype, shape, blob)."""
    array = np.ascontiguousarray(array)
    meta: dict[str, Any] = {"dtype": array.dtype.str, "shape": list(array.shape)}
    if _png_fits(array):
        image = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
        data = bytes(imagecodecs.png_encode(image))
        meta["codec"] = "png"
    else:
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        data = zlib.compress(little.tobytes(), 9)
        meta["dtype"] = little.dtype.str
        meta["codec"] = "zlib"
    meta.update(out.ref(data))
    return meta


def decode_array(meta: dict[str, Any], blobs: Sequence[bytes]) -> np.ndarray:
    """Inverse of encode_array; the result has exactly the recorded dtype and shape."""
    try:
        dtype = np.dtype(meta["dtype"])
        shape = tuple(int(n) for n in meta["shape"])
        codec = meta["codec"]
    except (KeyError, TypeError, ValueError) as exc:
        raise SideDataError(f"image side data: bad array description {meta!r}") from exc
    data = blob_at(blobs, meta)
    try:
        if codec == "png":
            array = np.asarray(imagecodecs.png_decode(data))
        elif codec == "zlib":
            array = np.frombuffer(zlib.decompress(data), dtype=dtype)
        else:
            raise SideDataError(f"image side data: unknown plane codec {codec!r}")
    except (zlib.error, imagecodecs.PngError, ValueError) as exc:
        raise SideDataError(f"image side data: a classical plane does not decode ({exc})") \
            from exc
    if array.size != int(np.prod(shape)):
        raise SideDataError("image side data: a classical plane has the wrong size")
    return np.ascontiguousarray(array.astype(dtype, copy=False).reshape(shape))


def _png_fits(array: np.ndarray) -> bool:
    """PNG holds 8/16-bit unsigned samples with 1-4 channels and sides of 1..2^31-1."""
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or array.size == 0:
        return False
    return array.ndim == 2 or 1 <= array.shape[2] <= 4


# --- sample arrays <-> model planes + classical arrays ------------------------------------------


def allocate_samples(samples: np.ndarray, colour: int, out: BlobWriter, planes: list[np.ndarray],
                     label: str, kind: str = "") -> tuple[dict[str, Any], list[str]]:
    """Give the model what it codes well and the classical codec the rest.

    ``samples`` is H×W×C uint8 or uint16; its first ``colour`` channels (1 or 3; 0 for none) are
    natural intensities. 8-bit colour goes to the model as is; of 16-bit colour the model gets
    the high bytes (an ordinary-looking 8-bit image) and PNG/deflate the noisy low bytes. Alpha,
    palette indices and low-depth samples are not intensities the model was trained on, so they
    always go classical. ``kind`` names the classical rest in the description lines.

    >>> planes: list[np.ndarray] = []
    >>> meta, lines = allocate_samples(np.zeros((2, 2, 4), np.uint8), 3, BlobWriter(), planes,
    ...                                "image")
    >>> [p.shape for p in planes], lines[0]
    ([(2, 2, 3)], 'image: RGB 8-bit via model')
    """
    height, width, channels = samples.shape
    meta: dict[str, Any] = {"shape": [height, width, channels], "dtype": samples.dtype.str,
                            "colour": colour, "classical": []}
    wide = samples.dtype == np.uint16
    lines = []
    if colour:
        head = samples[..., :colour]
        meta["plane"] = len(planes)
        planes.append(np.ascontiguousarray((head >> 8) if wide else head, dtype=np.uint8))
        what = {1: "grey", 3: "RGB"}[colour]
        lines.append(f"{label}: {what} {'high bytes' if wide else '8-bit'} via model")
        if wide:
            low = np.ascontiguousarray(head & 0xFF, dtype=np.uint8)
            meta["classical"].append(encode_array(low, out))
            lines.append(f"{label}: {what} low bytes via {_last_codec(meta, out)}")
    rest = samples[..., colour:]
    if rest.shape[2]:
        meta["classical"].append(encode_array(rest, out))
        kind = kind or ("alpha" if colour else "samples")
        lines.append(f"{label}: {kind} ({samples.dtype.itemsize * 8}-bit) via "
                     f"{_last_codec(meta, out)}")
    return meta, lines


def assemble_samples(meta: dict[str, Any], planes: Sequence[np.ndarray],
                     blobs: Sequence[bytes]) -> np.ndarray:
    """Inverse of allocate_samples, checking every shape against the side data."""
    try:
        height, width, channels = (int(n) for n in meta["shape"])
        dtype = np.dtype(meta["dtype"])
        colour = int(meta["colour"])
        classical = [decode_array(m, blobs) for m in meta["classical"]]
        index = int(meta.get("plane", -1))
    except (KeyError, TypeError, ValueError) as exc:
        raise SideDataError(f"image side data: bad sample description ({exc})") from exc
    parts = []
    if colour:
        if not 0 <= index < len(planes) or planes[index].shape != (height, width, colour):
            raise SideDataError(f"model plane {index} does not have shape "
                                f"{(height, width, colour)}")
        head = planes[index].astype(dtype)
        if dtype == np.uint16:
            head = (head << 8) | classical.pop(0).astype(dtype)
        parts.append(head)
    parts += [c.astype(dtype, copy=False) for c in classical]
    if not parts:
        raise SideDataError("image side data: a frame has no samples")
    samples = np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]
    if samples.shape != (height, width, channels):
        raise SideDataError("classical planes do not match the recorded image shape")
    return np.ascontiguousarray(samples)


def _last_codec(meta: dict[str, Any], out: BlobWriter) -> str:
    last = meta["classical"][-1]
    size = len(out.blobs[last["blob"]])
    return f"{last['codec']} ({size} B)" if size < 1024 else f"{last['codec']} " \
        f"({size / 1024:.1f} KB)"
