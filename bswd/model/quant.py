"""Export a trained float model to the integer model file, and load a model file for coding.

Export rounds exactly as quantization-aware training did (int8 weights per output channel, biases
on the accumulator grid) and turns every rescaling into an integer multiplier and shift. It also
builds the lookup tables (ELU, sigmoid, scale grids, bin edges and centres) once, with floats;
coding afterwards only indexes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bswd.model.config import HeadSpec, ModelConfig
from bswd.model.integer import IntCondNet, IntConv, IntegerModel, IntHead, IntPixelContext, exact_splits
from bswd.model.modelfile import ModelFile, ModelFileError
from bswd.model.net import LINEAR_WEIGHT_BOUND, BitSwapVAE, CondNet, PixelContextNet, QConv
from bswd.tables import (
    MEAN_FRAC,
    LogisticFamily,
    UniformFamily,
    build_inv_scales,
    build_sigmoid_lut,
    latent_centres,
    latent_edges,
    pixel_edges,
)

MULT_BITS = 24  # requant multipliers lie in [2**24, 2**25)


def fixed_multiplier(mult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (M, S) with M / 2**S ~= mult, M < 2**25, 1 <= S <= 62."""
    mult = np.maximum(mult, 1e-30)
    shift = np.clip(MULT_BITS - np.floor(np.log2(mult)).astype(np.int64), 1, 62)
    return np.round(mult * np.exp2(shift.astype(np.float64))).astype(np.int64), shift


def elu_table(cfg: ModelConfig) -> np.ndarray:
    a = np.arange(-cfg.act_bound, cfg.act_bound + 1, dtype=np.float64) * 2.0**-cfg.act_frac
    e = np.where(a > 0, a, np.expm1(np.minimum(a, 0)))
    return np.clip(np.round(e * 2.0**cfg.act_frac), -cfg.act_bound, cfg.act_bound).astype(np.int64)


def _quantize_conv(conv: QConv, in_frac: int, weight_bound: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w_int [cout, K] int8 (int16 past 127), b_int int64, weight scale float64) exactly as QAT rounds them."""
    with torch.no_grad():
        w = conv.float_weight()
        s = conv.weight_scale(w, weight_bound)
        w_int = torch.round(w / s.view(-1, 1, 1, 1)).clamp(-weight_bound, weight_bound)
        b_int = torch.round(conv.b / (s * 2.0**-in_frac))
    dtype = np.int8 if weight_bound <= 127 else np.int16
    return (w_int.flatten(1).numpy().astype(dtype), b_int.numpy().astype(np.int64),
            s.numpy().astype(np.float64))


def _export_net(net: CondNet, cfg: ModelConfig, spec: HeadSpec, prefix: str,
                tensors: dict[str, np.ndarray]) -> None:
    wb = cfg.weight_bound
    convs: list[tuple[str, QConv, int]] = [("stem", net.stem, net.in_frac)]
    for i, block in enumerate(net.blocks):
        convs += [(f"block{i}.conv1", block.conv1, cfg.act_frac), (f"block{i}.conv2", block.conv2, cfg.act_frac)]
    if net.mode == "up":
        convs.append(("up", net.up, cfg.act_frac))
    for name, conv, in_frac in convs:
        w, b, s = _quantize_conv(conv, in_frac, wb)
        m, sh = fixed_multiplier(s * 2.0 ** (cfg.act_frac - in_frac))
        tensors.update({f"{prefix}.{name}.w": w, f"{prefix}.{name}.b": b,
                        f"{prefix}.{name}.m": m, f"{prefix}.{name}.s": sh})
    w, b, s = _quantize_conv(net.head, cfg.act_frac, wb)
    oc = net.out_ch
    mult = np.concatenate([s[:oc] * spec.mean_gain * 2.0 ** (MEAN_FRAC - cfg.act_frac),
                           s[oc:] * 2.0**-cfg.act_frac / spec.grid.step])
    m, sh = fixed_multiplier(mult)
    tensors.update({f"{prefix}.head.w": w, f"{prefix}.head.b": b, f"{prefix}.head.m": m, f"{prefix}.head.s": sh})


def _export_conv(conv: QConv, in_frac: int, weight_bound: int, mult_of_scale, name: str,
                 tensors: dict[str, np.ndarray]) -> None:
    """One conv's integer weights and bias, and its requant multiplier from mult_of_scale(s_w)."""
    w, b, s = _quantize_conv(conv, in_frac, weight_bound)
    m, sh = fixed_multiplier(mult_of_scale(s))
    tensors.update({f"{name}.w": w, f"{name}.b": b, f"{name}.m": m, f"{name}.s": sh})


