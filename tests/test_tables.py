"""Integer CDF families: every frequency >= 1, rows sum to 2**precision, decode inverts encode."""

from __future__ import annotations

import numpy as np
import pytest

from bswd.tables import (
    MEAN_FRAC,
    LogisticFamily,
    UniformFamily,
    build_inv_scales,
    build_sigmoid_lut,
    latent_edges,
    pixel_edges,
)


def pixel_family(precision=24):
    return LogisticFamily(pixel_edges(256), build_inv_scales(np.log(0.02), np.log(64.0), 256),
                          build_sigmoid_lut(), precision)


def full_rows(fam, means, sidx):
    k = np.arange(fam.n + 1)[None, :]
    m = np.asarray(means, dtype=np.int64)[:, None]
    inv = fam.inv_scales[np.asarray(sidx)][:, None]
    return fam.starts(np.broadcast_to(k, (len(means), fam.n + 1)).copy(), m, inv)


@pytest.mark.parametrize("precision", [12, 16, 24, 31])
def test_rows_are_valid_for_extreme_parameters(precision):
    fam = pixel_family(precision)
    means = [(-32) << MEAN_FRAC, 0, 127 << MEAN_FRAC, (255 << MEAN_FRAC) + 123, 287 << MEAN_FRAC] * 2
    sidx = [0] * 5 + [255] * 5
    starts = full_rows(fam, means, sidx)
    freqs = np.diff(starts, axis=1)
    assert np.all(starts[:, 0] == 0)
    assert np.all(starts[:, -1] == 1 << precision)
    assert freqs.min() >= 1  # nothing is impossible, even 255 under a sharp mean at 0
    assert starts.dtype == np.int64


def test_sharp_distribution_puts_almost_all_mass_on_one_symbol():
    fam = pixel_family()
    starts = full_rows(fam, [128 << MEAN_FRAC], [0])
    freqs = np.diff(starts, axis=1)[0]
    assert freqs.argmax() == 128
    assert freqs[128] > (1 << 24) * 0.999
    assert freqs[0] == 1 and freqs[255] == 1


def test_decode_inverts_encode_for_every_symbol_and_every_cf_boundary():
    fam = pixel_family()
    rng = np.random.default_rng(0)
    n = 2000
    means = rng.integers(-32 << MEAN_FRAC, 287 << MEAN_FRAC, n)
    sidx = rng.integers(0, 256, n)
    symbols = rng.integers(0, 256, n)
    starts, freqs = fam.encode_params(symbols, means, sidx)
    for cf in (starts, starts + freqs - 1, starts + freqs // 2):
        got, s, f = fam.decode(cf, means, sidx)
        assert np.array_equal(got, symbols) and np.array_equal(s, starts) and np.array_equal(f, freqs)


def test_latent_family_and_uniform_top():
    fam = LogisticFamily(latent_edges(1024), build_inv_scales(np.log(0.004), np.log(4.0), 256),
                         build_sigmoid_lut(), 24)
    starts = full_rows(fam, [0, 12 << MEAN_FRAC, -(12 << MEAN_FRAC)], [0, 128, 255])
    assert np.all(np.diff(starts, axis=1) >= 1) and np.all(starts[:, -1] == 1 << 24)
    top = UniformFamily(10, 24)
    s, f = top.encode_params(np.array([0, 1023]))
    assert s.tolist() == [0, 1023 << 14] and f.tolist() == [1 << 14, 1 << 14]
    assert top.decode(np.array([(5 << 14) + 7]))[0].tolist() == [5]


def test_overflow_bounds_are_checked():
    fam = pixel_family()
    fam.check_ranges(-32 << MEAN_FRAC, 287 << MEAN_FRAC)
    bad = LogisticFamily(fam.edges, fam.inv_scales * 64, fam.sigmoid, 24)  # inv_scale >= 2**31
    with pytest.raises(ValueError, match="exact-integer bounds"):
        bad.check_ranges(-32 << MEAN_FRAC, 287 << MEAN_FRAC)
