"""Integer CDF tables for discretized logistics: the only probabilities the coder ever sees.

A ``LogisticFamily`` codes symbols k in [0, n) whose bins are [edge_k, edge_{k+1}) (the first and
last bins take the tails). For a mean ``mu`` (fixed point, 2**-MEAN_FRAC units) and a scale index
``sidx`` into the family's log-spaced scale grid, the start of symbol k is

    start(k) = k + floor(sigma(u_k) * T / 2**SIGMA_FRAC),   u_k = (edge_k - mu) / scale,
    start(0) = 0, start(n) = 2**precision,  T = 2**precision - n,

with sigma read from a sigmoid lookup table by exact integer interpolation. Every number here
is an int64 computed from ints by +, -, *, >> and table lookups, so the encoder and decoder get
identical frequencies on every machine. start is strictly increasing, so every frequency is >= 1
and they sum to exactly 2**precision.

The lookup tables are built once, with floats, when a model is exported (``build_*``), stored in
the model file, and only indexed afterwards.

Bounds (checked by ``check_ranges``): |edge - mu| < 2**31 and inv_scale < 2**31 keep the product
below 2**62; sigma <= 2**30 and T < 2**31 keep their product below 2**61.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MEAN_FRAC = 16  # means and edges in units of 2**-16
INV_SCALE_FRAC = 20  # inv_scale = round(2**20 / scale)
SIGMA_FRAC = 30  # sigmoid values in units of 2**-30
LUT_STEP_LOG2 = 6  # the sigmoid table samples u every 2**-6
LUT_RANGE = 16  # ... over [-16, 16]; beyond it sigma saturates to its end values
_U_SHIFT = MEAN_FRAC - LUT_STEP_LOG2  # fractional bits of u below the table step
_LUT_HALF = LUT_RANGE << LUT_STEP_LOG2  # index of u = 0
_U_MAX = LUT_RANGE << MEAN_FRAC
_EDGE_SENTINEL = 1 << 30  # outer edges: |edge - mean| * inv_scale always clamps to +-_U_MAX


def build_sigmoid_lut() -> np.ndarray:
    """round(2**30 * sigmoid(j / 64)) for j in [-1024, 1024], int64 [2050].

    The ends are pinned to exactly 0 and 2**30, and one more 2**30 follows, so that u clamped
    to +-16 gives start(0) = 0 and start(n) = 2**precision with no special case.
    """
    j = np.arange(-_LUT_HALF, _LUT_HALF + 2, dtype=np.float64) / (1 << LUT_STEP_LOG2)
    lut = np.round((1 << SIGMA_FRAC) / (1.0 + np.exp(-j))).astype(np.int64)
    lut[0] = 0
    lut[-2:] = 1 << SIGMA_FRAC
    return lut


def build_inv_scales(log_min: float, log_max: float, count: int) -> np.ndarray:
    step = (log_max - log_min) / (count - 1)
    logs = log_min + step * np.arange(count, dtype=np.float64)
    return np.round((1 << INV_SCALE_FRAC) * np.exp(-logs)).astype(np.int64)


def pixel_edges(levels: int = 256) -> np.ndarray:
    """Edges k - 0.5 for k in [0, levels]; the two outer ones are never used."""
    edges = (np.arange(levels + 1, dtype=np.int64) << MEAN_FRAC) - (1 << (MEAN_FRAC - 1))
    edges[0], edges[-1] = -_EDGE_SENTINEL, _EDGE_SENTINEL
    return edges


def latent_edges(bins: int) -> np.ndarray:
    """Equal-mass bins under the standard logistic: edge_j = logit(j / bins)."""
    edges = np.zeros(bins + 1, dtype=np.int64)
    edges[0], edges[-1] = -_EDGE_SENTINEL, _EDGE_SENTINEL
    for j in range(1, bins):
        p = j / bins
        edges[j] = round(math.log(p / (1.0 - p)) * (1 << MEAN_FRAC))
    return edges


def latent_centres(bins: int, frac: int, bound: int) -> np.ndarray:
    """The value a latent bin stands for at the network's input: its median under the prior."""
    p = (np.arange(bins, dtype=np.float64) + 0.5) / bins
    centre = np.log(p / (1.0 - p))
    return np.clip(np.round(centre * (1 << frac)), -bound, bound).astype(np.int64)


