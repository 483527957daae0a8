"""Round trips of bswd.images with an identity codec: join_image(split.planes, split.side).

Every image here is made by the test itself. ``assert_same_image`` is the check of
cases/README.md, written independently of bswd.image_check: reopen both files and compare mode,
size, frame count, palette, transparency, ICC, EXIF, text, durations and every frame's pixels.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable

import imagecodecs
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, PngImagePlugin, TiffImagePlugin

from bswd.images import (
    DEFAULT_MAX_PIXELS,
    EmptyImageError,
    ImageInputError,
    NotAnImageError,
    SideDataError,
    SplitImage,
    TooManyPixelsError,
    TruncatedImageError,
    UnsupportedImageError,
    join_image,
    pixel_checksum,
    split_image,
)

MAX = 10_000_000
RNG = np.random.default_rng(1234)


# --- helpers ------------------------------------------------------------------------------------


def png(w: int, h: int, depth: int, ctype: int, rows: list[bytes], extra: bytes = b"") -> bytes:
    """The hand-made PNG helper of cases/README.md (plus optional chunks before IDAT)."""
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)) + extra
            + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows)))
            + chunk(b"IEND", b""))


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + ctype + payload
            + struct.pack(">I", zlib.crc32(ctype + payload)))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def save(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def roundtrip(data: bytes, name: str = "input") -> tuple[SplitImage, bytes, str]:
    split = split_image(data, name=name, max_pixels=MAX)
    rebuilt, ext = join_image(split.planes, split.side)
    return split, rebuilt, ext


def frames_of(data: bytes) -> list[dict[str, object]]:
    """What a user sees when reopening the file, frame by frame."""
    out = []
    with Image.open(io.BytesIO(data)) as im:
        for index in range(getattr(im, "n_frames", 1)):
            im.seek(index)
            im.load()
            palette = None
            if im.mode in ("P", "PA") and im.palette is not None:
                palette = im.getpalette(im.palette.mode)
            info = im.info
            out.append({
                "format": im.format, "mode": im.mode, "size": im.size,
                "pixels": im.tobytes(), "palette": palette,
                "transparency": info.get("transparency"), "icc": info.get("icc_profile"),
                "exif": info.get("exif"), "duration": info.get("duration"),
                "loop": info.get("loop"), "text": dict(getattr(im, "text", {}) or {}),
                "comment": info.get("comment"),
            })
    return out


def assert_same_image(original: bytes, rebuilt: bytes, *, same_format: bool = True) -> None:
    before, after = frames_of(original), frames_of(rebuilt)
    assert len(before) == len(after), "frame count"
    keys = before[0].keys() if same_format else ("mode", "size", "pixels", "icc", "exif")
    for index, (a, b) in enumerate(zip(before, after)):
        for key in keys:
            assert a[key] == b[key], f"frame {index}: {key} differs"


def assert_planes_ok(split: SplitImage) -> None:
    for plane in split.planes:
        assert plane.dtype == np.uint8 and plane.flags.c_contiguous
        assert plane.ndim == 3 and plane.shape[2] in (1, 3)


# --- modes ---------------------------------------------------------------------------------------


def _mode_image(mode: str) -> Image.Image:
    rgb = Image.fromarray(noise(9, 13))
    if mode == "P":
        im = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        im.info["transparency"] = 3
        return im
    if mode == "I;16":
        return Image.fromarray(RNG.integers(0, 65536, (9, 13), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(RNG.integers(-2**31, 2**31 - 1, (9, 13), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(RNG.standard_normal((9, 13)).astype(np.float32))
    if mode in ("LA", "RGBA", "CMYK"):
        return Image.fromarray(noise(9, 13, 4 if mode != "LA" else 2), mode)
    return rgb.convert(mode)


@pytest.mark.parametrize(("mode", "fmt"), [
    ("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"),
    ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("CMYK", "TIFF"), ("LA", "TIFF"),
    ("P", "TIFF"), ("I;16", "TIFF"), ("1", "TIFF"), ("RGBA", "TIFF"),
])
def test_mode_round_trips(mode: str, fmt: str) -> None:
    im = _mode_image(mode)
    kwargs = {"transparency": 3} if mode == "P" and fmt == "PNG" else {}
    data = save(im, fmt, **kwargs)
    split, rebuilt, ext = roundtrip(data)
    assert_same_image(data, rebuilt)
    assert_planes_ok(split)
    assert ext == {"PNG": ".png", "TIFF": ".tif"}[fmt]
    assert not split.lossy_source
    assert frames_of(rebuilt)[0]["mode"] == mode


def test_grey_is_one_model_channel_and_alpha_is_classical() -> None:
    split, _, _ = roundtrip(save(_mode_image("L"), "PNG"))
    assert [p.shape for p in split.planes] == [(9, 13, 1)]
    split, _, _ = roundtrip(save(_mode_image("RGBA"), "PNG"))
    assert [p.shape for p in split.planes] == [(9, 13, 3)]
    assert any("alpha" in line and "png" in line for line in split.description)


def test_palette_indices_are_classical_and_palette_kept() -> None:
    data = save(_mode_image("P"), "PNG", transparency=3)
    split, rebuilt, _ = roundtrip(data)
    assert split.planes == ()
    assert frames_of(rebuilt)[0]["transparency"] == 3


def test_16bit_rgb_png_is_bit_exact() -> None:
    rows = [struct.pack(">6H", 1, 256, 65535, 257, 0, 1)] * 3
    data = png(2, 3, 16, 2, rows)
    split, rebuilt, _ = roundtrip(data)
    assert rebuilt[24] == 16 and rebuilt[25] == 2  # IHDR bit depth and colour type
    values = imagecodecs.png_decode(rebuilt)
    assert values.dtype == np.uint16
    assert values[0].tolist() == [[1, 256, 65535], [257, 0, 1]]
    assert np.array_equal(values, imagecodecs.png_decode(data))
    assert split.planes[0][0].tolist() == [[0, 1, 255], [1, 0, 0]]  # high bytes to the model
    assert any("low bytes" in line for line in split.description)


def test_16bit_grey_png_is_bit_exact() -> None:
    data = png(4, 1, 16, 0, [struct.pack(">4H", 0, 256, 32768, 65535)])
    split, rebuilt, _ = roundtrip(data)
    with Image.open(io.BytesIO(rebuilt)) as im:
        assert im.mode == "I;16"
        assert np.asarray(im).tolist() == [[0, 256, 32768, 65535]]
    assert [p.shape for p in split.planes] == [(1, 4, 1)]


@pytest.mark.parametrize("channels", [2, 4])
def test_16bit_alpha_png_is_bit_exact(channels: int) -> None:
    values = RNG.integers(0, 65536, (5, 6, channels), dtype=np.uint16)
    data = bytes(imagecodecs.png_encode(values))
    _, rebuilt, _ = roundtrip(data)
    assert np.array_equal(imagecodecs.png_decode(rebuilt), values)
    assert_same_image(data, rebuilt)


@pytest.mark.parametrize(("depth", "ctype"), [(1, 0), (2, 0), (4, 0), (1, 3), (2, 3), (4, 3)])
def test_low_bit_depth_png_keeps_its_depth(depth: int, ctype: int) -> None:
    width, height = 11, 3
    values = RNG.integers(0, 1 << depth, (height, width), dtype=np.uint8)
    per = 8 // depth
    padded = np.pad(values, ((0, 0), (0, (-width) % per))).reshape(height, -1, per)
    shifts = np.arange(per - 1, -1, -1) * depth
    rows = [bytes((row << shifts).sum(axis=1).astype(np.uint8)) for row in padded]
    extra = chunk(b"PLTE", bytes(range(3 << depth))) if ctype == 3 else b""
    extra += chunk(b"tRNS", b"\x00\x01") if ctype == 0 else chunk(b"tRNS", b"\x00\x80")
    data = png(width, height, depth, ctype, rows, extra)
    split, rebuilt, _ = roundtrip(data)
    assert rebuilt[24] == depth and rebuilt[25] == ctype
    assert_same_image(data, rebuilt)
    assert split.planes == ()


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "mode", "ext"), [
    ("BMP", "RGB", ".bmp"), ("BMP", "L", ".bmp"), ("BMP", "1", ".bmp"), ("BMP", "P", ".bmp"),
    ("PPM", "RGB", ".ppm"), ("PPM", "L", ".pgm"), ("PPM", "1", ".pbm"), ("PPM", "I;16", ".pgm"),
    ("TGA", "RGBA", ".tga"), ("WEBP", "RGB", ".webp"), ("WEBP", "RGBA", ".webp"),
    ("GIF", "P", ".gif"), ("TIFF", "RGB", ".tif"),
])
def test_single_frame_formats(fmt: str, mode: str, ext: str) -> None:
    im = _mode_image(mode)
    if fmt == "BMP" and mode == "P":
        im = Image.fromarray(noise(9, 13)).convert("P", palette=Image.Palette.ADAPTIVE,
                                                    colors=256)
    data = save(im, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    split, rebuilt, got_ext = roundtrip(data)
    assert_same_image(data, rebuilt)
    assert (got_ext, split.source_format, split.output_format) == (ext, fmt, fmt)
    assert not split.lossy_source


def _distinct_frames(n: int, mode: str = "RGB") -> list[Image.Image]:
    return [Image.fromarray(noise(10, 12)).convert(mode) for _ in range(n)]


def test_animated_gif_keeps_frames_and_durations() -> None:
    frames = [Image.fromarray((RNG.integers(0, 4, (10, 12)) * 60).astype(np.uint8)).convert("P")
              for _ in range(3)]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:],
                duration=[100, 250, 40], loop=0)
    split, rebuilt, ext = roundtrip(data)
    assert_same_image(data, rebuilt)
    assert [f["duration"] for f in frames_of(rebuilt)] == [100, 250, 40]
    assert split.planes == () and len(split.description) > 3
    assert ext == ".gif"


def test_apng_keeps_frames_timing_and_structure() -> None:
    frames = _distinct_frames(3)
    data = save(frames[0], "PNG", save_all=True, append_images=frames[1:],
                duration=[30, 60, 90], loop=2)
    split, rebuilt, _ = roundtrip(data)
    assert_same_image(data, rebuilt)
    assert len(split.planes) == 3
    fctl = [p[4:] for c, p in png_chunks(data) if c == b"fcTL"]
    assert fctl == [p[4:] for c, p in png_chunks(rebuilt) if c == b"fcTL"]


def test_multipage_tiff_keeps_pages_modes_and_tags() -> None:
    pages = [Image.fromarray(noise(8, 9)), Image.fromarray(noise(5, 7, 1)[..., 0]),
             _mode_image("CMYK")]
    for index, page in enumerate(pages):
        page.encoderinfo = {"description": f"page {index}", "compression": "tiff_lzw"}
    data = save(pages[0], "TIFF", save_all=True, append_images=pages[1:],
                description="page 0", compression="tiff_lzw")
    split, rebuilt, _ = roundtrip(data)
    assert_same_image(data, rebuilt)
    assert [p.shape for p in split.planes] == [(8, 9, 3), (5, 7, 1)]  # CMYK is classical
    with Image.open(io.BytesIO(rebuilt)) as im:
        assert isinstance(im, TiffImagePlugin.TiffImageFile)
        descriptions = []
        for index in range(im.n_frames):
            im.seek(index)
            descriptions.append(im.tag_v2.get(270))
    assert descriptions == ["page 0", "page 1", "page 2"]


def test_animated_webp_lossless() -> None:
    frames = _distinct_frames(3, "RGBA")
    data = save(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                duration=[50, 70, 90], loop=0, lossless=True)
    split, rebuilt, _ = roundtrip(data)
    assert_same_image(data, rebuilt)
    assert not split.lossy_source


def test_jpeg_is_flagged_lossy_and_written_as_png() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = save(Image.fromarray(noise(16, 24)), "JPEG", quality=80, exif=exif)
    split, rebuilt, ext = roundtrip(data)
    assert split.lossy_source and split.source_format == "JPEG"
    assert (ext, split.output_format) == (".png", "PNG")
    assert any("lossy" in line for line in split.description)
    assert_same_image(data, rebuilt, same_format=False)
    with Image.open(io.BytesIO(rebuilt)) as im:
        assert im.size == (24, 16)  # orientation 6 kept as a tag, pixels not rotated
        assert im.getexif()[0x0112] == 6


def test_cmyk_jpeg_comes_back_as_cmyk() -> None:
    data = save(Image.new("CMYK", (16, 16), (10, 20, 30, 40)), "JPEG")
    split, rebuilt, ext = roundtrip(data)
    assert split.lossy_source and ext == ".tif"
    assert_same_image(data, rebuilt, same_format=False)
    assert frames_of(rebuilt)[0]["mode"] == "CMYK"


def test_lossy_webp_is_flagged() -> None:
    data = save(Image.fromarray(noise(16, 16)), "WEBP", quality=50)
    split, rebuilt, _ = roundtrip(data)
    assert split.lossy_source
    assert_same_image(data, rebuilt, same_format=False)


# --- metadata ------------------------------------------------------------------------------------


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize(("fmt", "kwargs"), [
    ("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("JPEG", {}),
])
def test_icc_profile_and_exif_are_byte_identical(fmt: str, kwargs: dict[str, object]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: kept as a tag, never applied to the pixels
    exif[0x0131] = "a test"
    data = save(Image.fromarray(noise(16, 24)), fmt, icc_profile=SRGB, exif=exif, **kwargs)
    _, rebuilt, _ = roundtrip(data)
    with Image.open(io.BytesIO(data)) as before, Image.open(io.BytesIO(rebuilt)) as after:
        if isinstance(after, TiffImagePlugin.TiffImageFile):
            # before load(): Pillow rotates TIFF pages on load and drops the tag from its view
            assert (after.tag_v2[0x0112], after.tag_v2[256], after.tag_v2[257]) == (6, 24, 16)
        assert after.info["icc_profile"] == SRGB
        assert after.info.get("exif") == before.info.get("exif")
        assert dict(after.getexif()) == dict(before.getexif())
        if not isinstance(after, TiffImagePlugin.TiffImageFile):
            assert after.size == (24, 16) and after.getexif()[0x0112] == 6
    assert_same_image(data, rebuilt, same_format=fmt != "JPEG")


def test_png_text_and_exif_chunks_are_byte_identical() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "plain")
    info.add_text("Comment", "squeezed " * 20, zip=True)
    info.add_itxt("Author", "Zoë ✓", lang="fr", tkey="Auteur")
    exif = Image.Exif()
    exif[0x0112] = 8
    exif[0x010F] = "bswd"
    data = save(Image.fromarray(noise(6, 5)), "PNG", pnginfo=info, exif=exif, dpi=(300, 300))
    _, rebuilt, _ = roundtrip(data)
    wanted = (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"pHYs")
    assert ([c for c in png_chunks(data) if c[0] in wanted]
            == [c for c in png_chunks(rebuilt) if c[0] in wanted])
    assert_same_image(data, rebuilt)
    with Image.open(io.BytesIO(rebuilt)) as im:
        assert im.size == (5, 6)  # orientation 8 not applied to the pixels


def test_inspect_lines_name_what_coded_each_part() -> None:
    data = save(Image.fromarray(noise(6, 5, 4), "RGBA"), "PNG", icc_profile=SRGB)
    split, _, _ = roundtrip(data)
    text = "\n".join(split.description)
    assert "RGB 8-bit via model" in text and "alpha" in text and "iCCP" in text


# --- BUG-01: odd sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(1, 1), (100, 1), (1, 100), (17, 33), (40, 64), (31, 31)])
def test_odd_sizes_round_trip(h: int, w: int) -> None:
    pixels = noise(h, w)
    data = save(Image.fromarray(pixels), "PNG")
    split, rebuilt, _ = roundtrip(data)
    assert split.planes[0].shape == (h, w, 3)
    with Image.open(io.BytesIO(rebuilt)) as im:
        assert np.array_equal(np.asarray(im), pixels)


# --- BUG-08: empty, truncated and non-image inputs ----------------------------------------------


def test_truncated_png_is_refused() -> None:
    data = save(Image.fromarray(noise(64, 64)), "PNG")
    with pytest.raises(TruncatedImageError, match="cut.png.*truncated"):
        split_image(data[: len(data) // 2], name="cut.png", max_pixels=MAX)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP", "JPEG", "WEBP"])
def test_truncated_other_formats_are_refused(fmt: str) -> None:
    data = save(Image.fromarray(noise(64, 64)), fmt)
    with pytest.raises(ImageInputError):
        split_image(data[: len(data) // 2], name=f"cut.{fmt}", max_pixels=MAX)


def test_empty_file_is_refused() -> None:
    with pytest.raises(EmptyImageError, match="empty.png"):
        split_image(b"", name="empty.png", max_pixels=MAX)


def test_text_file_is_refused() -> None:
    with pytest.raises(NotAnImageError, match="notes.png"):
        split_image(b"shopping list\n- milk\n", name="notes.png", max_pixels=MAX)


# --- BUG-14: decompression bombs -----------------------------------------------------------------


@pytest.mark.parametrize("side", [65535, 10000])
def test_huge_declared_png_is_refused_before_decoding(side: int) -> None:
    data = png(side, side, 8, 0, [b"\x00"])
    start = time.perf_counter()
    with pytest.raises(TooManyPixelsError, match="bomb.png"):
        split_image(data, name="bomb.png", max_pixels=50_000_000)
    assert time.perf_counter() - start < 0.5
    assert Image.MAX_IMAGE_PIXELS is not None


def test_limit_above_pillows_is_capped_and_says_so() -> None:
    """Pillow's bomb check is never switched off: a larger max_pixels is capped, loudly."""
    data = png(10000, 10000, 8, 0, [b"\x00"])
    with pytest.raises(TooManyPixelsError, match="capped by PIL.Image.MAX_IMAGE_PIXELS"):
        split_image(data, name="bomb.png", max_pixels=200_000_000)


