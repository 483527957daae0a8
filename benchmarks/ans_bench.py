"""rANS lane throughput: symbols/s for push and pop with many lanes (issue 2's ANS benchmark).

    python benchmarks/ans_bench.py [--lanes 1000] [--heads 64] [--steps 40]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bswd.ans import Lanes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lanes", type=int, default=1000)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--precision", type=int, default=24)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    b, k, p = args.lanes, args.heads, args.precision
    lanes = Lanes(b, k, p, capacity=4096)
    rows = np.arange(b)
    for r in rows:
        lanes.start(int(r), 1, int(r), 16)
    syms = []
    for _ in range(args.steps):
        f = rng.integers(1, 1 << 16, (b, k))
        s = rng.integers(0, (1 << p) - f + 1, (b, k))
        syms.append((s, f))
    t = time.perf_counter()
    for s, f in syms:
        lanes.push(rows, s, f)
    push_s = time.perf_counter() - t
    t = time.perf_counter()
    for s, f in reversed(syms):
        lanes.peek(rows)
        lanes.pop(rows, s, f)
    pop_s = time.perf_counter() - t
    n = b * k * args.steps
    print(f"numpy Lanes, lanes {b} heads {k}: push {n / push_s / 1e6:.1f} M symbols/s, "
          f"pop {n / pop_s / 1e6:.1f} M symbols/s (pop = peek + state update, without the symbol search)")
    compiled(args, rng)


def cfg_log_scale(sidx: np.ndarray) -> np.ndarray:
    return np.log(0.004) + sidx * (np.log(4.0) - np.log(0.004)) / 255


def compiled(args, rng) -> None:
    """The path the codec takes: compiled tensor push, and pop with the exact logistic search."""
    from bswd import ans_kernels
    from bswd.tables import LogisticFamily, build_inv_scales, build_sigmoid_lut, latent_edges

    if not ans_kernels.AVAILABLE:
        print("numba not installed: compiled path not measured")
        return
    b, k, p = args.lanes, args.heads, args.precision
    d = k * args.steps
    fam = LogisticFamily(latent_edges(1024), build_inv_scales(np.log(0.004), np.log(4.0), 256),
                         build_sigmoid_lut(), p)
    mean = rng.integers(-2 << 16, 2 << 16, (b, d))
    sidx = rng.integers(40, 200, (b, d))
    # symbols drawn from their own distributions, as in real coding
    uni = rng.random((b, d)).clip(1e-9, 1 - 1e-9)
    z = mean / 65536 + np.exp(cfg_log_scale(sidx)) * np.log(uni / (1 - uni))
    symbols = np.searchsorted(fam.edges[1:1024] / 65536, z).astype(np.int64)
    starts, freqs = fam.encode_params(symbols, mean, sidx)
    inv = fam.inv_scales[sidx]
    mask = np.ones((b, d), dtype=bool)
    rows = np.arange(b)
    for _warm in (True, False):  # the first pass compiles
        lanes = Lanes(b, k, p, capacity=d + 64)
        for r in rows:
            lanes.start(int(r), 1, int(r), 16)
        t = time.perf_counter()
        ans_kernels.push_tensor(lanes.heads, lanes.words, lanes.ptr, rows, starts, freqs, mask, k, p)
        push_s = time.perf_counter() - t
        out, fr = np.zeros((b, d), np.int64), np.zeros((b, d), np.int64)
        t = time.perf_counter()
        ans_kernels.pop_logistic(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, mean, inv, mask, k, p,
                                 fam.edges, fam.sigmoid, out, fr)
        pop_s = time.perf_counter() - t
        assert np.array_equal(out, symbols)
    lanes = Lanes(b, k, p, capacity=d + 64)
    for r in rows:
        lanes.start(int(r), 1, int(r), 16)
    shift = p - 10
    ans_kernels.push_tensor(lanes.heads, lanes.words, lanes.ptr, rows, symbols << shift,
                            np.full((b, d), 1 << shift), mask, k, p)
    t = time.perf_counter()
    ans_kernels.pop_uniform(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, d, k, p, 10, out)
    uni_s = time.perf_counter() - t
    assert np.array_equal(out, symbols)
    n = b * d
    print(f"compiled ANS pop with a table-lookup symbol (uniform 1024 bins): {n / uni_s / 1e6:.1f} M symbols/s")
    print(f"compiled (codec path), lanes {b} heads {k}: push {n / push_s / 1e6:.1f} M symbols/s, "
          f"pop {n / pop_s / 1e6:.1f} M symbols/s (pop includes the exact search over 1024 latent bins)")


if __name__ == "__main__":
    main()
