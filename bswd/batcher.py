"""Micro-batching jobs into engine calls: one thread per engine (device).

A batcher claims queued jobs from the store, prepares each (reads the spooled input, splits the
image or parses the .bsw; a bad input fails its own job here, with the reason), and collects them
until their lanes reach ``max_lanes`` or ``max_delay_s`` has passed since the first one. Then one
``compress_images`` (or ``decompress_many``) call codes all their planes together, so their patches
share engine steps. A job's bytes never depend on its neighbours (the engine is exact per lane;
``tests/test_daemon_batching.py`` checks it, BUG-03).

Outputs are verified by decoding (when ``verify``) before ``outputs.publish`` writes them, and a
watched original is moved or deleted only after that. If a call raises, the batch is retried job
by job so one bad job cannot fail its neighbours. ``abort`` (a drain out of grace) stops an engine
call at the next step and puts the batch's jobs back in the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bswd import container
from bswd.codec import Geometry
from bswd.engine import Engine
from bswd.files import compress_images, decompress_many, plane_files
from bswd.images import ImageInputError, SplitImage, split_image
from bswd.jobs import Job, JobStore
from bswd.metrics import Metrics
from bswd.outputs import apply_policy, compressed_name, decompressed_name, publish

T = TypeVar("T")


class Aborted(Exception):
    """The engine call was stopped at a step boundary (drain out of grace)."""


@dataclass(frozen=True)
class BatchSettings:
    max_lanes: int = 64
    max_delay_s: float = 0.02
    verify: bool = True
    skip_lossy: bool = True
    max_pixels: int = 89_478_485
    max_bytes: int = 256 * 1024 * 1024


@dataclass
class _Work:
    job: Job
    lanes: int
    pixels: int = 0
    patches: int = 0
    subpixels: int = 0
    split: SplitImage | None = None
    bsw: container.BswFile | None = None
    out: bytes = b""
    ext: str = ".bsw"
    finished: bool = False


class Batcher:
    """Runs jobs from ``store`` on ``engine``; ``run`` is the thread body."""

    def __init__(self, engine: Engine, store: JobStore, metrics: Metrics, settings: BatchSettings,
                 device: str, log: logging.Logger, wake: threading.Event,
                 done_dir_for: Callable[[str], Path] = lambda watch: Path(watch) / ".done",
                 clock: Callable[[], float] = time.monotonic):
        self.engine, self.store, self.metrics, self.settings = engine, store, metrics, settings
        self.device, self.log, self.wake = device, log, wake
        self._done_dir_for = done_dir_for
        self._clock = clock
        metrics.device_busy.labels(device)  # exported as 0 from the start

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event, abort: threading.Event) -> None:
        while not stop.is_set() and not abort.is_set():
            batch = self.collect(stop)
            if batch:
                self.process(batch, abort)

    def collect(self, stop: threading.Event) -> list[_Work]:
        """Claim and prepare jobs until their lanes fill a step or the delay runs out."""
        s = self.settings
        batch: list[_Work] = []
        lanes = 0
        deadline: float | None = None
        while lanes < s.max_lanes and not stop.is_set():
            jobs = self.store.claim(s.max_lanes - lanes)  # every job has >= 1 lane
            for job in jobs:
                work = self._prepare(job)
                if work is not None:
                    batch.append(work)
                    lanes += work.lanes
            if batch and deadline is None:
                deadline = self._clock() + s.max_delay_s
            if jobs:
                continue
            if batch:
                left = deadline - self._clock()  # type: ignore[operator]
                if left <= 0:
                    break
                self.wake.wait(left)
            else:
                self.wake.wait(0.25)
            self.wake.clear()
        return batch

    def process(self, batch: list[_Work], abort: threading.Event) -> None:
        try:
            comp = [w for w in batch if w.job.op == "compress"]
            dec = [w for w in batch if w.job.op == "decompress"]
            if comp:
                self._compress(comp, abort)
            if dec:
                self._decompress(dec, abort)
        except Aborted:
            back = [w.job.id for w in batch if not w.finished]
            self.store.requeue(back)
            self.metrics.jobs_in_flight.dec(len(back))
            self.log.warning("engine call stopped by drain; jobs back in the queue",
                             extra={"fields": {"jobs": back}})
        except Exception:  # a bug: fail the batch's jobs loudly rather than leave them running
            self.log.exception("batch failed unexpectedly")
            for w in batch:
                if not w.finished:
                    self._end(w, "failed", error="internal error (see the daemon log)")

    # ---- preparing one job -------------------------------------------------------------------
    def _prepare(self, job: Job) -> _Work | None:
        self.metrics.jobs_in_flight.inc()
        if job.started is not None:
            self.metrics.queue_wait.observe(max(0.0, job.started - job.created))
        work = _Work(job, 1)
        try:
            data = self.store.spool_path(job).read_bytes()
        except OSError as exc:
            self._end(work, "failed", error=f"spooled input unreadable: {exc}")
            return None
        if len(data) > self.settings.max_bytes:
            self._end(work, "failed", error=f"input of {len(data):,} bytes exceeds the limit of "
                                            f"{self.settings.max_bytes:,}")
            return None
        try:
            if job.op == "compress":
                return self._prepare_compress(work, data)
            return self._prepare_decompress(work, data)
        except ImageInputError as exc:
            self._end(work, "failed", error=exc.reason)
        except container.BswFormatError as exc:
            self._end(work, "failed", error=f"not a valid .bsw file: {exc}")
        except Exception as exc:  # an input that trips an unexpected error fails only its job
            self.log.exception("preparing job %s failed", job.id)
            self._end(work, "failed", error=f"cannot read input: {exc!r}")
        return None

    def _prepare_compress(self, work: _Work, data: bytes) -> _Work | None:
        split = split_image(data, name=work.job.name, max_pixels=self.settings.max_pixels)
        if split.lossy_source and self.settings.skip_lossy:
            self._end(work, "skipped", error=f"{split.source_format} is already lossy; storing its "
                      "pixels losslessly is usually larger than the file (skip_lossy_sources)")
            return None
        work.split = split
        self._measure(work, [p.shape for p in split.planes])
        work.lanes = max(1, sum(self.engine.lanes_for(Geometry(h, w).n_patches)
                                for h, w, _ in (p.shape for p in split.planes)))
        return work

    def _prepare_decompress(self, work: _Work, data: bytes) -> _Work | None:
        f = container.decode(data)
        planes = plane_files(f)
        model = self.engine.model
        for p in planes:
            if p.channels and p.model_hash != model.sha256:  # stored planes decode without the model
                self._end(work, "failed", error=f"written with model {p.model_id!r} "
                          f"({p.model_hash.hex()[:16]}...), this daemon has {model.model_id!r}")
                return None
        work.bsw = f
        self._measure(work, [(p.height, p.width, p.channels) for p in planes if p.channels])
        work.lanes = max(1, sum(len(p.lanes) for p in planes))
        return work

    @staticmethod
    def _measure(work: _Work, shapes: Sequence[tuple[int, ...]]) -> None:
        work.pixels = sum(h * w for h, w, _ in shapes)
        work.subpixels = sum(h * w * c for h, w, c in shapes)
        work.patches = sum(Geometry(h, w).n_patches for h, w, _ in shapes)

    # ---- coding ------------------------------------------------------------------------------
    def _progress(self, abort: threading.Event) -> Callable[[int], None]:
        """Per engine step: lanes, fill, duration, device time; stops the call on abort."""
        last = [self._clock()]
        m, cap = self.metrics, self.engine.config.max_rows

        def step(lanes: int) -> None:
            now = self._clock()
            dt, last[0] = now - last[0], now
            m.step_lanes.observe(lanes)
            m.batch_fill.observe(min(1.0, lanes / cap))
            m.step_seconds.observe(dt)
            m.device_busy.labels(self.device).inc(dt)
            if abort.is_set():
                raise Aborted()
        return step

    def _isolate(self, works: list[_Work], call: Callable[[list[_Work]], list[T]]) -> list[T | Exception]:
        """``call(works)``; if it raises, call each job alone so only the bad ones fail."""
        try:
            return list(call(works))
        except Aborted:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever one job trips must not fail the others
            if len(works) == 1:
                return [exc]
            return [r for w in works for r in self._isolate([w], call)]

    def _compress(self, works: list[_Work], abort: threading.Event) -> None:
        coded = self._isolate(works, lambda ws: compress_images(
            self.engine, [w.split for w in ws], "bitswap", self._progress(abort)))  # type: ignore[misc]
        good = []
        for w, r in zip(works, coded):
            if isinstance(r, Exception):
                self._end(w, "failed", error=f"compression failed: {r}")
            else:
                w.out = r.data
                good.append(w)
        if good and self.settings.verify:
            back = self._isolate(good, lambda ws: decompress_many(
                self.engine, [container.decode(w.out) for w in ws], self._progress(abort)))
            good = [w for w, b in zip(good, back) if self._verified(w, b)]
        for w in good:
            self._publish(w, compressed_name(w.job.name))

    def _verified(self, w: _Work, back: tuple[bytes, str] | Exception) -> bool:
        assert w.split is not None
        why = ""
        if isinstance(back, Exception):
            why = f"decoding the output failed: {back}"
        else:
            try:
                again = split_image(back[0], name=w.job.name, max_pixels=self.settings.max_pixels,
                                    verify=False)
            except Exception as exc:  # noqa: BLE001 - any error here is a verification failure
                again = None
                why = f"the decoded file does not reopen: {exc}"
            if again is not None and (len(again.planes) != len(w.split.planes) or not all(
                    np.array_equal(a, b) for a, b in zip(again.planes, w.split.planes))):
                why = "decoded pixels differ from the input"
        if why:
            self.metrics.verify_failures.inc()
            self.log.error("verification failed", extra={"fields": {"job": w.job.id, "reason": why}})
            self._end(w, "failed", error=f"verification failed, nothing written: {why}")
            return False
        return True

    def _decompress(self, works: list[_Work], abort: threading.Event) -> None:
        images = self._isolate(works, lambda ws: decompress_many(
            self.engine, [w.bsw for w in ws], self._progress(abort)))  # type: ignore[misc]
        for w, r in zip(works, images):
            if isinstance(r, Exception):
                self._end(w, "failed", error=f"decompression failed: {r}")
                continue
            w.out, w.ext = r
            self._publish(w, decompressed_name(w.job.name, w.ext))

    # ---- results -----------------------------------------------------------------------------
    def _publish(self, w: _Work, out_name: str) -> None:
        job = w.job
        target = Path(job.target) / out_name if job.target else self.store.result_path(job, w.ext)
        try:
            written = publish(target, w.out)
        except OSError as exc:
            self._end(w, "failed", error=f"cannot write {target}: {exc}")
            return
        notes = [f"{target.name} is another file: wrote {written.name}"] if written != target else []
        if job.source and job.policy and job.watch:
            try:
                notes.append(apply_policy(Path(job.source), job.source_ident, job.policy,
                                          self._done_dir_for(job.watch)))
            except OSError as exc:
                notes.append(f"policy {job.policy} failed: {exc}")
                self.log.warning(notes[-1], extra={"fields": {"job": job.id}})
        bpd = 8 * len(w.out) / w.subpixels if job.op == "compress" and w.subpixels else None
        self._end(w, "done", output=str(written), output_bytes=len(w.out), pixels=w.pixels,
                  patches=w.patches, bits_per_dim=bpd, note="; ".join(filter(None, notes)))

    def _end(self, w: _Work, state: str, note: str = "", **values: Any) -> None:
        job = self.store.finish(w.job.id, state, **values)
        w.finished = True
        m = self.metrics
        m.jobs_in_flight.dec()
        m.job_done(job.op, {"done": "ok"}.get(state, state))
        if job.finished is not None:
            m.job_seconds.observe(max(0.0, job.finished - job.created))
        fields: dict[str, Any] = {"job": job.id, "op": job.op, "name": job.name, "state": state}
        if state == "done":
            m.input_bytes.labels(job.op).inc(job.input_bytes)
            m.output_bytes.labels(job.op).inc(job.output_bytes or 0)
            m.pixels.labels(job.op).inc(w.pixels)
            m.patches.labels(job.op).inc(w.patches)
            if job.bits_per_dim is not None:
                m.bits_per_dim.observe(job.bits_per_dim)
            fields.update(input_bytes=job.input_bytes, output_bytes=job.output_bytes,
                          output=job.output, bits_per_dim=job.bits_per_dim, note=note or None)
            self.log.info("job done", extra={"fields": fields})
        else:
            fields["reason"] = job.error
            self.log.warning(f"job {state}", extra={"fields": fields})
