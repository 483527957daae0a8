"""Vectorized rANS over many lanes (numpy). Pure: no model, no files, no torch.

A *lane* is one independent ANS message: K interleaved head states (int64, each kept in
[2**31, 2**63)) and one stack of 32-bit words shared by its heads. Many lanes live in one
``Lanes`` object as rows; every operation takes ``rows``, the lanes it acts on, so lanes of
different images can be advanced together and join or leave between steps.

One symbol per head per call: ``push(rows, starts, freqs, mask)`` codes, for every row r and head
k with mask[r, k], a symbol occupying [start, start + freq) of [0, 2**precision). ``peek`` gives
the cumulative frequency a pop would decode; after looking the symbol up, ``pop`` removes it.
push and pop are exact inverses, in both orders (the bits-back property):
pop(push(s)) restores the state, and push(pop()) restores it too.

Word order: when several heads of one lane emit a word in the same push, they are appended in
ascending head order; a pop refills them from the top in the mirrored order.

Initial bits: a fresh lane's heads hold 31 random bits each above L, and its stack holds
``reservoir`` words, all drawn from a seed (splitmix64, stable forever). The first pops consume
them. (Heads starting at exactly L would make every head's first pop decode cf = 0: the lowest
bin, an awful latent sample.) ``low_water`` records how deep the stack was ever popped:
words below it were never touched, so a file need not store them (the decoder regenerates them).
"""

from __future__ import annotations

import numpy as np

STATE_LOWER = 1 << 31  # L: heads live in [L, 2**63)
WORD_BITS = 32
WORD_MASK = (1 << WORD_BITS) - 1
MAX_PRECISION = 31

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class AnsError(ValueError):
    """The coder was asked to do something impossible (e.g. pop past the bottom of a stack)."""


