"""The ``.bsw`` container: one compressed image as bytes. Pure: no files, no torch, no I/O.

Byte layout of format v1 and v2 (every integer is little-endian; docs/format.md has the full table)::

    prelude  magic 89 42 53 57 0D 0A 1A 0A | version u16 | header_len u32         (14 bytes)
    header   header_len bytes: fixed fields, model id, lane table, section table
             header_crc u32 = CRC32 of bytes [0, 14 + header_len)                   (4 bytes)
    payload  per lane: heads K x u64, then words n_words x u32 (bottom of stack first)
             per section: its data bytes
    trailer  total_len u64 (= file length) | file_crc u32 = CRC32 of bytes [0, total_len - 4)

v2 differs only in the lane table: each entry also says which earlier lane donated the words this
lane started from, at which fork point, and how many (donated lanes, engine.py), so an entry is
28 bytes instead of 16. A file
without donated lanes is written as v1, which every release reads.

Invariants: ``decode(encode(f)) == f`` and ``encode(decode(b)) == b`` for every ``b`` that decodes
(canonical: no reserved bits, no slack). ``decode`` raises only ``BswFormatError`` subclasses and
checks every length against the input size before it allocates: memory stays O(len(data)).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, TypedDict

import numpy as np
import numpy.typing as npt

MAGIC = b"\x89BSW\r\n\x1a\n"
FORMAT_VERSION = 2  # the newest this release writes and reads; it reads every older one too
PRELUDE_SIZE = 14  # magic (8) + version u16 + header_len u32
TRAILER_SIZE = 12  # total_len u64 + file_crc u32
SCHEMES = ("bitswap", "bbans")  # stored as a u8 code: index + 1
HEAD_MIN, HEAD_END = 1 << 31, 1 << 63  # a rANS head lies in [HEAD_MIN, HEAD_END)
_FIXED = struct.Struct("<IIBBBIQ32s32s")  # 87 bytes: see _pack_header for the field order
_COUNTS = struct.Struct("<II")  # n_lanes n_sections
_LANE = struct.Struct("<IIQ")  # n_patches low_water n_words (16 bytes per lane)
_DONATION = struct.Struct("<III")  # v2: donor + 1 (0: none), fork, donated (12 more bytes per lane)
Buffer = bytes | bytearray | memoryview  # what decode and peek_header accept
_U8, _U32, _U64 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<Q")
_HINTS = {b"\x89BSW\n": "CRLF became LF, so it was copied in text mode",
          b"\x89BSW\r\r\n": "LF became CRLF, so it was copied in text mode",
          b"\x09BSW\r\n": "the high bit of byte 0 was stripped by a 7-bit transfer",
          b"\x89PNG": "this is a PNG image", b"\xff\xd8\xff": "this is a JPEG image"}


class BswFormatError(ValueError):
    """A byte string that is not a valid .bsw; ``offset`` is the byte offset at fault, if known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message, self.offset = message, offset

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:
        return (type(self), (self.message, self.offset))


class BadMagic(BswFormatError):
    """The first 8 bytes are not the .bsw magic (not a .bsw, or mangled in text mode)."""


class UnsupportedVersion(BswFormatError):
    """The file's format version is not one this release reads."""


class TruncatedFile(BswFormatError):
    """The input ends before the end that its own length fields announce (or is empty)."""


class ChecksumMismatch(BswFormatError):
    """A stored CRC32 differs from the one computed over the bytes it covers."""


class CorruptFile(BswFormatError):
    """The checksums pass (or cannot be reached) but a field is out of range or inconsistent."""


def _int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as a Python int in [lo, hi), or ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value < hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}), got {value!r}")
    return int(value)


def _ascii(name: str, value: object, lo: int) -> str:
    """``value`` as printable ASCII (0x20..0x7e) of lo..255 bytes, or ValueError."""
    if not (isinstance(value, str) and lo <= len(value) <= 255
            and all(" " <= c <= "~" for c in value)):
        raise ValueError(f"{name} must be printable ASCII of {lo}..255 characters, got {value!r}")
    return value


