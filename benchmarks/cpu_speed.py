"""CPU speed of one-shot coding (what `bswd compress photo.png` does): one photo, default lanes, and
where the time goes. Each run codes with both CPU convolution paths of the integer model side by
side (torch conv2d, and the im2col + matmul path that CUDA uses), checks the two give identical
streams and that decoding returns the pixels, and prints the hottest functions of the fast path.

    python benchmarks/cpu_speed.py [--model M.bswm] [--sides 512,2048] [--threads 1] [--profile 12]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bswd.engine import Engine, EngineConfig
from bswd.model.integer import cpu_conv_is_exact
from bswd.model.modelfile import read_model_file
from bswd.model.quant import load_coding_model
from bswd.model.registry import default_model_path

PHOTO = Path(__file__).resolve().parent.parent / "tests" / "data" / "bird_512x512.png"


def photo(side: int) -> np.ndarray:
    """The bundled 512x512 test photo, cropped or mirror-tiled to side x side."""
    img = np.asarray(Image.open(PHOTO).convert("RGB"))
    while img.shape[0] < side:
        img = np.concatenate([img, img[::-1]], axis=0)
        img = np.concatenate([img, img[:, ::-1]], axis=1)
    return np.ascontiguousarray(img[:side, :side])


def timed(fn, profile: cProfile.Profile | None = None):
    t = time.perf_counter()
    if profile:
        profile.enable()
    out = fn()
    if profile:
        profile.disable()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--sides", default="512,2048")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", type=int, default=12, help="functions to list (0: no profile)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mf = read_model_file(args.model or default_model_path())
    engine = Engine(load_coding_model(mf, "cpu"), EngineConfig())
    engine.encode([photo(64)])  # JIT compile outside the timings
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"threads {torch.get_num_threads()}, model {mf.model_id}, default engine config (1 lane per 256 patches)")
    for side in [int(s) for s in args.sides.split(",")]:
        img = photo(side)
        mpix = side * side / 1e6
        results = {}
        for path in ("im2col", "conv2d"):
            fast = path == "conv2d"
            prof = cProfile.Profile() if fast and args.profile else None
            with torch.backends.nnpack.flags(enabled=not fast):  # NNPACK on: the CPU takes im2col
                assert cpu_conv_is_exact() == fast
                coded, enc = timed(lambda img=img: engine.encode([img])[0], prof)
                back, dec = timed(lambda coded=coded: engine.decode([coded])[0])
            assert np.array_equal(back, img), f"{path}: decoded pixels differ"
            results[path] = coded
            print(f"{side}x{side} {path:7}: compress {mpix / enc:.3f} MPix/s ({enc:.2f} s), "
                  f"decompress {mpix / dec:.3f} MPix/s ({dec:.2f} s), {coded.stored_bits / img.size:.4f} bits/dim, "
                  f"{len(coded.lanes)} lanes")
            if prof:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile)
                print("\n".join(line for line in s.getvalue().splitlines()[6:] if line.strip()))
        a, b = results["im2col"], results["conv2d"]
        assert all(np.array_equal(x.words, y.words) and np.array_equal(x.heads, y.heads)
                   for x, y in zip(a.lanes, b.lanes)), "the two convolution paths gave different streams"
        print(f"{side}x{side}: both paths wrote identical streams")


if __name__ == "__main__":
    main()
