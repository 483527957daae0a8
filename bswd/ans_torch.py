"""rANS lanes on torch tensors (CPU or CUDA): the numba kernels of ans_kernels.py, vectorized.

Drop-in equivalents of ``ans_kernels.push_tensor``, ``pop_logistic`` and ``pop_uniform``: from
the same state they leave the same heads, words (the whole buffer), ptr and low_water and return
the same symbols, frequencies and status (``UNDERFLOW`` included, with the kernel's partial
state), so a stream written by either decodes with the other (tests/test_ans_torch.py).

Every number that decides a bit is an int64 computed by +, -, *, //, shifts, masks and table
lookups (``SearchTables.starts`` is tables.LogisticFamily.starts rearranged, exactly), so CPU
and CUDA agree. The logistic symbol is the unique k with start(k) <= cf < start(k + 1), found by
one of two exact searches that differ only in speed: "guess" (CPU default) takes the float
inverse of the logistic (ans_kernels._find's guess, through a bucket table instead of a binary
search over the edges), checks its two candidates with exact starts, and sends the few elements
outside them to the exact search; "search" (CUDA default) is a branch-free k-ary search over
exact starts, about 2*sqrt(n) starts per element and no host synchronisation.

Vectorization: all rows (lanes) and the K heads of a chunk at once; the only Python loop is over
the chunks of a tensor, which are sequential. Word order is the kernels' one: within a chunk,
the emitting heads of a lane append their words in ascending head order; a pop takes chunks last
first and, within a chunk, heads in descending order, each refilling from the top of the stack.
Within a chunk, positions are therefore ranks (cumsum) among the emitting / refilling heads.
A pop runs all rows to the end; if some stack ran dry (one host check per call), it is rerun in
the exact-underflow mode that leaves what the kernel leaves when it stops at the first such row.

State layout, mirroring ``ans.Lanes``: heads int64 [N, K], words [N, capacity] int32 holding the
uint32 words' bit patterns (int64 words holding values in [0, 2**32) work too), ptr and
low_water int64 [N]. ``rows`` (int64, unique) picks the lanes a call acts on, in the order the
kernels visit them. ``TorchLanes`` holds such a state and converts to and from ``Lanes``;
``TorchLogistic`` holds a family's tables on a device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from bswd.ans import STATE_LOWER, WORD_BITS, WORD_MASK, AnsError, Lanes
from bswd.tables import INV_SCALE_FRAC, LUT_RANGE, LUT_STEP_LOG2, MEAN_FRAC, SIGMA_FRAC

UNDERFLOW = -1  # as ans_kernels.UNDERFLOW
_U_SHIFT = MEAN_FRAC - LUT_STEP_LOG2
_LUT_HALF = LUT_RANGE << LUT_STEP_LOG2
_U_MAX = LUT_RANGE << MEAN_FRAC
_GUESS_GAIN = float(1 << (INV_SCALE_FRAC + MEAN_FRAC))

I64 = torch.int64


# ---- layout helpers -----------------------------------------------------------------------------
def _chunked(a: torch.Tensor, k: int, fill) -> torch.Tensor:
    """[n, D] -> [chunks, n, k] contiguous (chunk c holds columns c*k .. c*k+k-1), padded with fill."""
    n, d = a.shape
    nc = -(-d // k)
    if d < nc * k:
        padded = a.new_full((n, nc * k), fill)
        padded[:, :d] = a
        a = padded
    return a.reshape(n, nc, k).transpose(0, 1).contiguous()


def _unchunked(a: torch.Tensor, d: int) -> torch.Tensor:
    nc, n, k = a.shape
    return a.transpose(0, 1).reshape(n, nc * k)[:, :d]


def _store_word(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The low 32 bits of int64 x as the word tensor's dtype. int32 keeps the same 32 bits: the
    int64 -> int32 conversion truncates (modulo 2**32, as the kernel's store into uint32 does;
    checked by the tests on each device)."""
    if dtype == torch.int32:
        return x.to(torch.int32)
    return (x & WORD_MASK).to(dtype)


def _load_word(w: torch.Tensor) -> torch.Tensor:
    return w.to(I64) & WORD_MASK


