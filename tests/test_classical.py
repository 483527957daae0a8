"""Classical-codec comparison: every codec round-trips, sizes are sane, the table text is pinned."""

from __future__ import annotations

import doctest
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from bswd import classical
from bswd.classical import (
    CLASSICAL_CODECS,
    QUICK_CODECS,
    ClassicalCodec,
    CodecResult,
    compare,
    format_table,
    measure,
)


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _smooth(h: int = 48, w: int = 64) -> np.ndarray:
    """Photo-like: slow gradients plus a little sensor noise, so codecs have structure to find."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([40 + 180 * x, 200 - 150 * y, 128 + 90 * np.sin(6 * x * y)], axis=-1)
    jitter = np.random.default_rng(1).normal(0.0, 1.5, base.shape)
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


def _fake_clock(*ticks: float) -> Iterator[float]:
    return iter(ticks)


IMAGES = {
    "noise-rgb": _noise((17, 23, 3)),
    "smooth-rgb": _smooth(),
    "smooth-grey": _smooth()[..., 1],
    "smooth-grey-hw1": _smooth()[..., 2:3],
}


@pytest.mark.parametrize("image_name", list(IMAGES))
@pytest.mark.parametrize("codec", list(CLASSICAL_CODECS))
def test_each_codec_round_trips(codec: str, image_name: str) -> None:
    image = IMAGES[image_name]
    result = measure(codec, image)
    assert result.available, result.unavailable
    assert result.lossless
    assert result.size_bytes > 0
    assert result.encode_s >= 0 and result.decode_s >= 0


def test_smooth_image_compresses_better_than_noise_with_image_codecs() -> None:
    smooth = _smooth()
    for name in ("png", "webp", "jxl"):
        assert measure(name, smooth).bits_per_dim(smooth.size) < 7.0


def test_gzip_cannot_compress_noise() -> None:
    noise = _noise((64, 64, 3))
    assert measure("gzip", noise).bits_per_dim(noise.size) > 7.9


def test_measure_times_encode_and_decode_with_the_injected_clock() -> None:
    ticks = _fake_clock(10.0, 12.5, 13.0)
    result = measure("gzip", _smooth(), clock=lambda: next(ticks))
    assert (result.encode_s, result.decode_s) == (2.5, 0.5)


def test_compare_runs_registry_in_order_or_the_names_given() -> None:
    image = _smooth(8, 8)
    assert [r.name for r in compare(image)] == list(CLASSICAL_CODECS)
    assert [r.name for r in compare(image, ["jxl", "gzip"])] == ["jxl", "gzip"]
    assert set(QUICK_CODECS) <= set(CLASSICAL_CODECS)


def _codec(name: str, *, unavailable: str | None = None, corrupt: bool = False) -> ClassicalCodec:
    def decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        out = np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()
        if corrupt:
            out.flat[0] ^= 1
        return out

    return ClassicalCodec(name, "test", lambda a: a.tobytes(), decode, lambda a: unavailable)


def test_unavailable_codec_is_reported_not_raised() -> None:
    registry = {"ok": _codec("ok"), "gone": _codec("gone", unavailable="libgone missing")}
    results = compare(_smooth(4, 4), registry=registry)
    assert results[0] == CodecResult("ok", 48, results[0].encode_s, results[0].decode_s, True)
    assert results[1] == CodecResult("gone", 0, 0.0, 0.0, False, unavailable="libgone missing")
    assert not results[1].available


def test_jxl_without_imagecodecs_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # makes `import imagecodecs` fail
    result = measure("jxl", _smooth(4, 4))
    assert result.unavailable == "imagecodecs is not installed"


def test_webp_refuses_images_beyond_its_size_limit_before_encoding() -> None:
    tall = np.zeros((16384, 1, 3), dtype=np.uint8)
    assert measure("webp", tall).unavailable == "WebP images are limited to 16383 pixels a side"


def test_corrupting_codec_is_flagged_lossy() -> None:
    result = measure("bad", _smooth(4, 4), registry={"bad": _codec("bad", corrupt=True)})
    assert result.available and not result.lossless


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        measure("nope", _smooth(4, 4))
    with pytest.raises(ValueError, match="uint8"):
        measure("gzip", np.zeros((4, 4, 3), dtype=np.uint16))
    with pytest.raises(ValueError, match="shape"):
        measure("gzip", np.zeros((4, 4, 2), dtype=np.uint8))


def test_format_table_exact_text() -> None:
    rows: list[CodecResult | dict[str, object]] = [
        CodecResult("gzip", 600_000, 0.025, 0.004, True),
        CodecResult("jxl-e9", 327_182, 1.5, 0.0, True),
        CodecResult("weird", 100, 0.5, 0.5, False),
        CodecResult("jxl", 0, 0.0, 0.0, False, unavailable="no libjxl"),
        {"name": "bswd", "size_bytes": 300_000, "encode_s": 2.0, "decode_s": 1.0},
    ]
    expected = (
        "codec     bytes  % raw  bits/dim  enc MB/s  dec MB/s\n"
        "------  -------  -----  --------  --------  --------\n"
        "gzip    600,000   76.3     6.104     31.46    196.61\n"
        "jxl-e9  327,182   41.6     3.328      0.52         -\n"
        "weird       100    0.0     0.001      1.57      1.57  NOT LOSSLESS\n"
        "jxl           -      -         -         -         -  unavailable: no libjxl\n"
        "bswd    300,000   38.1     3.052      0.39      0.79"
    )
    assert format_table(rows, n_bytes_raw=786_432) == expected


def test_format_table_takes_raw_size_from_generic_rows() -> None:
    row = {"name": "bswd", "size_bytes": 10, "encode_s": 1e-6, "decode_s": 2e-6,
           "n_bytes_raw": 40, "n_subpixels": 20}
    expected = (
        "codec  bytes  % raw  bits/dim  enc MB/s  dec MB/s\n"
        "-----  -----  -----  --------  --------  --------\n"
        "bswd      10   25.0     4.000     40.00     20.00"
    )
    assert format_table([row]) == expected
    with pytest.raises(ValueError, match="n_bytes_raw"):
        format_table([CodecResult("gzip", 1, 1.0, 1.0, True)])


def test_docstring_examples_run() -> None:
    assert doctest.testmod(classical).failed == 0
