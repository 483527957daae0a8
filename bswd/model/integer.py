"""Exact integer inference of an exported Bit-Swap model (the coding-time network).

Every tensor holds integers. Convolutions are im2col + float32 matmul on integer values whose
partial sums stay below 2**24 in magnitude (checked at export), so every addition is exact in any
order, on any device, at any batch size; never a Winograd or FFT algorithm. Requantization is an
int64 multiply, add and arithmetic shift; ELU is a lookup table. The outputs are integer
distribution parameters: a fixed-point mean and an index into a scale grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bswd.model.config import ModelConfig

EXACT_FLOAT32 = 1 << 24  # integers below this add exactly in float32


@dataclass
class IntConv:
    """acc = w_int (*) a + bias; out = (acc * mult + 2**(shift-1)) >> shift, per output channel."""

    weight: Tensor  # float32 [cout, cin * k * k], integer-valued
    bias: Tensor  # int64 [cout]
    mult: Tensor  # int64 [cout]
    shift: Tensor  # int64 [cout]
    kernel: int
    stride: int
    padding: int

    def accumulate(self, a: Tensor) -> Tensor:
        """a: float32 [B, cin, H, W] integer-valued -> int64 [B, cout, H', W']."""
        b, _, h, w = a.shape
        cols = F.unfold(a, self.kernel, padding=self.padding, stride=self.stride)  # [B, K, L]
        acc = torch.matmul(self.weight, cols)  # [B, cout, L], exact (bounded at export)
        ho = (h + 2 * self.padding - self.kernel) // self.stride + 1
        wo = (w + 2 * self.padding - self.kernel) // self.stride + 1
        return acc.to(torch.int64).view(b, -1, ho, wo) + self.bias.view(1, -1, 1, 1)

    def requant(self, acc: Tensor, lo: int, hi: int, offset: Tensor | int = 0) -> Tensor:
        m = self.mult.view(1, -1, 1, 1)
        s = self.shift.view(1, -1, 1, 1)
        out = torch.bitwise_right_shift(acc * m + torch.bitwise_left_shift(torch.ones_like(s), s - 1), s)
        if isinstance(offset, Tensor):
            offset = offset.view(1, -1, 1, 1)
        return torch.clamp(out + offset, lo, hi)


@dataclass
class IntHead:
    """The last conv of a network, split into mean and scale-index channels."""

    conv: IntConv  # requant params per output channel (mean channels, then log-scale channels)
    out_ch: int
    mean_offset: int  # fixed point
    mean_min: int
    mean_max: int
    index_offset: int
    index_max: int

    def __call__(self, a: Tensor) -> tuple[Tensor, Tensor]:
        acc = self.conv.accumulate(a)
        out = self.conv.requant(acc, -(1 << 62), 1 << 62)
        mean = torch.clamp(out[:, : self.out_ch] + self.mean_offset, self.mean_min, self.mean_max)
        index = torch.clamp(out[:, self.out_ch :] + self.index_offset, 0, self.index_max)
        return mean, index


@dataclass
class IntCondNet:
    """Integer twin of net.CondNet."""

    stem: IntConv
    blocks: list[tuple[IntConv, IntConv]]
    up: IntConv | None
    head: IntHead
    act_bound: int
    elu: Tensor  # int64 [2 * act_bound + 1]: elu on the activation grid

    def act_elu(self, a: Tensor) -> Tensor:
        return self.elu[a + self.act_bound]

    def conv_act(self, conv: IntConv, a: Tensor) -> Tensor:
        return conv.requant(conv.accumulate(a.to(torch.float32)), -self.act_bound, self.act_bound)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: float32 integer-valued input -> (mean int64, scale index int64)."""
        bound = self.act_bound
        h = self.stem.requant(self.stem.accumulate(x), -bound, bound)
        for conv1, conv2 in self.blocks:
            t = self.conv_act(conv1, self.act_elu(h))
            t = self.conv_act(conv2, self.act_elu(t))
            h = torch.clamp(h + t, -bound, bound)
        h = self.act_elu(h)
        if self.up is not None:
            h = self.conv_act(self.up, h)
            h = self.act_elu(F.pixel_shuffle(h, 2))
        return self.head(h.to(torch.float32))


class IntegerModel:
    """The coding-time model: integer nets plus the lookup tables of the model file.

    Implements the protocol codec.py needs: ``posterior(level, cond)`` gives the parameters of
    q(z_level | z_{level-1}) and ``generative(level, z)`` those of p(z_{level-1} | z_level), both as
    numpy int64 (mean, scale index); level 1's conditioning / output is the pixel patch.
    """

    def __init__(self, cfg: ModelConfig, posteriors: list[IntCondNet], priors: list[IntCondNet],
                 latent_centres: np.ndarray, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.n_layers = cfg.n_layers
        self.latent_shape = cfg.latent_shape
        self.posteriors = posteriors
        self.priors = priors
        self.device = torch.device(device)
        self.centres = torch.from_numpy(latent_centres).to(torch.float32).to(self.device)

    def _pixel_input(self, x: np.ndarray) -> Tensor:
        return torch.from_numpy(x.astype(np.float32) - 128.0).to(self.device)

    def _latent_input(self, z: np.ndarray) -> Tensor:
        return self.centres[torch.from_numpy(z).to(self.device)]

    @staticmethod
    def _out(params: tuple[Tensor, Tensor]) -> tuple[np.ndarray, np.ndarray]:
        return params[0].cpu().numpy(), params[1].cpu().numpy()

    @torch.inference_mode()
    def posterior(self, level: int, cond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q(z_level | cond): cond is pixels uint8 [B,3,32,32] for level 1, else bins [B,C,16,16]."""
        inp = self._pixel_input(cond) if level == 1 else self._latent_input(cond)
        return self._out(self.posteriors[level - 1](inp))

    @torch.inference_mode()
    def generative(self, level: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(z_{level-1} | z_level); for level 1 the pixel parameters [B,3,32,32]."""
        return self._out(self.priors[level - 1](self._latent_input(z)))


def check_exact(conv: IntConv, in_bound: int) -> None:
    """Refuse a conv whose float32 accumulation could be inexact for inputs up to in_bound."""
    worst = float(conv.weight.abs().sum(dim=1).max()) * in_bound
    if worst >= EXACT_FLOAT32:
        raise ValueError(f"conv accumulation bound {worst:.0f} exceeds 2**24: not exact in float32")
