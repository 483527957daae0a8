"""Float training network of the Bit-Swap hierarchical VAE, with quantization-aware training.

Layout (DESIGN §1): latents z_1..z_L, each C x 16 x 16, a Markov chain both ways:
  q(z_1 | x), q(z_i | z_{i-1});  p(x | z_1), p(z_{i-1} | z_i);  p(z_L) = standard logistic.
Every conditional is a fully factorized logistic (discretized to 256 levels for pixels).

With ``quant=True`` every tensor the integer network will hold is rounded to its integer grid with a
straight-through estimator: weights to int8 per output channel, activations to the activation
grid, biases to the accumulator grid, scales to an index in a log-spaced grid. The integer network
(integer.py) then computes the same function with integer arithmetic only, so coding is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bswd.model.config import HeadSpec, ModelConfig


def round_ste(x: Tensor) -> Tensor:
    """Round to the nearest integer in the forward pass, identity gradient."""
    return x + (torch.round(x) - x).detach()


def fake_quant(x: Tensor, frac: int, bound: int) -> Tensor:
    """Clamp to +-bound units of 2**-frac and round to that grid (straight-through)."""
    step = 2.0**-frac
    return round_ste(torch.clamp(x, -bound * step, bound * step) / step) * step


class QConv(nn.Module):
    """Weight-normalized convolution whose weights and bias can be rounded to their int grids.

    Integer form: acc = sum(w_int * a_int) + b_int with w = w_int * s_w[c] and a = a_int * 2**-in_frac,
    so the bias grid is s_w[c] * 2**-in_frac.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, gain: float = 1.0):
        super().__init__()
        self.stride = stride
        self.padding = (kernel - 1) // 2 if stride == 1 else (kernel - stride) // 2
        self.v = nn.Parameter(torch.randn(cout, cin, kernel, kernel) * 0.05)
        self.g = nn.Parameter(torch.full((cout,), gain))
        self.b = nn.Parameter(torch.zeros(cout))

    def float_weight(self) -> Tensor:
        norm = self.v.flatten(1).norm(dim=1).clamp_min(1e-12)
        return self.v * (self.g / norm).view(-1, 1, 1, 1)

    def weight_scale(self, weight: Tensor, weight_bound: int) -> Tensor:
        """Per-output-channel scale s_w so that max |w| maps to weight_bound."""
        return weight.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-8) / weight_bound

    def forward(self, x: Tensor, in_frac: int, weight_bound: int, quant: bool) -> Tensor:
        w = self.float_weight()
        b = self.b
        if quant:
            s = self.weight_scale(w, weight_bound)
            w = round_ste(w / s.view(-1, 1, 1, 1)) * s.view(-1, 1, 1, 1)
            bias_step = s * 2.0**-in_frac
            b = round_ste(b / bias_step) * bias_step
        return F.conv2d(x, w, b, self.stride, self.padding)


