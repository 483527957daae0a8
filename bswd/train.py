"""Training loop for the Bit-Swap VAE: resumable, logged to CSV, with EMA and a QAT phase.

The recipe follows the published Bit-Swap one (DESIGN §1): Adam 2e-3 decaying to 5e-4, free bits,
EMA 0.999, gradient clipping; after ``qat_start`` of the steps the network trains with its integer
grids (fake quantization) so that the exported integer model loses almost nothing.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bswd.model.config import ModelConfig
from bswd.model.net import BitSwapVAE, nats_to_bpd
from bswd.model.prune import prune_latent_channels

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG_CSV = "log.csv"
CURVE_PNG = "curve.png"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6000
    batch: int = 64
    lr: float = 2e-3
    lr_final: float = 5e-4
    ema: float = 0.999
    free_bits_per_dim: float = 0.02
    grad_clip: float = 1.0
    qat_start: float = 0.3  # fraction of steps trained in plain float first
    val_every: int = 250
    val_patches: int = 512
    checkpoint_minutes: float = 3.0
    seed: int = 0
    threads: int = 0  # 0: torch default
    device: str = "cpu"  # "cuda" trains on a GPU; checkpoints are always saved as CPU tensors
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        values = dict(data)
        values["model"] = ModelConfig.from_dict(values.get("model", {}))
        return cls(**values)


class PatchSource:
    """What the trainer needs from the data: random training patches and fixed validation patches."""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:  # uint8 [n, 3, 32, 32]
        raise NotImplementedError

    def validation(self, n: int) -> np.ndarray:  # uint8 [n, 3, 32, 32], the same every call
        raise NotImplementedError


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Exponential decay from lr to lr_final over the run, after a short warm-up."""
    warm = min(1.0, (step + 1) / 200)
    frac = min(1.0, step / max(1, cfg.steps))
    return warm * cfg.lr * (cfg.lr_final / cfg.lr) ** frac


@torch.no_grad()
def latent_statistics(model: BitSwapVAE, patches: np.ndarray, batch: int = 128) -> tuple[Tensor, Tensor]:
    """Per latent layer and channel [L, C]: the KL in bits per patch, and the mean of the network
    input the channel's samples give the layers that read them (what pruning folds into biases)."""
    cfg = model.cfg
    kl = torch.zeros(cfg.n_layers, cfg.latent_channels)
    means = torch.zeros(cfg.n_layers, cfg.latent_channels)
    gen = torch.random.get_rng_state()
    torch.manual_seed(12345)
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(patches), batch):
        x = torch.from_numpy(patches[i : i + batch]).to(device).float()
        _, _, kl_mean = model(x)
        kl += kl_mean.cpu() * len(x)
        samples, _ = model.sample_posteriors(x)
        for level, z in enumerate(samples):
            means[level] += model.latent_input(z).mean(dim=(0, 2, 3)).cpu() * len(x)
    torch.random.set_rng_state(gen)
    model.train()
    return kl / len(patches) / math.log(2.0), means / len(patches)


@torch.no_grad()
def evaluate(model: BitSwapVAE, patches: np.ndarray, batch: int = 128) -> float:
    """Mean -ELBO in bits/dim of the model (as it is, quant or not) on fixed patches."""
    model.eval()
    total = 0.0
    device = next(model.parameters()).device
    gen = torch.random.get_rng_state()
    cuda_gen = torch.cuda.get_rng_state() if device.type == "cuda" else None
    torch.manual_seed(12345)  # the same posterior samples every evaluation
    for i in range(0, len(patches), batch):
        x = torch.from_numpy(patches[i : i + batch]).to(device).float()
        _, neg_elbo, _ = model(x)
        total += float(neg_elbo) * len(x)
    torch.random.set_rng_state(gen)
    if cuda_gen is not None:
        torch.cuda.set_rng_state(cuda_gen)
    model.train()
    return nats_to_bpd(total / len(patches))


