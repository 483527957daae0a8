"""The compiled coder loops write exactly the bytes of the numpy reference path."""

from __future__ import annotations

import numpy as np
import pytest

from bswd import ans_kernels
from bswd.ans import Lanes
from bswd.codec import PatchCoder, fill_padding, patch_mask, reservoir_words
from tests.conftest import noise

pytestmark = pytest.mark.skipif(not ans_kernels.AVAILABLE, reason="numba not installed")


@pytest.fixture(scope="module", params=["factorized", "pixel-context"])
def tiny_model(request, tiny_model, context_model):
    """Every test here runs with both pixel likelihoods."""
    return tiny_model if request.param == "factorized" else context_model


@pytest.mark.parametrize("scheme", ["bitswap", "bbans"])
@pytest.mark.parametrize("k", [7, 64])
def test_compiled_and_numpy_paths_are_byte_identical(tiny_model, scheme, k):
    rows = np.arange(3)
    x = np.stack([noise(32, 32, seed=s).transpose(2, 0, 1) for s in range(3)])
    extents, channels = [(32, 32), (17, 5), (32, 9)], [3, 3, 1]
    masks = np.stack([patch_mask(h, w, c) for (h, w), c in zip(extents, channels)])
    for xi, (h, w), c in zip(x, extents, channels):
        fill_padding(xi, h, w, c)  # what the engine does before coding
    states = []
    for compiled in (False, True):
        coder = PatchCoder(tiny_model, scheme, compiled=compiled)
        lanes = Lanes(3, k, tiny_model.cfg.precision)
        for r in rows:
            lanes.start(int(r), 5, int(r), reservoir_words(tiny_model, scheme, k))
        info = coder.encode(lanes, rows, x, masks) + coder.encode(lanes, rows, x, masks)
        states.append((lanes.heads.copy(), [lanes.payload(int(r))[2].tobytes() for r in rows],
                       lanes.low_water.copy(), info))
        for _ in range(2):
            assert np.array_equal(coder.decode(lanes, rows, masks, extents, channels), x)
        assert all(lanes.is_initial(int(r), 5, int(r)) for r in rows)
    (h0, w0, l0, i0), (h1, w1, l1, i1) = states
    assert np.array_equal(h0, h1) and w0 == w1 and np.array_equal(l0, l1)
    assert np.allclose(i0, i1)