def _uint_array(name: str, value: object, dtype: type, lo: int, hi: int,
                min_size: int = 0) -> npt.NDArray[Any]:
    """A read-only 1-D copy of ``value`` as ``dtype``: >= min_size elements, each in [lo, hi)."""
    arr = np.asarray(value) if np.size(value) else np.zeros(0, dtype)  # type: ignore[arg-type]
    if arr.ndim != 1 or arr.dtype.kind not in "ui" or arr.size < min_size:
        raise ValueError(f"{name} must be a 1-D integer array of >= {min_size} elements, "
                         f"got {arr.dtype} {arr.shape}")
    if arr.size and not (lo <= int(arr.min()) and int(arr.max()) < hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}), got [{arr.min()}, {arr.max()}]")
    out: npt.NDArray[Any] = arr.astype(dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class LanePayload:
    """One rANS stream: final heads uint64 [K] in [2**31, 2**63) and the uint32 words above
    the ``low_water`` seed words, bottom first. Arrays become read-only copies; == compares values.
    """
    n_patches: int  # >= 1 consecutive 32x32 patches coded by this lane, < 2**32
    low_water: int  # seed words not stored, < 2**32
    heads: npt.NDArray[np.uint64]
    words: npt.NDArray[np.uint32]
    donor: int = -1  # the earlier lane whose words this lane started from; -1: seed bits only
    fork: int = 0  # patches the donor had coded when it gave them (>= 1 when donor >= 0)
    donated: int = 0  # words received from the donor

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "n_patches", _int("n_patches", self.n_patches, 1, 1 << 32))
        set_(self, "low_water", _int("low_water", self.low_water, 0, 1 << 32))
        set_(self, "donor", _int("donor", self.donor, -1, (1 << 32) - 1))
        set_(self, "fork", _int("fork", self.fork, 0, 1 << 32))
        set_(self, "donated", _int("donated", self.donated, 0, 1 << 32))
        if self.donor < 0 and (self.fork or self.donated):
            raise ValueError("fork and donated must be 0 for a lane without a donor")
        if self.donor >= 0 and self.fork < 1:
            raise ValueError(f"a donated lane needs fork >= 1, got {self.fork}")
        set_(self, "heads", _uint_array("heads", self.heads, np.uint64, HEAD_MIN, HEAD_END, 1))
        set_(self, "words", _uint_array("words", self.words, np.uint32, 0, 1 << 32))

    @property
    def table_entry(self) -> LaneInfo:
        return LaneInfo(self.n_patches, self.low_water, self.words.size, self.donor, self.fork, self.donated)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LanePayload):
            return NotImplemented
        return self.table_entry == other.table_entry and all(
            np.array_equal(a, b) for a, b in ((self.heads, other.heads), (self.words, other.words)))


@dataclass(frozen=True)
class Section:
    """A non-model part of the image (alpha plane, metadata, ...), opaque to the container."""
    kind: str  # printable ASCII, 1..255 characters
    data: bytes

    def __post_init__(self) -> None:
        _ascii("section kind", self.kind, 1)
        if not isinstance(self.data, bytes):
            raise TypeError(f"section data must be bytes, got {type(self.data).__name__}")


@dataclass(frozen=True)
class BswFile:
    """One compressed image. Construction validates every field (ValueError on a bad one)."""
    model_id: str  # printable ASCII, 0..255 characters
    model_hash: bytes  # 32 bytes, sha256 of the model file content
    scheme: str  # one of SCHEMES
    width: int  # true image size, each in [1, 2**31)
    height: int
    channels: int  # 1 or 3 coded by the model; 0 = no model part (then no lanes)
    seed: int  # initial-bits seed, in [0, 2**64)
    head_width: int  # K heads per lane, in [1, 2**32)
    precision: int  # ANS precision in bits, in [1, 31]
    lanes: tuple[LanePayload, ...]
    pixel_checksum: bytes  # 32 bytes, sha256 of the pixels the model coded
    sections: tuple[Section, ...] = ()
    format_version: int = 0  # 0: the oldest version that holds the file (v1 unless a lane is donated)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        _ascii("model_id", self.model_id, 0)
        for name in ("model_hash", "pixel_checksum"):
            if not isinstance(getattr(self, name), bytes) or len(getattr(self, name)) != 32:
                raise ValueError(f"{name} must be 32 bytes, got {getattr(self, name)!r:.80}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        for name, lo, hi in (("width", 1, 1 << 31), ("height", 1, 1 << 31), ("seed", 0, 1 << 64),
                             ("head_width", 1, 1 << 32), ("precision", 1, 32), ("channels", 0, 4),
                             ("format_version", 0, FORMAT_VERSION + 1)):
            set_(self, name, _int(name, getattr(self, name), lo, hi))
        if self.channels == 2:
            raise ValueError("channels must be 0, 1 or 3, got 2")
        set_(self, "lanes", tuple(self.lanes))
        set_(self, "sections", tuple(self.sections))
        if (len(self.lanes) >= 1) != (self.channels > 0) or len(self.lanes) >= 1 << 32:
            raise ValueError(f"{len(self.lanes)} lanes with channels={self.channels}: "
                             "need >= 1 lane when channels > 0 and none when channels == 0")
        if any(lane.heads.size != self.head_width for lane in self.lanes):
            raise ValueError(f"every lane needs head_width = {self.head_width} heads")
        _check_donations([lane.table_entry for lane in self.lanes], ValueError)
        donated = any(lane.donor >= 0 for lane in self.lanes)
        if self.format_version == 0:  # the oldest version that holds it: v1 readers read it
            set_(self, "format_version", 2 if donated else 1)
        elif donated and self.format_version < 2:
            raise ValueError("donated lanes need format_version 2")


