"""Classical lossless codecs that Bit-Swap is measured against.

``bswd compress --compare``, ``bswd eval`` and ``bswd bench`` report our size and speed next to
the codecs a user would otherwise pick, so the claim "smaller than WebP / JPEG XL" (DESIGN §7) is
checked on the same pixels in the same run. Everything here is a pure function on a uint8 numpy
array (H×W×3 RGB, H×W×1 or H×W grey); nothing prints or touches files.

Settings, chosen as the strongest setting a user commonly reaches for, not exotic tuning:

- ``gzip`` level 9, ``bzip2`` level 9 and ``xz`` preset 6 (the xz default) on the raw bytes, the
  floor any image codec must beat. Preset 9 only enlarges the dictionary beyond 8 MiB, which
  gives the same size on images of a few MB and costs time, so the default is kept.
- ``png``: Pillow ``optimize=True`` (zlib level 9 plus per-row filter search). It costs about the
  same time as ``compress_level=9`` alone and is ~4 % smaller on photos, so comparing against
  the weaker file would flatter us.
- ``webp``: lossless, ``method=4, quality=80`` (Pillow's and close to cwebp's defaults, written
  out so a Pillow change cannot move the baseline). ``webp-z9``: ``method=6, quality=100``
  (``cwebp -z 9``), the strongest setting; ~40× slower to encode for a fraction of a percent.
- ``jxl``: JPEG XL lossless via imagecodecs, effort 7 (the libjxl default); ``jxl-e9``: effort 9.
  Effort 10 exists but is about twice as slow again as 9 and few people use it. libjxl gets
  every CPU core, as ``cjxl`` does by default; bswd is also timed on all cores.

``QUICK_CODECS`` leaves out the slow settings, for ``--compare`` on large photographs.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, features

Shape = tuple[int, ...]


@dataclass(frozen=True)
class CodecResult:
    """Size and timing of one codec on one image.

    ``unavailable`` holds the reason when the codec could not run (library missing, image too
    large for the format); size and times are then 0 and ``lossless`` is False.
    """

    name: str
    size_bytes: int
    encode_s: float
    decode_s: float
    lossless: bool
    unavailable: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def bits_per_dim(self, n_subpixels: int) -> float:
        """Coded bits per subpixel, the unit of the Bit-Swap paper (8.0 = no compression).

        >>> CodecResult("x", 3, 0.0, 0.0, True).bits_per_dim(12)
        2.0
        """
        return 8.0 * self.size_bytes / n_subpixels


@dataclass(frozen=True)
class ClassicalCodec:
    """One registry entry: a pair of inverse functions plus a check that they can run.

    ``encode`` gets the image as H×W or H×W×3 uint8; ``decode`` gets the bytes and that shape
    (the raw-byte codecs need it to rebuild the array). ``unavailable`` returns a reason or None.
    """

    name: str
    settings: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes, Shape], np.ndarray]
    unavailable: Callable[[np.ndarray], str | None]


def _always_available(image: np.ndarray) -> str | None:
    return None


def _raw_decoder(decompress: Callable[[bytes], bytes]) -> Callable[[bytes, Shape], np.ndarray]:
    def decode(data: bytes, shape: Shape) -> np.ndarray:
        return np.frombuffer(decompress(data), dtype=np.uint8).reshape(shape)

    return decode


def _pillow_encoder(fmt: str, **options: object) -> Callable[[np.ndarray], bytes]:
    def encode(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, fmt, **options)
        return buffer.getvalue()

    return encode


def _pillow_decode(data: bytes, shape: Shape) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        out = np.array(im)
    # WebP has no grey mode: Pillow stores L as RGB. Fold back only if the channels agree, so a
    # codec that changed a channel still fails the lossless check.
    if len(shape) == 2 and out.ndim == 3 and bool((out == out[..., :1]).all()):
        out = out[..., 0]
    return out


_WEBP_MAX_SIDE = 16383  # hard limit of the WebP bitstream (14-bit width and height)


def _webp_unavailable(image: np.ndarray) -> str | None:
    if not features.check("webp"):
        return "Pillow was built without WebP support"
    if max(image.shape[:2]) > _WEBP_MAX_SIDE:
        return f"WebP images are limited to {_WEBP_MAX_SIDE} pixels a side"
    return None


def _jxl_unavailable(image: np.ndarray) -> str | None:
    try:
        import imagecodecs
    except ImportError:
        return "imagecodecs is not installed"
    if not imagecodecs.JPEGXL.available:
        return "imagecodecs was built without JPEG XL (libjxl)"
    return None


def _jxl_encoder(effort: int) -> Callable[[np.ndarray], bytes]:
    def encode(image: np.ndarray) -> bytes:
        import imagecodecs

        return bytes(
            imagecodecs.jpegxl_encode(
                image, lossless=True, effort=effort, numthreads=os.cpu_count() or 1
            )
        )

    return encode


def _jxl_decode(data: bytes, shape: Shape) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpegxl_decode(data, numthreads=os.cpu_count() or 1))


def _registry(codecs: Iterable[ClassicalCodec]) -> Mapping[str, ClassicalCodec]:
    """An ordered, read-only name → codec mapping (tests build their own and pass it in)."""
    return MappingProxyType({codec.name: codec for codec in codecs})


CLASSICAL_CODECS: Mapping[str, ClassicalCodec] = _registry(
    [
        ClassicalCodec(
            "gzip", "level 9 on raw bytes",
            lambda a: gzip.compress(a.tobytes(), compresslevel=9, mtime=0),
            _raw_decoder(gzip.decompress), _always_available,
        ),
        ClassicalCodec(
            "bzip2", "level 9 on raw bytes",
            lambda a: bz2.compress(a.tobytes(), compresslevel=9),
            _raw_decoder(bz2.decompress), _always_available,
        ),
        ClassicalCodec(
            "xz", "LZMA preset 6 (default) on raw bytes",
            lambda a: lzma.compress(a.tobytes(), preset=6),
            _raw_decoder(lzma.decompress), _always_available,
        ),
        ClassicalCodec(
            "png", "Pillow optimize=True (zlib 9, filter search)",
            _pillow_encoder("PNG", optimize=True), _pillow_decode, _always_available,
        ),
        ClassicalCodec(
            "webp", "lossless, method 4, quality 80",
            _pillow_encoder("WEBP", lossless=True, method=4, quality=80),
            _pillow_decode, _webp_unavailable,
        ),
        ClassicalCodec(
            "webp-z9", "lossless, method 6, quality 100 (cwebp -z 9)",
            _pillow_encoder("WEBP", lossless=True, method=6, quality=100),
            _pillow_decode, _webp_unavailable,
        ),
        ClassicalCodec(
            "jxl", "JPEG XL lossless, effort 7 (default)",
            _jxl_encoder(7), _jxl_decode, _jxl_unavailable,
        ),
        ClassicalCodec(
            "jxl-e9", "JPEG XL lossless, effort 9",
            _jxl_encoder(9), _jxl_decode, _jxl_unavailable,
        ),
    ]
)

QUICK_CODECS: tuple[str, ...] = ("gzip", "png", "webp", "jxl")
"""Codecs fast enough to run on every ``--compare`` of a multi-megapixel photo."""


def as_image(array: np.ndarray) -> np.ndarray:
    """Check dtype and shape and return the H×W or H×W×3 view the image codecs accept.

    H×W×1 becomes H×W because PNG, WebP and JPEG XL store grey without a channel axis.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected an H×W, H×W×1 or H×W×3 image, got shape {array.shape}")
    if min(array.shape[:2]) == 0:
        raise ValueError(f"empty image, shape {array.shape}")
    return np.ascontiguousarray(array)