def test_pixel_limit_is_configurable() -> None:
    data = save(Image.fromarray(noise(20, 20)), "PNG")
    with pytest.raises(TooManyPixelsError):
        split_image(data, name="a.png", max_pixels=399)
    assert split_image(data, name="a.png", max_pixels=400).planes[0].shape == (20, 20, 3)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF"])
def test_limit_applies_to_other_formats(fmt: str) -> None:
    data = save(Image.fromarray(noise(30, 30)), fmt)
    with pytest.raises(TooManyPixelsError):
        split_image(data, name=f"a.{fmt}", max_pixels=500)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [30000, 12000])
def test_huge_declared_bmp_is_refused_before_decoding(side: int) -> None:
    data = bytearray(save(Image.fromarray(noise(4, 4)), "BMP"))
    struct.pack_into("<ii", data, 18, side, side)  # BITMAPINFOHEADER width, height
    start = time.perf_counter()
    with pytest.raises(TooManyPixelsError, match="bomb.bmp"):
        split_image(bytes(data), name="bomb.bmp", max_pixels=10**12)
    assert time.perf_counter() - start < 0.5


def test_limit_counts_every_frame() -> None:
    frames = _distinct_frames(4)
    data = save(frames[0], "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(TooManyPixelsError):
        split_image(data, name="anim.png", max_pixels=10 * 12 * 3)


# --- refusals ------------------------------------------------------------------------------------


def test_16bit_ppm_rgb_is_refused() -> None:
    data = b"P6 2 1 65535\n" + np.array([1, 256, 65535, 257, 0, 1], ">u2").tobytes()
    with pytest.raises(UnsupportedImageError, match="unsupported bit depth 16"):
        split_image(data, name="deep.ppm", max_pixels=MAX)


def test_rescaled_pnm_maxval_is_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="maxval 100"):
        split_image(b"P5 2 1 100\n\x01\x64", name="odd.pgm", max_pixels=MAX)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_kept_not_applied_twice(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(Image.fromarray(noise(16, 24)), "TIFF", exif=exif, compression="tiff_lzw")
    split, rebuilt, _ = roundtrip(data)
    assert split.planes[0].shape == (16, 24, 3)  # as stored in the file, not as displayed
    assert_same_image(data, rebuilt)
    with Image.open(io.BytesIO(rebuilt)) as im:
        assert isinstance(im, TiffImagePlugin.TiffImageFile)
        assert (im.tag_v2[0x0112], im.tag_v2[256], im.tag_v2[257]) == (orientation, 24, 16)


def test_16bit_rgb_tiff_is_refused() -> None:
    data = bytes(imagecodecs.tiff_encode(RNG.integers(0, 65536, (4, 4, 3), dtype=np.uint16)))
    with pytest.raises(UnsupportedImageError, match="unsupported bit depth 16"):
        split_image(data, name="deep.tif", max_pixels=MAX)


def _bmp(width: int, bpp: int, rows: list[bytes], palette: bytes = b"") -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, len(rows), 1, bpp, 0, 0, 2835, 2835,
                       len(palette) // 4, 0)
    offset = 14 + 40 + len(palette)
    pixels = b"".join(r + b"\0" * (-len(r) % 4) for r in rows[::-1])
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


@pytest.mark.parametrize("bpp", [4, 16])
def test_bmp_depth_pillow_cannot_write_is_refused(bpp: int) -> None:
    """Pillow reads 4-bit BMP as P and 16-bit as RGB but writes 8 and 24 bits: say so."""
    if bpp == 4:
        palette = b"".join(bytes([i * 16, 255 - i * 16, i, 0]) for i in range(16))
        data = _bmp(4, 4, [b"\x01\x23", b"\x45\x67"], palette)
    else:
        data = _bmp(2, 16, [struct.pack("<2H", 0x7FFF, 0x1234)])
    with pytest.raises(UnsupportedImageError, match="bits per pixel"):
        split_image(data, name="odd.bmp", max_pixels=MAX)


def test_unwritable_format_is_refused() -> None:
    data = save(Image.fromarray(noise(16, 16)), "ICO")
    with pytest.raises(UnsupportedImageError, match="ICO"):
        split_image(data, name="a.ico", max_pixels=MAX)


def test_gif_with_repeated_frames_keeps_every_frame() -> None:
    frame = Image.fromarray((RNG.integers(0, 4, (6, 6)) * 60).astype(np.uint8)).convert("P")
    data = _gif_with_duplicate_frames(frame)
    assert len(frames_of(data)) == 3
    _, rebuilt, _ = roundtrip(data)
    assert_same_image(data, rebuilt)


def _gif_with_duplicate_frames(frame: Image.Image) -> bytes:
    """Pillow merges equal frames when writing, so repeat frame 1 by hand: copy its bytes."""
    other = frame.point(lambda v: 255 - v)
    data = save(frame, "GIF", save_all=True, append_images=[other], duration=[10, 20])
    start = data.index(b"\x21\xf9", data.index(b"\x2c") + 1)  # 2nd graphic control extension
    return data[:-1] + data[start:-1] + b"\x3b"


def test_animated_gif_with_transparency_and_disposal() -> None:
    frames = [Image.fromarray((RNG.integers(0, 4, (8, 8)) * 60).astype(np.uint8)).convert("P")
              for _ in range(3)]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=[10, 20, 30],
                disposal=[2, 3, 1], transparency=0, loop=3, comment=b"made by a test")
    split, rebuilt, _ = roundtrip(data)
    assert_same_image(data, rebuilt)
    assert split.planes == ()  # palette indices are not intensities: classical


