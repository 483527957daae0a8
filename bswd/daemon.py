"""``bswd serve``: assembles the store, engines, batchers, watched folders, front end and metrics,
and runs the daemon's lifecycle.

Start-up: open the job store (unfinished jobs from a crash go back to the queue), start /healthz
and /metrics, bind the ROUTER endpoint, load the model once per device and warm it up (one
compress + decompress), start one batcher thread per engine and the watched folders, then
/readyz turns 200 and systemd gets ``READY=1``.

Signals: SIGTERM or SIGINT (or ``bswctl drain``) drains: /readyz fails at once, intake stops
(submits answer ``draining``, watchers stop), queued and running jobs are finished within
``drain_grace_s``; past the grace, the engines stop at the next step and unfinished jobs stay queued
for the next start. Then the process exits 0. SIGHUP re-reads the config file and applies its
watched folders (other changes need a restart and are logged).

Logs are JSON lines on stderr (journald keeps them as they are).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import CollectorRegistry

from bswd.batcher import Batcher, BatchSettings
from bswd.config import ConfigError, DaemonConfig, WatchFolder
from bswd.jobs import JobStore, QueueFull
from bswd.metrics import Health, Metrics, MetricsServer, wipe_multiproc_dir
from bswd.outputs import file_ident
from bswd.server import FrontEnd, Requests, read_limited
from bswd.watcher import FolderWatcher

PRUNE_EVERY_S = 600.0  # how often expired results are looked for


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bswd")
    except PackageNotFoundError:
        return "0+unknown"


VERSION = _version()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def make_logger(level: str, stream: Any = None) -> logging.Logger:
    log = logging.getLogger("bswd")
    log.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
    return log


def sd_notify(message: str, env: Mapping[str, str]) -> bool:
    """Send ``message`` to systemd's NOTIFY_SOCKET (a no-op when it is not set)."""
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def expand_devices(devices: tuple[str, ...]) -> list[str]:
    """``auto`` -> every visible GPU, else the CPU; duplicates removed, order kept."""
    import torch

    out: list[str] = []
    for d in devices:
        if d == "auto":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            out += [f"cuda:{i}" for i in range(n)] or ["cpu"]
        else:
            out.append(d)
    return list(dict.fromkeys(out))


class StateDirBusy(RuntimeError):
    """Another bswd serve holds the state folder."""