# ---- the integer logistic CDF ------------------------------------------------------------------
def logistic_starts(k: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor, edges: torch.Tensor,
                    sigmoid: torch.Tensor, precision: int) -> torch.Tensor:
    """tables.LogisticFamily.starts: start(k) for int64 tensors broadcasting together, 0 <= k <= n
    (the same integer steps, written out as in tables.py)."""
    total = (1 << precision) - (edges.numel() - 1)
    u = ((edges.take(k) - mean) * inv) >> INV_SCALE_FRAC
    u = u.clamp(-_U_MAX, _U_MAX)
    j = (u >> _U_SHIFT) + _LUT_HALF
    frac = u & ((1 << _U_SHIFT) - 1)
    lo = sigmoid.take(j)
    sig = lo + (((sigmoid.take(j + 1) - lo) * frac) >> _U_SHIFT)
    return ((sig * total) >> SIGMA_FRAC) + k


# The coding loops evaluate the same function with fewer tensor ops: with c0 = 2**40 - mean * inv
# (per element, once), ((edge - mean) * inv >> 20) + 2**20 is (c0 + edge * inv) >> 20 (2**40 is
# a multiple of 2**20; check_ranges keeps |mean|, |edge| <= 2**30 and inv < 2**31, so no product
# or sum reaches 2**63), so u' = u + 2**20 is clamped to [0, 2**21], j = u' >> 10 and
# frac = u' & 1023; and sigmoid[j + 1] - sigmoid[j] comes from a difference table.
_OFF = _LUT_HALF << _U_SHIFT
_C0 = _OFF << INV_SCALE_FRAC
_FRAC_MASK = (1 << _U_SHIFT) - 1


