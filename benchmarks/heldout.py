"""Coded bits/dim of a model on held-out photographs, next to PNG, WebP and JPEG XL lossless,
and the coding overhead (coded bits - integer -ELBO) as lanes per image vary.

    python benchmarks/heldout.py --photos data/photos [--model M.bswm] [--side 512] [--lanes 1,2,4,8]

Held-out = the validation split of bswd.data.split_train_val (never trained on). JPEG sources are
LANCZOS down-scaled 2x or more (longer side 768) to remove block artefacts, then centre-cropped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bswd.classical import compare
from bswd.data import list_photos, split_train_val
from bswd.engine import Engine, EngineConfig
from bswd.model.modelfile import read_model_file
from bswd.model.quant import load_coding_model
from bswd.model.registry import default_model_path
from bswd.shell import default_threads


def heldout_images(root: Path, side: int) -> list[tuple[str, np.ndarray]]:
    _, val = split_train_val(list_photos(root))
    out = []
    for p in val:
        with Image.open(p) as im:
            jpeg = im.format == "JPEG"
            rgb = im.convert("RGB")
        if jpeg:
            s = min(768 / max(rgb.size), 0.5)
            rgb = rgb.resize((round(rgb.width * s), round(rgb.height * s)), Image.Resampling.LANCZOS)
        w, h = rgb.size
        c = min(side, w, h)
        box = ((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c)
        out.append((p.name, np.asarray(rgb.crop(box))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=Path, default=Path("data/photos"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--lanes", default="1,2,4,8,16")
    ap.add_argument("--threads", type=int, default=0,
                    help="coder threads, one torch thread each, as bswd compress (0: one per core, at most 8)")
    args = ap.parse_args()
    workers = args.threads or default_threads()
    torch.set_num_threads(1)
    mf = read_model_file(args.model or default_model_path())
    model = load_coding_model(mf)
    engine = Engine(model, EngineConfig(workers=workers))
    engine.decode(engine.encode([np.zeros((64, 64, 3), np.uint8)]))  # compile the coder outside the timings
    print(f"model {mf.model_id} ({mf.sha256.hex()[:12]}), held-out crops of side <= {args.side}")
    print(f"{'image':44} {'size':>9} {'-ELBO':>7} {'coded':>7} {'png':>7} {'webp':>7} {'jxl':>7}  bits/dim")
    tot = np.zeros(6)
    enc_s = dec_s = 0.0
    images = heldout_images(args.photos, args.side)
    for name, img in images:
        t = time.perf_counter()
        [c] = engine.encode([img])
        enc_s += time.perf_counter() - t
        t = time.perf_counter()
        [back] = engine.decode([c])
        dec_s += time.perf_counter() - t
        assert np.array_equal(back, img), name
        sizes = {r.name: r.size_bytes for r in compare(img, ["png", "webp", "jxl"])}
        row = np.array([img.size, c.info_bits, c.stored_bits, 8 * sizes["png"], 8 * sizes["webp"], 8 * sizes["jxl"]])
        tot += row
        cells = " ".join(f"{v / img.size:7.3f}" for v in row[1:])
        print(f"{name[:44]:44} {img.shape[1]:>4}x{img.shape[0]:<4} " + cells,
              flush=True)
    print(f"{'overall':44} {'':9} " + " ".join(f"{v / tot[0]:7.3f}" for v in tot[1:]))
    mb = tot[0] / 1e6
    print(f"model-coded speed on this machine ({workers} coder threads): "
          f"compress {mb / enc_s:.3f} MB/s, decompress {mb / dec_s:.3f} MB/s "
          f"of raw RGB ({tot[0] / 3 / 1e6 / enc_s:.3f} / {tot[0] / 3 / 1e6 / dec_s:.3f} MPix/s)")
    name, img = max(images, key=lambda x: x[1].size)
    print(f"\noverhead on {name} {img.shape[1]}x{img.shape[0]} (coded bits - integer -ELBO):")
    for n in [int(v) for v in args.lanes.split(",")]:
        patches = (-(-img.shape[0] // 32)) * (-(-img.shape[1] // 32))
        eng = Engine(model, EngineConfig(min_patches_per_lane=max(1, patches // n), workers=workers))
        [c] = eng.encode([img])
        print(f"  lanes {len(c.lanes):3}: coded {c.stored_bits / img.size:.4f}  -ELBO {c.info_bits / img.size:.4f}"
              f"  overhead {100 * (c.stored_bits - c.info_bits) / c.info_bits:5.2f}%", flush=True)


if __name__ == "__main__":
    main()