class Trainer:
    """Owns model, EMA copy, optimizer and the run folder; ``run`` trains until cfg.steps."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, data: PatchSource):
        self.cfg, self.run_dir, self.data = cfg, run_dir, data
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.device = torch.device(cfg.device)
        self.model = BitSwapVAE(cfg.model).to(self.device)
        self.ema = BitSwapVAE(cfg.model).to(self.device)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.step = 0
        self.elapsed = 0.0
        self.val_patches = data.validation(cfg.val_patches)
        self.pruned_from: dict[str, Any] | None = None  # set by init_from when it prunes latent channels
        self.init_note = ""  # set by init_from: why some of the other run's weights could not be used

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        state = {
            "train_config": self.cfg.to_dict(),
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "ema": {k: v.cpu() for k, v in self.ema.state_dict().items()},
            "opt": self.opt.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "torch_rng": torch.random.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if self.device.type == "cuda" else {}),
            "np_rng": self.rng.bit_generator.state,
        }
        tmp = self.run_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.run_dir / CHECKPOINT)

    def init_from(self, checkpoint: Path) -> tuple[int, int]:
        """Warm start: copy every weight of another run (its EMA) whose name and shape match
        into both model and EMA; returns (tensors copied, tensors left at their fresh init).

        When this run has fewer latent channels than the other (same number of layers), the other
        model keeps the channels that carry the most information (largest KL on this run's
        validation patches) and is pruned to them first (model/prune.py); ``self.pruned_from``
        records which channels were kept."""
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        weights = state["ema"]
        other = ModelConfig.from_dict(state["train_config"]["model"])
        own_cfg = self.cfg.model
        if other.latent_channels > own_cfg.latent_channels and other.n_layers == own_cfg.n_layers:
            big = BitSwapVAE(other)
            big.load_state_dict(weights)
            big.set_quant(True)
            kl_bits, means = latent_statistics(big, self.val_patches)
            keep = [sorted(torch.argsort(kl_bits[i], descending=True)[: own_cfg.latent_channels].tolist())
                    for i in range(other.n_layers)]
            weights = prune_latent_channels(weights, other.n_layers, other.latent_channels, keep, means)
            self.pruned_from = {"kept": keep, "kl_bits_per_patch": kl_bits.tolist()}
        elif other.latent_channels != own_cfg.latent_channels or other.n_layers != own_cfg.n_layers:
            why = (" (pruning to fewer channels needs as many layers)"
                   if other.latent_channels > own_cfg.latent_channels else "")
            self.init_note = (f"note: {checkpoint.parent} has {other.n_layers} latent layers of "
                              f"{other.latent_channels} channels, this run {own_cfg.n_layers} of "
                              f"{own_cfg.latent_channels}: only tensors of the same shape are copied{why}")
        own = self.model.state_dict()
        match = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(match, strict=False)
        self.ema.load_state_dict(match, strict=False)
        return len(match), len(own) - len(match)

    @classmethod
    def resume(cls, run_dir: Path, data: PatchSource, device: str | None = None,
               threads: int | None = None, steps: int | None = None) -> Trainer:
        """Continue a run; ``device`` may move it (e.g. a CPU run continued on a GPU), ``threads``
        its torch thread count, ``steps`` its planned total (the learning rate follows the new
        plan from the step it is at)."""
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
        cfg = TrainConfig.from_dict(state["train_config"])
        if steps is not None:
            if steps <= state["step"]:
                raise ValueError(f"{run_dir} is at step {state['step']}: --steps must be more than that")
            cfg = replace(cfg, steps=steps)
        if device is not None:
            cfg = replace(cfg, device=device)
        if threads is not None:
            cfg = replace(cfg, threads=threads)
        trainer = cls(cfg, run_dir, data)
        trainer.model.load_state_dict(state["model"])
        trainer.ema.load_state_dict(state["ema"])
        trainer.opt.load_state_dict(state["opt"])
        trainer.step = state["step"]
        trainer.elapsed = state["elapsed"]
        torch.random.set_rng_state(state["torch_rng"])
        if trainer.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        trainer.rng.bit_generator.state = state["np_rng"]
        return trainer

    # ---- training ----------------------------------------------------------------------------
    def quant_now(self) -> bool:
        return self.step >= int(self.cfg.qat_start * self.cfg.steps)

    def train_step(self) -> float:
        cfg = self.cfg
        quant = self.quant_now()
        self.model.set_quant(quant)
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(cfg, self.step)
        x = torch.from_numpy(self.data.sample(cfg.batch, self.rng)).to(self.device).float()
        free_nats = cfg.free_bits_per_dim * 256 * math.log(2.0)
        loss, neg_elbo, _ = self.model(x, free_nats)
        self.opt.zero_grad(set_to_none=True)
        (loss / (3 * 32 * 32 * math.log(2.0))).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + self.step) / (10 + self.step))
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        self.step += 1
        return nats_to_bpd(neg_elbo.detach())

    def run(self, progress: Callable[[int, float, float | None], None] | None = None,
            stop_at: int | None = None) -> None:
        """Train to cfg.steps (or stop_at), checkpointing every few minutes and at the end."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log_path = self.run_dir / LOG_CSV
        new_log = not log_path.exists()
        last_ckpt = time.monotonic()
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        with open(log_path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new_log:
                writer.writerow(["step", "seconds", "train_bpd", "val_bpd", "lr", "quant"])
            window: list[float] = []
            while self.step < end:
                t0 = time.monotonic()
                window.append(self.train_step())
                self.elapsed += time.monotonic() - t0
                train_bpd = float(np.mean(window))  # over the steps since the last validation
                val = None
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    self.ema.set_quant(self.quant_now())
                    val = evaluate(self.ema, self.val_patches)
                    writer.writerow([self.step, round(self.elapsed, 1), round(train_bpd, 4),
                                     round(val, 4), learning_rate(cfg, self.step), int(self.quant_now())])
                    fh.flush()
                    window = []
                if progress is not None:
                    progress(self.step, train_bpd, val)
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    self.save()
                    last_ckpt = time.monotonic()
        self.save()
        draw_curve(log_path, self.run_dir / CURVE_PNG)


def read_log(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def draw_curve(log_path: Path, png_path: Path, size: tuple[int, int] = (640, 400)) -> None:
    """Plot train and validation bits/dim against step into a PNG (Pillow only, no matplotlib)."""
    from PIL import Image, ImageDraw

    rows = read_log(log_path)
    if not rows:
        return
    w, h = size
    pad = 48
    steps = [r["step"] for r in rows]
    series = {"train": [r["train_bpd"] for r in rows], "val": [r["val_bpd"] for r in rows]}
    lo = min(min(v) for v in series.values())
    hi = max(max(v) for v in series.values())
    hi = hi if hi > lo else lo + 1
    smax = max(steps) or 1
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad // 2, w - pad // 2, h - pad], outline="black")

    def xy(step: float, value: float) -> tuple[float, float]:
        return (pad + (w - 1.5 * pad) * step / smax, h - pad - (h - 1.5 * pad) * (value - lo) / (hi - lo))

    for (name, values), colour in zip(series.items(), ["steelblue", "darkorange"]):
        pts = [xy(s, v) for s, v in zip(steps, values)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.text((w - 140, pad // 2 + 8 + 14 * (colour == "darkorange")), f"{name} bits/dim", fill=colour)
    draw.text((pad, h - pad + 6), f"step 0 .. {int(smax)}", fill="black")
    draw.text((4, pad // 2), f"{hi:.2f}", fill="black")
    draw.text((4, h - pad - 10), f"{lo:.2f}", fill="black")
    img.save(png_path)


class PhotoPatches(PatchSource):
    """Training crops from the training split of a photo folder; validation crops from the rest."""

    def __init__(self, root: Path, val_fraction: float = 0.15, seed: int = 0):
        from bswd.data import PatchSampler, list_photos, split_train_val

        photos = list_photos(root)
        if not photos:
            raise ValueError(f"{root}: no photographs found (run `bswd data fetch {root}` first)")
        train, val = split_train_val(photos, val_fraction, seed)
        if not train or not val:
            raise ValueError(f"{root}: need photos in both splits, got {len(train)} train / {len(val)} val")
        self.train_paths, self.val_paths = train, val
        self.sampler = PatchSampler(train, seed=seed)
        self.val_sampler = PatchSampler(val, seed=seed + 1, n_scales=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.sampler.sample(n, rng)

    def validation(self, n: int) -> np.ndarray:
        return self.val_sampler.sample(n, np.random.default_rng(1234))