def _export_pixel_context(net: PixelContextNet, cfg: ModelConfig, prefix: str, tensors: dict[str, np.ndarray]) -> None:
    """prior1 of a pixel-context model: trunk, then per stage the branch convs, head and linear predictor."""
    wb, af, spec = cfg.weight_bound, cfg.act_frac, cfg.pixel_head

    def to_act(in_frac: int):
        return lambda s: s * 2.0 ** (af - in_frac)

    def to_params(in_frac: int):  # mean channels to fixed point, scale channels to index units
        def mult(s: np.ndarray) -> np.ndarray:
            if len(s) == 3:  # the linear predictor: means only
                return s * spec.mean_gain * 2.0 ** (MEAN_FRAC - in_frac)
            return np.concatenate([s[:3] * spec.mean_gain * 2.0 ** (MEAN_FRAC - in_frac),
                                   s[3:] * 2.0**-in_frac / spec.grid.step])
        return mult

    _export_conv(net.stem, cfg.latent_in_frac, wb, to_act(cfg.latent_in_frac), f"{prefix}.stem", tensors)
    for i, block in enumerate(net.blocks):
        _export_conv(block.conv1, af, wb, to_act(af), f"{prefix}.block{i}.conv1", tensors)
        _export_conv(block.conv2, af, wb, to_act(af), f"{prefix}.block{i}.conv2", tensors)
    for s in range(4):
        _export_conv(net.from_latent[s], af, wb, to_act(af), f"{prefix}.stage{s}.from_latent", tensors)
        if s > 0:
            _export_conv(net.from_pixels[s - 1], cfg.pixel_in_frac, wb, to_act(cfg.pixel_in_frac),
                         f"{prefix}.stage{s}.from_pixels", tensors)
        _export_conv(net.hidden[s], af, wb, to_act(af), f"{prefix}.stage{s}.hidden", tensors)
        _export_conv(net.head[s], af, wb, to_params(af), f"{prefix}.stage{s}.head", tensors)
        _export_conv(net.linear[s], cfg.pixel_in_frac, LINEAR_WEIGHT_BOUND, to_params(cfg.pixel_in_frac),
                     f"{prefix}.stage{s}.linear", tensors)


def export_model(model: BitSwapVAE, model_id: str, meta: dict | None = None) -> ModelFile:
    """The integer model file of a trained (EMA) float model."""
    cfg = model.cfg
    tensors: dict[str, np.ndarray] = {}
    for i, net in enumerate(model.posteriors):
        _export_net(net, cfg, cfg.latent_head, f"post{i + 1}", tensors)
    for i, net in enumerate(model.priors):
        if isinstance(net, PixelContextNet):
            _export_pixel_context(net, cfg, f"prior{i + 1}", tensors)
            continue
        _export_net(net, cfg, cfg.pixel_head if i == 0 else cfg.latent_head, f"prior{i + 1}", tensors)
    tensors["elu"] = elu_table(cfg)
    tensors["sigmoid"] = build_sigmoid_lut()
    tensors["pixel_edges"] = pixel_edges(256)
    tensors["latent_edges"] = latent_edges(cfg.latent_bins)
    tensors["latent_centres"] = latent_centres(cfg.latent_bins, cfg.latent_in_frac, cfg.latent_in_bound)
    g = cfg.pixel_scales
    tensors["pixel_inv_scales"] = build_inv_scales(g.log_min, g.log_max, g.count)
    g = cfg.latent_scales
    tensors["latent_inv_scales"] = build_inv_scales(g.log_min, g.log_max, g.count)
    mf = ModelFile(model_id, cfg.to_dict(), tensors, dict(meta or {}))
    data = mf.to_bytes()
    loaded = ModelFile.from_bytes(data)
    load_coding_model(loaded)  # refuses a model whose integer arithmetic would not be exact
    return loaded


@dataclass(frozen=True)
class CodingModel:
    """Everything codec.py needs: the integer nets and the integer probability tables."""

    model_id: str
    sha256: bytes
    cfg: ModelConfig
    nets: IntegerModel
    pixels: LogisticFamily
    latents: LogisticFamily
    top: UniformFamily


def _fixed(v: float) -> int:
    return int(round(v * (1 << MEAN_FRAC)))


def _load_conv(t: dict[str, np.ndarray], name: str, kernel: int, stride: int, in_bound: int,
               device: torch.device) -> IntConv:
    """The integer conv ``name`` of a model file, its float32 sums cut where needed to stay exact."""
    try:
        w, b, m, s = (t[f"{name}.{k}"] for k in "wbms")
    except KeyError as exc:
        raise ModelFileError(f"model file lacks tensor {exc}") from exc
    pad = (kernel - 1) // 2 if stride == 1 else (kernel - stride) // 2
    return IntConv(torch.from_numpy(w.astype(np.float32)).to(device), torch.from_numpy(b).to(device),
                   torch.from_numpy(m).to(device), torch.from_numpy(s).to(device), kernel, stride, pad,
                   exact_splits(w, in_bound, kernel))