def test_interlaced_png_and_gif_come_back_deinterlaced() -> None:
    pixels = noise(13, 11)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]
    raw = b"".join(b"\x00" + row.tobytes() for xs, ys, dx, dy in passes
                   for row in pixels[ys::dy, xs::dx] if row.size)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 11, 13, 8, 2, 0, 0, 1))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    split, rebuilt, _ = roundtrip(data)
    assert_same_image(data, rebuilt)
    assert rebuilt[28] == 0 and any("interlacing" in line for line in split.description)
    gif = save(Image.fromarray(noise(9, 7)).convert("P"), "GIF", interlace=True)
    _, rebuilt, _ = roundtrip(gif)
    assert_same_image(gif, rebuilt)


def test_a_wrong_rebuild_is_refused_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net: if joining ever loses something, split_image refuses the file."""
    from bswd import image_png

    real = image_png.encode_stream

    def lossy(header: image_png.PngHeader, samples: np.ndarray) -> bytes:
        return real(header, samples & 0xFE)

    monkeypatch.setattr(image_png, "encode_stream", lossy)
    data = save(Image.fromarray(noise(8, 8)), "PNG")
    with pytest.raises(UnsupportedImageError, match="cannot be stored losslessly"):
        split_image(data, name="a.png", max_pixels=MAX)


# --- side data and checksums ---------------------------------------------------------------------


def test_join_checks_planes_against_side() -> None:
    split, _, _ = roundtrip(save(Image.fromarray(noise(5, 4)), "PNG"))
    with pytest.raises(SideDataError):
        join_image([], split.side)
    with pytest.raises(SideDataError):
        join_image([np.zeros((4, 5, 3), np.uint8)], split.side)
    with pytest.raises(SideDataError):
        join_image(split.planes, b"XXXX" + split.side[4:])
    with pytest.raises(SideDataError):
        join_image(split.planes, split.side[:-3])
    with pytest.raises(SideDataError, match="version 99"):
        join_image(split.planes, split.side[:4] + bytes([99]) + split.side[5:])


def test_pixel_checksum_covers_shape_dtype_and_order() -> None:
    a, b = noise(2, 3), noise(2, 3)
    assert pixel_checksum([a, b]) == pixel_checksum([a.copy(), b.copy()])
    assert pixel_checksum([a, b]) != pixel_checksum([b, a])
    assert pixel_checksum([a]) != pixel_checksum([a.reshape(3, 2, 3)])
    assert len(pixel_checksum([])) == 32


def test_defaults_leave_pillow_globals_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    roundtrip(save(Image.fromarray(noise(4, 4)), "PNG"))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert DEFAULT_MAX_PIXELS > 0


RoundTrip = Callable[[bytes], tuple[SplitImage, bytes, str]]