@dataclass(frozen=True)
class LogisticFamily:
    """Discretized logistics over ``len(edges) - 1`` symbols with integer parameters."""

    edges: np.ndarray  # int64 [n + 1]
    inv_scales: np.ndarray  # int64 [count]
    sigmoid: np.ndarray  # int64 [2 * LUT_RANGE * 2**LUT_STEP_LOG2 + 2]
    precision: int

    @property
    def n(self) -> int:
        return len(self.edges) - 1

    def check_ranges(self, mean_min: int, mean_max: int) -> None:
        """Fail at export unless every product in ``starts`` fits int64 and the outer edges
        always clamp to the table ends (see module doc)."""
        reach = max(abs(int(self.edges.max()) - mean_min), abs(int(self.edges.min()) - mean_max))
        inv_max, inv_min = int(self.inv_scales.max()), int(self.inv_scales.min())
        if reach >= 1 << 31 or inv_max >= 1 << 31 or inv_min < 1:
            raise ValueError("logistic family parameters exceed the exact-integer bounds")
        inner = min(_EDGE_SENTINEL - abs(mean_min), _EDGE_SENTINEL - abs(mean_max))
        if (inner * inv_min) >> INV_SCALE_FRAC < _U_MAX:
            raise ValueError("outer edges do not clamp to the table ends for the broadest scale")
        if abs(int(self.edges[0])) != _EDGE_SENTINEL or abs(int(self.edges[-1])) != _EDGE_SENTINEL:
            raise ValueError("outer edges must be the sentinels")
        if len(self.sigmoid) != 2 * _LUT_HALF + 2 or self.sigmoid[0] != 0 or self.sigmoid[-2] != 1 << SIGMA_FRAC:
            raise ValueError("sigmoid table has the wrong length or ends")
        if (1 << self.precision) - self.n <= 0 or self.precision > 31:
            raise ValueError("precision too small for the number of symbols")

    def starts(self, k: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray) -> np.ndarray:
        """start(k) for int64 arrays of one shape, 0 <= k <= n (the outer edges are sentinels
        that clamp to the table's pinned ends, giving start(0) = 0, start(n) = 2**precision)."""
        total = (1 << self.precision) - self.n
        u = ((self.edges[k] - mean) * inv_scale) >> INV_SCALE_FRAC
        u = np.minimum(np.maximum(u, -_U_MAX), _U_MAX)
        j = (u >> _U_SHIFT) + _LUT_HALF
        frac = u & ((1 << _U_SHIFT) - 1)
        lo = self.sigmoid[j]
        sig = lo + (((self.sigmoid[j + 1] - lo) * frac) >> _U_SHIFT)
        return ((sig * total) >> SIGMA_FRAC) + k

    def encode_params(self, symbols: np.ndarray, mean: np.ndarray, sidx: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(starts, freqs) of the given symbols."""
        inv = self.inv_scales[sidx]
        lo = self.starts(symbols, mean, inv)
        hi = self.starts(symbols + 1, mean, inv)
        return lo, hi - lo

    def decode(self, cf: np.ndarray, mean: np.ndarray, sidx: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The symbols whose [start, start + freq) holds cf; returns (symbols, starts, freqs)."""
        inv = self.inv_scales[sidx]
        lo = np.zeros(cf.shape, dtype=np.int64)
        hi = np.full(cf.shape, self.n, dtype=np.int64)
        for _ in range(int(math.ceil(math.log2(self.n)))):
            mid = (lo + hi) >> 1
            below = self.starts(mid, mean, inv) <= cf
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        start = self.starts(lo, mean, inv)
        return lo, start, self.starts(lo + 1, mean, inv) - start


@dataclass(frozen=True)
class UniformFamily:
    """n = 2**bits equally likely symbols (the top prior over equal-mass bins)."""

    bits: int
    precision: int

    def encode_params(self, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shift = self.precision - self.bits
        return symbols.astype(np.int64) << shift, np.full(symbols.shape, 1 << shift, dtype=np.int64)

    def decode(self, cf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shift = self.precision - self.bits
        symbols = cf >> shift
        return symbols, symbols << shift, np.full(cf.shape, 1 << shift, dtype=np.int64)
