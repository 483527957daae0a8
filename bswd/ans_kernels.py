"""Compiled (numba) loops for pushing and popping whole symbol tensors through rANS lanes.

They compute exactly what ``ans.Lanes.push/pop`` with ``tables.LogisticFamily`` compute, chunk by
chunk and head by head, so the bytes are identical (tests/test_kernels.py checks it); they only
remove numpy's per-call overhead, which dominates when few lanes are coded at once. Where numba
is not installed, ``AVAILABLE`` is False and the codec uses the numpy reference path.

Order, mirrored from ans.py: a tensor of D symbols goes through a lane's K heads in chunks of K,
chunk 0 first; within a chunk the emitting heads append words in ascending head order. A pop takes
the chunks last first and, within a chunk, heads in descending order, each refilling from the top.
"""

from __future__ import annotations

import numpy as np

from bswd.ans import STATE_LOWER, WORD_BITS, WORD_MASK
from bswd.tables import INV_SCALE_FRAC, LUT_RANGE, LUT_STEP_LOG2, MEAN_FRAC, SIGMA_FRAC

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None

AVAILABLE = numba is not None
_U_SHIFT = MEAN_FRAC - LUT_STEP_LOG2
_LUT_HALF = LUT_RANGE << LUT_STEP_LOG2
_U_MAX = LUT_RANGE << MEAN_FRAC
UNDERFLOW = -1


def _jit(fn):
    return numba.njit(cache=True, nogil=True)(fn) if AVAILABLE else fn


@_jit
def _start(k, mean, inv, edges, sigmoid, total):
    """tables.LogisticFamily.starts for one symbol (same integer steps)."""
    u = ((edges[k] - mean) * inv) >> INV_SCALE_FRAC
    if u < -_U_MAX:
        u = -_U_MAX
    elif u > _U_MAX:
        u = _U_MAX
    j = (u >> _U_SHIFT) + _LUT_HALF
    frac = u & ((1 << _U_SHIFT) - 1)
    lo = sigmoid[j]
    sig = lo + (((sigmoid[j + 1] - lo) * frac) >> _U_SHIFT)
    return ((sig * total) >> SIGMA_FRAC) + k


@_jit
def _find(cf, m, s, edges, sigmoid, total, nsym):
    """(k, start(k), freq(k)) for the symbol k with start(k) <= cf < start(k + 1), exactly.

    A float inverse of the logistic guesses k (only speed depends on it); exact integer starts
    confirm it or walk a few symbols; far misses (flat tails) fall back to binary search.
    """
    frac = (cf + 0.5) / total
    if frac > 1.0 - 1e-12:
        frac = 1.0 - 1e-12
    u = np.log(frac / (1.0 - frac))
    target = m + u * ((1 << (INV_SCALE_FRAC + MEAN_FRAC)) / s)
    lo, hi = 1, nsym  # first edge index whose value exceeds target, among edges[1:nsym]
    while lo < hi:
        mid = (lo + hi) >> 1
        if edges[mid] <= target:
            lo = mid + 1
        else:
            hi = mid
    k = lo - 1
    for _ in range(4):
        s0 = _start(k, m, s, edges, sigmoid, total)
        if s0 > cf:
            k -= 1
            continue
        s1 = _start(k + 1, m, s, edges, sigmoid, total)
        if s1 <= cf:
            k += 1
            continue
        return k, s0, s1 - s0
    lo, hi = 0, nsym
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if _start(mid, m, s, edges, sigmoid, total) <= cf:
            lo = mid
        else:
            hi = mid
    s0 = _start(lo, m, s, edges, sigmoid, total)
    return lo, s0, _start(lo + 1, m, s, edges, sigmoid, total) - s0


@_jit
def push_tensor(heads, words, ptr, rows, starts, freqs, mask, k_heads, precision):
    """Push starts/freqs [n, D] (mask [n, D]) onto lanes ``rows``; words must have room for D more."""
    n, d = starts.shape
    for r in range(n):
        row = rows[r]
        p = ptr[row]
        for c in range((d + k_heads - 1) // k_heads):
            for k in range(k_heads):
                i = c * k_heads + k
                if i >= d or not mask[r, i]:
                    continue
                x = heads[row, k]
                f = freqs[r, i]
                if x >= (f << (63 - precision)):
                    words[row, p] = x & WORD_MASK
                    p += 1
                    x >>= WORD_BITS
                heads[row, k] = ((x // f) << precision) + (x % f) + starts[r, i]
        ptr[row] = p
    return 0


@_jit
def pop_logistic(heads, words, ptr, low_water, rows, mean, inv, mask, k_heads, precision, edges, sigmoid,
                 symbols, freqs):
    """Pop symbols under discretized logistics (mean, inv_scale [n, D]) into symbols/freqs [n, D].

    The stack pointer and low-water mark live in locals while a row is coded (writing them
    through the arrays at every symbol made this loop 6x slower)."""
    n, d = mean.shape
    nsym = edges.shape[0] - 1
    total = (1 << precision) - nsym
    cf_mask = (np.int64(1) << precision) - 1
    for r in range(n):
        row = rows[r]
        p = ptr[row]
        lw = low_water[row]
        for c in range((d + k_heads - 1) // k_heads - 1, -1, -1):
            for k in range(k_heads - 1, -1, -1):
                i = c * k_heads + k
                if i >= d or not mask[r, i]:
                    continue
                x = heads[row, k]
                cf = x & cf_mask
                m, s = mean[r, i], inv[r, i]
                sym, start, freq = _find(cf, m, s, edges, sigmoid, total, nsym)
                x = freq * (x >> precision) + cf - start
                if x < STATE_LOWER:
                    if p == 0:
                        ptr[row] = p
                        return UNDERFLOW
                    p -= 1
                    x = (x << WORD_BITS) | np.int64(words[row, p])
                    if p < lw:
                        lw = p
                heads[row, k] = x
                symbols[r, i] = sym
                freqs[r, i] = freq
        ptr[row] = p
        low_water[row] = lw
    return 0


@_jit
def pop_uniform(heads, words, ptr, low_water, rows, d, k_heads, precision, bits, symbols):
    """Pop d symbols per row from the uniform family over 2**bits symbols."""
    shift = precision - bits
    cf_mask = (np.int64(1) << precision) - 1
    freq = np.int64(1) << shift
    for r in range(rows.shape[0]):
        row = rows[r]
        p = ptr[row]
        lw = low_water[row]
        for c in range((d + k_heads - 1) // k_heads - 1, -1, -1):
            for k in range(k_heads - 1, -1, -1):
                i = c * k_heads + k
                if i >= d:
                    continue
                x = heads[row, k]
                cf = x & cf_mask
                sym = cf >> shift
                x = freq * (x >> precision) + cf - (sym << shift)
                if x < STATE_LOWER:
                    if p == 0:
                        ptr[row] = p
                        return UNDERFLOW
                    p -= 1
                    x = (x << WORD_BITS) | np.int64(words[row, p])
                    if p < lw:
                        lw = p
                heads[row, k] = x
                symbols[r, i] = sym
        ptr[row] = p
        low_water[row] = lw
    return 0
