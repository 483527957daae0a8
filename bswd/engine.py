"""The resident model on one device, coding many lanes of many images per step.

Each image plane is cut into lanes (independent ANS streams over consecutive patches). The engine
keeps a fixed number of lane slots; every step codes one patch for every busy slot, whatever image
it belongs to, and a finished lane's slot is refilled at once from the waiting lanes (continuous
batching). A lane's bytes depend only on its own patches (and, for a donated lane, its donor's): the integer
model is exact and every ANS operation acts row by row, so batch size and neighbours never change
a file.

Donated lanes: a fresh lane's first patch pops its latents from seed bits that nothing pays back
(~4 KB a lane with the default model), so independent lanes make an image larger. Instead, the
lanes of an image come in groups of ``lanes_per_donor``, and only the group's first lane starts
from seed bits. Within a group, lanes give words in a binary tree (``donation_tree``): lane 0 of
a group of 8 gives the top of its stack to lane 4 once it has pushed enough spare words, and with
them the second half of its patches not coded yet; then lanes 0 and 4 give to lanes 2 and 6, then
0, 2, 4, 6 to 1, 3, 5, 7. A receiver's first pops consume real coded bits, and the group reaches
full width after three short rounds instead of one long one. Decoding mirrors it: a receiver
decodes back to exactly the words it was given, which go back on its donor's stack when the donor
has decoded back to the fork point. Receivers given at the same fork take their words in
ascending lane order and get them back in descending order.
"""

from __future__ import annotations

import threading
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
    min_patches_per_lane: int = 32  # 8 lanes for a 512x512 image
    max_lanes_per_image: int = 256
    seed: int = DEFAULT_SEED
    lanes_per_donor: int = 8  # group size: one seeded start per 8 lanes; 1 = every lane starts from seed bits
    donation_words: int = 0  # words a donor gives each receiver (0: 1.25 x what its own first patch took)
    workers: int = 1  # threads coding at once, each with its own lane slots (CPU: one torch thread each)
    # "numpy": networks on the model's device, ANS in numba on the host; "torch": everything on the
    # model's device (codec_torch); "auto": torch when the model is on a GPU. Same bytes either way.
    backend: str = "auto"


BACKENDS = ("auto", "numpy", "torch")


@dataclass
class LaneData:
    n_patches: int
    low_water: int
    heads: np.ndarray  # uint64 [K]
    words: np.ndarray  # uint32
    donor: int = -1  # index (in its plane) of the lane whose words started this one; -1: seed bits
    fork: int = 0  # patches the donor had coded when it gave them
    donated: int = 0  # words received from the donor


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
    """Heads per lane. Each lane stores K final 64-bit heads and its first pops take K x 31 seed
    bits, so K is a per-lane cost; the compiled coder loops over symbols whatever K is, and on
    a 256x256 photo K=8 left speed unchanged and saved 0.7-4.6% of the file over K=64 (1-8 lanes)."""
    return 8


@dataclass
class _Task:
    plane: int
    lane: int
    start: int
    end: int
    done: int = 0
    info: float = 0.0
    result: LaneData | None = field(default=None, repr=False)
    donor: _Task | None = field(default=None, repr=False)
    receivers: list[_Task] = field(default_factory=list, repr=False)  # in giving order
    subtree: int = 1  # encoding: lanes its patches not coded yet are for (itself and its receivers to come)
    given: int = 0  # encoding: receivers given so far
    fork: int = -1  # receiver: patches its donor had coded when it gave (-1: not yet, when encoding)
    gift: np.ndarray | None = field(default=None, repr=False)  # receiver: the donor's words
    gift_size: int = 0  # encoding: words a donor gives each receiver (the group's root sets it)
    donated: int = 0  # receiver, decoding: how many words it must end with
    returned: bool = False  # receiver, decoding: its words are back on the donor's stack

    @property
    def n_patches(self) -> int:
        return self.end - self.start


def donation_tree(group: list[_Task]) -> None:
    """Plan who gives to whom in a group of lanes (consecutive, in patch order): the lanes [a, b)
    start as lane a alone; a gives to m = a + ceil((b - a) / 2), which takes the lanes [m, b),
    then [a, m) and [m, b) split the same way. Sets each task's receivers (giving order) and donor."""

    def split(a: int, b: int) -> None:
        if b - a < 2:
            return
        m = (a + b + 1) // 2
        group[a].receivers.append(group[m])
        group[m].donor, group[m].subtree = group[a], b - m
        split(a, m)
        split(m, b)

    group[0].subtree = len(group)
    split(0, len(group))


@dataclass
class _Queue:
    """The tasks not started yet, shared by the workers of one run (under ``cond``)."""

    waiting: deque[_Task]
    live: int  # workers still running
    stalled: int = 0  # workers waiting for another's progress (gifts, receivers finishing)
    error: BaseException | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)


