"""Model configuration: one frozen dataclass that travels inside every checkpoint and model file.

The same numbers drive the float training network (net.py), its integer export (quant.py) and the
integer coding-time network (integer.py), so a model file can always be rebuilt from its config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

PATCH = 32  # side of the square patches the model codes
LATENT_SIDE = 16  # every latent layer is latent_channels x 16 x 16


@dataclass(frozen=True)
class ScaleGrid:
    """Log-spaced grid of logistic scales; a head outputs an index into it.

    scale(i) = exp(log_min + i * step) for i in [0, count), step = (log_max - log_min)/(count - 1).
    """

    log_min: float
    log_max: float
    count: int

    @property
    def step(self) -> float:
        return (self.log_max - self.log_min) / (self.count - 1)

    def log_scale(self, index: int) -> float:
        return self.log_min + index * self.step


@dataclass(frozen=True)
class HeadSpec:
    """How a head's raw output becomes a distribution's (mean, scale index).

    mean = mean_offset + mean_gain * raw_mean, clamped to [mean_min, mean_max];
    scale index = clamp(round(raw_logscale / grid.step) + round((logscale_offset - grid.log_min)
    / grid.step), 0, count - 1).
    """

    mean_gain: float
    mean_offset: float
    mean_min: float
    mean_max: float
    logscale_offset: float
    grid: ScaleGrid

    @property
    def index_offset(self) -> int:
        return round((self.logscale_offset - self.grid.log_min) / self.grid.step)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and quantization of a Bit-Swap hierarchical VAE.

    Activations are signed integers in [-act_bound, act_bound] in units of 2**-act_frac; weights are
    int8 per output channel. Pixel input is (x - 128) in units of 2**-7; latent input is the centre of
    its bin in units of 2**-latent_in_frac, clamped to +-latent_in_bound.
    """

    n_layers: int = 3
    latent_channels: int = 8
    width: int = 48
    res_blocks: int = 1
    upsample_width: int = 24
    latent_bins_log2: int = 10
    act_frac: int = 4
    act_bound: int = 127
    weight_bound: int = 127
    latent_in_frac: int = 5
    latent_in_bound: int = 1023
    pixel_in_frac: int = 7
    precision: int = 24
    # p(x | z_1): False = one factorized logistic per sub-pixel (bswd-default-1/2); True = the
    # pixel-context likelihood (net.PixelContextNet): four 2x2 polyphase stages, each channel
    # conditioned on every pixel already decoded around it.
    pixel_context: bool = False
    context_width: int = 32
    context_kernel: int = 5
    pixel_scales: ScaleGrid = ScaleGrid(math.log(0.02), math.log(64.0), 256)
    latent_scales: ScaleGrid = ScaleGrid(math.log(0.004), math.log(4.0), 256)

    @property
    def latent_bins(self) -> int:
        return 1 << self.latent_bins_log2

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, LATENT_SIDE, LATENT_SIDE)

    @property
    def pixel_head(self) -> HeadSpec:
        # Mean in pixel units; a zero raw output means mid-grey with a broad scale.
        return HeadSpec(127.5, 127.5, -32.0, 287.0, math.log(16.0), self.pixel_scales)

    @property
    def latent_head(self) -> HeadSpec:
        return HeadSpec(1.0, 0.0, -12.0, 12.0, 0.0, self.latent_scales)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        values = dict(data)
        for name in ("pixel_scales", "latent_scales"):
            if name in values and isinstance(values[name], dict):
                values[name] = ScaleGrid(**values[name])
        return cls(**values)