class SearchTables:
    """A logistic family's tables on a device, with what the exact symbol search precomputes:
    the sigmoid difference table and a bucket index over the edges for the float guess."""

    def __init__(self, edges: torch.Tensor, sigmoid: torch.Tensor, precision: int):
        self.edges, self.sigmoid, self.precision = edges, sigmoid, precision
        self.n = n = edges.numel() - 1
        self.total = (1 << precision) - n
        self.dsig = sigmoid[1:] - sigmoid[:-1]
        if n < 3:  # no guess: find() searches
            return
        # guess: count of inner edges (edges[1:n]) <= a float target, through equal buckets no wider
        # than the closest two edges (so a bucket holds at most one edge), at most 2**16 of them
        inner = edges[1:n].to(torch.float64)
        lo, hi = float(inner[0]), float(inner[-1])
        gap = float((inner[1:] - inner[:-1]).min())
        width = max(1.0, gap, math.ceil((hi - lo + 1) / (1 << 16)))
        buckets = int((hi - lo) // width) + 1
        bounds = lo + width * torch.arange(buckets, dtype=torch.float64, device=edges.device)
        self.bucket_lo, self.bucket_scale, self.buckets = lo, 1.0 / width, buckets
        self.bucket_count = torch.searchsorted(inner, bounds, right=False)  # edges below each bucket
        self.inner_b = torch.cat([(inner - lo) / width, inner.new_full((1,), math.inf)])

    def c0(self, mean: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        return _C0 - mean * inv

    def starts(self, k: torch.Tensor, c0: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        """start(k), from c0 = self.c0(mean, inv); equal to logistic_starts."""
        u = (torch.addcmul(c0, self.edges.take(k), inv) >> INV_SCALE_FRAC).clamp_(_OFF - _U_MAX, _OFF + _U_MAX)
        j = u >> _U_SHIFT
        sig = self.sigmoid.take(j) + ((self.dsig.take(j) * (u & _FRAC_MASK)) >> _U_SHIFT)
        return ((sig * self.total) >> SIGMA_FRAC) + k

    def guess_params(self, mean: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per element, once: the guess's target in bucket units is a + logit(cf / total) * b
        (None below 3 symbols, where find() always searches)."""
        if self.n < 3:
            return None
        a = (mean.to(torch.float64) - self.bucket_lo) * self.bucket_scale
        b = (_GUESS_GAIN * self.bucket_scale) / inv.to(torch.float64)
        return a, b

    # ---- the search ----
    def search(self, cf: torch.Tensor, c0: torch.Tensor, inv: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(symbol, start, freq) by an exact k-ary search over [0, n) with no float and no
        data-dependent branch: two rounds of about sqrt(n) candidate starts each (n = 1024: 62).
        Invariant: start(lo) = s_lo <= cf < s_hi = start(lo + span), start(k >= n) = 2**precision."""
        lo = torch.zeros_like(cf)
        s_lo = torch.zeros_like(cf)
        s_hi = torch.full_like(cf, 1 << self.precision)
        span, first = self.n, True
        c0, inv, cfx = c0.unsqueeze(0), inv.unsqueeze(0), cf.unsqueeze(0)
        shape = (-1,) + (1,) * cf.dim()
        while span > 1:
            step = math.isqrt(span - 1) + 1 if first else 1
            count = -(-span // step)
            offs = step * torch.arange(1, count, device=cf.device, dtype=I64).view(shape)
            cand = (lo.unsqueeze(0) + offs).clamp_(max=self.n)
            s = self.starts(cand, c0, inv)  # [count - 1, ...], increasing
            c = (s <= cfx).sum(0)  # the first c candidates start at or below cf
            s = torch.cat([s_lo.unsqueeze(0), s, s_hi.unsqueeze(0)])
            s_lo = s.gather(0, c.unsqueeze(0)).squeeze(0)
            s_hi = s.gather(0, (c + 1).unsqueeze(0)).squeeze(0)
            lo = lo + step * c
            span, first = step, False
        return lo, s_lo, s_hi - s_lo

    def find(self, cf: torch.Tensor, c0: torch.Tensor, inv: torch.Tensor, guess: tuple | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(symbol, start, freq) of cf. With guess = self.guess_params(...), a float guess g picks
        the candidates g - 1 and g (the guess hardly ever falls short), exact starts decide, and
        the elements outside them go through the exact search; without, the search does all."""
        n = self.n
        if guess is None or n < 3:
            return self.search(cf, c0, inv)
        a, b = guess
        frac = torch.add(cf.to(torch.float64), 0.5).mul_(1.0 / self.total).clamp_(max=1.0 - 1e-12)
        target = torch.addcmul(a, torch.logit(frac), b).nan_to_num_(0.0)  # in bucket units
        g = self.bucket_count.take(target.clamp(0, self.buckets - 1).to(I64))
        g = g + (self.inner_b.take(g) <= target)  # inner edges <= target (one per bucket at most)
        base = (g - 1).clamp_(0, n - 2)
        s0, s1, s2 = (self.starts(base + i, c0, inv) for i in range(3))
        upper = s1 <= cf
        sym = base + upper
        start = torch.where(upper, s1, s0)
        end = torch.where(upper, s2, s1)
        miss = (cf < s0) | (cf >= s2)
        freq = end - start
        if bool(miss.any()):
            where = miss.nonzero(as_tuple=True)
            sym[where], start[where], freq[where] = self.search(cf[where], c0[where], inv[where])
        return sym, start, freq


def _default_method(device: torch.device) -> str:
    return "search" if device.type == "cuda" else "guess"


def logistic_find(cf: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor, edges: torch.Tensor,
                  sigmoid: torch.Tensor, precision: int, method: str | None = None,
                  tables: SearchTables | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(symbol, start, freq) with start(symbol) <= cf < start(symbol + 1), exactly: int64 tensors
    of cf's shape (mean and inv of that shape, cf in [0, 2**precision)).

    method "guess" (the CPU default): ans_kernels._find's float guess, confirmed by exact starts;
    "search" (the CUDA default): a branch-free k-ary search over exact starts. Both give the
    unique symbol; they differ only in speed."""
    t = tables or SearchTables(edges, sigmoid, precision)
    method = method or _default_method(cf.device)
    c0 = t.c0(mean, inv)
    return t.find(cf, c0, inv, t.guess_params(mean, inv) if method == "guess" else None)


# ---- the kernels -------------------------------------------------------------------------------
def push_tensor(heads: torch.Tensor, words: torch.Tensor, ptr: torch.Tensor, rows: torch.Tensor,
                starts: torch.Tensor, freqs: torch.Tensor, mask: torch.Tensor | None, head_width: int,
                precision: int) -> int:
    """ans_kernels.push_tensor: push starts/freqs [n, D] (mask [n, D] bool, or None for all)
    onto lanes ``rows``.

    In place on heads, words, ptr; words (contiguous) must have room for D more words per row.
    Returns 0."""
    n, d = starts.shape
    if n == 0 or d == 0:
        return 0
    k_heads, cap = head_width, words.shape[1]
    flat = words.view(-1)
    # per element, once, chunk-major: masked-off elements get freq 1, start 0 and, in
    # coded = x + (x // f) * (2**p - f) + start (= ((x // f) << p) + x % f + start), gain 0,
    # so they leave x as it is and never emit (emit also requires the mask)
    m = None if mask is None else _chunked(mask, k_heads, False)
    f = _chunked(freqs, k_heads, 1)
    s = _chunked(starts, k_heads, 0)
    if m is not None:
        f.masked_fill_(~m, 1)
        s.masked_fill_(~m, 0)
    gain = (1 << precision) - f
    if m is not None:
        gain.masked_fill_(~m, 0)
    limit = f << (63 - precision)  # wraps to -2**63 for f = 2**precision, as in the kernel: always emits
    x = heads.index_select(0, rows)
    base = (rows * cap + ptr.index_select(0, rows)).unsqueeze(1)  # where the next word goes
    karange = torch.arange(k_heads, device=heads.device, dtype=I64)
    for c in range(f.shape[0]):
        w = min(k_heads, d - c * k_heads)
        xc = x if w == k_heads else x[:, :w]
        emit = xc >= limit[c, :, :w]
        if m is not None:
            emit &= m[c, :, :w]
        e = emit.to(I64)
        cs = torch.cumsum(e, 1)
        rank = cs - e  # emitting heads before this one
        count = cs[:, -1:]
        # emitting heads take base, base+1, ... in head order; the others get the distinct slots
        # after them and write back what is there: every index is written once, and nothing
        # changes above the new stack top
        idx = base + torch.where(emit, rank, count + karange[:w] - rank)
        flat.put_(idx, torch.where(emit, _store_word(xc, words.dtype), flat.take(idx)))
        xc = xc >> (e << 5)
        q = torch.div(xc, f[c, :, :w], rounding_mode="floor")
        xc = torch.addcmul(xc + s[c, :, :w], q, gain[c, :, :w])
        if w == k_heads:
            x = xc
        else:
            x[:, :w] = xc
        base = base + count
    heads[rows] = x
    ptr[rows] = base.squeeze(1) - rows * cap
    return 0


Decode = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _pop(heads, words, ptr, low_water, rows, d, k_heads, precision, mask, decode: Decode,
         outs: list[tuple[torch.Tensor, int]]) -> int:
    """The pop loop shared by both families. decode(cf [n, w], c, w) gives (symbol, start, freq)
    of chunk c's first w columns; outs lists (tensor [n, D], index into that triple) to fill where
    the mask is set. Runs the fast loop; if a stack ran dry, reruns the exact-underflow loop."""
    if rows.numel() == 0 or d == 0:
        return 0
    m = None if mask is None else _chunked(mask, k_heads, False)
    status = _pop_loop(heads, words, ptr, low_water, rows, d, k_heads, precision, m, decode, outs, False)
    if status == UNDERFLOW:
        status = _pop_loop(heads, words, ptr, low_water, rows, d, k_heads, precision, m, decode, outs, True)
    return status


def _pop_loop(heads, words, ptr, low_water, rows, d, k_heads, precision, m, decode, outs, exact) -> int:
    """exact=False: every row runs to the end (ptr may go negative: reported as UNDERFLOW, and
    nothing is written). exact=True: mirror the kernel's underflow: rows before the first (in rows
    order) that runs dry are done; that row stops at the head that found its stack empty (the
    heads below it in the chunk and every later chunk untouched, ptr 0, low_water unchanged);
    later rows are untouched."""
    n, cap = rows.numel(), words.shape[1]
    nc = -(-d // k_heads)
    flat = words.view(-1)
    x = heads.index_select(0, rows)
    p0 = ptr.index_select(0, rows).unsqueeze(1)
    p = p0
    base = (rows * cap).unsqueeze(1)
    failed = torch.zeros((n, 1), dtype=torch.bool, device=heads.device)
    local = [torch.empty((nc, n, k_heads), dtype=out.dtype, device=out.device) for out, _ in outs]
    written = torch.zeros((nc, n, k_heads), dtype=torch.bool, device=heads.device) if exact else m
    cf_mask = (1 << precision) - 1
    for c in reversed(range(nc)):
        w = min(k_heads, d - c * k_heads)
        xc = x if w == k_heads else x[:, :w]
        cf = xc & cf_mask
        got = decode(cf, c, w)
        _, start, freq = got
        mc = None if m is None else m[c, :, :w]
        if exact:
            mc = ~failed if mc is None else mc & ~failed
        y = torch.addcmul(cf - start, freq, xc >> precision) if isinstance(freq, torch.Tensor) else \
            (xc >> precision) * freq + (cf - start)
        under = y < STATE_LOWER
        if mc is not None:
            under &= mc
        u = under.to(I64)
        cs = torch.cumsum(u, 1)
        rank = cs - u  # refilling heads below this one
        count = cs[:, -1:]
        # heads go top down, the r-th refill from the top taking word p-1-r: word p - count + rank
        word = _load_word(flat.take(base + (p - count + rank).clamp_(0, cap - 1)))
        new = torch.where(under, (y << WORD_BITS) | word, y)
        if exact:
            # where the stack runs dry, the head that finds it empty and every head below it stay
            mc = mc & (count - rank <= p)
            written[c, :, :w] = mc
        if mc is not None:
            new = torch.where(mc, new, xc)
        if w == k_heads:
            x = new
        else:
            x[:, :w] = new
        for loc, (_, which) in zip(local, outs):
            loc[c, :, :w] = got[which]
        if exact:
            fail = count > p
            p = torch.where(fail, 0, p - count)
            failed |= fail
        else:
            p = p - count
    # low water: p only falls, so it is the smallest p after a refill, if there was one
    lw0 = low_water.index_select(0, rows).unsqueeze(1)
    lw = torch.where(p < p0, torch.minimum(lw0, p), lw0)
    end, status = n, 0
    if exact:
        if bool(failed.any()):
            end = int(failed.squeeze(1).nonzero()[0, 0]) + 1
            status = UNDERFLOW
            lw = torch.where(failed, lw0, lw)
    elif bool((p < 0).any()):
        return UNDERFLOW  # nothing written: the caller reruns exactly
    sel = rows[:end]
    heads[sel] = x[:end]
    ptr[sel] = p[:end, 0]
    low_water[sel] = lw[:end, 0]
    for (out, _), loc in zip(outs, local):
        got = _unchunked(loc, d)[:end]
        out[:end] = got if written is None else torch.where(_unchunked(written, d)[:end], got, out[:end])
    return status


def pop_logistic(heads: torch.Tensor, words: torch.Tensor, ptr: torch.Tensor, low_water: torch.Tensor,
                 rows: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor, mask: torch.Tensor | None, k_heads: int,
                 precision: int, edges: torch.Tensor, sigmoid: torch.Tensor, symbols: torch.Tensor,
                 freqs: torch.Tensor, method: str | None = None, tables: SearchTables | None = None) -> int:
    """ans_kernels.pop_logistic: pop symbols under discretized logistics (mean, inv_scale int64
    [n, D]; mask bool [n, D]) into symbols/freqs [n, D] (written only where mask is True).
    Returns 0, or UNDERFLOW with the kernel's partial state (see ans_kernels). ``method``: see
    logistic_find; ``tables``: a SearchTables of (edges, sigmoid, precision), to reuse it."""
    t = tables or SearchTables(edges, sigmoid, precision)
    method = method or _default_method(heads.device)
    inv_c = _chunked(inv, k_heads, 1)
    mean_c = _chunked(mean, k_heads, 0)
    c0 = t.c0(mean_c, inv_c)
    guess = t.guess_params(mean_c, inv_c) if method == "guess" else None

    def decode(cf, c, w):
        return t.find(cf, c0[c, :, :w], inv_c[c, :, :w], None if guess is None else
                      (guess[0][c, :, :w], guess[1][c, :, :w]))

    return _pop(heads, words, ptr, low_water, rows, mean.shape[1], k_heads, precision, mask, decode,
                [(symbols, 0), (freqs, 2)])


def pop_uniform(heads: torch.Tensor, words: torch.Tensor, ptr: torch.Tensor, low_water: torch.Tensor,
                rows: torch.Tensor, d: int, k_heads: int, precision: int, bits: int, symbols: torch.Tensor) -> int:
    """ans_kernels.pop_uniform: pop d symbols per row of the uniform family over 2**bits symbols."""
    shift = precision - bits
    freq = 1 << shift

    def decode(cf, c, w):
        sym = cf >> shift
        return sym, sym << shift, freq

    return _pop(heads, words, ptr, low_water, rows, d, k_heads, precision, None, decode, [(symbols, 0)])


# ---- holders -----------------------------------------------------------------------------------
def _tensor(a, device, dtype=I64) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)


@dataclass(frozen=True, eq=False)
class TorchLogistic:
    """tables.LogisticFamily's tables on a device, with its starts/encode_params/decode."""

    edges: torch.Tensor
    inv_scales: torch.Tensor
    sigmoid: torch.Tensor
    precision: int
    tables: SearchTables

    @classmethod
    def from_family(cls, family, device: str | torch.device = "cpu") -> TorchLogistic:
        edges, sigmoid = _tensor(family.edges, device), _tensor(family.sigmoid, device)
        return cls(edges, _tensor(family.inv_scales, device), sigmoid, family.precision,
                   SearchTables(edges, sigmoid, family.precision))

    @property
    def n(self) -> int:
        return self.edges.numel() - 1

    def starts(self, k: torch.Tensor, mean: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
        return logistic_starts(k, mean, inv_scale, self.edges, self.sigmoid, self.precision)

    def encode_params(self, symbols: torch.Tensor, mean: torch.Tensor, sidx: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self.inv_scales[sidx]
        lo = self.starts(symbols, mean, inv)
        return lo, self.starts(symbols + 1, mean, inv) - lo

    def decode(self, cf: torch.Tensor, mean: torch.Tensor, sidx: torch.Tensor, method: str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return logistic_find(cf, mean, self.inv_scales[sidx], self.edges, self.sigmoid, self.precision, method,
                             self.tables)


class TorchLanes:
    """``ans.Lanes`` on torch tensors: heads int64 [N, K], words int32 [N, capacity] (uint32 bit
    patterns), ptr and low_water int64 [N]. Coding goes through the functions above."""

    def __init__(self, heads: torch.Tensor, words: torch.Tensor, ptr: torch.Tensor, low_water: torch.Tensor,
                 precision: int):
        self.heads, self.words, self.ptr, self.low_water = heads, words.contiguous(), ptr, low_water
        self.precision = precision
        self.head_width = heads.shape[1]

    @classmethod
    def empty(cls, n_rows: int, head_width: int, precision: int, device: str | torch.device = "cpu",
              capacity: int = 1024) -> TorchLanes:
        """Idle lane slots on a device, as ``Lanes(n_rows, head_width, precision)``."""
        return cls.from_lanes(Lanes(n_rows, head_width, precision, capacity), device)

    @property
    def device(self) -> torch.device:
        return self.heads.device

    # ---- lane set-up, read-out and gifts: ans.Lanes's methods, run on a host copy of one row ----
    # They happen once per lane (start, finish, donation), not per patch, so copying a row is cheap
    # next to coding, and the rules stay written once, in ans.Lanes.
    def _host_row(self, row: int) -> Lanes:
        host = Lanes(1, self.head_width, self.precision, capacity=self.words.shape[1])
        host.heads[0] = self.heads[row].cpu().numpy()
        host.words[0] = self.words[row].cpu().numpy().view(np.uint32)
        host.ptr[0], host.low_water[0] = int(self.ptr[row]), int(self.low_water[row])
        return host

    def _store_row(self, row: int, host: Lanes) -> None:
        self.reserve(host.words.shape[1])
        n = host.words.shape[1]
        self.words[row, :n] = torch.from_numpy(host.words[0].view(np.int32)).to(self.device)
        self.heads[row] = torch.from_numpy(host.heads[0]).to(self.device)
        self.ptr[row], self.low_water[row] = int(host.ptr[0]), int(host.low_water[0])

    def _on_host(self, row: int, method: str, *args, store: bool = False):
        host = self._host_row(row)
        result = getattr(host, method)(0, *args)
        if store:
            self._store_row(row, host)
        return result

    def start(self, row: int, seed: int, lane: int, reservoir: int) -> None:
        self._on_host(row, "start", seed, lane, reservoir, store=True)

    def load(self, row: int, seed: int, lane: int, low_water: int, heads: np.ndarray, words: np.ndarray) -> None:
        self._on_host(row, "load", seed, lane, low_water, heads, words, store=True)

    def content_words(self, row: int) -> int:
        return int(self.ptr[row] - self.low_water[row])

    def take_words(self, row: int, count: int) -> np.ndarray:
        return self._on_host(row, "take_words", count, store=True)

    def put_words(self, row: int, words: np.ndarray) -> None:
        self._on_host(row, "put_words", words, store=True)

    def is_initial_below(self, row: int, seed: int, lane: int, reservoir: int) -> np.ndarray | None:
        return self._on_host(row, "is_initial_below", seed, lane, reservoir)

    def payload(self, row: int) -> tuple[int, np.ndarray, np.ndarray]:
        return self._on_host(row, "payload")

    def is_initial(self, row: int, seed: int, lane: int) -> bool:
        return self._on_host(row, "is_initial", seed, lane)

    @classmethod
    def from_lanes(cls, lanes: Lanes, device: str | torch.device = "cpu") -> TorchLanes:
        words = torch.from_numpy(np.ascontiguousarray(lanes.words).view(np.int32).copy()).to(device)
        return cls(_tensor(lanes.heads, device).clone(), words, _tensor(lanes.ptr, device).clone(),
                   _tensor(lanes.low_water, device).clone(), lanes.precision)

    def to_lanes(self) -> Lanes:
        n, cap = self.words.shape
        lanes = Lanes(n, self.head_width, self.precision, capacity=cap)
        lanes.heads = self.heads.cpu().numpy().copy()
        lanes.words = self.words.cpu().numpy().view(np.uint32).copy()
        lanes.ptr = self.ptr.cpu().numpy().copy()
        lanes.low_water = self.low_water.cpu().numpy().copy()
        return lanes

    def reserve(self, needed: int) -> None:
        """Grow the word stacks to at least ``needed`` words (doubling, as Lanes does)."""
        cap = self.words.shape[1]
        if needed > cap:
            grown = torch.zeros((self.words.shape[0], max(needed, 2 * cap)), dtype=self.words.dtype,
                                device=self.device)
            grown[:, :cap] = self.words
            self.words = grown

    def _rows(self, rows) -> torch.Tensor:
        return _tensor(rows, self.device)

    def push(self, rows, starts, freqs, mask=None) -> None:
        """Push starts/freqs [n, D] (the codec's tensor order) onto ``rows``."""
        rows = self._rows(rows)
        starts, freqs = _tensor(starts, self.device), _tensor(freqs, self.device)
        mask = None if mask is None else _tensor(mask, self.device, torch.bool)
        if rows.numel():
            self.reserve(int(self.ptr[rows].max()) + starts.shape[1])
        push_tensor(self.heads, self.words, self.ptr, rows, starts, freqs, mask, self.head_width, self.precision)

    def pop_logistic(self, rows, family: TorchLogistic, mean, sidx, mask=None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(symbols, freqs) [n, D] popped under the family at (mean, scale index) [n, D]; masked-off
        elements give symbol 0, freq 1. Raises AnsError where a stack runs dry."""
        rows = self._rows(rows)
        mean, sidx = _tensor(mean, self.device), _tensor(sidx, self.device)
        mask = None if mask is None else _tensor(mask, self.device, torch.bool)
        symbols = torch.zeros(mean.shape, dtype=I64, device=self.device)
        freqs = torch.ones(mean.shape, dtype=I64, device=self.device)
        status = pop_logistic(self.heads, self.words, self.ptr, self.low_water, rows, mean,
                              family.inv_scales[sidx], mask, self.head_width, self.precision, family.edges,
                              family.sigmoid, symbols, freqs, tables=family.tables)
        _check(status)
        return symbols, freqs

    def pop_uniform(self, rows, d: int, bits: int) -> torch.Tensor:
        rows = self._rows(rows)
        symbols = torch.zeros((rows.numel(), d), dtype=I64, device=self.device)
        _check(pop_uniform(self.heads, self.words, self.ptr, self.low_water, rows, d, self.head_width,
                           self.precision, bits, symbols))
        return symbols


def _check(status: int) -> None:
    if status == UNDERFLOW:
        raise AnsError("popped past the bottom of a lane's stack (initial bits exhausted)")