class LaneInfo(NamedTuple):  # a lane-table entry
    n_patches: int
    low_water: int
    n_words: int
    donor: int = -1
    fork: int = 0
    donated: int = 0


def _check_donations(lanes: list[LaneInfo], error: Callable[[str], Exception]) -> None:
    """A donor is an earlier lane (itself donated or not), and it gave at a fork point within its
    patches; receivers of one donor may fork at different points (a tree of gifts)."""
    for i, x in enumerate(lanes):
        if x.donor >= 0 and not (x.donor < i and 1 <= x.fork <= lanes[x.donor].n_patches):
            raise error(f"lane {i}: donor {x.donor} with fork {x.fork} is not an earlier lane "
                        f"and a fork point within its patches")


class SectionInfo(NamedTuple):  # a section-table entry
    kind: str
    length: int


@dataclass(frozen=True)
class BswHeader:
    """Everything in a .bsw except the payload bytes (what ``peek_header`` returns)."""
    format_version: int
    model_id: str
    model_hash: bytes
    scheme: str
    width: int
    height: int
    channels: int
    seed: int
    head_width: int
    precision: int
    lanes: tuple[LaneInfo, ...]
    sections: tuple[SectionInfo, ...]
    pixel_checksum: bytes

    @property
    def header_size(self) -> int:  # offset 0 to the end of the header CRC = payload start
        return len(_pack_header(self))

    @property
    def total_size(self) -> int:  # the file length this header announces, trailer included
        return (self.header_size + sum(8 * self.head_width + 4 * x.n_words for x in self.lanes)
                + sum(s.length for s in self.sections) + TRAILER_SIZE)


class PayloadSizes(TypedDict):
    header: int  # prelude + header + header CRC
    lanes: list[int]  # 8 K + 4 n_words per lane
    sections: list[tuple[str, int]]  # (kind, data bytes) per section
    trailer: int
    total: int  # the whole file


def header_of(f: BswFile) -> BswHeader:
    """The header that ``encode(f)`` writes."""
    return BswHeader(f.format_version, f.model_id, f.model_hash, f.scheme, f.width, f.height,
                     f.channels, f.seed, f.head_width, f.precision,
                     tuple(x.table_entry for x in f.lanes),
                     tuple(SectionInfo(s.kind, len(s.data)) for s in f.sections),
                     f.pixel_checksum)


def payload_sizes(f: BswFile | BswHeader) -> PayloadSizes:
    """Bytes taken by the header, each lane, each section and the trailer (for inspect)."""
    h = f if isinstance(f, BswHeader) else header_of(f)
    return {"header": h.header_size, "lanes": [8 * h.head_width + 4 * x.n_words for x in h.lanes],
            "sections": [(s.kind, s.length) for s in h.sections], "trailer": TRAILER_SIZE,
            "total": h.total_size}


def _pack_header(h: BswHeader) -> bytes:
    """Prelude, header and header CRC; header_len = 96 + len(model_id) + (16 in v1, 28 in v2)
    n_lanes + sum(9 + len(kind)) over sections."""
    parts = [_FIXED.pack(h.width, h.height, h.channels, SCHEMES.index(h.scheme) + 1,
                         h.precision, h.head_width, h.seed, h.model_hash, h.pixel_checksum),
             _U8.pack(len(h.model_id)), h.model_id.encode("ascii"),
             _COUNTS.pack(len(h.lanes), len(h.sections))]
    for x in h.lanes:
        parts.append(_LANE.pack(x.n_patches, x.low_water, x.n_words))
        if h.format_version >= 2:
            parts.append(_DONATION.pack(x.donor + 1, x.fork, x.donated))
    for s in h.sections:
        parts += [_U8.pack(len(s.kind)), s.kind.encode("ascii"), _U64.pack(s.length)]
    body = b"".join(parts)
    if len(body) >= 1 << 32:
        raise ValueError(f"header of {len(body)} bytes does not fit the u32 header length")
    out = MAGIC + struct.pack("<HI", h.format_version, len(body)) + body
    return out + _U32.pack(zlib.crc32(out))


