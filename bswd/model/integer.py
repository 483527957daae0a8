"""Exact integer inference of an exported Bit-Swap model (the coding-time network).

Every tensor holds integers. Convolutions are float32 sums of products of integer values whose
partial sums stay below 2**24 in magnitude (wider sums are cut into such parts at input-channel
boundaries), so every addition is exact in any order, on any device, at any batch size, as long as
the algorithm multiplies and adds the integers themselves: never Winograd, FFT or reduced precision.
On CUDA that means im2col + matmul (cuDNN may pick Winograd or TF32); on the CPU, oneDNN's direct
convolution or torch's own im2col (2-3x faster than our im2col at these sizes), with NNPACK (Winograd)
switched off. Requantization is an int64 multiply, add and arithmetic shift; ELU is a lookup table.
The outputs are integer distribution parameters: a fixed-point mean and an index into a scale grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bswd.model.config import ModelConfig

EXACT_FLOAT32 = 1 << 24  # integers below this add exactly in float32

# NNPACK's CPU convolutions are Winograd/FFT (not exact); torch would pick it only with oneDNN off and
# batches >= 16, but bswd owns its process, so it is off for good. Checked again before every conv.
torch.backends.nnpack.set_flags(False)


def cpu_conv_is_exact() -> bool:
    """Whether F.conv2d on the CPU multiplies and adds in full float32 right now."""
    return (not torch._C._get_nnpack_enabled() and torch.get_float32_matmul_precision() == "highest"
            and torch.backends.mkldnn.conv.fp32_precision in ("none", "ieee"))


def elu_lookup(table: Tensor, a: Tensor, bound: int) -> Tensor:
    """elu of int64 activations a in [-bound, bound], as the float32 a conv takes: table[a + bound].
    index_select on the flat indices: 3x faster on the CPU than table[a] (advanced indexing)."""
    return table.index_select(0, (a + bound).reshape(-1)).view(a.shape)


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
    splits: tuple[int, ...] = ()  # column indices where the exact float32 sums are cut (see exact_splits)

    def __post_init__(self) -> None:
        cout, cols = self.weight.shape
        self.kernel4 = self.weight.view(cout, cols // self.kernel**2, self.kernel, self.kernel)
        per_channel = self.kernel**2
        if any(c % per_channel for c in self.splits):
            raise ValueError("exact float32 parts must be cut at input-channel boundaries")
        self.channel_cuts = (0, *(c // per_channel for c in self.splits), cols // per_channel)
        # requantization with the bias folded in: ((acc + b) * m + 2**(s-1)) >> s, one add fewer
        # (int64 wraps the same way either way, so the result is the same bits)
        self._mult = self.mult.view(1, -1, 1, 1)
        self._shift = self.shift.view(1, -1, 1, 1)
        self._added = (self.bias * self.mult + (1 << (self.shift - 1))).view(1, -1, 1, 1)

    def __call__(self, a: Tensor, lo: int, hi: int) -> Tensor:
        """The requantized conv output clamped to [lo, hi] (int64); a: float32 integer-valued."""
        # in place on the fresh product tensor: a 512x512 compress took 1.17 s instead of 1.40 s
        # (one coder thread, side by side in one process, identical bytes)
        out = self._products(a)
        out.mul_(self._mult).add_(self._added).bitwise_right_shift_(self._shift)
        return out.clamp_(lo, hi)

    def accumulate(self, a: Tensor) -> Tensor:
        """a: float32 [B, cin, H, W] integer-valued -> int64 [B, cout, H', W'] (bias included)."""
        return self._products(a) + self.bias.view(1, -1, 1, 1)

    def _products(self, a: Tensor) -> Tensor:
        """The integer sums of products, without the bias, int64."""
        if a.device.type == "cpu" and cpu_conv_is_exact():
            if not self.splits:
                return F.conv2d(a, self.kernel4, stride=self.stride, padding=self.padding).to(torch.int64)
            cuts = self.channel_cuts
            return sum(F.conv2d(a[:, i:j], self.kernel4[:, i:j], stride=self.stride, padding=self.padding)
                       .to(torch.int64) for i, j in zip(cuts[:-1], cuts[1:]))
        b, _, h, w = a.shape
        cols = F.unfold(a, self.kernel, padding=self.padding, stride=self.stride)  # [B, K, L]
        if not self.splits:
            acc = torch.matmul(self.weight, cols).to(torch.int64)  # [B, cout, L], exact (bounded at load)
        else:  # each part's sum is exact in float32; the parts add in int64
            cuts = (0, *self.splits, self.weight.shape[1])
            acc = sum(torch.matmul(self.weight[:, i:j], cols[:, i:j]).to(torch.int64)
                      for i, j in zip(cuts[:-1], cuts[1:]))
        ho = (h + 2 * self.padding - self.kernel) // self.stride + 1
        wo = (w + 2 * self.padding - self.kernel) // self.stride + 1
        return acc.view(b, -1, ho, wo)


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
        out = self.conv(a, -(1 << 62), 1 << 62)
        mean = torch.clamp(out[:, : self.out_ch] + self.mean_offset, self.mean_min, self.mean_max)
        index = torch.clamp(out[:, self.out_ch :] + self.index_offset, 0, self.index_max)
        return mean, index


class _IntActivations:
    """What the integer nets share: the ELU lookup and convs clamped to the activation grid, and
    the stem + residual blocks trunk (net.ResBlock). Subclasses are dataclasses holding
    ``stem``, ``blocks``, ``act_bound`` and ``elu`` (int64 [2 * act_bound + 1]: elu on the
    activation grid)."""

    def __post_init__(self) -> None:
        self.elu_input = self.elu.to(torch.float32)  # exact: |elu| <= act_bound < 2**24

    def act_elu(self, a: Tensor) -> Tensor:
        return elu_lookup(self.elu_input, a, self.act_bound)

    def conv_act(self, conv: IntConv, a: Tensor) -> Tensor:
        return conv(a, -self.act_bound, self.act_bound)

    def residual_trunk(self, x: Tensor) -> Tensor:
        bound = self.act_bound
        h = self.stem(x, -bound, bound)
        for conv1, conv2 in self.blocks:
            t = self.conv_act(conv1, self.act_elu(h))
            t = self.conv_act(conv2, self.act_elu(t))
            h = torch.clamp(h + t, -bound, bound)
        return h


@dataclass
class IntCondNet(_IntActivations):
    """Integer twin of net.CondNet."""

    stem: IntConv
    blocks: list[tuple[IntConv, IntConv]]
    up: IntConv | None
    head: IntHead
    act_bound: int
    elu: Tensor

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: float32 integer-valued input -> (mean int64, scale index int64)."""
        h = self.act_elu(self.residual_trunk(x))
        if self.up is not None:
            h = self.conv_act(self.up, h)
            h = self.act_elu(F.pixel_shuffle(h, 2))
        return self.head(h)