class ResBlock(nn.Module):
    """x + conv(elu(conv(elu(x)))) with every intermediate on the activation grid."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = QConv(width, width, 3)
        self.conv2 = QConv(width, width, 3, gain=0.1)

    def forward(self, x: Tensor, net: CondNet) -> Tensor:
        h = net.act(F.elu(x))
        h = net.act(self.conv1(h, net.cfg.act_frac, net.cfg.weight_bound, net.quant))
        h = net.act(F.elu(h))
        h = net.act(self.conv2(h, net.cfg.act_frac, net.cfg.weight_bound, net.quant))
        return net.act(x + h)


class CondNet(nn.Module):
    """One conditional: input tensor -> raw (mean, log-scale) maps for out_ch channels.

    mode "down": 32x32 input, stride-2 stem (the q(z_1|x) network).
    mode "up":   16x16 input, 2x pixel-shuffle before the head (the p(x|z_1) network).
    mode "same": 16x16 in and out (latent to latent).
    """

    def __init__(self, cfg: ModelConfig, in_ch: int, in_frac: int, out_ch: int, mode: str):
        super().__init__()
        self.cfg, self.in_frac, self.out_ch, self.mode = cfg, in_frac, out_ch, mode
        self.quant = False
        w = cfg.width
        self.stem = QConv(in_ch, w, 4, stride=2) if mode == "down" else QConv(in_ch, w, 3)
        self.blocks = nn.ModuleList(ResBlock(w) for _ in range(cfg.res_blocks))
        if mode == "up":
            self.up = QConv(w, 4 * cfg.upsample_width, 3)
            self.head = QConv(cfg.upsample_width, 2 * out_ch, 3, gain=0.1)
        else:
            self.head = QConv(w, 2 * out_ch, 3, gain=0.1)

    def act(self, x: Tensor) -> Tensor:
        return fake_quant(x, self.cfg.act_frac, self.cfg.act_bound) if self.quant else x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        h = self.act(self.stem(x, self.in_frac, cfg.weight_bound, self.quant))  # [B, w, 16, 16]
        for block in self.blocks:
            h = block(h, self)
        h = self.act(F.elu(h))
        if self.mode == "up":
            h = self.act(self.up(h, cfg.act_frac, cfg.weight_bound, self.quant))
            h = F.pixel_shuffle(h, 2)  # [B, upsample_width, 32, 32]
            h = self.act(F.elu(h))
        out = self.head(h, cfg.act_frac, cfg.weight_bound, self.quant)
        return out[:, : self.out_ch], out[:, self.out_ch :]


POLYPHASE = ((0, 0), (1, 1), (0, 1), (1, 0))  # (dy, dx) of the 2x2 sub-lattices, in decoding order
WIDE_BOUND = 1 << 20  # clamp of a branch before two branches are summed (activation units)
LINEAR_WEIGHT_BOUND = 2047  # 12-bit weights for the linear pixel predictor: means need precision


def split_polyphase(x: Tensor) -> list[Tensor]:
    """[B, C, 32, 32] -> the four [B, C, 16, 16] sub-lattices in POLYPHASE order."""
    return [x[:, :, dy::2, dx::2] for dy, dx in POLYPHASE]


def merge_polyphase(parts: list[Tensor]) -> Tensor:
    b, c, h, w = parts[0].shape
    out = parts[0].new_empty((b, c, 2 * h, 2 * w))
    for (dy, dx), part in zip(POLYPHASE, parts):
        out[:, :, dy::2, dx::2] = part
    return out


def context_mask(stage: int, kernel: int) -> Tensor:
    """Which inputs output channel c of stage ``stage``'s linear predictor may see: every channel of
    the earlier stages' sub-lattices, and the channels below c of its own (decoded just before)."""
    mask = torch.zeros(3, 3 * (stage + 1), kernel, kernel)
    mask[:, : 3 * stage] = 1.0
    for c in range(3):
        mask[c, 3 * stage : 3 * stage + c] = 1.0
    return mask


# (stage, dy, dx) of the four nearest decoded neighbours of each stage's pixels, in the 16x16
# grid offsets of the stage they belong to (see POLYPHASE)
_NEIGHBOURS = {
    1: [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)],  # (1,1): the diagonal (0,0) pixels
    2: [(0, 0, 0), (0, 0, 1), (1, -1, 0), (1, 0, 0)],  # (0,1): (0,0) left/right, (1,1) above/below
    3: [(0, 0, 0), (0, 1, 0), (1, 0, -1), (1, 0, 0)],  # (1,0): (0,0) above/below, (1,1) left/right
}


def interpolation_weights(stage: int, kernel: int) -> Tensor:
    """A sensible start for the linear predictor [3, 3(stage+1), k, k]: R is the mean of its four
    nearest decoded neighbours; G is this pixel's R plus the neighbours' mean G - R, B the same
    from G (the colour-difference prediction of lossless image coders). Stage 0 has no
    neighbours: its G and B start from R and G of the same pixel."""
    w = torch.zeros(3, 3 * (stage + 1), kernel, kernel)
    mid = kernel // 2
    own = 3 * stage
    if stage == 0:
        w[1, own + 0, mid, mid] = 1.0
        w[2, own + 1, mid, mid] = 1.0
        return w
    for c in range(3):
        for st, dy, dx in _NEIGHBOURS[stage]:
            w[c, 3 * st + c, mid + dy, mid + dx] += 0.25
            if c > 0:
                w[c, 3 * st + c - 1, mid + dy, mid + dx] -= 0.25
        if c > 0:
            w[c, own + c - 1, mid, mid] += 1.0
    return w


class MaskedQConv(QConv):
    """QConv whose weights are zero outside a fixed mask (a causal linear predictor)."""

    def __init__(self, mask: Tensor, gain: float = 1.0):
        cout, cin, k, _ = mask.shape
        super().__init__(cin, cout, k, gain=gain)
        self.register_buffer("mask", mask)

    def float_weight(self) -> Tensor:
        v = self.v * self.mask
        norm = v.flatten(1).norm(dim=1).clamp_min(1e-12)
        return v * (self.g / norm).view(-1, 1, 1, 1)