def encode(f: BswFile) -> bytes:
    """The canonical .bsw bytes of ``f`` (length ``payload_sizes(f)["total"]``)."""
    out = bytearray(_pack_header(header_of(f)))
    for lane in f.lanes:
        out += lane.heads.astype("<u8").tobytes() + lane.words.astype("<u4").tobytes()
    for s in f.sections:
        out += s.data
    out += _U64.pack(len(out) + TRAILER_SIZE)
    out += _U32.pack(zlib.crc32(out))
    return bytes(out)


def _check_magic(data: memoryview) -> None:
    head = bytes(data[:8])
    if head == MAGIC:
        return
    if MAGIC.startswith(head):  # also the empty file
        raise TruncatedFile(f"empty file (0 bytes): expected a .bsw, magic {MAGIC.hex(' ')}" if not
                            head else f"file of {len(head)} bytes ends inside the magic", len(head))
    hint = next((f"; {text}" for sig, text in _HINTS.items() if head.startswith(sig)), "")
    raise BadMagic(f"not a .bsw file: expected magic {MAGIC.hex(' ')} at offset 0, "
                   f"found {head.hex(' ')}{hint}", 0)


def header_size(prefix: Buffer) -> int:
    """Bytes ``peek_header`` needs, read from the first 14 bytes: 14 + header_len + 4."""
    mv = memoryview(prefix).cast("B")
    _check_magic(mv)
    if len(mv) < PRELUDE_SIZE:
        raise TruncatedFile(f"file ends at offset {len(mv)} inside the 14-byte prelude", len(mv))
    return PRELUDE_SIZE + int(_U32.unpack_from(mv, 10)[0]) + 4


class _Reader:
    """Bounded cursor over the header bytes [pos, end); reading past ``end`` is CorruptFile."""

    def __init__(self, mv: memoryview, pos: int, end: int) -> None:
        self.mv, self.pos, self.end = mv, pos, end

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        if self.pos + st.size > self.end:
            raise CorruptFile(f"{what} at offset {self.pos} needs {st.size} bytes but the header "
                              f"ends at offset {self.end}", self.pos)
        self.pos += st.size
        return st.unpack_from(self.mv, self.pos - st.size)

    def text(self, what: str, lo: int) -> str:
        (n,) = self.unpack(_U8, what + " length")
        (raw,) = self.unpack(struct.Struct(f"{n}s"), what)
        _check(lo <= n and all(0x20 <= b <= 0x7E for b in raw), what, repr(raw)[:80],
               f"printable ASCII of {lo}..255 bytes", self.pos - n)
        return str(raw.decode("ascii"))


def _check(ok: bool, what: str, value: object, expected: str, offset: int) -> None:
    if not ok:
        raise CorruptFile(f"{what} at offset {offset} is {value}, expected {expected}", offset)


