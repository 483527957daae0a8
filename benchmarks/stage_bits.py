"""Where a pixel-context model's bits go on the held-out photos: the pixel likelihood's cost per
polyphase stage and channel (z_1 at the posterior mean) and the KL of every latent channel.

    python benchmarks/stage_bits.py training/m3/checkpoint.pt [--photos data/photos]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from heldout import heldout_images  # benchmarks/ is on sys.path when run as a script

from bswd.model.config import ModelConfig
from bswd.model.net import BitSwapVAE, discretized_logistic_logp, head_params, split_polyphase


def held_out_patches(photos: Path) -> torch.Tensor:
    out = []
    for _, img in heldout_images(photos, 512):
        h, w = img.shape[0] // 32 * 32, img.shape[1] // 32 * 32
        x = torch.from_numpy(np.array(img[:h, :w])).permute(2, 0, 1).float()
        out.append(x.unfold(1, 32, 32).unfold(2, 32, 32).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--photos", type=Path, default=Path("data/photos"))
    args = ap.parse_args()
    torch.manual_seed(0)
    state = torch.load(args.checkpoint, weights_only=False)
    cfg = ModelConfig.from_dict(state["train_config"]["model"])
    if not cfg.pixel_context:
        raise SystemExit("stage costs need a pixel-context model")
    model = BitSwapVAE(cfg)
    model.load_state_dict(state["model"])
    model.set_quant(True)
    model.eval()
    x = held_out_patches(args.photos)
    stage = np.zeros((4, 3))
    kl = torch.zeros(cfg.n_layers, cfg.latent_channels)
    with torch.no_grad():
        for i in range(0, len(x), 64):
            xb = x[i : i + 64]
            m, s = model.posteriors[0](model.pixel_input(xb))
            z1, _ = head_params(m, s, cfg.latent_head, True)
            m, s = model.priors[0](model.latent_input(z1), model.pixel_input(xb))
            mean, logscale = head_params(m, s, cfg.pixel_head, True)
            bits = -discretized_logistic_logp(xb, mean, logscale) / math.log(2)
            for j, part in enumerate(split_polyphase(bits)):
                stage[j] += part.sum(dim=(0, 2, 3)).numpy()
            kl += model(xb)[2] * len(xb) / math.log(2)
    n = len(x)
    print(f"{n} held-out patches; pixel bits per sample of each sub-lattice (R, G, B), z_1 at its posterior mean:")
    for j in range(4):
        print(f"  stage {j}: " + "  ".join(f"{v:.3f}" for v in stage[j] / (n * 256))
              + f"   ({stage[j].sum() / (n * 3072):.4f} bits/dim of the patch)")
    print(f"  all pixels: {stage.sum() / (n * 3072):.4f} bits/dim")
    print("KL bits per patch, per latent layer (rows) and channel (columns):")
    for row in (kl / n).numpy():
        print("  " + " ".join(f"{v:6.1f}" for v in row))
    print(f"  total {float(kl.sum()) / (n * 3072):.4f} bits/dim")


if __name__ == "__main__":
    main()
