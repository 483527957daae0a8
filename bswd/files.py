"""Whole files in, whole files out: image bytes <-> .bsw bytes, many images per engine call.

This is the one place that joins images.py (what a file holds), engine.py (coding planes) and
container.py (the .bsw bytes). It is used by the CLI and the daemon alike. It does no file I/O:
callers read and write (atomically) themselves.

A .bsw holds the first model plane in its lanes; further planes (frames) are nested .bsw files in
"plane" sections; the image's side data is a "side" section. A plane whose coded size would exceed
JPEG XL lossless or raw is stored that way instead ("stored-jxl" / "stored" sections), so a file
never grows past the smaller of the two by more than the header and side data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bswd import container
from bswd.container import BswFile, LanePayload, Section
from bswd.engine import CodedPlane, Engine, LaneData
from bswd.images import SplitImage, join_image, pixel_checksum

SIDE, PLANE, STORED, STORED_JXL, ABOUT = "side", "plane", "stored", "stored-jxl", "about"
FALLBACKS = (STORED, STORED_JXL)


class IntegrityError(ValueError):
    """Decoded pixels do not match the checksum recorded at compression time."""


class ModelMismatch(ValueError):
    """The .bsw was written with a different model than the one given."""


@dataclass(frozen=True)
class Compressed:
    data: bytes  # the .bsw file
    raw_bytes: int  # bytes of the model planes' raw pixels
    subpixels: int  # samples coded by the model (H*W*C over planes)
    info_bits: float  # ideal cost of the model-coded planes under the integer model
    model_bits: int  # bits the file spends on model-coded lanes (heads + words)
    fallback_planes: int = 0  # planes stored raw or as JPEG XL because the model coded them larger
    model_only_bits: int = 0  # what the model's lanes for every plane would have taken


def content_checksum(planes: list[np.ndarray], side: bytes) -> bytes:
    """SHA-256 over the model planes' pixels and the side data (metadata, classical parts), so
    decoding verifies everything the rebuilt file is made of, not only the model's pixels."""
    return hashlib.sha256(pixel_checksum(planes) + hashlib.sha256(side).digest()).digest()


def _fallback(plane: np.ndarray) -> Section:
    """The smaller of raw pixels and JPEG XL lossless, for planes the model codes worse.

    Where the model loses (a weak model, tiny or synthetic images) the file still never grows
    past what a good classical codec gives; `bswd inspect` says which part used what."""
    c = plane.shape[2]
    raw = Section(STORED, bytes([c]) + np.ascontiguousarray(plane).tobytes())
    try:
        import imagecodecs

        jxl = bytes(imagecodecs.jpegxl_encode(plane[..., 0] if c == 1 else plane, lossless=True, effort=7))
    except Exception:  # no JPEG XL in this imagecodecs build, or a shape it refuses: raw it is
        return raw
    return Section(STORED_JXL, bytes([c]) + jxl) if len(jxl) + 1 < len(raw.data) else raw


def _plane_file(engine: Engine, coded: CodedPlane, plane: np.ndarray, checksum: bytes,
                sections: tuple[Section, ...], fallback: Section | None) -> BswFile:
    model = engine.model
    h, w, c = plane.shape
    if fallback is not None:
        stored = fallback
        return BswFile(model.model_id, model.sha256, "bitswap", w, h, 0, engine.config.seed, 1,
                       model.cfg.precision, (), checksum, (stored, *sections))
    lanes = tuple(LanePayload(ln.n_patches, ln.low_water, ln.heads, ln.words, ln.donor, ln.fork, ln.donated)
                  for ln in coded.lanes)
    return BswFile(model.model_id, model.sha256, coded.scheme, w, h, c, coded.seed, coded.head_width,
                   model.cfg.precision, lanes, checksum, sections)


def compress_images(engine: Engine, images: list[SplitImage], scheme: str = "bitswap",
                    progress: Callable[[int], None] | None = None,
                    allow_stored: bool = True) -> list[Compressed]:
    """Compress many split images in one engine run, so their patches share batches.

    ``allow_stored=False`` keeps model coding even where raw storage would be smaller (tests)."""
    flat = [p for im in images for p in im.planes]
    coded = engine.encode(flat, scheme, progress) if flat else []
    out = []
    pos = 0
    for im in images:
        planes = list(im.planes)
        mine = coded[pos : pos + len(planes)]
        pos += len(planes)
        checksum = content_checksum(planes, im.side)
        fallbacks = [_fallback(p) if allow_stored else None for p in planes]
        fallbacks = [fb if fb is not None and 8 * len(fb.data) < c.stored_bits else None
                     for fb, c in zip(fallbacks, mine)]
        nested = tuple(Section(PLANE, container.encode(_plane_file(engine, c, p, checksum, (), fb)))
                       for c, p, fb in zip(mine[1:], planes[1:], fallbacks[1:]))
        about = "\n".join(im.description).encode("utf-8", "replace")
        sections = (Section(SIDE, im.side), Section(ABOUT, about), *nested)
        if planes:
            f = _plane_file(engine, mine[0], planes[0], checksum, sections, fallbacks[0])
        else:
            m = engine.model
            f = BswFile(m.model_id, m.sha256, "bitswap", 1, 1, 0, engine.config.seed, 1,
                        m.cfg.precision, (), checksum, sections)
        used = [c for c, fb in zip(mine, fallbacks) if fb is None]
        out.append(Compressed(container.encode(f), sum(p.size for p in planes),
                              sum(p.size for p in planes), sum(c.info_bits for c in used),
                              sum(c.stored_bits for c in used), sum(fb is not None for fb in fallbacks),
                              sum(c.stored_bits for c in mine)))
    return out