def peek_header(data: Buffer) -> BswHeader:
    """Parse and validate the header (magic, version, header CRC, every field) from any prefix
    of the file of at least ``header_size(data)`` bytes; payloads and trailer are not read."""
    mv = memoryview(data).cast("B")
    n, hend = len(mv), header_size(mv) - 4  # header_size checks the magic and the prelude
    (version,) = struct.unpack_from("<H", mv, 8)
    complete = hend + 4 <= n
    stored = _U32.unpack_from(mv, hend)[0] if complete else None
    computed = zlib.crc32(mv[:hend]) if complete else None
    if version > FORMAT_VERSION and stored == computed:  # equal also when incomplete
        raise UnsupportedVersion(f"written by a newer bswd (format v{version}); this release "
                                 f"reads up to v{FORMAT_VERSION}", 8)
    if not complete:
        raise TruncatedFile(f"file ends at offset {n} inside the header: the header length at "
                            f"offset 10 puts the header CRC at offset {hend} (truncated file, "
                            "or a corrupt length field)", n)
    if stored != computed:
        raise ChecksumMismatch(f"header CRC32 mismatch at offset {hend}: stored 0x{stored:08x}, "
                               f"computed 0x{computed:08x} over bytes [0, {hend})", hend)
    _check(1 <= version <= FORMAT_VERSION, "format version", version, f"1..{FORMAT_VERSION}", 8)
    entry = _LANE.size + (_DONATION.size if version >= 2 else 0)
    r = _Reader(mv, PRELUDE_SIZE, hend)
    (width, height, channels, scheme, precision, k, seed, model_hash,
     pixel_checksum) = r.unpack(_FIXED, "fixed header fields")
    _check(1 <= width < 1 << 31, "width", width, "in [1, 2**31)", 14)
    _check(1 <= height < 1 << 31, "height", height, "in [1, 2**31)", 18)
    _check(channels in (0, 1, 3), "channels", channels, "0, 1 or 3", 22)
    _check(1 <= scheme <= len(SCHEMES), "scheme code", scheme, "1 (bitswap) or 2 (bbans)", 23)
    _check(1 <= precision <= 31, "precision", precision, "in [1, 31]", 24)
    _check(k >= 1, "head_width", k, ">= 1", 25)
    model_id = r.text("model_id", 0)
    n_lanes, n_sections = r.unpack(_COUNTS, "lane and section counts")
    _check((n_lanes >= 1) == (channels > 0), "lane count", n_lanes,
           ">= 1 when channels > 0 and 0 when channels == 0", r.pos - 8)
    _check(r.pos + n_lanes * entry + n_sections * 9 <= hend, "lane and section counts",
           (n_lanes, n_sections), f"tables that fit in the header ending at {hend}", r.pos - 8)
    lanes = []
    for i in range(n_lanes):
        n_patches, low_water, n_words = r.unpack(_LANE, f"lane {i}")
        _check(n_patches >= 1, f"lane {i} n_patches", n_patches, ">= 1", r.pos - _LANE.size)
        donor, fork, donated = r.unpack(_DONATION, f"lane {i} donation") if version >= 2 else (0, 0, 0)
        _check(donor > 0 or fork == donated == 0, f"lane {i} fork and donated", (fork, donated),
               "0 for a lane without a donor", r.pos - 8)
        lanes.append(LaneInfo(n_patches, low_water, n_words, donor - 1, fork, donated))
    offset = r.pos
    _check_donations(lanes, lambda message: CorruptFile(message, offset))
    sections = [SectionInfo(r.text(f"section {i} kind", 1),
                            r.unpack(_U64, f"section {i} length")[0]) for i in range(n_sections)]
    _check(r.pos == hend, "header end", r.pos, f"{hend} (unparsed header bytes)", r.pos)
    return BswHeader(version, model_id, model_hash, SCHEMES[scheme - 1], width, height, channels,
                     seed, k, precision, tuple(lanes), tuple(sections), pixel_checksum)


def decode(data: Buffer) -> BswFile:
    """Parse and fully validate a .bsw; raises only BswFormatError subclasses. Order: magic,
    version, header CRC, header fields, file length (TruncatedFile if short, CorruptFile if
    long), file CRC, trailer length, head ranges."""
    h = peek_header(data)
    mv = memoryview(data).cast("B")
    n, total = len(mv), h.total_size
    if n < total:
        raise TruncatedFile(f"file has {n} bytes but its header announces {total}: "
                            f"{total - n} bytes missing at the end", n)
    if n > total:
        raise CorruptFile(f"{n - total} unexpected bytes after the end of the file at offset "
                          f"{total} (trailing garbage)", total)
    stored_len, stored = struct.unpack_from("<QI", mv, total - TRAILER_SIZE)
    computed = zlib.crc32(mv[:total - 4])
    if stored != computed:
        raise ChecksumMismatch(f"file CRC32 mismatch at offset {total - 4}: stored 0x{stored:08x}"
                               f", computed 0x{computed:08x}: the payload is corrupted", total - 4)
    _check(stored_len == total, "trailer total length", stored_len, str(total), total - 12)
    pos, k, lanes = h.header_size, h.head_width, []
    for i, info in enumerate(h.lanes):
        heads = np.frombuffer(mv, dtype="<u8", count=k, offset=pos)
        j = int(np.argmax((heads < HEAD_MIN) | (heads >= HEAD_END)))  # first bad head, or 0
        _check(HEAD_MIN <= int(heads[j]) < HEAD_END, f"lane {i} head {j}", int(heads[j]),
               "in [2**31, 2**63)", pos + 8 * j)
        words = np.frombuffer(mv, dtype="<u4", count=info.n_words, offset=pos + 8 * k)
        lanes.append(LanePayload(info.n_patches, info.low_water, heads, words, info.donor, info.fork, info.donated))
        pos += 8 * k + 4 * info.n_words
    sections = []
    for s in h.sections:
        sections.append(Section(s.kind, bytes(mv[pos:pos + s.length])))
        pos += s.length
    return BswFile(h.model_id, h.model_hash, h.scheme, h.width, h.height, h.channels, h.seed,
                   h.head_width, h.precision, tuple(lanes), h.pixel_checksum, tuple(sections),
                   h.format_version)