def measure(
    name: str,
    array: np.ndarray,
    clock: Callable[[], float] = time.perf_counter,
    *,
    registry: Mapping[str, ClassicalCodec] = CLASSICAL_CODECS,
) -> CodecResult:
    """Encode and decode ``array`` with one codec, timing both and checking exact equality.

    A codec that cannot run here gives a result with ``unavailable`` set instead of raising,
    so one missing library does not sink a whole comparison. An unknown name is a caller bug
    and raises ValueError.
    """
    if name not in registry:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(registry)}")
    codec = registry[name]
    image = as_image(array)
    reason = codec.unavailable(image)
    if reason is not None:
        return CodecResult(name, 0, 0.0, 0.0, lossless=False, unavailable=reason)
    t0 = clock()
    data = codec.encode(image)
    t1 = clock()
    decoded = codec.decode(data, image.shape)
    t2 = clock()
    lossless = decoded.shape == image.shape and bool(np.array_equal(decoded, image))
    return CodecResult(name, len(data), t1 - t0, t2 - t1, lossless)


def compare(
    array: np.ndarray,
    names: Sequence[str] | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
    registry: Mapping[str, ClassicalCodec] = CLASSICAL_CODECS,
) -> list[CodecResult]:
    """Measure each named codec (all of ``registry`` by default), in registry order if unnamed."""
    return [
        measure(name, array, clock, registry=registry)
        for name in (registry if names is None else names)
    ]