WIDE_BOUND = 1 << 20  # as net.WIDE_BOUND: clamp of one branch before two are summed
FIXED_BOUND = 1 << 62  # head outputs are fixed-point parameters, clamped only after the offset


@dataclass
class IntPixelContext(_IntActivations):
    """Integer twin of net.PixelContextNet: p(x | z_1) in four polyphase stages.

    Pixel inputs are float32 (x - 128) [B, 12, 16, 16]: the four sub-lattices' channels in
    POLYPHASE order; entries a stage may not see carry zero weight, so their values never matter.
    """

    stem: IntConv
    blocks: list[tuple[IntConv, IntConv]]
    from_latent: list[IntConv]
    from_pixels: list[IntConv]  # stage s >= 1 uses [s - 1]
    hidden: list[IntConv]
    head: list[IntConv]  # 3 mean channels (fixed point) then 3 scale-index channels
    linear: list[IntConv]  # 3 mean channels (fixed point)
    act_bound: int
    elu: Tensor
    mean_offset: int
    mean_min: int
    mean_max: int
    index_offset: int
    index_max: int

    def trunk(self, z: Tensor) -> Tensor:
        return self.act_elu(self.residual_trunk(z))

    def stage(self, h: Tensor, pixels: Tensor, s: int) -> tuple[Tensor, Tensor]:
        """(mean without the linear part and offset, scale index) of sub-lattice s, [B, 3, 16, 16]."""
        conv = self.from_latent[s]
        a = conv(h, -WIDE_BOUND, WIDE_BOUND)
        if s > 0:
            conv = self.from_pixels[s - 1]
            a = a + conv(pixels[:, : 3 * s], -WIDE_BOUND, WIDE_BOUND)
        a = self.act_elu(torch.clamp(a, -self.act_bound, self.act_bound))
        a = self.act_elu(self.conv_act(self.hidden[s], a))
        head = self.head[s]
        out = head(a, -FIXED_BOUND, FIXED_BOUND)
        return out[:, :3], torch.clamp(out[:, 3:] + self.index_offset, 0, self.index_max)

    def mean(self, pixels: Tensor, s: int, base: Tensor) -> Tensor:
        """The fixed-point means of sub-lattice s: base plus the linear prediction from pixels."""
        conv = self.linear[s]
        lin = conv(pixels[:, : 3 * (s + 1)], -FIXED_BOUND, FIXED_BOUND)
        return torch.clamp(base + lin + self.mean_offset, self.mean_min, self.mean_max)


