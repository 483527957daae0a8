"""The resident model on one device, coding many lanes of many images per step.

Each image plane is cut into lanes (independent ANS streams over consecutive patches). The engine
keeps a fixed number of lane slots; every step codes one patch for every busy slot, whatever image
it belongs to, and a finished lane's slot is refilled at once from the waiting lanes (continuous
batching). A lane's bytes depend only on its own patches: the integer model is exact and every
ANS operation acts row by row, so batch size and neighbours never change a file.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bswd.ans import Lanes
from bswd.codec import Geometry, PatchCoder, extract_patch, lane_ranges, patch_mask, reservoir_words
from bswd.model.quant import CodingModel

DEFAULT_SEED = 0x6273_7764_5345_4544  # "bswdSEED"
Progress = Callable[[int], None]  # called with the number of patches just coded


class StreamError(ValueError):
    """A lane did not decode back to its initial state: the payload is corrupt or the model differs."""


@dataclass(frozen=True)
class EngineConfig:
    max_rows: int = 64  # lanes coded per step
    min_patches_per_lane: int = 256  # each lane costs ~5 KB of start-up bits: 1 lane up to 512x512 (1.6% overhead)
    max_lanes_per_image: int = 256
    seed: int = DEFAULT_SEED


@dataclass
class LaneData:
    n_patches: int
    low_water: int
    heads: np.ndarray  # uint64 [K]
    words: np.ndarray  # uint32


@dataclass
class CodedPlane:
    """One H x W x C plane coded by the model: what the container stores, plus measurements."""

    height: int
    width: int
    channels: int
    scheme: str
    seed: int
    head_width: int
    lanes: list[LaneData]
    info_bits: float = 0.0  # ideal cost under the integer model (pushes minus pops)

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.height, self.width)

    @property
    def stored_bits(self) -> int:
        return sum(64 * len(lane.heads) + 32 * len(lane.words) for lane in self.lanes)


def head_width_for(n_patches: int) -> int:
    """Heads per lane: fewer for tiny images, where the final head states dominate the size."""
    return 16 if n_patches <= 4 else 64


@dataclass
class _Task:
    plane: int
    lane: int
    start: int
    end: int
    done: int = 0
    info: float = 0.0
    result: LaneData | None = field(default=None, repr=False)


class Engine:
    """Codes planes with one resident ``CodingModel`` (its networks live on one device)."""

    def __init__(self, model: CodingModel, config: EngineConfig = EngineConfig()):
        self.model = model
        self.config = config

    def lanes_for(self, n_patches: int) -> int:
        c = self.config
        return max(1, min(c.max_lanes_per_image, n_patches // c.min_patches_per_lane))

    # ---- public API ------------------------------------------------------------------------------
    def encode(self, planes: list[np.ndarray], scheme: str = "bitswap",
               progress: Progress | None = None, seeds: list[int] | None = None) -> list[CodedPlane]:
        """Code each H x W x C uint8 plane (C in {1, 3}); ``seeds`` overrides the initial-bits
        seed per plane (default: the engine's)."""
        for p in planes:
            if p.dtype != np.uint8 or p.ndim != 3 or p.shape[2] not in (1, 3) or 0 in p.shape:
                raise ValueError(f"planes must be non-empty H x W x 1|3 uint8 arrays, got {p.dtype} {p.shape}")
        coded = []
        tasks = []
        for i, p in enumerate(planes):
            geom = Geometry(p.shape[0], p.shape[1])
            k = head_width_for(geom.n_patches)
            ranges = lane_ranges(geom.n_patches, self.lanes_for(geom.n_patches))
            seed = self.config.seed if seeds is None else seeds[i]
            coded.append(CodedPlane(geom.height, geom.width, p.shape[2], scheme, seed, k, []))
            tasks += [_Task(i, j, s, e) for j, (s, e) in enumerate(ranges)]
        self._run(tasks, coded, planes, PatchCoder(self.model, scheme), progress)
        for t in tasks:
            coded[t.plane].lanes.append(t.result)
            coded[t.plane].info_bits += t.info
        return coded

    def decode(self, coded: list[CodedPlane], progress: Progress | None = None) -> list[np.ndarray]:
        """Inverse of ``encode``; raises StreamError when a lane does not end where it began."""
        out = [np.zeros((c.height, c.width, c.channels), dtype=np.uint8) for c in coded]
        for scheme in sorted({c.scheme for c in coded}):
            tasks = []
            for i, c in enumerate(coded):
                if c.scheme != scheme:
                    continue
                start = 0
                for j, lane in enumerate(c.lanes):
                    tasks.append(_Task(i, j, start, start + lane.n_patches))
                    start += lane.n_patches
                if start != c.geometry.n_patches:
                    raise StreamError(f"lanes cover {start} patches, the image has {c.geometry.n_patches}")
            self._run(tasks, coded, out, PatchCoder(self.model, scheme), progress, decode=True)
        return out

    # ---- continuous batching -------------------------------------------------------------------
    def _run(self, tasks: list[_Task], coded: list[CodedPlane], planes: list[np.ndarray],
             coder: PatchCoder, progress: Progress | None, decode: bool = False) -> None:
        by_width: dict[int, list[_Task]] = {}
        for t in tasks:
            by_width.setdefault(coded[t.plane].head_width, []).append(t)
        for k, group in sorted(by_width.items()):
            self._run_group(group, k, coded, planes, coder, progress, decode)

    def _run_group(self, tasks: list[_Task], k: int, coded: list[CodedPlane], planes: list[np.ndarray],
                   coder: PatchCoder, progress: Progress | None, decode: bool) -> None:
        n_rows = min(self.config.max_rows, len(tasks))
        lanes = Lanes(n_rows, k, self.model.cfg.precision)
        reservoir = reservoir_words(self.model, coder.scheme, k)
        waiting = deque(tasks)
        slots: list[_Task | None] = [None] * n_rows
        while waiting or any(s is not None for s in slots):
            for r in range(n_rows):
                if slots[r] is None and waiting:
                    t = waiting.popleft()
                    c = coded[t.plane]
                    if decode:
                        lane = c.lanes[t.lane]
                        lanes.load(r, c.seed, t.lane, lane.low_water, lane.heads, lane.words)
                    else:
                        lanes.start(r, c.seed, t.lane, reservoir)
                    slots[r] = t
            busy = [r for r in range(n_rows) if slots[r] is not None]
            rows = np.asarray(busy, dtype=np.int64)
            active = [slots[r] for r in busy]
            # the patch each busy lane codes now: ascending when encoding, descending when decoding
            index = [(t.end - 1 - t.done) if decode else (t.start + t.done) for t in active]
            geoms = [coded[t.plane].geometry for t in active]
            chans = [coded[t.plane].channels for t in active]
            extents = [g.extent(i)[2:] for g, i in zip(geoms, index)]
            mask = np.stack([patch_mask(h, w, c) for (h, w), c in zip(extents, chans)])
            if decode:
                x = coder.decode(lanes, rows, mask, extents, chans)
                for t, g, i, xi, c in zip(active, geoms, index, x, chans):
                    y0, x0, h, w = g.extent(i)
                    planes[t.plane][y0 : y0 + h, x0 : x0 + w] = xi[:c, :h, :w].transpose(1, 2, 0)
            else:
                x = np.stack([extract_patch(planes[t.plane], g, i) for t, g, i in zip(active, geoms, index)])
                info = coder.encode(lanes, rows, x, mask)
                for t, bits in zip(active, info):
                    t.info += float(bits)
            for r, t in zip(busy, active):
                t.done += 1
                if t.done == t.end - t.start:
                    self._finish(lanes, r, t, coded[t.plane], decode)
                    slots[r] = None
            if progress is not None:
                progress(len(busy))

    @staticmethod
    def _finish(lanes: Lanes, row: int, t: _Task, c: CodedPlane, decode: bool) -> None:
        if decode:
            if not lanes.is_initial(row, c.seed, t.lane):
                raise StreamError(f"lane {t.lane} did not decode back to its initial state "
                                  "(corrupt payload or a different model)")
        else:
            low, heads, words = lanes.payload(row)
            t.result = LaneData(t.end - t.start, low, heads, words)