def lock_state_dir(state_dir: Path):
    """Hold an exclusive lock on ``state_dir`` for the daemon's lifetime (released at exit).

    Two daemons on one job table would both resume and run the same jobs; the second one must
    refuse to start before it touches anything."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    fh = open(state_dir / "daemon.lock", "a+")  # noqa: SIM115 - kept open on purpose
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise StateDirBusy(f"state folder {state_dir} is in use by another bswd serve (pid {holder}); "
                           "give each daemon its own --state") from exc
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


class Daemon:
    def __init__(self, config: DaemonConfig, reload: Callable[[], DaemonConfig], log: logging.Logger,
                 env: Mapping[str, str] | None = None, registry: CollectorRegistry | None = None,
                 ctx: zmq.Context | None = None, clock: Callable[[], float] = time.monotonic):
        self.config, self._reload, self.log = config, reload, log
        self.env = os.environ if env is None else env
        self.registry = registry or CollectorRegistry()
        self.ctx = ctx or zmq.Context()
        self._clock = clock
        stale = wipe_multiproc_dir(self.env)
        if stale:
            log.warning("removed stale prometheus multiprocess files (bswd is one process)",
                        extra={"fields": {"files": [str(p) for p in stale]}})
        self.metrics = Metrics(self.registry, VERSION)
        self._state_lock = lock_state_dir(Path(config.state_dir))
        self.store = JobStore(config.state_dir)
        self.health = Health(queue_depth=self.store.queued_count,
                             queue_high_water=max(1, int(config.queue_max * config.ready_high_water)))
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.watchers: dict[WatchFolder, FolderWatcher] = {}
        self.threads: list[threading.Thread] = []
        self.devices: list[str] = []
        self.model_desc: dict[str, str] = {}
        self._drain_since: float | None = None
        self._hup = False
        self._started = clock()

    # ---- intake from watched folders ---------------------------------------------------------
    def take(self, folder: WatchFolder, path: Path) -> bool:
        ident = file_ident(path)
        key = f"watch:{path}:{ident}"
        if self.store.by_key(key) is not None:
            return True
        if self._drain_since is not None:
            return False
        limit = self.config.limits.max_bytes
        size = int(ident.split(":", 1)[0])
        if size > limit:
            job = self.store.record_failed(folder.op, path.name, f"{size:,} bytes exceeds the limit of "
                                           f"{limit:,}", key=key, source=str(path), input_bytes=size)
            self.metrics.job_done(folder.op, "failed")
            self.log.warning("job failed", extra={"fields": {"job": job.id, "reason": job.error}})
            return True
        data = read_limited(path, limit)
        if file_ident(path) != ident:
            return False  # changed while we read it: look again later
        try:
            job, new = self.store.submit(folder.op, path.name, data, key=key, source=str(path),
                                         source_ident=ident, target=str(folder.output),
                                         watch=str(folder.input), policy=folder.policy,
                                         queue_max=self.config.queue_max)
        except QueueFull:
            return False
        if new:
            self.wake.set()
            self.log.info("job accepted", extra={"fields": {"job": job.id, "op": folder.op,
                                                            "source": str(path), "input_bytes": len(data)}})
        return True

    def _done_dir_for(self, watch: str) -> Path:
        for f in self.config.watch:
            if str(f.input) == watch:
                return f.done_dir
        return Path(watch) / ".done"

    def start_watchers(self, folders: tuple[WatchFolder, ...]) -> None:
        for f in list(self.watchers):
            if f not in folders:
                self.watchers.pop(f).stop()
        for f in folders:
            if f not in self.watchers:
                w = FolderWatcher(f, self.take, self.log)
                w.start()
                self.watchers[f] = w

    # ---- lifecycle ---------------------------------------------------------------------------
    def start_drain(self) -> None:
        if self._drain_since is None:
            self._drain_since = self._clock()
            self.health.draining = True
            self.metrics.ready.set(0)
            sd_notify("STOPPING=1", self.env)
            self.log.info("draining: intake stopped", extra={"fields": {"grace_s": self.config.drain_grace_s}})

    def stats(self) -> dict[str, Any]:
        counts = self.store.counts()
        ok, why = self.health.ready()
        return {"version": VERSION, "counts": counts, "queue_depth": counts.get("queued", 0),
                "in_flight": counts.get("running", 0), "ready": ok, "ready_reason": why,
                "draining": self._drain_since is not None, "devices": self.devices,
                "model": self.model_desc, "uptime_s": round(self._clock() - self._started, 3),
                "watch": [{"input": str(f.input), "output": str(f.output), "policy": f.policy,
                           "polling": w.polling} for f, w in self.watchers.items()]}

    def _load_engines(self) -> list[tuple[str, Any]]:
        import io

        import numpy as np
        from PIL import Image

        from bswd.container import decode
        from bswd.files import compress_images, decompress_many
        from bswd.images import split_image
        from bswd.shell import build_engine, load_model_file

        mf = load_model_file(Path(self.config.model) if self.config.model else None)
        self.model_desc = {"model_id": mf.model_id, "sha256": mf.sha256.hex()}
        self.metrics.set_model(mf.model_id, mf.sha256.hex())
        self.devices = expand_devices(self.config.devices)
        pixels = (np.arange(32 * 32 * 3, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels.reshape(32, 32, 3)).save(buf, "PNG")
        warm = split_image(buf.getvalue(), name="warm-up")
        engines = []
        for device in self.devices:
            t0 = time.perf_counter()
            engine = build_engine(mf, device, threads=self.config.torch_threads or None,
                                  max_rows=self.config.batching.max_lanes)
            [c] = compress_images(engine, [warm])  # one compress and one decompress: warm and checked
            decompress_many(engine, [decode(c.data)])
            engines.append((device, engine))
            self.log.info("engine warm", extra={"fields": {"device": device, "model_id": mf.model_id,
                                                           "seconds": round(time.perf_counter() - t0, 3)}})
        return engines

    def run(self) -> int:
        """Serve until drained; returns the exit status."""
        cfg = self.config
        resumed = self.store.recover()
        self.log.info("starting", extra={"fields": {"version": VERSION, "state_dir": str(cfg.state_dir),
                                                    "resumed_jobs": resumed}})
        http = None
        if cfg.metrics:
            http = MetricsServer(cfg.metrics, self.metrics, self.health)
            http.start()
        requests = Requests(self.store, self.metrics, lambda: self.config, self.wake.set,
                            lambda: self._drain_since is not None, self.start_drain, self.stats, self.log)
        front = FrontEnd(self.ctx, cfg, requests, self.log)
        self.log.info("listening", extra={"fields": {"endpoint": front.endpoint, "metrics": cfg.metrics}})
        settings = BatchSettings(cfg.batching.max_lanes, cfg.batching.max_delay_ms / 1000, cfg.verify,
                                 cfg.skip_lossy_sources, cfg.limits.max_pixels, cfg.limits.max_bytes)
        try:
            for device, engine in self._load_engines():
                b = Batcher(engine, self.store, self.metrics, settings, device, self.log, self.wake,
                            self._done_dir_for)
                t = threading.Thread(target=b.run, args=(self.stop, self.abort), name=f"batcher:{device}",
                                     daemon=True)
                t.start()
                self.threads.append(t)
            self.start_watchers(cfg.watch)
            self.health.warm = True
            self.metrics.ready.set(1)
            sd_notify(f"READY=1\nSTATUS=serving on {front.endpoint}", self.env)
            self.log.info("ready", extra={"fields": {"devices": self.devices}})
            self._serve(front)
        finally:
            self.stop.set()
            for w in self.watchers.values():
                w.stop()
            for t in self.threads:
                t.join(timeout=10)
            front.close()
            if http is not None:
                http.stop()
            self.store.close()
        self.log.info("stopped", extra={"fields": {}})
        return 0

    def _serve(self, front: FrontEnd) -> None:
        watchdog_s = int(self.env.get("WATCHDOG_USEC", "0") or 0) / 2e6
        last_ping = 0.0
        last_prune = -PRUNE_EVERY_S  # at start-up, then every PRUNE_EVERY_S
        while True:
            front.poll(100)
            now = self._clock()
            if now - last_prune >= PRUNE_EVERY_S:
                self._prune_results()
                last_prune = now
            if watchdog_s and now - last_ping >= watchdog_s and all(t.is_alive() for t in self.threads):
                sd_notify("WATCHDOG=1", self.env)
                last_ping = now
            if self._hup:
                self._hup = False
                self._apply_reload()
            if self._drain_since is not None:
                if self.watchers:
                    for w in self.watchers.values():
                        w.stop()
                    self.watchers.clear()
                counts = self.store.counts()
                if not counts.get("queued") and not counts.get("running"):
                    return
                if now - self._drain_since > self.config.drain_grace_s:
                    self.log.warning("drain grace over: stopping engines, unfinished jobs stay queued",
                                     extra={"fields": {"queued": counts.get("queued", 0),
                                                       "running": counts.get("running", 0)}})
                    self.abort.set()
                    self.stop.set()
                    for t in self.threads:
                        t.join(timeout=30)
                    return

    def _prune_results(self) -> None:
        keep_h = self.config.results_keep_hours
        if keep_h <= 0:
            return
        try:
            pruned = self.store.prune_results(keep_h * 3600)
        except (OSError, sqlite3.Error) as exc:
            self.log.error("pruning results failed", extra={"fields": {"reason": str(exc)}})
            return
        if pruned:
            self.log.info("deleted expired results", extra={"fields": {"jobs": len(pruned), "keep_hours": keep_h}})

    def _apply_reload(self) -> None:
        try:
            new = self._reload()
        except (ConfigError, OSError) as exc:
            self.log.error("reload failed; keeping the running config", extra={"fields": {"reason": str(exc)}})
            return
        changed = [f.name for f in dataclasses.fields(DaemonConfig)
                   if f.name != "watch" and getattr(new, f.name) != getattr(self.config, f.name)]
        self.config = dataclasses.replace(self.config, watch=new.watch)
        if self._drain_since is None:
            self.start_watchers(new.watch)
        self.log.info("reloaded watched folders", extra={"fields": {
            "watch": [str(f.input) for f in new.watch], "needs_restart": changed}})

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.start_drain())
        signal.signal(signal.SIGINT, lambda *_: self.start_drain())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_hup", True))


def run_serve(load: Callable[[], DaemonConfig]) -> int:
    """Entry point of ``bswd serve``: ``load`` builds the config (and rebuilds it on SIGHUP)."""
    try:
        config = load()
    except ConfigError as exc:
        print(f"bswd: error: {exc}", file=sys.stderr)
        return 2
    log = make_logger(config.log_level)
    try:
        daemon = Daemon(config, load, log)
        daemon.install_signals()
        return daemon.run()
    except (ConfigError, zmq.ZMQError, OSError, ValueError, StateDirBusy) as exc:
        log.error("cannot serve", extra={"fields": {"reason": str(exc)}})
        return 1
