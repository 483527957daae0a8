"""Bit-Swap and BB-ANS over lanes of 32x32 patches. Pure numpy: no torch, files or sockets.

The coding order lives here once; codec_torch.TorchPatchCoder runs the same methods on torch
tensors on a device by overriding the array primitives (pushes, pops, padding, new arrays), so
the polyphase helpers below take numpy arrays or torch tensors alike.

The model is reached through ``CodingModel`` (model/quant.py): integer networks that map integer
conditioning to integer (mean, scale index) parameters, and the integer CDF families of tables.py.

Bit-Swap, one patch (z_0 = x):
    encode: for i = 1..L: pop z_i ~ q(z_i | z_{i-1}); push z_{i-1} under p(z_{i-1} | z_i)
            push z_L under p(z_L)
    decode: the exact mirror.
BB-ANS pops every latent before pushing anything, so it needs far more initial bits.

A symbol tensor of D elements is pushed through a lane's K heads in chunks of K, chunk 0 first;
a pop takes the chunks in the reverse order, so push and pop are exact inverses.
Pixels outside the image (edge patches) are masked: never coded, and refilled on both sides by
the same rule (replicate the last real row and column), so padding costs no bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bswd import ans_kernels
from bswd.ans import AnsError, Lanes
from bswd.model.quant import CodingModel

PATCH = 32
SCHEMES = ("bitswap", "bbans")

Decoder = Callable[[np.ndarray, slice], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Geometry:
    """How an H x W image is tiled into 32 x 32 patches, in raster order."""

    height: int
    width: int

    @property
    def rows(self) -> int:
        return -(-self.height // PATCH)

    @property
    def cols(self) -> int:
        return -(-self.width // PATCH)

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    def extent(self, index: int) -> tuple[int, int, int, int]:
        """(y0, x0, real height, real width) of patch ``index``."""
        r, c = divmod(index, self.cols)
        y0, x0 = r * PATCH, c * PATCH
        return y0, x0, min(PATCH, self.height - y0), min(PATCH, self.width - x0)


def lane_ranges(n_patches: int, n_lanes: int) -> list[tuple[int, int]]:
    """Split patches 0..n-1 into n_lanes consecutive runs whose lengths differ by at most one."""
    n_lanes = max(1, min(n_lanes, n_patches))
    base, extra = divmod(n_patches, n_lanes)
    out, start = [], 0
    for i in range(n_lanes):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def fill_padding(x: np.ndarray, h: int, w: int, channels: int) -> None:
    """In place on one patch [3, 32, 32]: copy channel 0 to the others if grey, then replicate
    the last real row and column into the padding. Both encoder and decoder apply it."""
    if channels == 1:
        x[1:] = x[0]
    if h < PATCH:
        x[:, h:, :] = x[:, h - 1 : h, :]
    if w < PATCH:
        x[:, :, w:] = x[:, :, w - 1 : w]


def patch_mask(h: int, w: int, channels: int) -> np.ndarray:
    m = np.zeros((3, PATCH, PATCH), dtype=bool)
    m[:channels, :h, :w] = True
    return m


POLYPHASE = ((0, 0), (1, 1), (0, 1), (1, 0))  # the pixel-context stages' sub-lattices (net.POLYPHASE)


def _empty(like, shape: tuple[int, ...]):
    """An uninitialized array of ``like``'s kind, dtype and device (numpy array or torch tensor)."""
    return like.new_empty(shape) if hasattr(like, "new_empty") else np.empty(shape, dtype=like.dtype)


def as_int64(a):
    return a.long() if hasattr(a, "long") else a.astype(np.int64)


