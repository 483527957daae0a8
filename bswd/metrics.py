"""Prometheus metrics and the health endpoints, on a registry the caller passes in.

Every name starts with ``bswd_`` and carries its unit; ``docs/metrics.md`` lists what is exported
(suffixes included). The daemon is one process, so there is no ``PROMETHEUS_MULTIPROC_DIR`` state
that could outlive a run (BUG-20); counters start at zero with each process.

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = Metrics(reg, version="0.1.0")
>>> m.job_done("compress", "ok")
>>> reg.get_sample_value("bswd_jobs_completed_total", {"op": "compress", "result": "ok"})
1.0
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

OPS = ("compress", "decompress")
RESULTS = ("ok", "failed", "rejected", "skipped", "cancelled")
# latency buckets reach 20 minutes: a large image on a CPU takes minutes (BUG-20)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600, 1200)
LANE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
BPD_BUCKETS = (0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 10, 12)


def wipe_multiproc_dir(env: Mapping[str, str]) -> list[Path]:
    """Remove stale ``*.db`` files from a ``PROMETHEUS_MULTIPROC_DIR`` left in the environment.

    bswd serves its metrics from one process and never aggregates that folder, but when the
    variable is set prometheus_client keeps every value in a file named after the process id,
    and a new process that gets an old pid (pid 1 in every container) would start from the old
    run's values (BUG-20). Call this before creating ``Metrics``.
    """
    folder = env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir")
    if not folder or not os.path.isdir(folder):
        return []
    stale = sorted(Path(folder).glob("*.db"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class Metrics:
    """All of bswd's metrics, registered on ``registry`` (never the global one)."""

    def __init__(self, registry: CollectorRegistry, version: str):
        r = registry
        self.registry = registry
        self.jobs_completed = Counter("bswd_jobs_completed", "Jobs that ended, by operation and result",
                                      ["op", "result"], registry=r)
        self.input_bytes = Counter("bswd_input_bytes", "Bytes of input files of successful jobs",
                                   ["op"], registry=r)
        self.output_bytes = Counter("bswd_output_bytes", "Bytes of output files of successful jobs",
                                    ["op"], registry=r)
        self.pixels = Counter("bswd_pixels", "Pixels (height x width, summed over model planes) coded",
                              ["op"], registry=r)
        self.patches = Counter("bswd_patches", "32x32 patches coded", ["op"], registry=r)
        self.verify_failures = Counter("bswd_verify_failures",
                                       "Outputs that did not decode back to their input (nothing written)",
                                       registry=r)
        self.queue_depth = Gauge("bswd_queue_depth", "Jobs waiting in the queue", registry=r)
        self.jobs_in_flight = Gauge("bswd_jobs_in_flight", "Jobs claimed by an engine and not finished",
                                    registry=r)
        self.step_lanes = Histogram("bswd_step_lanes", "Lanes coded per engine step",
                                    buckets=LANE_BUCKETS, registry=r)
        self.batch_fill = Histogram("bswd_batch_fill_ratio",
                                    "Busy lanes per engine step over the configured maximum",
                                    buckets=FILL_BUCKETS, registry=r)
        self.queue_wait = Histogram("bswd_queue_wait_seconds", "Time from acceptance to start of work",
                                    buckets=SECONDS_BUCKETS, registry=r)
        self.step_seconds = Histogram("bswd_step_seconds", "Duration of one engine step",
                                      buckets=SECONDS_BUCKETS, registry=r)
        self.job_seconds = Histogram("bswd_job_seconds", "Time from acceptance to the end of a job",
                                     buckets=SECONDS_BUCKETS, registry=r)
        self.bits_per_dim = Histogram("bswd_bits_per_dim",
                                      "Output bits per coded sample (H x W x C) of compressed images",
                                      buckets=BPD_BUCKETS, registry=r)
        self.device_busy = Counter("bswd_device_busy_seconds", "Seconds each device spent in engine calls",
                                   ["device"], registry=r)
        self.model_info = Gauge("bswd_model_info", "The resident model (value 1)", ["model_id", "sha256"],
                                registry=r)
        self.build_info = Gauge("bswd_build_info", "The bswd version (value 1)", ["version"], registry=r)
        self.ready = Gauge("bswd_ready", "1 while /readyz answers 200", registry=r)
        self.build_info.labels(version).set(1)
        for op in OPS:  # export zeros from the start, so rates and alerts see every series
            for result in RESULTS:
                self.jobs_completed.labels(op, result)
            for c in (self.input_bytes, self.output_bytes, self.pixels, self.patches):
                c.labels(op)

    def job_done(self, op: str, result: str) -> None:
        self.jobs_completed.labels(op, result).inc()

    def set_model(self, model_id: str, sha256_hex: str) -> None:
        self.model_info.labels(model_id, sha256_hex).set(1)


@dataclass
class Health:
    """What /healthz and /readyz report; the daemon updates it."""

    warm: bool = False
    draining: bool = False
    queue_depth: Callable[[], int] = lambda: 0
    queue_high_water: int = 1

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.warm:
            return False, "model not loaded and warm yet"
        depth = self.queue_depth()
        if depth >= self.queue_high_water:
            return False, f"queue depth {depth} at or above high-water mark {self.queue_high_water}"
        return True, "ready"


class MetricsServer:
    """HTTP server for /metrics, /healthz and /readyz on its own thread."""

    def __init__(self, address: str, metrics: Metrics, health: Health):
        host, _, port = address.rpartition(":")
        registry, self._health, self._metrics = metrics.registry, health, metrics
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._refresh()
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"status":"alive"}\n', "application/json")
                elif path == "/readyz":
                    ok, why = outer._refresh()
                    body = json.dumps({"ready": ok, "reason": why}).encode() + b"\n"
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _refresh(self) -> tuple[bool, str]:
        ok, why = self._health.ready()
        self._metrics.ready.set(1 if ok else 0)
        self._metrics.queue_depth.set(self._health.queue_depth())
        return ok, why

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