def _to_coded(f: BswFile) -> CodedPlane:
    lanes = [LaneData(ln.n_patches, ln.low_water, ln.heads, ln.words, ln.donor, ln.fork, ln.donated) for ln in f.lanes]
    return CodedPlane(f.height, f.width, f.channels, f.scheme, f.seed, f.head_width, lanes)


def _stored_plane(f: BswFile) -> np.ndarray | None:
    for s in f.sections:
        if s.kind not in FALLBACKS:
            continue
        c = s.data[0] if s.data else 0
        shape = (f.height, f.width, c)
        if s.kind == STORED:
            if c not in (1, 3) or len(s.data) != 1 + f.width * f.height * c:
                raise container.CorruptFile(f"stored plane has {len(s.data)} bytes for {f.width}x{f.height}x{c}")
            return np.frombuffer(s.data, np.uint8, offset=1).reshape(shape).copy()
        try:
            import imagecodecs

            plane = np.asarray(imagecodecs.jpegxl_decode(s.data[1:]))
        except Exception as exc:
            raise container.CorruptFile(f"JPEG XL plane cannot be decoded: {exc}") from exc
        plane = plane.reshape(plane.shape[0], plane.shape[1], -1)
        if plane.shape != shape or plane.dtype != np.uint8:
            raise container.CorruptFile(f"JPEG XL plane is {plane.dtype} {plane.shape}, expected {shape}")
        return plane
    return None


def stored_channels(f: BswFile) -> int:
    """Channels of a plane stored raw in this file, 0 if it has none."""
    return next((s.data[0] for s in f.sections if s.kind in FALLBACKS and s.data), 0)


def about_lines(f: BswFile) -> list[str]:
    """What coded each part of the image (written at compression for `bswd inspect`)."""
    for s in f.sections:
        if s.kind == ABOUT:
            return s.data.decode("utf-8", "replace").splitlines()
    return []


def plane_files(f: BswFile) -> list[BswFile]:
    """The main plane file followed by every nested plane file."""
    return [f] + [container.decode(s.data) for s in f.sections if s.kind == PLANE]


def side_data(f: BswFile) -> bytes:
    for s in f.sections:
        if s.kind == SIDE:
            return s.data
    raise container.CorruptFile("the file has no side-data section")


def needs_model(f: BswFile) -> bool:
    """True if some plane of the file is model-coded; a file whose planes are all stored (JPEG XL
    or raw) decodes without any model."""
    return any(p.channels for p in plane_files(f))


def decompress_many(engine: Engine | None, files: list[BswFile],
                    progress: Callable[[int], None] | None = None) -> list[tuple[bytes, str]]:
    """Decode several parsed .bsw files in one engine run; returns (image bytes, extension) each.
    ``engine`` may be None when no file needs a model (``needs_model``)."""
    per_file = [plane_files(f) for f in files]
    todo: list[CodedPlane] = []
    for planes in per_file:
        for p in planes:
            if not p.channels:  # stored: no model involved, whatever model the file names
                continue
            if engine is None:
                raise ModelMismatch(f"model-coded with model {p.model_id!r}, and no model was loaded")
            model = engine.model
            if p.model_hash != model.sha256:
                raise ModelMismatch(f"written with model {p.model_id!r} ({p.model_hash.hex()[:16]}...), "
                                    f"not {model.model_id!r} ({model.sha256.hex()[:16]}...)")
            if p.precision != model.cfg.precision:
                raise ModelMismatch(f"file precision {p.precision} differs from the model's {model.cfg.precision}")
            todo.append(_to_coded(p))
    decoded = iter(engine.decode(todo, progress) if todo and engine is not None else [])
    out = []
    for f, planes in zip(files, per_file):
        arrays = []
        for p in planes:
            stored = _stored_plane(p)
            if stored is not None:
                arrays.append(stored)
            elif p.channels:
                arrays.append(next(decoded))
        side = side_data(f)
        if content_checksum(arrays, side) != f.pixel_checksum:
            raise IntegrityError("decoded image does not match the checksum recorded at compression")
        out.append(join_image(arrays, side))
    return out
