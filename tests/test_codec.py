"""Bit-Swap / BB-ANS through the engine: exact round trips, and bytes that never depend on the batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bswd.codec import Geometry, lane_ranges, reservoir_words
from bswd.engine import Engine, EngineConfig, StreamError
from tests.conftest import noise


@pytest.fixture(scope="module", params=["factorized", "pixel-context"])
def tiny_model(request, tiny_model, context_model):
    """Every test here runs with both pixel likelihoods."""
    return tiny_model if request.param == "factorized" else context_model


DATA = Path(__file__).parent / "data"


def lane_bytes(coded) -> list[bytes]:
    return [ln.heads.tobytes() + ln.words.tobytes() + np.array([ln.low_water, ln.n_patches, ln.donor, ln.fork,
                                                                 ln.donated]).tobytes()
            for c in coded for ln in c.lanes]


def round_trip(engine: Engine, planes, scheme="bitswap"):
    coded = engine.encode(planes, scheme)
    back = engine.decode(coded)
    for a, b in zip(planes, back):
        assert a.shape == b.shape and np.array_equal(a, b)
    return coded


@pytest.mark.parametrize("h,w", [(1, 1), (1, 100), (100, 1), (31, 31), (33, 17), (17, 33), (64, 40), (40, 64)])
def test_any_size_round_trips_bug01(make_engine, h, w):
    round_trip(make_engine(min_patches_per_lane=2), [noise(h, w, seed=h * 1000 + w)])


def test_grey_planes_code_one_channel(make_engine):
    grey = noise(40, 50, 1, seed=3)
    coded = round_trip(make_engine(), [grey])
    assert coded[0].channels == 1
    rgb = np.repeat(grey, 3, axis=2)
    engine = make_engine()
    # one channel costs less than three copies of it; far less when the likelihood codes the three
    # independently (a pixel-context likelihood predicts G and B from R, so copies are cheap there)
    bound = 1.0 if engine.model.cfg.pixel_context else 0.5
    assert coded[0].info_bits < bound * engine.encode([rgb])[0].info_bits


@pytest.mark.parametrize("scheme", ["bitswap", "bbans"])
def test_schemes_round_trip_many_images_in_one_batch(make_engine, scheme):
    planes = [noise(70, 90, seed=1), noise(32, 32, seed=2), noise(5, 200, seed=3), noise(64, 64, 1, seed=4)]
    round_trip(make_engine(min_patches_per_lane=1, max_rows=5), planes, scheme)


def test_extreme_patches_bug06(make_engine):
    flat = np.full((32, 32, 3), 128, np.uint8)
    outlier = flat.copy()
    outlier[31, 31] = (255, 0, 255)
    black, white = np.zeros_like(flat), np.full_like(flat, 255)
    engine = make_engine()
    coded = round_trip(engine, [flat, outlier, black, white])
    a, b = coded[0].info_bits, coded[1].info_bits
    assert np.isfinite(b) and b > a


def test_twenty_seeds_bug06d(tiny_model):
    img = noise(128, 128, seed=9)
    engine = Engine(tiny_model, EngineConfig(min_patches_per_lane=4))
    seeds = [s * 7919 + 1 for s in range(20)]
    coded = engine.encode([img] * 20, seeds=seeds)
    assert [c.seed for c in coded] == seeds
    assert len({lane_bytes([c])[0] for c in coded}) == 20  # the seed really changes the stream
    assert all(np.array_equal(out, img) for out in engine.decode(coded))


def test_bytes_do_not_depend_on_batch_size_bug03(make_engine):
    planes = [noise(64, 64, seed=11), noise(96, 32, seed=12), noise(33, 17, seed=13)]
    reference = lane_bytes(make_engine(max_rows=1, min_patches_per_lane=1).encode(planes))
    for rows in (7, 64):
        assert lane_bytes(make_engine(max_rows=rows, min_patches_per_lane=1).encode(planes)) == reference


def test_bytes_do_not_depend_on_batch_neighbours_bug03(make_engine):
    a = noise(64, 64, seed=21)
    alone = make_engine(min_patches_per_lane=1).encode([a])
    together = make_engine(min_patches_per_lane=1).encode([noise(96, 32, seed=22), a, noise(33, 17, seed=23)])
    assert lane_bytes(alone) == lane_bytes([together[1]])
    assert make_engine().decode([together[1]])[0].tolist() == a.tolist()


def test_bytes_do_not_depend_on_thread_count(make_engine):
    planes = [noise(64, 96, seed=31)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lane_bytes(make_engine(min_patches_per_lane=1).encode(planes))
        torch.set_num_threads(2)
        two = lane_bytes(make_engine(min_patches_per_lane=1).encode(planes))
    finally:
        torch.set_num_threads(before)
    assert one == two


def test_corrupt_lane_is_detected_never_silent(make_engine):
    engine = make_engine()
    img = noise(64, 64, seed=41)
    [coded] = engine.encode([img])
    lane = coded.lanes[0]
    words = lane.words.copy()
    words[len(words) // 2] ^= 1 << 7
    bad = dataclasses.replace(coded, lanes=[dataclasses.replace(lane, words=words)])
    try:
        [out] = engine.decode([bad])
    except (StreamError, ValueError):
        return
    assert not np.array_equal(out, img), "a flipped bit cannot decode to the original"
    pytest.fail("a corrupt lane decoded without an error")


def test_lane_split_and_geometry():
    assert lane_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert lane_ranges(2, 5) == [(0, 1), (1, 2)]
    g = Geometry(33, 70)
    assert (g.rows, g.cols, g.n_patches) == (2, 3, 6)
    assert g.extent(5) == (32, 64, 1, 6)


def test_padding_costs_no_bits(make_engine):
    """A 33x17 image and the same pixels padded differently inside the codec cost the same: only
    real pixels are coded (the masked likelihood)."""
    engine = make_engine()
    edge = engine.encode([noise(33, 17, seed=5)])[0].info_bits / (33 * 17 * 3)
    full = engine.encode([noise(64, 64, seed=5)])[0].info_bits / (64 * 64 * 3)
    # per real dim, an image of two mostly-padding patches costs what whole patches of the same
    # noise do (were padding coded, 2 * 1024 / 561 = 3.7 times as much)
    assert 0.9 * full < edge < 1.1 * full


def test_donated_lanes_start_from_their_donors_words(make_engine):
    """Lanes in groups of 4: the first starts from seed bits and the group's lanes give words of
    their own streams in a tree (0 -> 2, then 0 -> 1 and 2 -> 3), so the group pays one start-up
    instead of four; bytes never depend on the batch."""
    img = noise(96, 128, seed=51)  # 12 patches -> 12 lanes -> groups of 4, 4, 4
    engine = make_engine(min_patches_per_lane=1, lanes_per_donor=4)
    [coded] = round_trip(engine, [img])
    table = [(ln.donor, ln.fork, ln.donated > 0) for ln in coded.lanes]
    assert [d for d, _, _ in table] == [-1, 0, 0, 2, -1, 4, 4, 6, -1, 8, 8, 10]
    assert all(given for d, _, given in table if d >= 0)
    assert all(ln.n_patches == 1 for ln in coded.lanes)
    # one patch per lane: lane 0 codes its patch, then must give at once to 2 and then to 1
    assert [table[i][1] for i in (1, 2, 3)] == [1, 1, 1]
    independent = make_engine(min_patches_per_lane=1, lanes_per_donor=1).encode([img])[0]
    assert len(independent.lanes) == 12 and coded.stored_bits < independent.stored_bits
    for rows in (1, 3):  # a donor waiting for its receivers must not stall a small batch
        narrow = make_engine(min_patches_per_lane=1, lanes_per_donor=4, max_rows=rows)
        assert lane_bytes(narrow.encode([img])) == lane_bytes([coded])
        assert np.array_equal(narrow.decode([coded])[0], img)
    together = make_engine(min_patches_per_lane=1, lanes_per_donor=4).encode([noise(40, 70, seed=52), img])
    assert lane_bytes([together[1]]) == lane_bytes([coded])


def test_a_group_of_eight_gives_in_a_tree_of_three_rounds(make_engine, tiny_model):
    """8 lanes of 6 patches: lane 0 gives to 4, then 0 and 4 to 2 and 6, then 0, 2, 4, 6 to 1, 3,
    5, 7, each receiver with the patches its subtree codes; every lane's first pops take coded
    words (none reaches its seed bits), and the file is the same whatever the batch."""
    img = np.full((192, 256, 3), 77, dtype=np.uint8)  # 48 cheap patches: a gift takes a few of them
    engine = make_engine(min_patches_per_lane=6, lanes_per_donor=8)
    [coded] = round_trip(engine, [img])
    assert [ln.donor for ln in coded.lanes] == [-1, 0, 0, 2, 0, 4, 4, 6]
    assert sum(ln.n_patches for ln in coded.lanes) == 48 and all(ln.n_patches >= 1 for ln in coded.lanes)
    fork = {i: ln.fork for i, ln in enumerate(coded.lanes)}
    # lane 0 gives to 4 first, then 2, then 1 (two of them may share a fork); lane 4 gives to 6, then 5
    assert fork[4] <= fork[2] <= fork[1] and fork[4] < fork[1] and fork[6] <= fork[5]
    reservoir = reservoir_words(tiny_model, "bitswap", coded.head_width)
    assert all(ln.donated > 0 and ln.low_water == reservoir for ln in coded.lanes[1:])
    independent = make_engine(min_patches_per_lane=6, lanes_per_donor=1).encode([img])[0]
    assert coded.stored_bits < independent.stored_bits
    for rows in (1, 2, 5):  # donors waiting for receivers (decoding) must never stall a narrow batch
        narrow = make_engine(min_patches_per_lane=6, lanes_per_donor=8, max_rows=rows)
        assert lane_bytes(narrow.encode([img])) == lane_bytes([coded])
        assert np.array_equal(narrow.decode([coded])[0], img)


def test_small_gifts_never_leave_a_donor_short_of_words():
    """However few words a donor gives (EngineConfig.donation_words), it keeps a fresh lane's
    reservoir for itself: with the shipped model on a photo, a donor that kept only its gift-sized
    cushion above its seed bits popped past the bottom of its stack on the next patch."""
    from bswd.model.modelfile import read_model_file
    from bswd.model.quant import load_coding_model
    from bswd.model.registry import default_model_path

    model = load_coding_model(read_model_file(default_model_path()))
    with Image.open(DATA / "bird_512x512.png") as im:
        photo = np.asarray(im.convert("RGB"))[:256, :256].copy()
    engine = Engine(model, EngineConfig(min_patches_per_lane=8, donation_words=700))
    [coded] = round_trip(engine, [photo])
    assert [ln.donor for ln in coded.lanes] == [-1, 0, 0, 2, 0, 4, 4, 6]
    assert all(ln.donated <= 700 for ln in coded.lanes)


@pytest.mark.parametrize("workers", [2, 3])
def test_coder_threads_write_the_same_bytes(make_engine, workers):
    """Several coder threads, each with its own lane slots, take lanes from one queue (donors and
    receivers may land in different threads): the files are those of one thread, both ways."""
    planes = [np.full((192, 256, 3), 77, dtype=np.uint8), noise(70, 90, seed=55), noise(33, 17, 1, seed=56)]
    one = make_engine(min_patches_per_lane=2, lanes_per_donor=8).encode(planes)
    many = make_engine(min_patches_per_lane=2, lanes_per_donor=8, workers=workers, max_rows=4)
    assert lane_bytes(many.encode(planes)) == lane_bytes(one)
    for a, b in zip(many.decode(one), planes):
        assert np.array_equal(a, b)
    lanes = list(one[0].lanes)
    lanes[5] = dataclasses.replace(lanes[5], heads=lanes[5].heads ^ np.uint64(1 << 40))
    with pytest.raises(StreamError, match="lane 5 did not decode back"):  # raised in one thread, ends the run
        many.decode([one[1], dataclasses.replace(one[0], lanes=lanes)])


@pytest.mark.parametrize("change", [{"donated": 1}, {"fork": 2}, {"donor": 1}, {"donor": -1, "fork": 0, "donated": 0}])
def test_a_wrong_donation_table_fails_loudly(make_engine, change):
    img = noise(64, 96, seed=53)  # 6 patches -> one donor and five receivers
    engine = make_engine(min_patches_per_lane=1, lanes_per_donor=8)
    [coded] = engine.encode([img])
    lanes = list(coded.lanes)
    lanes[2] = dataclasses.replace(lanes[2], **{k: (getattr(lanes[2], k) + v if k == "donated" else v)
                                                for k, v in change.items()})
    with pytest.raises((StreamError, ValueError)):
        engine.decode([dataclasses.replace(coded, lanes=lanes)])