def split_polyphase(x: np.ndarray) -> np.ndarray:
    """[n, C, 32, 32] -> [n, 4, C, 16, 16]: the 2x2 sub-lattices in decoding order."""
    n, c = x.shape[:2]
    out = _empty(x, (n, 4, c, PATCH // 2, PATCH // 2))
    for s, (dy, dx) in enumerate(POLYPHASE):
        out[:, s] = x[:, :, dy::2, dx::2]
    return out


def merge_polyphase(parts: np.ndarray) -> np.ndarray:
    n, _, c = parts.shape[:3]
    x = _empty(parts, (n, c, PATCH, PATCH))
    for s, (dy, dx) in enumerate(POLYPHASE):
        x[:, :, dy::2, dx::2] = parts[:, s]
    return x


def context_pixels(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pixels the pixel-context stages condition on, [n, 4, 3, 16, 16] int64: x inside the
    image, 128 outside it (edge patches: the replicated padding is not known to the decoder
    until the whole patch is decoded). A grey patch's G and B channels repeat R, as in x."""
    inside = mask[:, :1]  # channel 0 is coded wherever the patch is inside the image
    return split_polyphase(as_int64(x) * inside + 128 * ~inside)


def as_uint8(a):
    return a.byte() if hasattr(a, "byte") else a.astype(np.uint8)


def extract_patch(image: np.ndarray, geom: Geometry, index: int) -> np.ndarray:
    """Patch ``index`` of an H x W x C uint8 image as [3, 32, 32] with padding filled."""
    y0, x0, h, w = geom.extent(index)
    c = image.shape[2]
    x = np.zeros((3, PATCH, PATCH), dtype=np.uint8)
    x[:c, :h, :w] = image[y0 : y0 + h, x0 : x0 + w].transpose(2, 0, 1)
    fill_padding(x, h, w, c)
    return x


def reservoir_words(model: CodingModel, scheme: str, head_width: int) -> int:
    """Seed words a fresh lane needs so its first patch's pops never run dry.

    A pop consumes at most ``precision`` bits per symbol; Bit-Swap pops one latent layer before
    its first push, BB-ANS all of them.
    """
    layers = 1 if scheme == "bitswap" else model.cfg.n_layers
    symbols = layers * math.prod(model.cfg.latent_shape)
    return -(-symbols * model.cfg.precision // 32) + 2 * head_width


class PatchCoder:
    """Codes one patch per lane row per call, for many rows at once."""

    def __init__(self, model: CodingModel, scheme: str = "bitswap", compiled: bool = True):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
        self.model = model
        self.scheme = scheme
        self.compiled = compiled and ans_kernels.AVAILABLE
        # what the coding order below calls; TorchPatchCoder swaps in device versions
        self.nets = model.nets
        self.pixels = model.pixels
        self.latents = model.latents

    def new_lanes(self, n_rows: int, head_width: int) -> Lanes:
        """Lane slots this coder codes on (the engine's per-worker state)."""
        return Lanes(n_rows, head_width, self.model.cfg.precision)

    def _new_info(self, n: int) -> np.ndarray:
        return np.zeros(n)

    def _fill_padding(self, x: np.ndarray, extents: list[tuple[int, int]], channels: list[int]) -> None:
        for i, ((h, w), c) in enumerate(zip(extents, channels)):
            fill_padding(x[i], h, w, c)

    # ---- tensor-level push/pop through a lane's heads -------------------------------------------
    @staticmethod
    def _chunks(d: int, k: int) -> int:
        return -(-d // k)

    def _pad(self, a: np.ndarray, k: int, fill: int = 0) -> np.ndarray:
        n, d = a.shape
        total = self._chunks(d, k) * k
        if total == d:
            return a
        out = np.full((n, total), fill, dtype=a.dtype)
        out[:, :d] = a
        return out

    def _push(self, lanes: Lanes, rows: np.ndarray, starts: np.ndarray, freqs: np.ndarray,
              mask: np.ndarray | None, info: np.ndarray) -> None:
        n = len(rows)
        k = lanes.head_width
        starts, freqs = starts.reshape(n, -1), freqs.reshape(n, -1)
        m = np.ones(starts.shape, dtype=bool) if mask is None else mask.reshape(n, -1)
        info += ((lanes.precision - np.log2(freqs)) * m).sum(axis=1)
        if self.compiled:
            lanes._reserve(lanes.ptr[rows] + starts.shape[1])
            ans_kernels.push_tensor(lanes.heads, lanes.words, lanes.ptr, rows, np.ascontiguousarray(starts),
                                    np.ascontiguousarray(freqs), np.ascontiguousarray(m), k, lanes.precision)
            return
        starts, freqs, m = self._pad(starts, k), self._pad(freqs, k, 1), self._pad(m, k)
        for j in range(starts.shape[1] // k):
            sl = slice(j * k, (j + 1) * k)
            lanes.push(rows, starts[:, sl], freqs[:, sl], m[:, sl])

    def _pop(self, lanes: Lanes, rows: np.ndarray, shape: tuple[int, ...], decode: Decoder,
             mask: np.ndarray | None, info: np.ndarray) -> np.ndarray:
        n = len(rows)
        k = lanes.head_width
        d = math.prod(shape)
        nc = self._chunks(d, k)
        m = np.ones((n, d), dtype=bool) if mask is None else mask.reshape(n, d)
        m = self._pad(m, k)
        symbols = np.zeros((n, nc * k), dtype=np.int64)
        for j in reversed(range(nc)):
            sl = slice(j * k, (j + 1) * k)
            sym, start, freq = decode(lanes.peek(rows), sl)
            lanes.pop(rows, start, freq, m[:, sl])
            symbols[:, sl] = np.where(m[:, sl], sym, 0)
            info -= ((lanes.precision - np.log2(freq)) * m[:, sl]).sum(axis=1)
        return symbols[:, :d].reshape((n, *shape))

    @staticmethod
    def _check(status: int) -> None:
        if status == ans_kernels.UNDERFLOW:
            raise AnsError("popped past the bottom of a lane's stack (initial bits exhausted)")

    def _pop_family(self, lanes: Lanes, rows: np.ndarray, family, mean: np.ndarray, sidx: np.ndarray,
                    mask: np.ndarray | None, info: np.ndarray) -> np.ndarray:
        """Pop a tensor of symbols under one discretized logistic per element."""
        if not self.compiled:
            dec = self._logistic_decoder(family, mean, sidx, lanes.head_width)
            return self._pop(lanes, rows, mean.shape[1:], dec, mask, info)
        n = len(rows)
        mean2 = np.ascontiguousarray(mean.reshape(n, -1))
        inv2 = np.ascontiguousarray(family.inv_scales[sidx.reshape(n, -1)])
        m = np.ones(mean2.shape, dtype=bool) if mask is None else np.ascontiguousarray(mask.reshape(n, -1))
        symbols = np.zeros(mean2.shape, dtype=np.int64)
        freqs = np.ones(mean2.shape, dtype=np.int64)
        self._check(ans_kernels.pop_logistic(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, mean2,
                                             inv2, m, lanes.head_width, lanes.precision, family.edges,
                                             family.sigmoid, symbols, freqs))
        info -= ((lanes.precision - np.log2(freqs)) * m).sum(axis=1)
        return symbols.reshape(mean.shape)

    def _logistic_decoder(self, family, mean: np.ndarray, sidx: np.ndarray, k: int) -> Decoder:
        n = mean.shape[0]
        mean = self._pad(mean.reshape(n, -1), k)
        sidx = self._pad(sidx.reshape(n, -1), k)
        return lambda cf, sl: family.decode(cf, mean[:, sl], sidx[:, sl])

    # ---- the distributions -------------------------------------------------------------------
    def push_latent_q(self, lanes, rows, level, cond, z, info) -> None:
        mean, sidx = self.nets.posterior(level, cond)
        self._push(lanes, rows, *self.latents.encode_params(z, mean, sidx), None, info)

    def pop_latent_q(self, lanes, rows, level, cond, info) -> np.ndarray:
        mean, sidx = self.nets.posterior(level, cond)
        return self._pop_family(lanes, rows, self.latents, mean, sidx, None, info)

    def push_below(self, lanes, rows, level, z, below, mask, info) -> None:
        """Push z_{level-1} (pixels at level 1) under p(z_{level-1} | z_level)."""
        if level == 1 and self.nets.pixel_context:
            return self.push_pixels_context(lanes, rows, z, below, mask, info)
        mean, sidx = self.nets.generative(level, z)
        family = self.pixels if level == 1 else self.latents
        self._push(lanes, rows, *family.encode_params(as_int64(below), mean, sidx),
                   mask if level == 1 else None, info)

    def pop_below(self, lanes, rows, level, z, mask, info) -> np.ndarray:
        mean, sidx = self.nets.generative(level, z)
        family = self.pixels if level == 1 else self.latents
        return self._pop_family(lanes, rows, family, mean, sidx, mask if level == 1 else None, info)

    # ---- p(x | z_1) with pixel context: four polyphase stages, R then G then B in each -----------
    def push_pixels_context(self, lanes, rows, z1, x, mask, info) -> None:
        """Push every pixel of x under the pixel-context likelihood; the groups go on in reverse
        decoding order, so the decoder pops sub-lattice 0's R first."""
        nets = self.nets
        ctx, cmask = context_pixels(x, mask), split_polyphase(mask)
        trunk = nets.pixel_trunk(z1)
        groups = []
        for s in range(4):  # teacher-forced: the decoder will have exactly these pixels at each step
            base, sidx = nets.pixel_stage(trunk, ctx, s)
            mean = nets.pixel_mean(base, ctx, s)
            groups.append(self.pixels.encode_params(ctx[:, s], mean, sidx))
        for s in reversed(range(4)):
            starts, freqs = groups[s]
            for c in reversed(range(3)):
                self._push(lanes, rows, starts[:, c], freqs[:, c], cmask[:, s, c], info)

    def pop_pixels_context(self, lanes, rows, z1, mask, channels, info) -> np.ndarray:
        """Mirror of push_pixels_context: the patches [n, 3, 32, 32] (padding not yet filled)."""
        nets = self.nets
        cmask = split_polyphase(mask)
        ctx = as_int64(cmask) * 0 + 128
        grey = ~mask[:, 1].reshape(len(mask), -1).any(1)  # a grey patch codes channel 0 only
        trunk = nets.pixel_trunk(z1)
        for s in range(4):
            base, sidx = nets.pixel_stage(trunk, ctx, s)
            for c in range(3):
                m = cmask[:, s, c]
                if not m.any():  # grey patches code one channel
                    continue
                mean = nets.pixel_mean(base, ctx, s)[:, c]
                sym = self._pop_family(lanes, rows, self.pixels, mean, sidx[:, c], m, info)
                part = ctx[:, s, c]
                part[m] = sym[m]  # keeps 128 / a grey patch's copy where nothing was coded
                if c == 0 and grey.any():  # as context_pixels: a grey patch's G and B repeat its R
                    ctx[grey, s, 1:] = ctx[grey, s, :1]
        return merge_polyphase(ctx)

    def push_top(self, lanes, rows, z, info) -> None:
        self._push(lanes, rows, *self.model.top.encode_params(z), None, info)

    def pop_top(self, lanes, rows, info) -> np.ndarray:
        top = self.model.top
        shape = self.model.cfg.latent_shape
        if not self.compiled:
            return self._pop(lanes, rows, shape, lambda cf, sl: top.decode(cf), None, info)
        d = math.prod(shape)
        symbols = np.zeros((len(rows), d), dtype=np.int64)
        self._check(ans_kernels.pop_uniform(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, d,
                                            lanes.head_width, lanes.precision, top.bits, symbols))
        info -= d * top.bits
        return symbols.reshape((len(rows), *shape))

    # ---- one patch per row ---------------------------------------------------------------------
    def encode(self, lanes: Lanes, rows: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Code patches x [n,3,32,32] (padding filled) onto lanes ``rows``; returns the
        information content in bits per row (pushes minus pops), the ideal cost of this step."""
        info = self._new_info(len(rows))
        L = self.model.cfg.n_layers
        if self.scheme == "bitswap":
            below = x
            for level in range(1, L + 1):
                z = self.pop_latent_q(lanes, rows, level, below, info)
                self.push_below(lanes, rows, level, z, below, mask, info)
                below = z
            self.push_top(lanes, rows, below, info)
        else:
            zs = [x]
            for level in range(1, L + 1):
                zs.append(self.pop_latent_q(lanes, rows, level, zs[-1], info))
            for level in range(1, L + 1):
                self.push_below(lanes, rows, level, zs[level], zs[level - 1], mask, info)
            self.push_top(lanes, rows, zs[L], info)
        return info

    def decode(self, lanes: Lanes, rows: np.ndarray, mask: np.ndarray,
               extents: list[tuple[int, int]], channels: list[int]) -> np.ndarray:
        """Mirror of ``encode``: returns the patches [n,3,32,32] uint8 with padding filled."""
        info = self._new_info(len(rows))
        L = self.model.cfg.n_layers

        def pixels(z1: np.ndarray) -> np.ndarray:
            if self.nets.pixel_context:
                x = as_uint8(self.pop_pixels_context(lanes, rows, z1, mask, channels, info))
            else:
                x = as_uint8(self.pop_below(lanes, rows, 1, z1, mask, info))
            self._fill_padding(x, extents, channels)
            return x

        z = self.pop_top(lanes, rows, info)
        if self.scheme == "bitswap":
            for level in range(L, 0, -1):
                below = pixels(z) if level == 1 else self.pop_below(lanes, rows, level, z, None, info)
                self.push_latent_q(lanes, rows, level, below, z, info)
                z = below
            return z
        zs = {L: z}
        for level in range(L, 0, -1):
            z = zs[level]
            zs[level - 1] = pixels(z) if level == 1 else self.pop_below(lanes, rows, level, z, None, info)
        for level in range(L, 0, -1):
            self.push_latent_q(lanes, rows, level, zs[level - 1], zs[level], info)
        return zs[0]