def seed_words(seed: int, lane: int, count: int) -> np.ndarray:
    """``count`` pseudo-random uint32 words for ``lane`` of ``seed`` (splitmix64; never changes).

    >>> seed_words(1, 0, 4).tolist()
    [2298633409, 2433363436, 1703865447, 3203108257]
    """
    n64 = (count + 1) // 2
    with np.errstate(over="ignore"):
        base = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ (np.uint64(lane) * _GOLDEN)
        z = base + _GOLDEN * np.arange(1, n64 + 1, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return z.view(np.uint32)[:count].copy()


def initial_lane(seed: int, lane: int, head_width: int, words: int) -> tuple[np.ndarray, np.ndarray]:
    """(heads int64 [K] in [L, 2L), the first ``words`` reservoir words) of a fresh lane."""
    stream = seed_words(seed, lane, head_width + words)
    heads = STATE_LOWER | (stream[:head_width].astype(np.int64) >> 1)
    return heads, stream[head_width:]


class Lanes:
    """Rows of rANS lanes: heads int64 [n_rows, K], word stacks uint32 [n_rows, capacity]."""

    def __init__(self, n_rows: int, head_width: int, precision: int, capacity: int = 1024):
        if not 1 <= precision <= MAX_PRECISION:
            raise AnsError(f"precision must be in 1..{MAX_PRECISION}, got {precision}")
        self.precision = precision
        self.head_width = head_width
        self.heads = np.full((n_rows, head_width), STATE_LOWER, dtype=np.int64)
        self.words = np.zeros((n_rows, max(capacity, 1)), dtype=np.uint32)
        self.ptr = np.zeros(n_rows, dtype=np.int64)
        self.low_water = np.zeros(n_rows, dtype=np.int64)

    # ---- lane set-up and read-out ------------------------------------------------------------
    def start(self, row: int, seed: int, lane: int, reservoir: int) -> None:
        """Make ``row`` a fresh lane: seeded heads, ``reservoir`` seed words on its stack."""
        self._reserve(np.array([reservoir]))
        self.heads[row], self.words[row, :reservoir] = initial_lane(seed, lane, self.head_width, reservoir)
        self.ptr[row] = reservoir
        self.low_water[row] = reservoir

    def load(self, row: int, seed: int, lane: int, low_water: int, heads: np.ndarray,
             words: np.ndarray) -> None:
        """Restore a lane written by ``payload``: regenerate the untouched seed words below it."""
        total = low_water + len(words)
        self._reserve(np.array([total]))
        self.words[row, :low_water] = initial_lane(seed, lane, self.head_width, low_water)[1]
        self.words[row, low_water:total] = words
        self.ptr[row] = total
        self.low_water[row] = low_water
        self.heads[row] = heads.astype(np.int64)

    # ---- moving coded words between lanes (a donor lane's words start another lane) -----------
    def content_words(self, row: int) -> int:
        """Words on top of ``row``'s stack that pushes wrote (above its low-water mark)."""
        return int(self.ptr[row] - self.low_water[row])

    def take_words(self, row: int, count: int) -> np.ndarray:
        """Remove the top ``count`` words of ``row``'s stack (bottom first); only pushed words."""
        if not 0 <= count <= self.content_words(row):
            raise AnsError(f"cannot take {count} words: the lane holds {self.content_words(row)} pushed words")
        top = int(self.ptr[row])
        self.ptr[row] = top - count
        return self.words[row, top - count : top].copy()

    def put_words(self, row: int, words: np.ndarray) -> None:
        """Put ``words`` (bottom first) on top of ``row``'s stack: the inverse of take_words."""
        top = int(self.ptr[row])
        self._reserve(np.array([top + len(words)]))
        self.words[row, top : top + len(words)] = words
        self.ptr[row] = top + len(words)

    def is_initial_below(self, row: int, seed: int, lane: int, reservoir: int) -> np.ndarray | None:
        """A donated lane's end of decoding: seeded heads and its ``reservoir`` seed words at the
        bottom; returns the words above them (what its donor gave it), else None."""
        if self.ptr[row] < reservoir:
            return None
        heads, words = initial_lane(seed, lane, self.head_width, reservoir)
        if not (np.array_equal(self.heads[row], heads) and np.array_equal(self.words[row, :reservoir], words)):
            return None
        return self.words[row, reservoir : self.ptr[row]].copy()

    def payload(self, row: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(low_water, heads uint64 [K], words uint32 above low_water, bottom first)."""
        lw = int(self.low_water[row])
        return lw, self.heads[row].astype(np.uint64), self.words[row, lw : self.ptr[row]].copy()

    def is_initial(self, row: int, seed: int, lane: int) -> bool:
        """True if ``row`` is back exactly at a fresh lane's state (all bits given back)."""
        n = int(self.ptr[row])
        heads, words = initial_lane(seed, lane, self.head_width, n)
        return bool(np.array_equal(self.heads[row], heads)) and bool(np.array_equal(self.words[row, :n], words))

    def size_bits(self, row: int) -> int:
        """Bits a file stores for this lane: heads plus words above the low-water mark."""
        return 64 * self.head_width + WORD_BITS * int(self.ptr[row] - self.low_water[row])

    def _reserve(self, needed: np.ndarray) -> None:
        need = int(needed.max()) if needed.size else 0
        cap = self.words.shape[1]
        if need > cap:
            new_cap = max(need, 2 * cap)
            grown = np.zeros((self.words.shape[0], new_cap), dtype=np.uint32)
            grown[:, :cap] = self.words
            self.words = grown

    # ---- coding --------------------------------------------------------------------------------
    def _rank(self, r_idx: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-row counts of the flagged heads and each flagged head's rank within its row
        (r_idx comes from np.nonzero, so it is sorted and heads ascend within a row)."""
        counts = np.bincount(r_idx, minlength=n_rows)
        first = np.cumsum(counts) - counts
        return counts, np.arange(len(r_idx)) - first[r_idx]

    def push(self, rows: np.ndarray, starts: np.ndarray, freqs: np.ndarray,
             mask: np.ndarray | None = None) -> None:
        """Push one symbol per (row, head): starts/freqs int64 [len(rows), K], 0 <= start,
        1 <= freq, start + freq <= 2**precision. Heads where mask is False are left alone."""
        p = self.precision
        x = self.heads[rows]
        if mask is not None:
            freqs = np.where(mask, freqs, 1)
        emit = x >= (freqs << (63 - p))
        if mask is not None:
            emit &= mask
        r_idx, k_idx = np.nonzero(emit)
        if len(r_idx):
            counts, rank = self._rank(r_idx, len(rows))
            ptr = self.ptr[rows]
            self._reserve(ptr + counts)
            self.words[rows[r_idx], ptr[r_idx] + rank] = (x[r_idx, k_idx] & WORD_MASK).astype(np.uint32)
            x[r_idx, k_idx] >>= WORD_BITS
            self.ptr[rows] = ptr + counts
        q, r = np.divmod(x, freqs)
        coded = (q << p) + r + starts
        self.heads[rows] = coded if mask is None else np.where(mask, coded, x)

    def peek(self, rows: np.ndarray) -> np.ndarray:
        """The cumulative frequency each head would decode next, int64 [len(rows), K]."""
        return self.heads[rows] & ((1 << self.precision) - 1)

    def pop(self, rows: np.ndarray, starts: np.ndarray, freqs: np.ndarray,
            mask: np.ndarray | None = None) -> None:
        """Remove the symbols found from ``peek``: start <= cf < start + freq must hold."""
        p = self.precision
        x = self.heads[rows]
        popped = freqs * (x >> p) + (x & ((1 << p) - 1)) - starts
        if mask is not None:
            popped = np.where(mask, popped, x)
        r_idx, k_idx = np.nonzero(popped < STATE_LOWER)
        if len(r_idx):
            counts, rank = self._rank(r_idx, len(rows))
            ptr = self.ptr[rows]
            if np.any(ptr < counts):
                raise AnsError("popped past the bottom of a lane's stack (initial bits exhausted)")
            pos = ptr[r_idx] - counts[r_idx] + rank
            refill = self.words[rows[r_idx], pos].astype(np.int64)
            popped[r_idx, k_idx] = (popped[r_idx, k_idx] << WORD_BITS) | refill
            new_ptr = ptr - counts
            self.ptr[rows] = new_ptr
            self.low_water[rows] = np.minimum(self.low_water[rows], new_ptr)
        self.heads[rows] = popped