class IntegerModel:
    """The coding-time model: integer nets plus the lookup tables of the model file.

    Implements the protocol codec.py needs: ``posterior(level, cond)`` gives the parameters of
    q(z_level | z_{level-1}) and ``generative(level, z)`` those of p(z_{level-1} | z_level), both as
    numpy int64 (mean, scale index); level 1's conditioning / output is the pixel patch.
    """

    def __init__(self, cfg: ModelConfig, posteriors: list[IntCondNet], priors: list[IntCondNet | IntPixelContext],
                 latent_centres: np.ndarray, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.n_layers = cfg.n_layers
        self.latent_shape = cfg.latent_shape
        self.posteriors = posteriors
        self.priors = priors
        self.device = torch.device(device)
        self.centres = torch.from_numpy(latent_centres).to(torch.float32).to(self.device)

    # ---- tensors on the device in and out (codec_torch.TorchPatchCoder) ---------------------------
    def pixel_input(self, x: Tensor) -> Tensor:
        """Pixels 0..255 (any integer dtype) -> network input x - 128 as float32."""
        return x.to(torch.float32) - 128.0

    def latent_input(self, z: Tensor) -> Tensor:
        """Latent bins -> the centres of their bins (the network input grid)."""
        return self.centres[z]

    @torch.inference_mode()
    def posterior_t(self, level: int, cond: Tensor) -> tuple[Tensor, Tensor]:
        inp = self.pixel_input(cond) if level == 1 else self.latent_input(cond)
        return self.posteriors[level - 1](inp)

    @torch.inference_mode()
    def generative_t(self, level: int, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.priors[level - 1](self.latent_input(z))

    @torch.inference_mode()
    def pixel_stage_t(self, trunk: Tensor, ctx: Tensor, s: int) -> tuple[Tensor, Tensor]:
        """(base means, scale indices [B, 3, 16, 16]) of sub-lattice s, from context pixels ctx
        [B, 4, 3, 16, 16] (any value where not yet decoded)."""
        return self.priors[0].stage(trunk, self._pixels(ctx), s)

    @torch.inference_mode()
    def pixel_mean_t(self, base: Tensor, ctx: Tensor, s: int) -> Tensor:
        return self.priors[0].mean(self._pixels(ctx), s, base)

    def _pixels(self, ctx: Tensor) -> Tensor:
        """Context pixels [B, 4, 3, 16, 16] (0..255) -> network input (x - 128) [B, 12, 16, 16]."""
        return self.pixel_input(ctx.reshape(ctx.shape[0], 12, *ctx.shape[3:]))

    # ---- numpy in and out (codec.PatchCoder) ------------------------------------------------------
    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).to(self.device)

    @staticmethod
    def _out(params: tuple[Tensor, Tensor]) -> tuple[np.ndarray, np.ndarray]:
        return params[0].cpu().numpy(), params[1].cpu().numpy()

    def posterior(self, level: int, cond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q(z_level | cond): cond is pixels uint8 [B,3,32,32] for level 1, else bins [B,C,16,16]."""
        return self._out(self.posterior_t(level, self._tensor(cond)))

    def generative(self, level: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(z_{level-1} | z_level); for level 1 the pixel parameters [B,3,32,32]."""
        return self._out(self.generative_t(level, self._tensor(z)))

    # ---- the pixel-context likelihood (cfg.pixel_context): p(x | z_1) stage by stage ----------------
    @property
    def pixel_context(self) -> bool:
        return isinstance(self.priors[0], IntPixelContext)

    @torch.inference_mode()
    def pixel_trunk(self, z1: np.ndarray | Tensor) -> Tensor:
        """The stage-independent features of z_1 (kept on the device between stages)."""
        z = z1 if isinstance(z1, Tensor) else self._tensor(z1)
        return self.priors[0].trunk(self.latent_input(z))

    def pixel_stage(self, trunk: Tensor, ctx: np.ndarray, s: int) -> tuple[Tensor, np.ndarray]:
        """(base means on the device, scale indices [B, 3, 16, 16]) of sub-lattice s; ctx holds
        the pixels decoded so far ([B, 4, 3, 16, 16], any value where not yet decoded)."""
        base, index = self.pixel_stage_t(trunk, self._tensor(ctx), s)
        return base, index.cpu().numpy()

    def pixel_mean(self, base: Tensor, ctx: np.ndarray, s: int) -> np.ndarray:
        """Fixed-point means [B, 3, 16, 16] of sub-lattice s; channel c's is final once ctx holds
        the earlier sub-lattices and channels 0..c-1 of sub-lattice s."""
        return self.pixel_mean_t(base, self._tensor(ctx), s).cpu().numpy()


def exact_splits(weight: np.ndarray, in_bound: int, kernel: int = 1) -> tuple[int, ...]:
    """Cut the K = cin * kernel**2 columns of an integer weight matrix [cout, K], at input-channel
    boundaries, into runs whose float32 dot products with inputs up to in_bound in magnitude stay
    below 2**24, so every partial sum is exact in any order; () when one run suffices (every int8
    conv of a model: the common, fast case)."""
    cout, k_cols = weight.shape
    per_channel = kernel * kernel
    w = (np.abs(weight.astype(np.int64)) * in_bound).reshape(cout, k_cols // per_channel, per_channel).sum(axis=2)
    if int(w.max(initial=0)) >= EXACT_FLOAT32:
        raise ValueError("one input channel's kernel times the input bound exceeds 2**24: not exact in float32")
    cuts, running = [], np.zeros(cout, dtype=np.int64)
    for c in range(w.shape[1]):
        if int((running + w[:, c]).max()) >= EXACT_FLOAT32:
            cuts.append(c * per_channel)
            running[:] = 0
        running += w[:, c]
    return tuple(cuts)
