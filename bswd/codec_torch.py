"""The codec on torch tensors: PatchCoder's coding order with networks, CDF tables and ANS lanes
all on one device (a GPU), so a step moves only the patches in, the information content and the
decoded patches out, and lane bookkeeping (start, gifts, finish) once per lane.

``TorchPatchCoder`` overrides PatchCoder's array primitives (push, pop, padding, new arrays) with
the int64 kernels of ans_torch.py, which give exactly the numba kernels' words; the coding order
itself stays in codec.py. Files written by either coder decode with the other
(tests/test_codec_torch.py; tests/test_cuda.py on a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bswd.ans_torch import TorchLanes, TorchLogistic
from bswd.codec import PATCH, PatchCoder
from bswd.model.integer import IntegerModel
from bswd.model.quant import CodingModel


class _DeviceNets:
    """IntegerModel's coding interface with tensors in and out (no host round trips)."""

    def __init__(self, nets: IntegerModel):
        self.posterior = nets.posterior_t
        self.generative = nets.generative_t
        self.pixel_trunk = nets.pixel_trunk
        self.pixel_stage = nets.pixel_stage_t
        self.pixel_mean = nets.pixel_mean_t
        self.pixel_context = nets.pixel_context


class TorchPatchCoder(PatchCoder):
    """PatchCoder whose every step stays on the model's device (``model.nets.device``)."""

    def __init__(self, model: CodingModel, scheme: str = "bitswap"):
        super().__init__(model, scheme, compiled=False)
        self.device = model.nets.device
        self.nets = _DeviceNets(model.nets)
        self.pixels = TorchLogistic.from_family(model.pixels, self.device)
        self.latents = TorchLogistic.from_family(model.latents, self.device)
        self._rows = torch.arange(PATCH, device=self.device)

    def new_lanes(self, n_rows: int, head_width: int) -> TorchLanes:
        return TorchLanes.empty(n_rows, head_width, self.model.cfg.precision, self.device)

    # ---- the engine's numpy calls in and out --------------------------------------------------
    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def encode(self, lanes: TorchLanes, rows: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        info = super().encode(lanes, self._to_device(rows), self._to_device(x), self._to_device(mask))
        return info.cpu().numpy()

    def decode(self, lanes: TorchLanes, rows: np.ndarray, mask: np.ndarray,
               extents: list[tuple[int, int]], channels: list[int]) -> np.ndarray:
        x = super().decode(lanes, self._to_device(rows), self._to_device(mask), extents, channels)
        return x.cpu().numpy()

    # ---- array primitives ------------------------------------------------------------------------
    def _new_info(self, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float64, device=self.device)

    @staticmethod
    def _bits(precision: int, freqs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bits = precision - torch.log2(freqs.to(torch.float64))
        return (bits if mask is None else bits * mask).sum(dim=1)

    def _push(self, lanes: TorchLanes, rows, starts, freqs, mask, info) -> None:
        n = rows.numel()
        starts, freqs = starts.reshape(n, -1), freqs.reshape(n, -1)
        m = None if mask is None else mask.reshape(n, -1)
        info += self._bits(lanes.precision, freqs, m)
        lanes.push(rows, starts, freqs, m)

    def _pop_family(self, lanes: TorchLanes, rows, family, mean, sidx, mask, info) -> torch.Tensor:
        n = rows.numel()
        m = None if mask is None else mask.reshape(n, -1)
        symbols, freqs = lanes.pop_logistic(rows, family, mean.reshape(n, -1), sidx.reshape(n, -1), m)
        info -= self._bits(lanes.precision, freqs, m)
        return symbols.reshape(mean.shape)

    def push_top(self, lanes, rows, z, info) -> None:
        shift = self.model.cfg.precision - self.model.top.bits
        starts = z.reshape(rows.numel(), -1) << shift
        self._push(lanes, rows, starts, torch.full_like(starts, 1 << shift), None, info)

    def pop_top(self, lanes, rows, info) -> torch.Tensor:
        shape = self.model.cfg.latent_shape
        d = math.prod(shape)
        symbols = lanes.pop_uniform(rows, d, self.model.top.bits)
        info -= d * self.model.top.bits
        return symbols.reshape((rows.numel(), *shape))

    def _fill_padding(self, x: torch.Tensor, extents: list[tuple[int, int]], channels: list[int]) -> None:
        """codec.fill_padding for every patch at once: grey patches copy channel 0, then the last
        real row and column are replicated (a gather with clamped indices)."""
        n = x.shape[0]
        h = torch.tensor([e[0] for e in extents], device=self.device)
        w = torch.tensor([e[1] for e in extents], device=self.device)
        grey = torch.tensor([c == 1 for c in channels], device=self.device)
        x[grey, 1:] = x[grey, :1]
        ys = torch.minimum(self._rows[None, :], h[:, None] - 1)  # [n, 32]
        xs = torch.minimum(self._rows[None, :], w[:, None] - 1)
        shape = (n, x.shape[1], PATCH, PATCH)
        out = torch.gather(x, 2, ys[:, None, :, None].expand(shape))
        x.copy_(torch.gather(out, 3, xs[:, None, None, :].expand(shape)))