_HEADER = ("codec", "bytes", "% raw", "bits/dim", "enc MB/s", "dec MB/s")


def _mb_per_s(n_bytes: int, seconds: float) -> str:
    return "-" if seconds <= 0 else f"{n_bytes / seconds / 1e6:.2f}"


def _cells(
    row: CodecResult | Mapping[str, Any], n_bytes_raw: int | None, n_subpixels: int | None
) -> tuple[list[str], str]:
    """One row's six cells and its trailing note ("" when there is nothing to say)."""
    if isinstance(row, CodecResult):
        name, size, enc_s, dec_s = row.name, row.size_bytes, row.encode_s, row.decode_s
        lossless, unavailable = row.lossless, row.unavailable
    else:
        name, size = str(row["name"]), int(row["size_bytes"])
        enc_s, dec_s = float(row["encode_s"]), float(row["decode_s"])
        lossless, unavailable = bool(row.get("lossless", True)), row.get("unavailable")
        n_bytes_raw = row.get("n_bytes_raw", n_bytes_raw)
        n_subpixels = row.get("n_subpixels", n_subpixels)
    if unavailable is not None:
        return [name, "-", "-", "-", "-", "-"], f"unavailable: {unavailable}"
    if n_bytes_raw is None:
        raise ValueError(f"row {name!r}: n_bytes_raw is needed for % raw and MB/s")
    n_bytes_raw = int(n_bytes_raw)
    n_sub = n_bytes_raw if n_subpixels is None else int(n_subpixels)
    cells = [
        name,
        f"{size:,}",
        f"{100.0 * size / n_bytes_raw:.1f}",
        f"{8.0 * size / n_sub:.3f}",
        _mb_per_s(n_bytes_raw, enc_s),
        _mb_per_s(n_bytes_raw, dec_s),
    ]
    return cells, "" if lossless else "NOT LOSSLESS"


def format_table(
    rows: Sequence[CodecResult | Mapping[str, Any]],
    *,
    n_bytes_raw: int | None = None,
    n_subpixels: int | None = None,
) -> str:
    """Render results as an aligned plain-text table, for the CLI to print.

    Rows are ``CodecResult``s or mappings with ``name``, ``size_bytes``, ``encode_s``,
    ``decode_s`` and optionally ``lossless`` (default True), ``unavailable``, ``n_bytes_raw``
    and ``n_subpixels`` (overriding the keyword defaults), so a bswd row sits among the
    classical ones. MB/s is raw bytes / seconds / 1e6 (raw RGB throughput, as DESIGN §7 asks);
    ``n_subpixels`` defaults to ``n_bytes_raw`` (one byte per subpixel). "-" marks a time of 0.

    >>> print(format_table([{"name": "a", "size_bytes": 1500, "encode_s": 0.001,
    ...                      "decode_s": 0.0}], n_bytes_raw=3000))
    codec  bytes  % raw  bits/dim  enc MB/s  dec MB/s
    -----  -----  -----  --------  --------  --------
    a      1,500   50.0     4.000      3.00         -
    """
    body = [_cells(row, n_bytes_raw, n_subpixels) for row in rows]
    table = [list(_HEADER)] + [cells for cells, _ in body]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADER))]

    def render(cells: list[str], note: str) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join(parts + ([note] if note else [])).rstrip()

    lines = [render(list(_HEADER), ""), render(["-" * w for w in widths], "")]
    lines += [render(cells, note) for cells, note in body]
    return "\n".join(lines)