class Engine:
    """Codes planes with one resident ``CodingModel`` (its networks live on one device)."""

    def __init__(self, model: CodingModel, config: EngineConfig = EngineConfig()):
        if config.backend not in BACKENDS:
            raise ValueError(f"unknown engine backend {config.backend!r}; expected one of {BACKENDS}")
        self.model = model
        self.config = config
        self._coders: dict[str, PatchCoder] = {}

    def coder(self, scheme: str) -> PatchCoder:
        """The patch coder for this engine's backend (see EngineConfig.backend), made once per
        scheme: a torch coder copies the CDF tables to the device, which every call (every daemon
        batch) would otherwise redo. Coders hold no per-call state."""
        if scheme not in self._coders:
            backend = self.config.backend
            if backend == "auto":
                backend = "torch" if self.model.nets.device.type == "cuda" else "numpy"
            if backend == "torch":
                from bswd.codec_torch import TorchPatchCoder

                self._coders[scheme] = TorchPatchCoder(self.model, scheme)
            else:
                self._coders[scheme] = PatchCoder(self.model, scheme)
        return self._coders[scheme]

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
            group = max(1, self.config.lanes_per_donor)
            for g in range(0, len(ranges), group):
                # the group's first lane spans all its patches; each gift hands a receiver a share
                # of the patches not coded yet (see _donate)
                members = ranges[g : g + group]
                lanes = [_Task(i, g, members[0][0], members[-1][1])]
                lanes += [_Task(i, g + j, -1, -1) for j in range(1, len(members))]
                donation_tree(lanes)
                tasks += lanes
        self._run(tasks, coded, planes, self.coder(scheme), progress)
        for t in sorted(tasks, key=lambda t: (t.plane, t.lane)):
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
                plane_tasks = []
                for j, lane in enumerate(c.lanes):
                    plane_tasks.append(_Task(i, j, start, start + lane.n_patches))
                    start += lane.n_patches
                if start != c.geometry.n_patches:
                    raise StreamError(f"lanes cover {start} patches, the image has {c.geometry.n_patches}")
                for t, lane in zip(plane_tasks, c.lanes):
                    if lane.donor >= 0:
                        donor = plane_tasks[lane.donor]
                        if lane.donor >= t.lane or not 1 <= lane.fork <= donor.n_patches:
                            raise StreamError(f"lane {t.lane}: donor {lane.donor} at patch {lane.fork} is not a "
                                              "valid earlier lane and fork point")
                        t.donor, t.donated, t.fork = donor, lane.donated, lane.fork
                        donor.receivers.append(t)
                tasks += plane_tasks
            self._run(tasks, coded, out, self.coder(scheme), progress, decode=True)
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
        """Code every task: ``workers`` threads, each with its own lane slots, take tasks from one
        queue. A lane's bytes do not depend on which worker codes it or next to what."""
        workers = max(1, min(self.config.workers, len(tasks)))
        n_rows = -(-min(self.config.max_rows, len(tasks)) // workers)
        # A donor is an earlier lane than its receivers. Encoding, donors go first (receivers wait
        # for their words); decoding, receivers go first, so a donor waiting in a slot for words
        # back never waits for a lane that has not started.
        queue = _Queue(deque(sorted(tasks, key=lambda t: (t.plane, -t.lane if decode else t.lane))), workers)
        args = (queue, n_rows, k, coded, planes, coder, progress, decode)
        if workers == 1:
            return self._worker(*args)
        threads = [threading.Thread(target=self._guarded_worker, args=args, name=f"bswd-coder-{i}", daemon=True)
                   for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if queue.error is not None:
            raise queue.error

    def _guarded_worker(self, queue: _Queue, *args) -> None:
        try:
            self._worker(queue, *args)
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            with queue.cond:
                queue.error = queue.error or exc
                queue.cond.notify_all()

    def _worker(self, queue: _Queue, n_rows: int, k: int, coded: list[CodedPlane], planes: list[np.ndarray],
                coder: PatchCoder, progress: Progress | None, decode: bool) -> None:
        lanes = coder.new_lanes(n_rows, k)
        reservoir = reservoir_words(self.model, coder.scheme, k)
        slots: list[_Task | None] = [None] * n_rows
        while True:
            with queue.cond:  # task hand-overs (words, patch ranges, starts) happen under the lock
                if queue.error is not None:  # another worker failed: the run is over
                    return
                busy = self._fill(queue, lanes, slots, coded, reservoir, decode)
                if not busy:
                    if not queue.waiting and all(t is None for t in slots):
                        queue.live -= 1
                        queue.cond.notify_all()
                        return
                    if queue.stalled + 1 == queue.live:  # every other worker is stalled too
                        raise StreamError("donated lanes wait on each other (inconsistent lane table)")
                    queue.stalled += 1
                    queue.cond.wait()
                    queue.stalled -= 1
                    continue
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
            with queue.cond:
                for r, t in zip(busy, active):
                    t.done += 1
                    if not decode and t.given < len(t.receivers):
                        self._donate(lanes, r, t, reservoir)
                    if t.done == t.n_patches:
                        self._finish(lanes, r, t, coded[t.plane], decode, reservoir)
                        slots[r] = None
                if progress is not None:
                    progress(len(busy))
                queue.cond.notify_all()  # gifts made or returned, slots freed: stalled workers look again

    def _fill(self, queue: _Queue, lanes: Lanes, slots: list[_Task | None], coded: list[CodedPlane],
              reservoir: int, decode: bool) -> list[int]:
        """Under the queue's lock: start waiting tasks in free slots, give words back to donors
        whose receivers have finished (decoding); returns the rows that can code a patch now."""
        for r in range(len(slots)):
            if slots[r] is None:
                t = next((t for t in queue.waiting if decode or t.donor is None or t.gift is not None), None)
                if t is None:
                    continue
                queue.waiting.remove(t)
                c = coded[t.plane]
                if decode:
                    lane = c.lanes[t.lane]
                    lanes.load(r, c.seed, t.lane, lane.low_water, lane.heads, lane.words)
                else:
                    lanes.start(r, c.seed, t.lane, reservoir)
                    if t.gift is not None:
                        lanes.put_words(r, t.gift)
                slots[r] = t
            if decode and slots[r] is not None:  # a donor whose receivers finished takes their words back
                self._give_back(lanes, r, slots[r])
        return [r for r, t in enumerate(slots) if t is not None and not self._waits(t, decode)]

    def _donate(self, lanes: Lanes, row: int, t: _Task, reservoir: int) -> None:
        """Encoding, after each patch of a lane with receivers still to give: the next receiver gets
        its words once the lane holds enough spare pushed words, or at once when coding another
        patch would leave fewer patches than lanes still to be served. With the words goes a share
        of the patches not coded yet, in proportion to the lanes each side is for: the receiver
        takes the last ones. Several receivers given at one fork take words in ascending lane order."""
        if t.gift_size == 0:  # the group's root, after its first patch: what a receiver's first patch needs
            used = reservoir - int(lanes.low_water[row])
            t.gift_size = self.config.donation_words or used + used // 4 + 16
        # words it can spare: it keeps a cushion of one gift above its seed bits (the coded words
        # above them, pushed or given to it), so its own next pops do not reach seed bits either,
        # and never fewer than a fresh lane's reservoir, so they can never run dry
        low = min(int(lanes.low_water[row]), reservoir)
        have = int(lanes.ptr[row]) - max(reservoir, low + t.gift_size)
        forks = []
        while t.given < len(t.receivers):
            r = t.receivers[t.given]
            left = t.end - (t.start + t.done)
            others = t.subtree - r.subtree - 1  # lanes besides t left to serve from t's share
            if have < (len(forks) + 1) * t.gift_size and left > others + r.subtree:
                break
            share = min(max(round(left * r.subtree / t.subtree), r.subtree), left - others)
            r.start, r.end = t.end - share, t.end
            t.end = r.start
            t.subtree -= r.subtree
            t.given += 1
            forks.append(r)
        each = min(t.gift_size, max(have, 0) // len(forks)) if forks else 0
        for r in sorted(forks, key=lambda r: r.lane):
            r.fork, r.gift_size = t.done, t.gift_size
            r.gift = lanes.take_words(row, each)

    @staticmethod
    def _due(t: _Task) -> list[_Task]:
        """Decoding: the receivers whose words go back on t's stack now (t is back at their fork)."""
        return [r for r in t.receivers if not r.returned and r.fork == t.n_patches - t.done]

    @classmethod
    def _waits(cls, t: _Task, decode: bool) -> bool:
        """Decoding: a donor back at a fork point waits for those receivers' words."""
        return decode and bool(cls._due(t))

    @classmethod
    def _give_back(cls, lanes: Lanes, row: int, t: _Task) -> None:
        due = cls._due(t)
        if due and all(r.gift is not None for r in due):
            for r in sorted(due, key=lambda r: r.lane, reverse=True):  # the last to take, from the top
                lanes.put_words(row, r.gift)
                r.returned = True

    @staticmethod
    def _finish(lanes: Lanes, row: int, t: _Task, c: CodedPlane, decode: bool, reservoir: int) -> None:
        if decode:
            if t.donor is not None:
                gift = lanes.is_initial_below(row, c.seed, t.lane, reservoir)
                if gift is None or len(gift) != t.donated:
                    raise StreamError(f"lane {t.lane} did not decode back to its initial state and the "
                                      f"{t.donated} words of its donor (corrupt payload or a different model)")
                t.gift = gift
            elif not lanes.is_initial(row, c.seed, t.lane):
                raise StreamError(f"lane {t.lane} did not decode back to its initial state "
                                  "(corrupt payload or a different model)")
        else:
            low, heads, words = lanes.payload(row)
            donor = -1 if t.donor is None else t.donor.lane
            t.result = LaneData(t.n_patches, low, heads, words, donor, max(t.fork, 0),
                                0 if t.gift is None else len(t.gift))