class PixelContextNet(nn.Module):
    """p(x | z_1) with pixel context: x is split into four 2x2 polyphase sub-lattices (POLYPHASE),
    decoded one after another, and within a sub-lattice R, then G, then B. Stage s sees z_1 through
    a trunk at 16x16, the earlier sub-lattices through a small conv net (scales and nonlinear mean
    corrections), and every already-decoded pixel through a masked linear predictor whose output
    is added to the mean at full precision (12-bit weights, no activation grid in between).
    Trained teacher-forced: all stages at once from the true pixels.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.quant = False
        w, m = cfg.width, cfg.context_width
        self.stem = QConv(cfg.latent_channels, w, 3)
        self.blocks = nn.ModuleList(ResBlock(w) for _ in range(cfg.res_blocks))
        self.from_latent = nn.ModuleList(QConv(w, m, 3) for _ in range(4))
        self.from_pixels = nn.ModuleList(QConv(3 * s, m, 3) for s in range(1, 4))  # stage s uses [s - 1]
        self.hidden = nn.ModuleList(QConv(m, m, 3) for _ in range(4))
        self.head = nn.ModuleList(QConv(m, 6, 3, gain=0.1) for _ in range(4))
        self.linear = nn.ModuleList(MaskedQConv(context_mask(s, cfg.context_kernel)) for s in range(4))
        with torch.no_grad():
            for s, conv in enumerate(self.linear):
                w = interpolation_weights(s, cfg.context_kernel)
                conv.v.copy_(w)
                conv.g.copy_(w.flatten(1).norm(dim=1).clamp_min(1e-3))
            # The mean starts as the linear prediction alone (+0.5: the pixel head's mean is
            # 127.5 + 127.5 * raw), scales near what such predictions need (stage 0 has only z_1).
            # Left to Adam, the scale biases alone took over a thousand steps to get there.
            pixel_logscale = cfg.pixel_head.logscale_offset
            for s, head in enumerate(self.head):
                head.g[:] = 1e-3
                head.b[:3] = 0.5 / cfg.pixel_head.mean_gain
                head.b[3:] = math.log(16.0 if s == 0 else 3.0) - pixel_logscale

    def act(self, x: Tensor, bound: int | None = None) -> Tensor:
        cfg = self.cfg
        return fake_quant(x, cfg.act_frac, bound or cfg.act_bound) if self.quant else x

    def trunk(self, z: Tensor) -> Tensor:
        cfg = self.cfg
        h = self.act(self.stem(z, cfg.latent_in_frac, cfg.weight_bound, self.quant))
        for block in self.blocks:
            h = block(h, self)
        return self.act(F.elu(h))

    def stage(self, h: Tensor, pixels: list[Tensor], s: int) -> tuple[Tensor, Tensor]:
        """Raw (mean, log-scale) [B, 3, 16, 16] of sub-lattice s; pixels: network inputs of the
        sub-lattices 0..s (only channels the mask allows are used from sub-lattice s)."""
        cfg, q, wb = self.cfg, self.quant, self.cfg.weight_bound
        a = self.act(self.from_latent[s](h, cfg.act_frac, wb, q), WIDE_BOUND)
        if s > 0:
            ctx = torch.cat(pixels[:s], dim=1)
            a = a + self.act(self.from_pixels[s - 1](ctx, cfg.pixel_in_frac, wb, q), WIDE_BOUND)
        a = self.act(F.elu(self.act(a)))
        a = self.act(F.elu(self.act(self.hidden[s](a, cfg.act_frac, wb, q))))
        out = self.head[s](a, cfg.act_frac, wb, q)
        linear = self.linear[s](torch.cat(pixels[: s + 1], dim=1), cfg.pixel_in_frac, LINEAR_WEIGHT_BOUND, q)
        return out[:, :3] + linear, out[:, 3:]

    def forward(self, z: Tensor, pixel_input: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced raw (mean, log-scale) maps [B, 3, 32, 32] for every pixel."""
        h = self.trunk(z)
        pixels = split_polyphase(pixel_input)
        outs = [self.stage(h, pixels, s) for s in range(4)]
        return merge_polyphase([m for m, _ in outs]), merge_polyphase([s for _, s in outs])


def head_params(raw_mean: Tensor, raw_logscale: Tensor, spec: HeadSpec, quant: bool) -> tuple[Tensor, Tensor]:
    """Raw head maps -> (mean, log-scale) exactly as the integer head will compute them."""
    mean = torch.clamp(spec.mean_offset + spec.mean_gain * raw_mean, spec.mean_min, spec.mean_max)
    grid = spec.grid
    if quant:
        index = torch.clamp(round_ste(raw_logscale / grid.step) + spec.index_offset, 0, grid.count - 1)
    else:
        index = torch.clamp((raw_logscale + spec.logscale_offset - grid.log_min) / grid.step, 0, grid.count - 1)
    return mean, grid.log_min + index * grid.step


def logistic_logpdf(z: Tensor, mean: Tensor, logscale: Tensor) -> Tensor:
    u = (z - mean) * torch.exp(-logscale)
    return -u - logscale - 2.0 * F.softplus(-u)


