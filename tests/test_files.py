"""Whole files through the model path: multi-frame, stored fallback, and a decoder fuzz that only
ever sees clean, specific errors (never a silently wrong image)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from bswd import container
from bswd.ans import AnsError
from bswd.engine import StreamError
from bswd.files import IntegrityError, ModelMismatch, compress_images, decompress_many
from bswd.images import ImageInputError, split_image
from tests.conftest import noise

CLEAN_ERRORS = (container.BswFormatError, StreamError, IntegrityError, ModelMismatch, AnsError,
                ImageInputError)


def png_bytes(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **kw)
    return buf.getvalue()


def reopened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_model_path_round_trip_with_metadata(make_engine):
    engine = make_engine(min_patches_per_lane=1)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "bswd test")
    data = png_bytes(noise(50, 40, seed=1), pnginfo=info)
    [res] = compress_images(engine, [split_image(data, name="t.png")], allow_stored=False)
    f = container.decode(res.data)
    assert f.channels == 3 and len(f.lanes) >= 1
    [(back, ext)] = decompress_many(engine, [f])
    im = reopened(back)
    assert ext == ".png" and im.text == {"Title": "bswd test"}
    assert np.array_equal(np.asarray(im), noise(50, 40, seed=1))


def test_tiny_image_is_stored_at_most_raw_plus_header_bug01(make_engine):
    engine = make_engine()
    data = png_bytes(noise(1, 1, seed=2))
    [res] = compress_images(engine, [split_image(data, name="one.png")])
    split = split_image(data, name="one.png")
    fixed = len(split.side) + len("\n".join(split.description).encode()) + 200  # side, about, header
    assert len(res.data) <= 3 + fixed
    assert container.decode(res.data).channels == 0  # stored raw: the model cannot beat 3 bytes
    [(back, _)] = decompress_many(engine, [container.decode(res.data)])
    assert np.array_equal(np.asarray(reopened(back)), noise(1, 1, seed=2))


def test_animated_frames_each_coded_and_returned(make_engine):
    engine = make_engine(min_patches_per_lane=1)
    frames = [Image.fromarray(noise(20, 30, seed=s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:], duration=[100, 200, 300])
    split = split_image(buf.getvalue(), name="anim.png")
    [res] = compress_images(engine, [split], allow_stored=False)
    [(back, _)] = decompress_many(engine, [container.decode(res.data)])
    im = Image.open(io.BytesIO(back))
    got = []
    for i in range(im.n_frames):
        im.seek(i)
        got.append((np.asarray(im.convert("RGB")), im.info.get("duration")))
    assert [d for _, d in got] == [100, 200, 300]
    assert all(np.array_equal(a, np.asarray(f)) for (a, _), f in zip(got, frames))


@pytest.fixture(scope="module")
def coded_file(tiny_model):
    from bswd.engine import Engine, EngineConfig

    engine = Engine(tiny_model, EngineConfig(min_patches_per_lane=1))
    data = png_bytes(noise(8, 8, seed=3))
    [res] = compress_images(engine, [split_image(data, name="f.png")], allow_stored=False)
    return engine, container.decode(res.data), noise(8, 8, seed=3)


def test_payload_fuzz_gives_only_clean_errors(coded_file):
    """Thousands of damaged payloads behind valid CRCs: every one is refused with a specific
    error, or (never seen, but allowed) decodes to the exact original."""
    engine, f, original = coded_file
    rng = np.random.default_rng(0)
    lane = f.lanes[0]
    refused = 0
    trials = 120
    for _ in range(trials):
        heads, words = lane.heads.copy(), lane.words.copy()
        kind = rng.integers(4)
        if kind == 0 and len(words):
            words[rng.integers(len(words))] ^= np.uint32(1 << int(rng.integers(32)))
        elif kind == 1:
            i = rng.integers(len(heads))
            heads[i] = np.uint64(min((1 << 63) - 1, max(1 << 31, int(heads[i]) ^ (1 << int(rng.integers(31))))))
        elif kind == 2 and len(words) > 1:
            words = words[: rng.integers(1, len(words))]
        else:
            words = np.concatenate([words, rng.integers(0, 2**32, 3, dtype=np.uint64).astype(np.uint32)])
        low = lane.low_water if kind != 3 else max(0, lane.low_water - int(rng.integers(2)))
        bad = dataclasses.replace(f, lanes=(container.LanePayload(lane.n_patches, low, heads, words),))
        try:
            [(back, _)] = decompress_many(engine, [container.decode(container.encode(bad))])
        except CLEAN_ERRORS:
            refused += 1
            continue
        assert np.array_equal(np.asarray(reopened(back)), original)
    assert refused >= trials * 0.95


def test_byte_fuzz_of_whole_file_gives_only_clean_errors(coded_file):
    engine, f, _ = coded_file
    data = container.encode(f)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        b = bytearray(data)
        op = rng.integers(3)
        if op == 0:
            b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        elif op == 1:
            del b[rng.integers(len(b)):]
        else:
            b[rng.integers(len(b)):rng.integers(len(b)) + 1] = rng.bytes(int(rng.integers(1, 5)))
        try:
            decompress_many(engine, [container.decode(bytes(b))])
        except CLEAN_ERRORS:
            continue
        assert bytes(b) == data


def test_weak_model_falls_back_to_jpeg_xl_never_growing_a_smooth_image(make_engine):
    """A random model codes a smooth gradient far worse than JPEG XL: the plane is stored as
    JPEG XL lossless, the file stays near JPEG XL's size, and it decodes exactly."""
    y, x = np.mgrid[0:64, 0:96]
    img = np.stack([x * 2, y * 3, (x + y)], axis=-1).astype(np.uint8)
    engine = make_engine()
    [res] = compress_images(engine, [split_image(png_bytes(img), name="smooth.png")])
    f = container.decode(res.data)
    assert f.channels == 0 and any(s.kind == "stored-jxl" for s in f.sections)
    assert len(res.data) < img.size // 4
    [(back, _)] = decompress_many(engine, [f])
    assert np.array_equal(np.asarray(reopened(back)), img)
