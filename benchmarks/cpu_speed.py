"""CPU speed of one-shot coding (what `bswd compress photo.png` does): one photo at a time, side by
side for several lane layouts in the same process, every result decoded and compared, and where
the time of the default layout goes.

Layouts: `v1` = the old default (one independent lane per 256 patches: a 512x512 photo is one
lane, coded one patch per step), `default` = today's EngineConfig (8 lanes for 512x512, donated
in groups of 8), then the default with `--workers` coder threads (what `bswd compress` uses on a
CPU: one per core, each with one torch thread). `--paths` also codes the default layout with the
im2col + matmul convolution path that CUDA uses (NNPACK switched on makes the CPU take it) and
checks identical streams.

    python benchmarks/cpu_speed.py [--model M.bswm] [--sides 512,2048] [--threads 1] [--workers 2]
                                   [--profile 12] [--paths]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
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
from bswd.shell import CPU_ROWS_PER_THREAD

PHOTO = Path(__file__).resolve().parent.parent / "tests" / "data" / "bird_512x512.png"
LAYOUTS = {"v1": EngineConfig(min_patches_per_lane=256, lanes_per_donor=1), "default": EngineConfig()}


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
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--workers", type=int, default=2, help="coder threads of the last layout (EngineConfig.workers)")
    ap.add_argument("--profile", type=int, default=12, help="functions to list (0: no profile)")
    ap.add_argument("--paths", action="store_true", help="also time the im2col convolution path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mf = read_model_file(args.model or default_model_path())
    model = load_coding_model(mf, "cpu")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"torch {torch.__version__} threads {torch.get_num_threads()}, model {mf.model_id}")
    for side in [int(s) for s in args.sides.split(",")]:
        img = photo(side)
        mpix = side * side / 1e6
        runs = [(name, cfg, False) for name, cfg in LAYOUTS.items()] + ([("default", LAYOUTS["default"], True)]
                                                                        if args.paths else [])
        if args.workers > 1:
            threaded = dataclasses.replace(LAYOUTS["default"], workers=args.workers,
                                           max_rows=CPU_ROWS_PER_THREAD * args.workers)  # as build_engine
            runs.append((f"{args.workers} workers", threaded, False))
        streams = {}
        for name, cfg, im2col in runs:
            engine = Engine(model, cfg)
            engine.decode(engine.encode([photo(64)]))  # JIT compile outside the timings
            prof = cProfile.Profile() if name == "default" and not im2col and args.profile else None
            with torch.backends.nnpack.flags(enabled=im2col):  # NNPACK on: the CPU takes im2col
                assert cpu_conv_is_exact() != im2col
                coded, enc = timed(lambda e=engine, x=img: e.encode([x])[0], prof)
                back, dec = timed(lambda e=engine, c=coded: e.decode([c])[0])
            assert np.array_equal(back, img), f"{name}: decoded pixels differ"
            label = f"{name}{' im2col' if im2col else ''}"
            overhead = 100 * (coded.stored_bits - coded.info_bits) / coded.info_bits
            print(f"{side}x{side} {label:15}: compress {mpix / enc:.3f} MPix/s ({enc:.2f} s), "
                  f"decompress {mpix / dec:.3f} MPix/s ({dec:.2f} s), {coded.stored_bits / img.size:.4f} bits/dim, "
                  f"-ELBO {coded.info_bits / img.size:.4f}, overhead {overhead:.2f}%, {len(coded.lanes)} lanes "
                  f"({sum(ln.donor < 0 for ln in coded.lanes)} from seed bits)", flush=True)
            if prof:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile)
                print("\n".join(line for line in s.getvalue().splitlines()[6:] if line.strip()))
            if name != "v1":
                streams[label] = [(ln.heads.tobytes(), ln.words.tobytes()) for ln in coded.lanes]
        if len(streams) >= 2:
            assert len(set(map(tuple, streams.values()))) == 1, f"different streams: {', '.join(streams)}"
            print(f"{side}x{side}: identical streams from {', '.join(streams)}")


if __name__ == "__main__":
    main()