def discretized_logistic_logp(x: Tensor, mean: Tensor, logscale: Tensor) -> Tensor:
    """log P(x) for integer pixels x in [0, 255] under a logistic discretized to unit bins.

    The bottom and top bins take the tails, as the integer tables do.
    """
    inv_s = torch.exp(-logscale)
    centered = x - mean
    plus = inv_s * (centered + 0.5)
    minus = inv_s * (centered - 0.5)
    log_cdf_plus = plus - F.softplus(plus)
    log_sf_minus = -F.softplus(minus)
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * centered
    log_pdf_mid = mid - logscale - 2.0 * F.softplus(mid)
    interior = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_pdf_mid)
    return torch.where(x < 0.5, log_cdf_plus, torch.where(x > 254.5, log_sf_minus, interior))


class BitSwapVAE(nn.Module):
    """The float/QAT model. ``posteriors[i]`` is q(z_{i+1} | z_i) (z_0 = x); ``priors[i]`` is p(z_i | z_{i+1})."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        zc = cfg.latent_channels
        self.posteriors = nn.ModuleList(
            [CondNet(cfg, 3, cfg.pixel_in_frac, zc, "down")]
            + [CondNet(cfg, zc, cfg.latent_in_frac, zc, "same") for _ in range(cfg.n_layers - 1)]
        )
        pixel_net = PixelContextNet(cfg) if cfg.pixel_context else CondNet(cfg, zc, cfg.latent_in_frac, 3, "up")
        self.priors = nn.ModuleList(
            [pixel_net]
            + [CondNet(cfg, zc, cfg.latent_in_frac, zc, "same") for _ in range(cfg.n_layers - 1)]
        )
        self.set_quant(False)

    def set_quant(self, quant: bool) -> None:
        self.quant = quant
        for net in [*self.posteriors, *self.priors]:
            net.quant = quant

    def pixel_input(self, x: Tensor) -> Tensor:
        """Integer pixels [0, 255] -> network input (x - 128) / 128, exactly on its grid."""
        return (x - 128.0) * 2.0**-self.cfg.pixel_in_frac

    def latent_input(self, z: Tensor) -> Tensor:
        cfg = self.cfg
        if not self.quant:
            return z
        return fake_quant(z, cfg.latent_in_frac, cfg.latent_in_bound)

    def sample_posteriors(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """z_1..z_L drawn from q(z_1 | x), q(z_i | z_{i-1}) (x: float pixels [B, 3, 32, 32]), and
        log q of each sample."""
        cfg = self.cfg
        samples, log_q = [], []
        cond = self.pixel_input(x)
        for i in range(cfg.n_layers):
            m, s = self.posteriors[i](cond)
            mean, logscale = head_params(m, s, cfg.latent_head, self.quant)
            u = torch.rand_like(mean).clamp(1e-6, 1 - 1e-6)
            z = mean + torch.exp(logscale) * (torch.log(u) - torch.log1p(-u))
            log_q.append(logistic_logpdf(z, mean, logscale))
            samples.append(z)
            cond = self.latent_input(z)
        return samples, log_q

    def forward(self, x: Tensor, free_bits_nats: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        """x: float pixels [B, 3, 32, 32] in [0, 255].

        Returns (loss, neg_elbo, kl) with loss and neg_elbo in nats per patch (batch mean) and kl the
        per-(layer, channel) KL in nats per patch, [L, C].
        """
        cfg = self.cfg
        q = self.quant
        log_p = []
        samples, log_q = self.sample_posteriors(x)
        for i in range(cfg.n_layers):
            if i == 0 and cfg.pixel_context:
                m, s = self.priors[0](self.latent_input(samples[0]), self.pixel_input(x))
            else:
                m, s = self.priors[i](self.latent_input(samples[i]))
            if i == 0:
                mean, logscale = head_params(m, s, cfg.pixel_head, q)
                recon = discretized_logistic_logp(x, mean, logscale)
            else:
                mean, logscale = head_params(m, s, cfg.latent_head, q)
                log_p.append(logistic_logpdf(samples[i - 1], mean, logscale))
        top = samples[-1]
        log_p.append(-top - 2.0 * F.softplus(-top))  # standard logistic
        recon_nats = -recon.flatten(1).sum(1)  # [B]
        kl = torch.stack([(lq - lp).sum(dim=(2, 3)) for lq, lp in zip(log_q, log_p)])  # [L, B, C]
        neg_elbo = recon_nats + kl.sum(dim=(0, 2))
        kl_mean = kl.mean(dim=1)  # [L, C]
        if free_bits_nats > 0:
            kl_term = torch.clamp(kl_mean, min=free_bits_nats).sum()
        else:
            kl_term = kl_mean.sum()
        loss = recon_nats.mean() + kl_term
        return loss, neg_elbo.mean(), kl_mean


def nats_to_bpd(nats: Tensor | float, dims: int = 3 * 32 * 32) -> float:
    return float(nats) / (dims * math.log(2.0))
