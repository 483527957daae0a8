"""Engine throughput for batches of many images: MPix/s and MB/s of raw RGB, compress and
decompress, every image verified. Works on CPU and GPU.

    python benchmarks/engine_bench.py [--device cpu|cuda] [--backend auto|numpy|torch] [--side 256]
                                      [--images 16] [--rows 64]

--backend numpy keeps the ANS on the host (numba) with the networks on --device; torch codes the
whole step on --device (codec_torch); auto is torch on a GPU, numpy on the CPU.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bswd.engine import Engine, EngineConfig
from bswd.model.modelfile import read_model_file
from bswd.model.quant import load_coding_model
from bswd.model.registry import default_model_path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def images(side: int, count: int) -> list[np.ndarray]:
    """Crops of the held-out test photos (tiled when a photo is smaller than ``side``)."""
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(DATA.glob("*.png"))]
    out = []
    rng = np.random.default_rng(0)
    for i in range(count):
        p = photos[i % len(photos)]
        reps = (-(-side // p.shape[0]), -(-side // p.shape[1]), 1)
        big = np.tile(p, reps)
        y, x = rng.integers(0, big.shape[0] - side + 1), rng.integers(0, big.shape[1] - side + 1)
        out.append(np.ascontiguousarray(big[y : y + side, x : x + side]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rows", default="64", help="lanes coded per step; a comma list runs each in turn")
    ap.add_argument("--patches-per-lane", type=int, default=128)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"])
    args = ap.parse_args()
    mf = read_model_file(args.model or default_model_path())
    model = load_coding_model(mf, args.device)
    planes = images(args.side, args.images)
    print(f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, device "
          f"{args.device}, backend {args.backend}, model {mf.model_id}")
    for rows in [int(r) for r in args.rows.split(",")]:
        engine = Engine(model, EngineConfig(max_rows=rows, min_patches_per_lane=args.patches_per_lane,
                                            backend=args.backend))
        engine.encode(planes[:1])  # warm-up: JIT compile and device start-up are not throughput
        t = time.perf_counter()
        coded = engine.encode(planes)
        enc = time.perf_counter() - t
        t = time.perf_counter()
        back = engine.decode(coded)
        dec = time.perf_counter() - t
        assert all(np.array_equal(a, b) for a, b in zip(planes, back))
        pix = sum(p.shape[0] * p.shape[1] for p in planes)
        bits = sum(c.stored_bits for c in coded)
        lanes = sum(len(c.lanes) for c in coded)
        print(f"{args.images} images {args.side}x{args.side}, {lanes} lanes, {rows} rows per step: "
              f"compress {pix / enc / 1e6:.3f} MPix/s ({3 * pix / enc / 1e6:.3f} MB/s), "
              f"decompress {pix / dec / 1e6:.3f} MPix/s ({3 * pix / dec / 1e6:.3f} MB/s), "
              f"{bits / (3 * pix):.3f} bits/dim, all verified", flush=True)


if __name__ == "__main__":
    main()
