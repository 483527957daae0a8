"""Torch rANS kernels (bswd/ans_torch.py) vs the numba ones: symbols/s of push and pop.

    python benchmarks/ans_torch_bench.py [--lanes 1000] [--heads 64] [--steps 40] [--threads 1]

Same data as benchmarks/ans_bench.py's compiled part: latents over 1024 equal-mass bins, means
and scale indices drawn at random, symbols drawn from their own distributions; D = heads * steps
symbols per lane, pushed as one tensor and popped back as one tensor (pop_logistic includes the
exact symbol search). Every torch result is checked against numba's (symbols, heads, words).
Runs on CPU, and on CUDA when a device is visible.

Measured on a 2-core AMD EPYC VM shared with a model-training job (load ~2), 1 torch thread,
defaults (lanes 1000, heads 64, steps 40: 2.56 M symbols per pass), two runs a minute apart,
M symbols/s (the spread is the machine's noise):

                  push   pop_logistic guess   pop_logistic search   pop_uniform
    numba      144-184                  8.3                     -       401-423
    torch cpu    20-21              5.6-5.9             0.28-0.57         27-47

The CPU torch path is for checking and for machines without numba; it is 7-9x slower than numba
for push and 1.5x for the logistic pop. "search" (the CUDA default: no host synchronisation,
~62 exact starts per symbol) is not meant for CPUs. No CUDA figure yet: no GPU was available.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bswd import ans_kernels, ans_torch
from bswd.ans import Lanes
from bswd.tables import LogisticFamily, build_inv_scales, build_sigmoid_lut, latent_edges


def cfg_log_scale(sidx: np.ndarray) -> np.ndarray:
    return np.log(0.004) + sidx * (np.log(4.0) - np.log(0.004)) / 255


def make_data(b: int, k: int, steps: int, p: int):
    rng = np.random.default_rng(0)
    d = k * steps
    fam = LogisticFamily(latent_edges(1024), build_inv_scales(np.log(0.004), np.log(4.0), 256),
                         build_sigmoid_lut(), p)
    mean = rng.integers(-2 << 16, 2 << 16, (b, d))
    sidx = rng.integers(40, 200, (b, d))
    uni = rng.random((b, d)).clip(1e-9, 1 - 1e-9)
    z = mean / 65536 + np.exp(cfg_log_scale(sidx)) * np.log(uni / (1 - uni))
    symbols = np.searchsorted(fam.edges[1:1024] / 65536, z).astype(np.int64)
    starts, freqs = fam.encode_params(symbols, mean, sidx)
    return fam, mean, fam.inv_scales[sidx], symbols, starts, freqs


def fresh(b: int, k: int, p: int, d: int) -> Lanes:
    lanes = Lanes(b, k, p, capacity=d + 64)
    for r in range(b):
        lanes.start(r, 1, r, 16)
    return lanes


def run_numba(b, k, p, fam, mean, inv, symbols, starts, freqs):
    d = starts.shape[1]
    rows, mask = np.arange(b), np.ones((b, d), dtype=bool)
    times = {}
    for _warm in (True, False):  # the first pass compiles (or loads the cache)
        lanes = fresh(b, k, p, d)
        t = time.perf_counter()
        ans_kernels.push_tensor(lanes.heads, lanes.words, lanes.ptr, rows, starts, freqs, mask, k, p)
        times["push"] = time.perf_counter() - t
        pushed = (lanes.heads.copy(), lanes.words.copy(), lanes.ptr.copy())
        out, fr = np.zeros((b, d), np.int64), np.ones((b, d), np.int64)
        t = time.perf_counter()
        ans_kernels.pop_logistic(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, mean, inv, mask, k, p,
                                 fam.edges, fam.sigmoid, out, fr)
        times["pop_logistic guess"] = time.perf_counter() - t
        assert np.array_equal(out, symbols)
        lanes = fresh(b, k, p, d)
        shift = p - 10
        ans_kernels.push_tensor(lanes.heads, lanes.words, lanes.ptr, rows, symbols << shift,
                                np.full((b, d), 1 << shift), mask, k, p)
        t = time.perf_counter()
        ans_kernels.pop_uniform(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, d, k, p, 10, out)
        times["pop_uniform"] = time.perf_counter() - t
        assert np.array_equal(out, symbols)
    return times, pushed


def run_torch(device, b, k, p, fam, mean, inv, symbols, starts, freqs, pushed):
    d = starts.shape[1]
    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def tens(a):
        return torch.as_tensor(np.ascontiguousarray(a), device=dev)

    rows, mask = tens(np.arange(b)), torch.ones((b, d), dtype=torch.bool, device=dev)
    t_starts, t_freqs, t_mean, t_inv = tens(starts), tens(freqs), tens(mean), tens(inv)
    tf = ans_torch.TorchLogistic.from_family(fam, dev)
    times = {}
    for _warm in (True, False):
        tl = ans_torch.TorchLanes.from_lanes(fresh(b, k, p, d), dev)
        sync()
        t = time.perf_counter()
        ans_torch.push_tensor(tl.heads, tl.words, tl.ptr, rows, t_starts, t_freqs, mask, k, p)
        sync()
        times["push"] = time.perf_counter() - t
        back = tl.to_lanes()
        assert all(np.array_equal(x, y) for x, y in zip((back.heads, back.words, back.ptr), pushed))
        for method in ("guess", "search"):
            tl = ans_torch.TorchLanes.from_lanes(back, dev)
            out = torch.zeros((b, d), dtype=torch.int64, device=dev)
            fr = torch.ones((b, d), dtype=torch.int64, device=dev)
            sync()
            t = time.perf_counter()
            ans_torch.pop_logistic(tl.heads, tl.words, tl.ptr, tl.low_water, rows, t_mean, t_inv, mask, k, p,
                                   tf.edges, tf.sigmoid, out, fr, method=method, tables=tf.tables)
            sync()
            times[f"pop_logistic {method}"] = time.perf_counter() - t
            assert np.array_equal(out.cpu().numpy(), symbols)
        tl = ans_torch.TorchLanes.from_lanes(fresh(b, k, p, d), dev)
        shift = p - 10
        ans_torch.push_tensor(tl.heads, tl.words, tl.ptr, rows, tens(symbols << shift),
                              torch.full((b, d), 1 << shift, device=dev), mask, k, p)
        sync()
        t = time.perf_counter()
        ans_torch.pop_uniform(tl.heads, tl.words, tl.ptr, tl.low_water, rows, d, k, p, 10, out)
        sync()
        times["pop_uniform"] = time.perf_counter() - t
        assert np.array_equal(out.cpu().numpy(), symbols)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lanes", type=int, default=1000)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--precision", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b, k, p = args.lanes, args.heads, args.precision
    data = make_data(b, k, args.steps, p)
    n = b * k * args.steps
    print(f"lanes {b}, heads {k}, {n / 1e6:.2f} M symbols per pass; M symbols/s")
    cols = ("push", "pop_logistic guess", "pop_logistic search", "pop_uniform")
    print(f"{'':<14}" + "".join(f"{c:>21}" for c in cols))

    def row(name, times):
        print(f"{name:<14}" + "".join(f"{n / times[c] / 1e6:>21.2f}" if c in times else f"{'-':>21}"
                                      for c in cols))

    if not ans_kernels.AVAILABLE:
        raise SystemExit("numba is needed: it is the reference the torch results are checked against")
    times, pushed = run_numba(b, k, p, *data)
    row("numba", times)
    row(f"torch cpu/{args.threads}t", run_torch("cpu", b, k, p, *data, pushed))
    if torch.cuda.is_available():
        row("torch cuda", run_torch("cuda", b, k, p, *data, pushed))


if __name__ == "__main__":
    main()
