"""Every image kind through the whole pipeline (split -> model codec -> .bsw -> decode -> join),
checked the way cases/README.md checks: same mode, size, frames, palette, transparency, ICC, and
equal pixels for every frame (issue 4, BUG-09/12 through the real codec, not an identity stub)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from bswd import container
from bswd.files import compress_images, decompress_many
from bswd.images import split_image
from tests.conftest import noise


def png(w, h, depth, ctype, rows):
    def ck(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + ck(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
            + ck(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows))) + ck(b"IEND", b""))


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def frames(data: bytes) -> tuple[Image.Image, list[np.ndarray]]:
    im = Image.open(io.BytesIO(data))
    out = []
    for i in range(getattr(im, "n_frames", 1)):
        im.seek(i)
        out.append(np.asarray(im).copy())
    im.seek(0)
    return im, out


def same_image(a: bytes, b: bytes) -> None:
    ia, fa = frames(a)
    ib, fb = frames(b)
    assert (ia.mode, ia.size, len(fa)) == (ib.mode, ib.size, len(fb))
    assert ia.info.get("icc_profile") == ib.info.get("icc_profile")
    assert ia.info.get("transparency") == ib.info.get("transparency")
    if ia.mode == "P":
        assert ia.getpalette() == ib.getpalette()
    for x, y in zip(fa, fb):
        assert np.array_equal(x, y)


rgb = noise(21, 35, seed=1)
CASES = {
    "rgb-png": lambda: encoded(Image.fromarray(rgb), "PNG"),
    "rgba-png": lambda: encoded(Image.fromarray(noise(21, 35, 4, seed=2)), "PNG"),
    "grey-png": lambda: encoded(Image.fromarray(noise(30, 30, 1, seed=3)[..., 0]), "PNG"),
    "la-png": lambda: encoded(Image.fromarray(noise(17, 9, 2, seed=4), "LA"), "PNG"),
    "palette-transparency-png": lambda: encoded(Image.fromarray(rgb).quantize(16), "PNG", transparency=3),
    "bilevel-png": lambda: encoded(Image.fromarray(rgb).convert("1"), "PNG"),
    "rgb16-png-bug09": lambda: png(2, 1, 16, 2, [struct.pack(">6H", 1, 256, 65535, 257, 0, 1)]),
    "grey16-png-bug09": lambda: png(4, 1, 16, 0, [struct.pack(">4H", 0, 256, 32768, 65535)]),
    "icc-png-bug12": lambda: encoded(Image.fromarray(rgb[:16, :16]), "PNG", icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("sRGB")).tobytes()),
    "cmyk-tiff": lambda: encoded(Image.new("CMYK", (16, 16), (10, 20, 30, 40)), "TIFF"),
    "rgb-tiff-2pages": lambda: encoded(Image.fromarray(rgb), "TIFF", save_all=True,
                                       append_images=[Image.fromarray(noise(8, 8, seed=5))]),
    "tall-grey-png": lambda: encoded(Image.fromarray(noise(3000, 1, 1, seed=7)[..., 0]), "PNG"),
    "bmp": lambda: encoded(Image.fromarray(rgb), "BMP"),
    "ppm": lambda: encoded(Image.fromarray(rgb), "PPM"),
    "gif-anim": lambda: encoded(Image.fromarray(rgb).quantize(32), "GIF", save_all=True,
                                append_images=[Image.fromarray(noise(21, 35, seed=6)).quantize(32)], duration=[50, 70],
                                loop=0),
    "webp-lossless": lambda: encoded(Image.fromarray(rgb), "WEBP", lossless=True),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("allow_stored", [False, True])
def test_kind_round_trips_through_the_model_codec(make_engine, name, allow_stored):
    data = CASES[name]()
    engine = make_engine(min_patches_per_lane=1)
    split = split_image(data, name=name)
    [res] = compress_images(engine, [split], allow_stored=allow_stored)
    [(back, ext)] = decompress_many(engine, [container.decode(res.data)])
    same_image(data, back)


def test_cmyk_jpeg_is_lossy_source_but_round_trips_its_pixels_bug12(make_engine):
    data = encoded(Image.new("CMYK", (16, 16), (10, 20, 30, 40)), "JPEG")
    split = split_image(data, name="c.jpg")
    assert split.lossy_source
    [res] = compress_images(make_engine(), [split])
    [(back, _)] = decompress_many(make_engine(), [container.decode(res.data)])
    a, b = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(back))
    assert b.mode == "CMYK" and np.array_equal(np.asarray(a), np.asarray(b))