def _load_net(t: dict[str, np.ndarray], cfg: ModelConfig, spec: HeadSpec, prefix: str, mode: str,
              out_ch: int, in_bound: int, device: torch.device) -> IntCondNet:
    def conv(name: str, kernel: int = 3, stride: int = 1, bound: int = cfg.act_bound) -> IntConv:
        return _load_conv(t, f"{prefix}.{name}", kernel, stride, bound, device)

    stem = conv("stem", 4, 2, in_bound) if mode == "down" else conv("stem", 3, 1, in_bound)
    blocks = [(conv(f"block{i}.conv1"), conv(f"block{i}.conv2")) for i in range(cfg.res_blocks)]
    up = conv("up") if mode == "up" else None
    grid = spec.grid
    head = IntHead(conv("head"), out_ch, _fixed(spec.mean_offset), _fixed(spec.mean_min), _fixed(spec.mean_max),
                   spec.index_offset, grid.count - 1)
    elu = torch.from_numpy(t["elu"]).to(device)
    return IntCondNet(stem, blocks, up, head, cfg.act_bound, elu)


def _load_pixel_context(t: dict[str, np.ndarray], cfg: ModelConfig, prefix: str,
                        device: torch.device) -> IntPixelContext:
    pix_bound, act = 128, cfg.act_bound

    def conv(name: str, bound: int = act, kernel: int = 3) -> IntConv:
        return _load_conv(t, f"{prefix}.{name}", kernel, 1, bound, device)

    spec = cfg.pixel_head
    return IntPixelContext(
        stem=conv("stem", cfg.latent_in_bound),
        blocks=[(conv(f"block{i}.conv1"), conv(f"block{i}.conv2")) for i in range(cfg.res_blocks)],
        from_latent=[conv(f"stage{s}.from_latent") for s in range(4)],
        from_pixels=[conv(f"stage{s}.from_pixels", pix_bound) for s in range(1, 4)],
        hidden=[conv(f"stage{s}.hidden") for s in range(4)],
        head=[conv(f"stage{s}.head") for s in range(4)],
        linear=[conv(f"stage{s}.linear", pix_bound, cfg.context_kernel) for s in range(4)],
        act_bound=act, elu=torch.from_numpy(t["elu"]).to(device),
        mean_offset=_fixed(spec.mean_offset), mean_min=_fixed(spec.mean_min), mean_max=_fixed(spec.mean_max),
        index_offset=spec.index_offset, index_max=spec.grid.count - 1)


def load_coding_model(mf: ModelFile, device: str | torch.device = "cpu") -> CodingModel:
    cfg = ModelConfig.from_dict(mf.config)
    dev = torch.device(device)
    t = mf.tensors
    zc = cfg.latent_channels
    pix_bound = 128  # |x - 128| for 8-bit pixels
    posts = [_load_net(t, cfg, cfg.latent_head, "post1", "down", zc, pix_bound, dev)] + [
        _load_net(t, cfg, cfg.latent_head, f"post{i}", "same", zc, cfg.latent_in_bound, dev)
        for i in range(2, cfg.n_layers + 1)]
    pixel_net = (_load_pixel_context(t, cfg, "prior1", dev) if cfg.pixel_context
                 else _load_net(t, cfg, cfg.pixel_head, "prior1", "up", 3, cfg.latent_in_bound, dev))
    priors = [pixel_net] + [
        _load_net(t, cfg, cfg.latent_head, f"prior{i}", "same", zc, cfg.latent_in_bound, dev)
        for i in range(2, cfg.n_layers + 1)]
    nets = IntegerModel(cfg, posts, priors, t["latent_centres"], dev)
    p = cfg.precision
    pixels = LogisticFamily(t["pixel_edges"], t["pixel_inv_scales"], t["sigmoid"], p)
    latents = LogisticFamily(t["latent_edges"], t["latent_inv_scales"], t["sigmoid"], p)
    pixels.check_ranges(_fixed(cfg.pixel_head.mean_min), _fixed(cfg.pixel_head.mean_max))
    latents.check_ranges(_fixed(cfg.latent_head.mean_min), _fixed(cfg.latent_head.mean_max))
    if math.log2(len(t["latent_edges"]) - 1) != cfg.latent_bins_log2:
        raise ModelFileError("latent edge table does not match latent_bins_log2")
    return CodingModel(mf.model_id, mf.sha256, cfg, nets, pixels, latents,
                       UniformFamily(cfg.latent_bins_log2, p))
