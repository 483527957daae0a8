"""The torch rANS kernels (bswd/ans_torch.py) leave exactly the state the numba kernels leave.

Every check compares real values for equality: heads, the whole word buffers, ptr, low_water,
symbols, frequencies and status codes, on the tables of a real (tiny) exported model.
The CUDA variants (marked cuda) run where a device is visible: pytest -m cuda tests/test_ans_torch.py
(benchmarks/gpu_session.sh does not run this file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bswd import ans_kernels, ans_torch
from bswd.ans import Lanes
from bswd.ans_torch import TorchLanes, TorchLogistic

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(not ans_kernels.AVAILABLE, reason="numba not installed")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])]
P = 24


def t(a, device):
    return torch.as_tensor(np.ascontiguousarray(a), device=device)


def family_and_range(model, name):
    head = model.cfg.pixel_head if name == "pixels" else model.cfg.latent_head
    return getattr(model, name), round(head.mean_min * 65536), round(head.mean_max * 65536)


def params(rng, model, name, shape):
    """(mean, sidx, symbols) [shape]: means and scale indices over their whole range, a share of
    them pinned to the extremes; symbols half drawn from their distributions, half anywhere."""
    fam, lo, hi = family_and_range(model, name)
    mean = rng.integers(lo, hi + 1, shape)
    ends = rng.random(shape)
    mean = np.where(ends < 0.05, lo, np.where(ends > 0.95, hi, mean))
    sidx = rng.integers(0, len(fam.inv_scales), shape)
    ends = rng.random(shape)
    sidx = np.where(ends < 0.05, 0, np.where(ends > 0.95, len(fam.inv_scales) - 1, sidx))
    likely = fam.decode(rng.integers(0, 1 << P, shape), mean, sidx)[0]
    anywhere = rng.integers(0, fam.n, shape)
    symbols = np.where(rng.random(shape) < 0.5, likely, anywhere)
    return mean, sidx, symbols


def random_lanes(rng, n, k, fill_max=40, cap=64):
    """Lanes in arbitrary reachable-looking states: log-uniform heads in [2**31, 2**63), random
    words, some low-water marks below ptr."""
    lanes = Lanes(n, k, P, capacity=cap)
    lanes.heads[:] = (2.0 ** rng.uniform(31, 62.99, (n, k))).astype(np.int64)
    lanes.words[:] = rng.integers(0, 1 << 32, lanes.words.shape, dtype=np.uint64).astype(np.uint32)
    lanes.ptr[:] = rng.integers(0, fill_max + 1, n)
    lanes.low_water[:] = rng.integers(0, lanes.ptr + 1)
    return lanes


def assert_same(lanes: Lanes, tl: TorchLanes):
    back = tl.to_lanes()
    assert np.array_equal(back.heads, lanes.heads)
    assert back.words.shape == lanes.words.shape and np.array_equal(back.words, lanes.words)
    assert np.array_equal(back.ptr, lanes.ptr)
    assert np.array_equal(back.low_water, lanes.low_water)


def numba_push(lanes, rows, starts, freqs, mask):
    lanes._reserve(lanes.ptr[rows] + starts.shape[1])
    ans_kernels.push_tensor(lanes.heads, lanes.words, lanes.ptr, rows, starts, freqs, mask, lanes.head_width, P)


def torch_push(tl, rows, starts, freqs, mask):
    dev = tl.device
    tl.reserve(int(tl.ptr[t(rows, dev)].max()) + starts.shape[1])
    return ans_torch.push_tensor(tl.heads, tl.words, tl.ptr, t(rows, dev), t(starts, dev), t(freqs, dev),
                                 None if mask.all() else t(mask, dev), tl.head_width, P)  # None: all set


# ---- tables ------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["pixels", "latents"])
def test_starts_and_symbol_search_match_tables(tiny_model, name, device):
    rng = np.random.default_rng(1)
    fam = getattr(tiny_model, name)
    tf = TorchLogistic.from_family(fam, device)
    shape = (64, 50)
    mean, sidx, symbols = params(rng, tiny_model, name, shape)
    k = np.concatenate([symbols[:, :48], np.zeros((64, 1), np.int64), np.full((64, 1), fam.n)], axis=1)
    inv = fam.inv_scales[sidx]
    want = fam.starts(k, mean, inv)
    got = ans_torch.logistic_starts(t(k, device), t(mean, device), t(inv, device), tf.edges, tf.sigmoid, P)
    assert np.array_equal(got.cpu().numpy(), want)
    assert want[:, 48].max() == 0 and want[:, 49].min() == 1 << P
    s, f = tf.encode_params(t(symbols, device), t(mean, device), t(sidx, device))
    ws, wf = fam.encode_params(symbols, mean, sidx)
    assert np.array_equal(s.cpu().numpy(), ws) and np.array_equal(f.cpu().numpy(), wf)

    cf = rng.integers(0, 1 << P, shape)
    cf[:, :4] = [0, 1, (1 << P) - fam.n, (1 << P) - 1]
    want = fam.decode(cf, mean, sidx)
    tcf, tmean, tinv = t(cf, device), t(mean, device), t(inv, device)
    for method in ("guess", "search"):
        got = ans_torch.logistic_find(tcf, tmean, tinv, tf.edges, tf.sigmoid, P, method=method)
        assert all(np.array_equal(g.cpu().numpy(), w) for g, w in zip(got, want))
    tab = tf.tables
    c0 = tab.c0(tmean, tinv)
    assert all(np.array_equal(g.cpu().numpy(), w) for g, w in zip(tab.search(tcf, c0, tinv), want))
    assert np.array_equal(tab.starts(t(k, device), c0, tinv).cpu().numpy(), fam.starts(k, mean, inv))
    a, b = tab.guess_params(tmean, tinv)
    for wrong in (a + 3, a - 3, a * 0, torch.full_like(a, float("nan"))):  # bad guesses: the exact search takes over
        got = tab.find(tcf, c0, tinv, (wrong, b))
        assert all(np.array_equal(g.cpu().numpy(), w) for g, w in zip(got, want))


@pytest.mark.parametrize("device", DEVICES)
def test_small_alphabets(tiny_model, device):
    """Families of 1, 2, 3 and 5 symbols (no guess below 3): the same symbols as tables.py."""
    from bswd.tables import LogisticFamily, pixel_edges

    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 5):
        fam = LogisticFamily(pixel_edges(n), tiny_model.pixels.inv_scales, tiny_model.pixels.sigmoid, P)
        tf = TorchLogistic.from_family(fam, device)
        mean = rng.integers(-2 << 16, (n + 2) << 16, (40, 30))
        sidx = rng.integers(0, 256, (40, 30))
        cf = rng.integers(0, 1 << P, (40, 30))
        want = fam.decode(cf, mean, sidx)
        for method in ("guess", "search"):
            got = tf.decode(t(cf, device), t(mean, device), t(sidx, device), method)
            assert all(np.array_equal(g.cpu().numpy(), w) for g, w in zip(got, want))


# ---- push --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 7, 16, 64])
def test_push_matches_numba(tiny_model, k, device):
    rng = np.random.default_rng(k)
    lanes = random_lanes(rng, 12, k)
    tl = TorchLanes.from_lanes(lanes, device)
    assert_same(lanes, tl)
    for step, (name, d) in enumerate([("pixels", 3 * k + 5), ("latents", 2 * k), ("pixels", max(1, k // 2)),
                                      ("latents", 150)]):
        rows = rng.permutation(12)[: 9 if step % 2 else 12]  # subsets, in any order
        mean, sidx, symbols = params(rng, tiny_model, name, (len(rows), d))
        starts, freqs = getattr(tiny_model, name).encode_params(symbols, mean, sidx)
        mask = rng.random((len(rows), d)) < (0.7 if name == "pixels" else 1.0)
        freqs = np.where(mask, freqs, 0)  # masked-off entries: garbage the kernels must not use
        if step == 0:  # a certain symbol (freq 2**P): the kernel's shift wraps and it always emits
            starts[:, 0], freqs[:, 0], mask[:, 0] = 0, 1 << P, True
        numba_push(lanes, rows, starts, freqs, mask)
        assert torch_push(tl, rows, starts, freqs, mask) == 0
        assert_same(lanes, tl)
    assert lanes.ptr.max() > 64  # the stacks grew, and many heads emitted words


# ---- pop ---------------------------------------------------------------------------------------
def numba_pop_logistic(lanes, rows, fam, mean, sidx, mask):
    sym, fr = np.zeros(mean.shape, np.int64), np.ones(mean.shape, np.int64)
    st = ans_kernels.pop_logistic(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, mean,
                                  fam.inv_scales[sidx], mask, lanes.head_width, P, fam.edges, fam.sigmoid, sym, fr)
    return st, sym, fr


def torch_pop_logistic(tl, rows, fam, mean, sidx, mask, method=None):
    dev = tl.device
    tf = TorchLogistic.from_family(fam, dev)
    sym = torch.zeros(mean.shape, dtype=torch.int64, device=dev)
    fr = torch.ones(mean.shape, dtype=torch.int64, device=dev)
    st = ans_torch.pop_logistic(tl.heads, tl.words, tl.ptr, tl.low_water, t(rows, dev), t(mean, dev),
                                t(fam.inv_scales[sidx], dev), t(mask, dev), tl.head_width, P, tf.edges, tf.sigmoid,
                                sym, fr, method=method)
    return st, sym.cpu().numpy(), fr.cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["guess", "search"])
@pytest.mark.parametrize("k", [1, 7, 16, 64])
def test_pop_logistic_matches_numba(tiny_model, k, method, device):
    rng = np.random.default_rng(100 + k)
    lanes = random_lanes(rng, 12, k, fill_max=200, cap=512)
    lanes.ptr[:] += 300  # room for every pop below: no underflow here
    lanes.low_water[:] = lanes.ptr - rng.integers(0, 5, 12)  # most pops go below it
    ptr0, lw0 = lanes.ptr.copy(), lanes.low_water.copy()
    tl = TorchLanes.from_lanes(lanes, device)
    for step, (name, d) in enumerate([("pixels", 3 * k + 5), ("latents", 2 * k), ("latents", max(1, k // 2)),
                                      ("pixels", 150)]):
        rows = rng.permutation(12)[: 9 if step % 2 else 12]
        fam = getattr(tiny_model, name)
        mean, sidx, _ = params(rng, tiny_model, name, (len(rows), d))
        mask = rng.random((len(rows), d)) < (0.7 if name == "pixels" else 1.0)
        want = numba_pop_logistic(lanes, rows, fam, mean, sidx, mask)
        got = torch_pop_logistic(tl, rows, fam, mean, sidx, mask, method)
        assert want[0] == got[0] == 0
        assert np.array_equal(want[1], got[1]) and np.array_equal(want[2], got[2])
        assert_same(lanes, tl)
    assert (lanes.ptr < ptr0).any() and (lanes.low_water < lw0).any()  # stacks were popped


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 16, 64])
def test_pop_uniform_matches_numba(tiny_model, k, device):
    rng = np.random.default_rng(200 + k)
    lanes = random_lanes(rng, 10, k, fill_max=100, cap=256)
    lanes.ptr[:] += 150
    tl = TorchLanes.from_lanes(lanes, device)
    bits = tiny_model.top.bits
    for d in (3 * k + 5, 2 * k, 40):
        rows = rng.permutation(10)[:8]
        want = np.zeros((8, d), np.int64)
        st = ans_kernels.pop_uniform(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, d, k, P, bits, want)
        got = torch.zeros((8, d), dtype=torch.int64, device=device)
        assert st == ans_torch.pop_uniform(tl.heads, tl.words, tl.ptr, tl.low_water, t(rows, device), d, k, P, bits,
                                           got) == 0
        assert np.array_equal(got.cpu().numpy(), want)
        assert_same(lanes, tl)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 5, 16])
def test_underflow_leaves_the_kernels_partial_state(tiny_model, k, device):
    """A stack running dry: status UNDERFLOW, earlier rows done, the failing row stopped at the
    failing head with ptr 0 and its low_water untouched, later rows and outputs untouched."""
    rng = np.random.default_rng(300 + k)
    fam = tiny_model.latents
    statuses = []
    for trial in range(6):
        lanes = random_lanes(rng, 8, k, fill_max=60, cap=80)
        lanes.heads[:] = rng.integers(1 << 31, 1 << 33, lanes.heads.shape)  # low heads: frequent refills
        lanes.ptr[:] = rng.integers(10 + 3 * k, 70, 8)
        rows = rng.permutation(8)
        dry = rows[3 + trial % 3]  # this row runs dry: each head's first pop needs a word
        lanes.ptr[dry] = rng.integers(0, k)
        lanes.heads[dry] = 1 << 31
        lanes.low_water[:] = lanes.ptr
        tl = TorchLanes.from_lanes(lanes, device)
        d = 4 * k + 3
        if trial % 2:
            mean, sidx, _ = params(rng, tiny_model, "latents", (8, d))
            mask = rng.random((8, d)) < 0.8
            want = numba_pop_logistic(lanes, rows, fam, mean, sidx, mask)
            got = torch_pop_logistic(tl, rows, fam, mean, sidx, mask, ("guess", "search")[trial // 2 % 2])
            assert np.array_equal(want[2], got[2])
        else:
            want = [0, np.full((8, d), -5, np.int64)]
            got = [0, torch.full((8, d), -5, dtype=torch.int64, device=device)]
            want[0] = ans_kernels.pop_uniform(lanes.heads, lanes.words, lanes.ptr, lanes.low_water, rows, d, k, P, 10,
                                              want[1])
            got[0] = ans_torch.pop_uniform(tl.heads, tl.words, tl.ptr, tl.low_water, t(rows, device), d, k, P, 10,
                                           got[1])
            got[1] = got[1].cpu().numpy()
        assert want[0] == got[0]
        statuses.append((trial % 2, want[0]))
        assert np.array_equal(want[1], got[1])
        assert_same(lanes, tl)
    assert {(0, ans_kernels.UNDERFLOW), (1, ans_kernels.UNDERFLOW)} <= set(statuses)  # both kernels ran dry


# ---- round trips across the two implementations --------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 16, 64])
def test_round_trips_between_torch_and_numba(tiny_model, k, device):
    """Bits-back steps (pop under one family, push under another) written by one implementation
    are undone exactly by the other, back to the fresh lanes' seeded state."""
    rng = np.random.default_rng(400 + k)
    n, reservoir = 6, 40 + 2 * k
    rows = np.arange(n)
    fams = {"pixels": tiny_model.pixels, "latents": tiny_model.latents}
    steps = []
    for _ in range(3):
        for name, d in (("latents", 100), ("pixels", 3 * k + 5 if k < 64 else 300)):
            mean, sidx, symbols = params(rng, tiny_model, name, (n, d))
            mask = rng.random((n, d)) < (0.8 if name == "pixels" else 1.0)
            steps.append((name, mean, sidx, symbols, mask))
    encoded = {}
    for writer in ("torch", "numba"):
        lanes = Lanes(n, k, P)
        for r in rows:
            lanes.start(int(r), 9, int(r), reservoir)
        tl = TorchLanes.from_lanes(lanes, device)
        popped = []
        for name, mean, sidx, symbols, mask in steps:  # encode: pop a latent, push pixels/latents
            fam = fams[name]
            if writer == "torch":
                sym, _ = tl.pop_logistic(rows, TorchLogistic.from_family(tiny_model.latents, device), mean[:, :50],
                                         sidx[:, :50])
                popped.append(sym.cpu().numpy())
                tl.push(rows, *TorchLogistic.from_family(fam, device).encode_params(
                    t(symbols, device), t(mean, device), t(sidx, device)), t(mask, device))
            else:
                st, sym, _ = numba_pop_logistic(lanes, rows, tiny_model.latents, mean[:, :50], sidx[:, :50],
                                                np.ones((n, 50), bool))
                assert st == 0
                popped.append(sym)
                numba_push(lanes, rows, *fam.encode_params(symbols, mean, sidx), mask)
        if writer == "torch":
            lanes = tl.to_lanes()
        else:
            tl = TorchLanes.from_lanes(lanes, device)
        encoded[writer] = lanes.heads.copy(), lanes.words.copy(), lanes.ptr.copy(), lanes.low_water.copy()
        for (name, mean, sidx, symbols, mask), sym in zip(reversed(steps), reversed(popped)):  # decode
            fam = fams[name]
            lat = tiny_model.latents
            if writer == "torch":
                st, got, _ = numba_pop_logistic(lanes, rows, fam, mean, sidx, mask)
                assert st == 0
                numba_push(lanes, rows, *lat.encode_params(sym, mean[:, :50], sidx[:, :50]), np.ones((n, 50), bool))
            else:
                got, _ = tl.pop_logistic(rows, TorchLogistic.from_family(fam, device), mean, sidx, t(mask, device))
                got = got.cpu().numpy()
                tl.push(rows, *TorchLogistic.from_family(lat, device).encode_params(
                    t(sym, device), t(mean[:, :50], device), t(sidx[:, :50], device)))
            assert np.array_equal(got, np.where(mask, symbols, 0))
        final = lanes if writer == "torch" else tl.to_lanes()
        assert all(final.is_initial(int(r), 9, int(r)) for r in rows)
    assert all(np.array_equal(a, b) for a, b in zip(encoded["torch"], encoded["numba"]))  # the same stream
    assert encoded["torch"][2].min() > reservoir  # it grew past the seed words
