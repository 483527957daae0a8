"""Tests for the .bsw container: round trips, exact sizes, golden bytes, corruption (BUG-07), fuzz.

Regenerate the golden file with ``BSWD_REGEN_GOLDEN=1 pytest tests/test_container.py``; the
pinned sha256 below must then be updated by hand, so the format never changes silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import random
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bswd.container import (
    FORMAT_VERSION,
    HEAD_END,
    HEAD_MIN,
    MAGIC,
    PRELUDE_SIZE,
    TRAILER_SIZE,
    BadMagic,
    BswFile,
    BswFormatError,
    BswHeader,
    ChecksumMismatch,
    CorruptFile,
    LanePayload,
    Section,
    TruncatedFile,
    UnsupportedVersion,
    decode,
    encode,
    header_of,
    header_size,
    payload_sizes,
    peek_header,
)

GOLDEN = Path(__file__).parent / "golden" / "container_v1.bin"
GOLDEN_SHA256 = "397a2486fd10a53fcb3f35b97198601cf344799290d50382d0aa2c1e6bb7d7b6"
SUBCLASSES = (BadMagic, UnsupportedVersion, TruncatedFile, ChecksumMismatch, CorruptFile)


def expected_size(f: BswFile) -> int:
    """The size formula of docs/format.md, written out independently of the module."""
    entry = 16 if f.format_version == 1 else 28  # v2 lane entries also name the donor
    header = 96 + len(f.model_id) + entry * len(f.lanes) + sum(9 + len(s.kind) for s in f.sections)
    payload = sum(8 * f.head_width + 4 * lane.words.size for lane in f.lanes)
    return 14 + header + 4 + payload + sum(len(s.data) for s in f.sections) + 12


def golden_file() -> BswFile:
    """A tiny hand-built file: one grey lane (K=2, 3 words) and one section."""
    lane = LanePayload(n_patches=2, low_water=5,
                       heads=np.array([0x0123456789ABCDEF, 2**31], dtype=np.uint64),
                       words=np.array([0xDEADBEEF, 1, 0x80000000], dtype=np.uint32))
    return BswFile(model_id="bswd-test-1", model_hash=bytes(range(32)), scheme="bitswap",
                   width=33, height=7, channels=1, seed=0xFEDCBA9876543210, head_width=2,
                   precision=16, lanes=(lane,), pixel_checksum=bytes(range(32, 64)),
                   sections=(Section("side", b"\x00\x01\xff"),))


def small_file(n_words: int = 40) -> BswFile:
    rng = np.random.default_rng(7)
    lanes = tuple(LanePayload(3, 2, rng.integers(HEAD_MIN, HEAD_END, 4, dtype=np.uint64),
                              rng.integers(0, 2**32, n_words, dtype=np.uint32)) for _ in range(2))
    return BswFile("bswd-default-1", hashlib.sha256(b"model").digest(), "bbans", 64, 64, 3,
                   2**64 - 1, 4, 31, lanes, hashlib.sha256(b"pixels").digest(),
                   (Section("alpha", bytes(range(20))), Section("icc", b"")))


printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def bsw_files(draw: st.DrawFn) -> BswFile:
    channels = draw(st.sampled_from([0, 1, 3]))
    k = draw(st.integers(1, 5))
    lanes: list[LanePayload] = []
    for i in range(draw(st.integers(1, 3)) if channels else 0):
        donated = i > 0 and draw(st.booleans())  # lanes 1, 2 may start from an earlier lane's words
        donor = draw(st.integers(0, i - 1)) if donated else -1
        fork = draw(st.integers(1, lanes[donor].n_patches)) if donated else 0
        lanes.append(LanePayload(
            draw(st.integers(1, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)),
            np.array(draw(st.lists(st.integers(HEAD_MIN, HEAD_END - 1), min_size=k, max_size=k)),
                     dtype=np.uint64),
            np.array(draw(st.lists(st.integers(0, 2**32 - 1), max_size=30)), dtype=np.uint32),
            donor, fork, draw(st.integers(0, 2**32 - 1)) if donated else 0))
    lanes = tuple(lanes)
    sections = tuple(Section(draw(printable.filter(bool)), draw(st.binary(max_size=40)))
                     for _ in range(draw(st.integers(0, 3))))
    return BswFile(draw(printable), draw(st.binary(min_size=32, max_size=32)),
                   draw(st.sampled_from(["bitswap", "bbans"])), draw(st.integers(1, 2**31 - 1)),
                   draw(st.integers(1, 2**31 - 1)), channels, draw(st.integers(0, 2**64 - 1)), k,
                   draw(st.integers(1, 31)), lanes, draw(st.binary(min_size=32, max_size=32)),
                   sections)


@settings(max_examples=300, deadline=None)
@given(bsw_files())
def test_round_trip_is_exact_and_canonical(f: BswFile) -> None:
    data = encode(f)
    assert len(data) == expected_size(f) == payload_sizes(f)["total"]
    g = decode(data)
    assert g == f
    assert encode(g) == data
    assert g.lanes == () or g.lanes[0].heads.dtype == np.uint64
    assert peek_header(data[:header_size(data)]) == header_of(f)


def test_exact_size_of_a_known_file() -> None:
    f = small_file()
    # prelude 14 + header (96 + 14 + 2 * 16 + (9 + 5) + (9 + 3)) + crc 4
    # + 2 lanes * (4 * 8 + 40 * 4) + 20 + 0 + trailer 12
    assert len(encode(f)) == 14 + 168 + 4 + 2 * 192 + 20 + 12 == 602
    assert payload_sizes(f) == {"header": 186, "lanes": [192, 192],
                                "sections": [("alpha", 20), ("icc", 0)], "trailer": 12,
                                "total": 602}
    assert payload_sizes(header_of(f)) == payload_sizes(f)


def test_golden_bytes() -> None:
    data = encode(golden_file())
    if os.environ.get("BSWD_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(data)
    assert hashlib.sha256(GOLDEN.read_bytes()).hexdigest() == GOLDEN_SHA256
    assert GOLDEN.read_bytes() == data
    assert decode(GOLDEN.read_bytes()) == golden_file()
    # spot checks of the byte layout (little-endian everywhere)
    assert data[:8] == MAGIC and data[8:10] == b"\x01\x00"
    assert struct.unpack_from("<IIBBBIQ", data, 14) == (33, 7, 1, 1, 16, 2, 0xFEDCBA9876543210)
    payload = peek_header(data).header_size
    assert data[payload:payload + 8] == bytes.fromhex("efcdab8967452301")
    assert data[payload + 16:payload + 20] == bytes.fromhex("efbeadde")
    assert struct.unpack_from("<Q", data, len(data) - 12)[0] == len(data)
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])


@pytest.mark.parametrize("variant, error, words", [
    ("last 8 bytes removed", TruncatedFile, "missing"),
    ("one bit flipped in the middle byte", ChecksumMismatch, "payload is corrupted"),
    ("4 garbage bytes appended", CorruptFile, "trailing garbage"),
    ("0 bytes", TruncatedFile, "empty file"),
])
def test_bug07_damaged_files_fail_with_specific_errors(variant: str, error: type,
                                                       words: str) -> None:
    rng = np.random.default_rng(0)  # ~ a 64x64 noise image: 4 patches in one lane
    lane = LanePayload(4, 3, rng.integers(HEAD_MIN, HEAD_END, 8, dtype=np.uint64),
                       rng.integers(0, 2**32, 12288 // 4 * 3, dtype=np.uint32))
    data = encode(BswFile("bswd-default-1", bytes(32), "bitswap", 64, 64, 3, 1, 8, 16, (lane,),
                          bytes(32)))
    mid = len(data) // 2
    damaged = {"last 8 bytes removed": data[:-8],
               "one bit flipped in the middle byte": data[:mid] + bytes([data[mid] ^ 0x10])
               + data[mid + 1:],
               "4 garbage bytes appended": data + b"\x00junk"[:4],
               "0 bytes": b""}[variant]
    with pytest.raises(error, match=words) as info:
        decode(damaged)
    assert isinstance(info.value, BswFormatError) and info.value.offset is not None


def reseal(data: bytes) -> bytes:
    """Recompute the header CRC and the trailer of ``data`` (where the fields fit)."""
    buf = bytearray(data)
    if len(buf) >= PRELUDE_SIZE:
        hend = PRELUDE_SIZE + struct.unpack_from("<I", buf, 10)[0]
        if hend + 4 <= len(buf):
            struct.pack_into("<I", buf, hend, zlib.crc32(buf[:hend]))
        if len(buf) >= hend + 4 + TRAILER_SIZE:
            struct.pack_into("<Q", buf, len(buf) - 12, len(buf))
            struct.pack_into("<I", buf, len(buf) - 4, zlib.crc32(buf[:-4]))
    return bytes(buf)


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """One random damage: bit flips, truncation, insertion, deletion, splice, junk, overwrite."""
    n, op = len(data), rng.randrange(8)
    pos = rng.randrange(n)
    if op == 0:
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if op == 1:
        return data[:pos]
    if op == 2:
        return data[:pos] + rng.randbytes(rng.randint(1, 16)) + data[pos:]
    if op == 3:
        return data[:pos] + data[pos + rng.randint(1, 16):]
    if op == 4:
        return data[:pos] + other[rng.randrange(len(other)):]
    if op == 5:
        return rng.randbytes(rng.randint(0, 300))
    if op == 6:  # extreme values into what may be a length or count field
        width = rng.choice([1, 2, 4, 8])
        value: int = rng.choice([0, 1, 2**(8 * width) - 1, 2**(8 * width - 1), rng.randrange(256)])
        return data[:pos] + value.to_bytes(width, "little") + data[pos + width:]
    return data[:pos] + data[rng.randrange(n):][:rng.randint(1, 64)] + data[pos:]


def test_fuzz_raises_only_format_errors() -> None:
    bases = [encode(small_file(5)), encode(golden_file()), encode(small_file(0))]
    originals = [decode(b) for b in bases]
    rng = random.Random(20240607)
    counts = {"raised": 0, "accepted": 0}
    for i in range(4000):
        which = rng.randrange(len(bases))
        mutated = mutate(rng, bases[which], bases[(which + 1) % len(bases)])
        resealed = i % 2 == 1  # half get valid checksums, so the field checks are reached
        if resealed:
            mutated = reseal(mutated)
        try:
            result = decode(mutated)
        except BswFormatError as e:
            assert isinstance(e, SUBCLASSES) and type(e) is not BswFormatError
            assert str(e)
            counts["raised"] += 1
            continue
        counts["accepted"] += 1
        if resealed:  # a different but valid file: decoding must be canonical
            assert encode(result) == mutated
        else:
            assert mutated == bases[which] and result == originals[which]
    assert counts["raised"] > 3000


def test_no_allocation_from_unchecked_lengths() -> None:
    f = golden_file()
    buf = bytearray(encode(f))
    lane_entry = peek_header(buf).header_size - 4 - (9 + 4) - 16  # the only lane entry
    struct.pack_into("<Q", buf, lane_entry + 8, 2**40)  # n_words = 2**40
    data = reseal(bytes(buf))
    tracemalloc.start()
    for prefix in (data, data[:20], data[:200]):
        with pytest.raises((TruncatedFile, ChecksumMismatch)):
            decode(prefix)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(TruncatedFile, match="missing"):
        decode(data)
    for field_offset in (10, 14 + 87 + 1 + 11):  # header_len, n_lanes
        claim = bytearray(encode(f))
        struct.pack_into("<I", claim, field_offset, 2**32 - 1)
        with pytest.raises((TruncatedFile, CorruptFile)):
            decode(reseal(bytes(claim)))


def test_version_and_magic_messages() -> None:
    data = bytearray(encode(golden_file()))
    data[8:10] = (3).to_bytes(2, "little")
    newer = reseal(bytes(data))
    with pytest.raises(UnsupportedVersion, match=r"newer bswd \(format v3\); this release reads"
                                                 r" up to v2"):
        decode(newer)
    with pytest.raises(UnsupportedVersion):
        peek_header(newer[:30])  # header incomplete: the version is all we can know
    data[8:10] = (0).to_bytes(2, "little")
    with pytest.raises(CorruptFile, match="format version"):
        decode(reseal(bytes(data)))
    good = encode(golden_file())
    with pytest.raises(BadMagic, match="text mode"):
        decode(good.replace(b"\r\n", b"\n"))
    with pytest.raises(BadMagic, match="text mode"):
        decode(good.replace(b"\n", b"\r\n"))
    with pytest.raises(BadMagic, match="PNG"):
        decode(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(TruncatedFile, match="magic"):
        decode(MAGIC[:5])
    with pytest.raises(TruncatedFile, match="prelude"):
        decode(MAGIC + b"\x01")
    assert FORMAT_VERSION == 2


def test_peek_header_reads_only_the_header() -> None:
    f = small_file()
    data = encode(f)
    n = header_size(data[:PRELUDE_SIZE])
    header = peek_header(data[:n])
    assert isinstance(header, BswHeader) and header == header_of(f)
    assert header.header_size == n and header.total_size == len(data)
    with pytest.raises(TruncatedFile, match="inside the header"):
        peek_header(data[:n - 1])
    assert decode(bytearray(data)) == decode(memoryview(data)) == f


def test_corrupt_fields_behind_valid_checksums() -> None:
    data = encode(golden_file())
    for offset, value, words in [(14, 0, "width"), (22, 2, "channels"), (23, 3, "scheme"),
                                 (24, 0, "precision"), (24, 32, "precision"),
                                 (25, 0, "head_width"), (101, 200, "model_id")]:
        buf = bytearray(data)
        struct.pack_into("<B" if offset != 14 and offset != 25 else "<I", buf, offset, value)
        with pytest.raises(BswFormatError, match=words):
            decode(reseal(bytes(buf)))
    buf = bytearray(data)
    struct.pack_into("<Q", buf, peek_header(data).header_size, 5)  # head below 2**31
    with pytest.raises(CorruptFile, match="head 0"):
        decode(reseal(bytes(buf)))


@pytest.mark.parametrize("change, words", [
    ({"precision": 0}, "precision"), ({"precision": 32}, "precision"),
    ({"channels": 2}, "channels"), ({"channels": 0}, "lanes"), ({"head_width": 3}, "heads"),
    ({"model_id": "é"}, "ASCII"), ({"model_hash": b"x"}, "32 bytes"), ({"width": 0}, "width"),
    ({"height": 2**31}, "height"), ({"seed": -1}, "seed"), ({"scheme": "x"}, "scheme"),
    ({"lanes": ()}, "lanes"), ({"format_version": 3}, "format_version"),
])
def test_invalid_files_cannot_be_built(change: dict[str, object], words: str) -> None:
    fields = {k: getattr(golden_file(), k) for k in BswFile.__dataclass_fields__}
    with pytest.raises(ValueError, match=words):
        BswFile(**{**fields, **change})


def test_invalid_lanes_and_sections_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="heads"):
        LanePayload(1, 0, np.array([2**31 - 1], dtype=np.uint64), np.zeros(0, np.uint32))
    with pytest.raises(ValueError, match="words"):
        LanePayload(1, 0, np.array([2**31]), np.array([2**32]))
    with pytest.raises(ValueError, match="n_patches"):
        LanePayload(0, 0, np.array([2**31]), np.array([]))
    with pytest.raises(ValueError, match="kind"):
        Section("", b"")
    lane = LanePayload(1, 0, np.array([2**31]), np.array([1, 2]))
    assert not lane.heads.flags.writeable and lane.words.dtype == np.uint32


def test_errors_pickle_with_their_offset() -> None:
    e = pickle.loads(pickle.dumps(ChecksumMismatch("bad", 17)))
    assert type(e) is ChecksumMismatch and e.offset == 17 and str(e) == "bad"
    assert issubclass(BswFormatError, ValueError)


def donated_file(version: int = 0) -> BswFile:
    """Three lanes: lane 0 starts from seed bits and gives words to lanes 1 and 2 after 2 patches."""
    f = small_file()
    a, b = f.lanes
    lanes = (dataclasses.replace(a, n_patches=4), dataclasses.replace(b, donor=0, fork=2, donated=7),
             dataclasses.replace(b, donor=0, fork=2, donated=0))
    return dataclasses.replace(f, lanes=lanes, format_version=version)


def test_donated_lanes_need_v2_and_files_without_them_stay_v1() -> None:
    assert small_file().format_version == 1 and encode(small_file())[8:10] == b"\x01\x00"
    f = donated_file()
    data = encode(f)
    assert f.format_version == 2 and data[8:10] == b"\x02\x00" and len(data) == expected_size(f)
    g = decode(data)
    assert g == f and encode(g) == data
    assert [(x.donor, x.fork, x.donated) for x in g.lanes] == [(-1, 0, 0), (0, 2, 7), (0, 2, 0)]
    v2 = dataclasses.replace(small_file(), format_version=2)  # a v2 file may have no donated lanes
    assert decode(encode(v2)) == v2 and len(encode(v2)) == expected_size(v2)
    with pytest.raises(ValueError, match="format_version 2"):
        donated_file(version=1)


@pytest.mark.parametrize("lane, change, words", [
    (1, {"donor": 2}, "not an earlier"),  # a donor must come first
    (1, {"donor": 1}, "not an earlier"),  # nor be the lane itself
    (1, {"fork": 5}, "fork point"),  # past the donor's 4 patches
    (2, {"donor": 1, "fork": 4}, "fork point"),  # past lane 1's 3 patches (a donated lane may give)
])
def test_inconsistent_donations_are_refused(lane: int, change: dict[str, int], words: str) -> None:
    f = donated_file()
    lanes = list(f.lanes)
    lanes[lane] = dataclasses.replace(lanes[lane], **change)
    with pytest.raises(ValueError, match=words):
        dataclasses.replace(f, lanes=tuple(lanes))
    # the same table behind valid checksums: the reader names it too
    data = bytearray(encode(f))
    entry = peek_header(data).header_size - 4 - 28 * (3 - lane) - (9 + 5) - (9 + 3)
    for name, value in change.items():
        field = {"donor": 0, "fork": 4, "donated": 8}[name]
        struct.pack_into("<I", data, entry + 16 + field, value + (name == "donor"))
    with pytest.raises(CorruptFile, match=words):
        decode(reseal(bytes(data)))


def test_fork_and_donated_without_a_donor_are_refused() -> None:
    lane = small_file().lanes[0]
    with pytest.raises(ValueError, match="without a donor"):
        dataclasses.replace(lane, donated=3)
    with pytest.raises(ValueError, match="fork >= 1"):
        dataclasses.replace(lane, donor=0, fork=0)
