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
    print(f"lanes {b} heads {k}: push {n / push_s / 1e6:.1f} M symbols/s, pop {n / pop_s / 1e6:.1f} M symbols/s "
          f"(pop = peek + state update, without the symbol search)")


if __name__ == "__main__":
    main()
