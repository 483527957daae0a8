"""Throughput and latency of ``bswd serve`` next to one-shot ``bswd compress`` (issue 5, Benchmark).

    .venv/bin/python benchmarks/daemon_bench.py                       # 200 crops of 64x64, CPU
    .venv/bin/python benchmarks/daemon_bench.py --n 10 --side 64      # a quick check
    .venv/bin/python benchmarks/daemon_bench.py --images DIR --json out.json --device cuda

What it does, in one run and on the same files:

1. Images: N PNG crops (``--side`` x ``--side``) cut from ``tests/data/*.png`` and the held-out
   validation split of ``data/photos`` (``bswd.data.split_train_val(list_photos(root))[1]``; JPEG
   photos are LANCZOS down-scaled 2x or more, longer side <= 768, to remove block artefacts, as in
   ``benchmarks/heldout.py``); crops are taken round-robin over the sources, non-overlapping first.
   ``--images DIR`` uses DIR's images instead (JPEGs re-saved as PNG, since the daemon skips
   already-lossy sources).
2. A real daemon: ``bswd serve`` as a subprocess on 127.0.0.1 (free ports), its own state dir and
   watched folder, ``--device`` (default cpu), ``--model`` (default: the bundled model); the script
   waits for ``/readyz``.
3. Scenario A, concurrent clients (1, 4, 16; ``--clients``): each client is its own Python process
   (multiprocessing, spawn) using ``bswctl.transport.Transport``, the transport ``bswctl`` itself
   uses; the processes are started, have read their files and are waiting on one event before the
   clock starts, so Python and zmq start-up is not measured, only the daemon. ``batch`` mode: a
   client submits all of its share, then waits for each job in order and writes its output (what
   ``bswctl submit FILES --wait`` does). ``serial`` mode: a client has one job in flight at a time
   (submit, wait, fetch, next), so the concurrency is exactly the number of clients. The clients
   poll ``result`` with a back-off from 5 ms to ``--poll-ms`` (bswctl itself backs off to 1 s).
   Latency per job: the job's ``finished`` time in the daemon's record minus the time the client
   sent its submit (both Unix time on this machine), so polling does not inflate it; the scenario's
   time ends when the last client has fetched its last output.
4. Scenario B, a watched folder: the N files are copied (``shutil.copyfile``, one after the other)
   into the folder the daemon watches; the time runs from the first copy until every ``.bsw`` is
   in the output folder (checked every 10 ms). Latency per file: its output first seen minus the end
   of its copy. Afterwards every output is decoded with ``bswd decompress`` and compared pixel for
   pixel with its input.
5. Baselines: ``bswd compress`` once per file, one process after the other (latency: each process's
   wall time), and one ``bswd compress`` with all N files (latency: that process's wall time, since it
   writes every output at its end). Both verify by decoding, as the daemon does.
6. ``/metrics`` is scraped before and after each daemon scenario; the differences give the engine
   steps, mean lanes per step (``bswd_step_lanes``), mean batch fill (``bswd_batch_fill_ratio``),
   device busy time and the job latency histogram ``bswd_job_seconds`` (mean, and p50/p95/p99
   interpolated within its buckets as Prometheus' histogram_quantile does). Steps include the
   verification decode of each output.

Every ``.bsw`` written by any scenario is compared byte for byte with the watched folder's output
of the same image (a job's bytes must not depend on what it was batched with).

The daemon gets SIGTERM and the temp dir is removed at the end, on failure and on Ctrl-C too;
``--timeout`` bounds the whole run. Exit status: 0 when every job succeeded and every check passed,
1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BSW = ".bsw"
LOSSY_FORMATS = ("JPEG", "MPO")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".jpg", ".jpeg")


class BenchError(Exception):
    """The benchmark cannot go on (a daemon that does not start, a failed job, --timeout)."""


class Terminated(BenchError):
    """SIGTERM: stop, clean up, still print and write what was measured."""


def _on_sigterm(*_: Any) -> None:
    raise Terminated("terminated by SIGTERM")


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self, what: str) -> float:
        s = self.end - time.monotonic()
        if s <= 0:
            raise BenchError(f"--timeout reached during {what}")
        return s


def log(msg: str) -> None:
    print(f"[daemon_bench] {msg}", file=sys.stderr, flush=True)


def find_exe(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise BenchError(f"cannot find the `{name}` command (run `pip install -e .` in the venv)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(threads: int | None) -> dict[str, str]:
    """This environment without BSWD_* (so no user setting changes the daemon's config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BSWD_")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# ---- images ----------------------------------------------------------------------------------

def _load_rgb(p: Path, downscale_jpeg: bool) -> Image.Image:
    with Image.open(p) as im:
        jpeg = im.format in LOSSY_FORMATS
        rgb = im.convert("RGB")
    if jpeg and downscale_jpeg:
        s = min(768 / max(rgb.size), 0.5)
        rgb = rgb.resize((max(1, round(rgb.width * s)), max(1, round(rgb.height * s))), Image.Resampling.LANCZOS)
    return rgb


def source_images(which: str, photos: Path, tests: Path) -> list[tuple[str, Image.Image]]:
    out: list[tuple[str, Image.Image]] = []
    if which in ("tests", "both"):
        out += [(f"t-{p.stem}", _load_rgb(p, False)) for p in sorted(tests.glob("*.png"))]
    if which in ("photos", "both"):
        if photos.is_dir():
            from bswd.data import list_photos, split_train_val

            _, val = split_train_val(list_photos(photos))
            out += [(f"v-{p.stem}", _load_rgb(p, True)) for p in val]
        elif which == "photos":
            raise BenchError(f"{photos}: no such folder (run `bswd data fetch {photos}` or use --source tests)")
        else:
            log(f"{photos} not found: crops from {tests} only")
    return out


def build_crops(sources: list[tuple[str, Image.Image]], n: int, side: int, dest: Path) -> list[Path]:
    """``n`` distinct side x side PNG crops, round-robin over the sources; the stride is halved
    (overlapping crops) until there are enough."""
    usable = [(name, im) for name, im in sources if im.width >= side and im.height >= side]
    if not usable:
        raise BenchError(f"no source image is at least {side}x{side}")
    stride = side
    while True:
        tiles = [[(x, y) for y in range(0, im.height - side + 1, stride) for x in range(0, im.width - side + 1, stride)]
                 for _, im in usable]
        if sum(map(len, tiles)) >= n or stride == 1:
            break
        stride = max(1, stride // 2)
    order = [(i, t[k]) for k in range(max(map(len, tiles))) for i, t in enumerate(tiles) if k < len(t)]
    if len(order) < n:
        raise BenchError(f"only {len(order)} distinct {side}x{side} crops in the sources; lower --n or --side")
    dest.mkdir(parents=True)
    out = []
    for j, (i, (x, y)) in enumerate(order[:n]):
        name, im = usable[i]
        p = dest / f"{j:04d}-{name}-{x}-{y}.png"
        im.crop((x, y, x + side, y + side)).save(p, "PNG")
        out.append(p)
    return out


def images_from_dir(src: Path, n: int, dest: Path) -> list[Path]:
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise BenchError(f"{src}: no images")
    if len(files) > n:
        log(f"{src}: using the first {n} of {len(files)} images (--n)")
    dest.mkdir(parents=True)
    out = []
    for j, p in enumerate(files[:n]):
        with Image.open(p) as im:
            lossy = im.format in LOSSY_FORMATS
        if lossy:  # the daemon skips already-lossy sources and bswd compress refuses them
            target = dest / f"{j:04d}-{p.stem}.png"
            _load_rgb(p, False).save(target, "PNG")
        else:
            target = dest / f"{j:04d}-{p.name}"
            shutil.copyfile(p, target)
        out.append(target)
    return out


def raw_rgb_bytes(p: Path) -> int:
    with Image.open(p) as im:
        return im.width * im.height * 3


def pixels(p: Path) -> tuple[str, np.ndarray]:
    with Image.open(p) as im:
        return im.mode, np.asarray(im).copy()


# ---- the daemon ------------------------------------------------------------------------------

class DaemonProc:
    """``bswd serve`` as a subprocess in its own session (a Ctrl-C here reaches it only as our
    SIGTERM); JSON logs go to ``log_path``."""

    def __init__(self, work: Path, args: argparse.Namespace, watch_in: Path, watch_out: Path):
        self.port, self.metrics_port = free_port(), free_port()
        self.state = work / "state"
        self.log_path = work / "daemon.log"
        self.cmd = [find_exe("bswd"), "serve", "--state", str(self.state), "--endpoint", self.endpoint,
                    "--metrics", f"127.0.0.1:{self.metrics_port}", "--device", args.device,
                    "--watch", f"{watch_in}:{watch_out}"]
        if args.model:
            self.cmd += ["--model", str(args.model)]
        self.env = clean_env(args.threads)
        self.env.update(BSWD_DRAIN_GRACE_S="5", BSWD_QUEUE_MAX=str(max(1000, 2 * args.n)))
        if args.threads:
            self.env["BSWD_TORCH_THREADS"] = str(args.threads)
        if args.max_lanes:
            self.env["BSWD_BATCHING_MAX_LANES"] = str(args.max_lanes)
        if args.max_delay_ms is not None:
            self.env["BSWD_BATCHING_MAX_DELAY_MS"] = str(args.max_delay_ms)
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, deadline: Deadline) -> float:
        t0 = time.monotonic()
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=fh, env=self.env, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"bswd serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.http("/readyz")[0] == 200:
                return time.monotonic() - t0
            try:
                deadline.left("daemon start-up (waiting for /readyz)")
            except BenchError as exc:
                raise BenchError(f"{exc}\n{self.log_tail()}") from None
            time.sleep(0.1)

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        code, text = self.http("/metrics")
        if code != 200:
            raise BenchError(f"GET /metrics answered {code}")
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return out

    def call(self, kind: str, **fields: Any) -> Any:
        from bswctl.transport import Transport

        from bswd import protocol

        with Transport(self.endpoint, timeout_s=10.0, retries=1) as t:
            return t.call(protocol.request(kind, **fields))

    def stop(self) -> None:
        """SIGTERM (drain), then SIGKILL if it has not exited within 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                log("bswd serve did not exit 30 s after SIGTERM: killing it")
                self.proc.kill()
                self.proc.wait(10)
        self.exit_code = self.proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ---- metrics ---------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def _delta(before: Samples, after: Samples, name: str) -> float:
    return _total(after, name) - _total(before, name)


def _buckets(before: Samples, after: Samples, name: str) -> list[tuple[float, float]]:
    out = []
    for (n, labels), v in after.items():
        if n == name + "_bucket":
            le = dict(labels)["le"]
            out.append((math.inf if le == "+Inf" else float(le), v - before.get((n, labels), 0.0)))
    return sorted(out)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket, lower bound 0."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le  # in the +Inf bucket: the highest finite bound, as Prometheus does
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return None


def daemon_side(before: Samples, after: Samples, wall_s: float) -> dict[str, Any]:
    steps = _delta(before, after, "bswd_step_lanes_count")
    fills = _delta(before, after, "bswd_batch_fill_ratio_count")
    jobs = _delta(before, after, "bswd_job_seconds_count")
    job_b = _buckets(before, after, "bswd_job_seconds")
    busy = _delta(before, after, "bswd_device_busy_seconds_total")
    return {
        "steps": int(steps),
        "mean_lanes_per_step": _delta(before, after, "bswd_step_lanes_sum") / steps if steps else None,
        "mean_batch_fill": _delta(before, after, "bswd_batch_fill_ratio_sum") / fills if fills else None,
        "job_seconds": {
            "count": int(jobs),
            "mean": _delta(before, after, "bswd_job_seconds_sum") / jobs if jobs else None,
            **{f"p{round(100 * q)}_est": histogram_quantile(q, job_b) for q in (0.5, 0.95, 0.99)},
        },
        "device_busy_s": busy,
        "device_busy_fraction": busy / wall_s if wall_s > 0 else None,
        "input_bytes": int(_delta(before, after, "bswd_input_bytes_total")),
        "output_bytes": int(_delta(before, after, "bswd_output_bytes_total")),
        "verify_failures": int(_delta(before, after, "bswd_verify_failures_total")),
    }


# ---- scenario A: client processes ------------------------------------------------------------

def _submit(t: Any, name: str, data: bytes, stop_at: float) -> tuple[float, Any]:
    from bswd import protocol

    req = protocol.request("submit", (data,), op="compress", name=name)
    while True:
        sent = time.time()
        reply = t.call(req)
        if reply.code != protocol.Code.BUSY.value or time.monotonic() > stop_at:
            return sent, reply
        time.sleep(min(5.0, reply.fields.get("retry_after_ms", 500) / 1000))  # same id: idempotent retry


def _wait_result(t: Any, job: int, poll_max_s: float, stop_at: float) -> Any:
    from bswd import protocol

    delay = 0.005
    while True:
        reply = t.call(protocol.request("result", job=job))
        if reply.code != protocol.Code.OK.value or reply.fields["job"]["state"] in protocol.FINAL_STATES:
            return reply
        if time.monotonic() > stop_at:
            raise TimeoutError(f"job {job} not finished before --timeout")
        time.sleep(delay)
        delay = min(poll_max_s, delay * 1.5)


def _record(name: str, sent: float, reply: Any, out_dir: Path) -> dict[str, Any]:
    info = reply.fields.get("job") or {}
    rec = {"name": name, "job": info.get("id"), "state": info.get("state"), "code": reply.code,
           "sent": sent, "finished": info.get("finished"), "fetched": time.time(),
           "error": info.get("error") or reply.fields.get("error"), "bits_per_dim": info.get("bits_per_dim")}
    if rec["state"] == "done" and reply.payloads:
        (out_dir / (name + BSW)).write_bytes(reply.payloads[0])
        rec["output_bytes"] = len(reply.payloads[0])
    return rec


def client_main(endpoint: str, files: list[str], out_dir: str, mode: str, poll_max_s: float,
                budget_s: float, ready: Any, go: Any, results: Any) -> None:
    """One client process: read the files, say ready, wait for ``go``, then run its share."""
    try:
        from bswctl.transport import Transport

        from bswd import protocol

        out = Path(out_dir)
        work = [(Path(f).name, Path(f).read_bytes()) for f in files]
        with Transport(endpoint, timeout_s=30.0, retries=2) as t:
            t.call(protocol.request("ping"))  # connect once before the clock starts
            ready.put(os.getpid())
            if not go.wait(budget_s):
                raise TimeoutError("never told to start")
            stop_at = time.monotonic() + budget_s
            recs: list[dict[str, Any]] = []
            if mode == "batch":
                submitted = []
                for name, data in work:
                    sent, reply = _submit(t, name, data, stop_at)
                    submitted.append((name, sent, reply))
                for name, sent, reply in submitted:
                    if reply.code == protocol.Code.OK.value:
                        reply = _wait_result(t, int(reply.fields["job"]), poll_max_s, stop_at)
                    recs.append(_record(name, sent, reply, out))
            else:
                for name, data in work:
                    sent, reply = _submit(t, name, data, stop_at)
                    if reply.code == protocol.Code.OK.value:
                        reply = _wait_result(t, int(reply.fields["job"]), poll_max_s, stop_at)
                    recs.append(_record(name, sent, reply, out))
            results.put({"pid": os.getpid(), "ok": True, "end": time.monotonic(), "jobs": recs})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the scenario
        results.put({"pid": os.getpid(), "ok": False, "error": f"{type(exc).__name__}: {exc}"})


def run_clients(daemon: DaemonProc, files: list[Path], n_clients: int, mode: str, out_dir: Path,
                args: argparse.Namespace, deadline: Deadline, procs: list[Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    out_dir.mkdir(parents=True)
    budget = deadline.left("scenario A")
    mine = []
    if n_clients > len(files):
        log(f"only {len(files)} images: {len(files)} of the {n_clients} clients get one each")
    for c in range(n_clients):
        share = [str(f) for f in files[c::n_clients]]
        if not share:
            continue
        p = ctx.Process(target=client_main, args=(daemon.endpoint, share, str(out_dir), mode,
                                                   args.poll_ms / 1000, budget, ready, go, results),
                        daemon=True)
        p.start()
        procs.append(p)
        mine.append(p)
    reports: list[dict[str, Any]] = []
    waiting = len(mine)
    while waiting:  # every client has its files in memory and has pinged the daemon
        try:
            ready.get(timeout=min(1.0, deadline.left("starting the clients")))
            waiting -= 1
        except queue.Empty:
            pass
        while True:  # a client that failed before it was ready reports here
            try:
                reports.append(results.get_nowait())
            except queue.Empty:
                break
        if any(not r["ok"] for r in reports):
            raise BenchError(f"client failed: {[r['error'] for r in reports if not r['ok']]}")
        if any(p.exitcode not in (None, 0) for p in mine):
            raise BenchError("a client process died while starting")
    before = daemon.scrape()
    t0 = time.monotonic()
    go.set()
    while len(reports) < len(mine):
        try:
            reports.append(results.get(timeout=min(1.0, deadline.left(f"scenario A ({n_clients} clients)"))))
        except queue.Empty:
            if sum(p.exitcode is not None for p in mine) > len(reports):
                time.sleep(0.5)
                if results.empty():
                    raise BenchError("a client process died without reporting") from None
    after = daemon.scrape()
    for p in mine:
        p.join(10)
    bad = [r["error"] for r in reports if not r["ok"]]
    if bad:
        raise BenchError(f"client failed: {bad}")
    wall = max(r["end"] for r in reports) - t0
    jobs = [j for r in reports for j in r["jobs"]]
    done = [j for j in jobs if j["state"] == "done"]
    return {"wall_s": wall, "jobs": jobs, "done": len(done), "clients": len(mine),
            "failed": [f"{j['name']}: {j['state'] or j['code']}: {j['error']}" for j in jobs if j["state"] != "done"],
            "latencies": [j["finished"] - j["sent"] for j in done],
            "output_bytes": sum(j.get("output_bytes", 0) for j in done),
            "daemon": daemon_side(before, after, wall)}


# ---- scenario B: watched folder --------------------------------------------------------------

def run_watch(daemon: DaemonProc, files: list[Path], watch_in: Path, watch_out: Path,
              deadline: Deadline) -> dict[str, Any]:
    counts0 = daemon.call("status", limit=1).fields["counts"]
    before = daemon.scrape()
    expected = {f.name + BSW: f.name for f in files}
    copied: dict[str, float] = {}
    seen: dict[str, float] = {}
    t0 = time.monotonic()
    for f in files:
        shutil.copyfile(f, watch_in / f.name)
        copied[f.name] = time.monotonic()
    next_check = time.monotonic() + 1.0
    while len(seen) < len(expected):
        now = time.monotonic()
        with os.scandir(watch_out) as it:
            for e in it:
                if e.name in expected and e.name not in seen:
                    seen[e.name] = now
        if len(seen) == len(expected):
            break
        if now >= next_check:  # a failed or skipped job never makes an output: stop waiting for it
            next_check = now + 1.0
            counts = daemon.call("status", limit=1).fields["counts"]
            ended_badly = sum(counts.get(s, 0) - counts0.get(s, 0) for s in ("failed", "skipped", "cancelled"))
            if ended_badly:
                jobs = daemon.call("status", limit=1000).fields["jobs"]
                why = [f"{j['name']}: {j['state']}: {j.get('error')}" for j in jobs
                       if j.get("watch") and j["state"] in ("failed", "skipped", "cancelled")]
                raise BenchError(f"watched-folder job(s) did not succeed: {why[:5]}")
        deadline.left(f"scenario B (watched folder, {len(seen)}/{len(expected)} outputs so far)")
        time.sleep(0.01)
    wall = max(seen.values()) - t0
    # the metrics of the last jobs are recorded right after their output is published
    time.sleep(0.2)
    after = daemon.scrape()
    outs = [watch_out / n for n in expected]
    return {"wall_s": wall, "done": len(seen), "failed": [],
            "latencies": [seen[o] - copied[n] for o, n in expected.items()],
            "output_bytes": sum(p.stat().st_size for p in outs), "outputs": outs,
            "daemon": daemon_side(before, after, wall)}


def verify_decodes(outputs: list[Path], inputs: dict[str, Path], dest: Path, args: argparse.Namespace,
                   deadline: Deadline) -> dict[str, Any]:
    """``bswd decompress`` every output (one process) and compare its pixels with the input's."""
    cmd = [find_exe("bswd"), "decompress", "-q", "--device", args.device, "-o", str(dest)]
    if args.model:
        cmd += ["--model", str(args.model)]
    t0 = time.monotonic()
    r = subprocess.run(cmd + [str(p) for p in outputs], capture_output=True, text=True,
                       env=clean_env(args.threads), timeout=deadline.left("verifying the watched-folder outputs"))
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchError(f"bswd decompress exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    bad = []
    for p in outputs:
        name = p.name[: -len(BSW)]
        back = dest / name
        if not back.is_file():
            bad.append(f"{name}: no decoded file")
            continue
        (m1, a1), (m2, a2) = pixels(inputs[name]), pixels(back)
        if m1 != m2 or a1.shape != a2.shape or not np.array_equal(a1, a2):
            bad.append(f"{name}: decoded pixels differ")
    return {"files": len(outputs), "identical": len(outputs) - len(bad), "problems": bad, "seconds": seconds}


# ---- baselines -------------------------------------------------------------------------------

def compress_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [find_exe("bswd"), "compress", "-q", "--device", args.device, "-o", str(out)]
    return cmd + (["--model", str(args.model)] if args.model else [])


def run_sequential(files: list[Path], out: Path, args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    out.mkdir(parents=True)
    env, lat, failed = clean_env(args.threads), [], []
    t0 = time.monotonic()
    for i, f in enumerate(files):
        t = time.monotonic()
        r = subprocess.run(compress_cmd(args, out) + [str(f)], capture_output=True, text=True, env=env,
                           timeout=deadline.left(f"sequential bswd compress ({i}/{len(files)} done)"))
        lat.append(time.monotonic() - t)
        if r.returncode != 0:
            failed.append(f"{f.name}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    wall = time.monotonic() - t0
    outs = [out / (f.name + BSW) for f in files]
    return {"wall_s": wall, "done": len(files) - len(failed), "failed": failed, "latencies": lat,
            "output_bytes": sum(p.stat().st_size for p in outs if p.exists()), "outputs": outs}


def run_all_at_once(files: list[Path], out: Path, args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    out.mkdir(parents=True)
    t0 = time.monotonic()
    r = subprocess.run(compress_cmd(args, out) + [str(f) for f in files], capture_output=True, text=True,
                       env=clean_env(args.threads), timeout=deadline.left("bswd compress with all files"))
    wall = time.monotonic() - t0
    failed = [] if r.returncode == 0 else [f"exit {r.returncode}: {r.stderr.strip()[-1000:]}"]
    outs = [out / (f.name + BSW) for f in files]
    done = sum(p.exists() for p in outs) if r.returncode == 0 else 0
    return {"wall_s": wall, "done": done, "failed": failed, "latencies": [wall] * done,
            "output_bytes": sum(p.stat().st_size for p in outs if p.exists()), "outputs": outs}


# ---- report ----------------------------------------------------------------------------------

def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass

    def ver(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    info = {"cpu_model": cpu, "cpu_cores": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gib": mem, "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version(),
            "bswd": ver("bswd"), "torch": ver("torch"), "numpy": ver("numpy"), "device": args.device}
    if args.device.startswith("cuda") and shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20, check=False)
        info["gpus"] = [g.strip() for g in r.stdout.splitlines() if g.strip()]
    return info


def summarize(name: str, kind: str, res: dict[str, Any], n: int, raw_bytes: int, subpixels: int,
              note: str) -> dict[str, Any]:
    wall = res["wall_s"]
    lat = np.array(res["latencies"], dtype=float)
    d = res.get("daemon") or {}
    return {
        "scenario": name, "kind": kind, "images": n, "done": res["done"], "failed": res["failed"],
        "client_processes": res.get("clients"),
        "seconds": wall, "images_per_s": res["done"] / wall if wall > 0 else None,
        "mb_per_s_raw_rgb": raw_bytes * res["done"] / n / 1e6 / wall if wall > 0 and n else None,
        "latency_s": {f"p{q}": (float(np.percentile(lat, q)) if lat.size else None) for q in (50, 95, 99)},
        "latency_definition": note,
        "mean_lanes_per_step": d.get("mean_lanes_per_step"), "mean_batch_fill": d.get("mean_batch_fill"),
        "output_bytes": res.get("output_bytes"),
        "bits_per_dim": 8 * res["output_bytes"] / subpixels if res.get("output_bytes") and res["done"] == n else None,
        "daemon_metrics": d or None,
    }


def _f(v: Any, fmt: str) -> str:
    width = int(fmt.split(".")[0] or 0)
    return "-".rjust(width) if v is None else format(v, fmt)


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    cfg = report["config"]
    print(f"\nmachine: {m['cpu_model']}, {m['cpu_cores']} cores ({m['cpus_usable']} usable), "
          f"{m['memory_gib']} GiB; load average at start {m['load_average_at_start']}; device {m['device']}"
          + (f" ({', '.join(m['gpus'])})" if m.get("gpus") else ""))
    model = (report.get("model") or {}).get("model_id")
    print(f"bswd {m['bswd']}, torch {m['torch']}, python {m['python']}; model {model}")
    im = report.get("images") or {}
    if im:
        print(f"images: {im['n']} x {im['description']}, {im['raw_rgb_bytes'] / 1e6:.3f} MB of raw RGB; "
              f"clients: {cfg['clients']} ({cfg['client_mode']} mode)")
    head = (f"{'scenario':<28} {'images':>6} {'seconds':>9} {'images/s':>9} {'MB/s':>8} "
            f"{'p50 s':>8} {'p95 s':>8} {'p99 s':>8} {'lanes/step':>10} {'fill':>6}")
    print("\n" + head + "\n" + "-" * len(head))
    for s in report["scenarios"]:
        lat = s["latency_s"]
        print(f"{s['scenario']:<28} {s['done']:>6} {s['seconds']:>9.2f} {_f(s['images_per_s'], '9.2f')} "
              f"{_f(s['mb_per_s_raw_rgb'], '8.4f')} {_f(lat['p50'], '8.3f')} {_f(lat['p95'], '8.3f')} "
              f"{_f(lat['p99'], '8.3f')} {_f(s['mean_lanes_per_step'], '10.2f')} {_f(s['mean_batch_fill'], '6.3f')}")
    rows = [s for s in report["scenarios"] if s.get("daemon_metrics")]
    if rows:
        head = (f"{'daemon /metrics':<28} {'steps':>6} {'jobs':>6} {'job_s mean':>10} {'~p50':>8} {'~p95':>8} "
                f"{'~p99':>8} {'busy %':>7}")
        print("\n" + head + "\n" + "-" * len(head))
        for s in rows:
            d = s["daemon_metrics"]
            j = d["job_seconds"]
            busy = None if d["device_busy_fraction"] is None else 100 * d["device_busy_fraction"]
            print(f"{s['scenario']:<28} {d['steps']:>6} {j['count']:>6} {_f(j['mean'], '10.3f')} "
                  f"{_f(j['p50_est'], '8.3f')} {_f(j['p95_est'], '8.3f')} {_f(j['p99_est'], '8.3f')} "
                  f"{_f(busy, '7.1f')}")
    print("\nlatency: clients = daemon's job finish time - submit sent; watched folder = output seen - copy "
          "done;\n  bswd compress = process wall time. MB/s = raw RGB bytes (W x H x 3) per second. "
          "~pXX: bswd_job_seconds\n  bucket interpolation. Steps include the verification decode of every output.")
    for name, c in (report.get("checks") or {}).items():
        print(f"check {name}: {c}")
    if report.get("error"):
        print(f"\nERROR: {report['error']}")


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    ap.add_argument("--side", type=int, default=64, help="crop side in pixels (default 64)")
    ap.add_argument("--source", choices=("both", "tests", "photos"), default="both",
                    help="crop from tests/data/*.png, the held-out split of --photos, or both (default)")
    ap.add_argument("--photos", type=Path, default=REPO / "data" / "photos", help="photo folder (bswd data fetch)")
    ap.add_argument("--images", type=Path, default=None, help="use the images in DIR instead of crops")
    ap.add_argument("--model", type=Path, default=None, help=".bswm model (default: the bundled model)")
    ap.add_argument("--device", default="cpu", help="daemon and bswd compress device (default cpu)")
    ap.add_argument("--clients", default="1,4,16", help="concurrent client counts (default 1,4,16)")
    ap.add_argument("--client-mode", choices=("batch", "serial", "both"), default="both",
                    help="batch: each client submits its share then waits (bswctl submit --wait); serial: one "
                         "job in flight per client; both (default)")
    ap.add_argument("--poll-ms", type=float, default=50.0, help="clients' longest result-poll interval (default 50)")
    ap.add_argument("--max-lanes", type=int, default=None, help="daemon batching.max_lanes (default: its own, 64)")
    ap.add_argument("--max-delay-ms", type=float, default=None, help="daemon batching.max_delay_ms (default: 20)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the daemon and bswd compress (default: torch's choice)")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: clients, watch, sequential, all")
    ap.add_argument("--timeout", type=float, default=7200.0, help="bound on the whole run in seconds (default 7200)")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (images, outputs, daemon log)")
    args = ap.parse_args(argv)
    try:
        args.clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        ap.error("--clients: comma-separated integers")
    args.skip_set = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip_set - {"clients", "watch", "sequential", "all"}:
        ap.error("--skip: clients, watch, sequential, all")
    if args.n < 1 or args.side < 1 or args.timeout <= 0 or args.poll_ms <= 0 or any(c < 1 for c in args.clients_list):
        ap.error("--n, --side, --timeout, --poll-ms and --clients must be positive")
    if args.images is not None and not args.images.is_dir():
        ap.error(f"--images {args.images}: not a folder")
    if args.model is not None and not args.model.is_file():
        ap.error(f"--model {args.model}: no such file")
    if args.model is not None:
        args.model = args.model.resolve()
    return args


def run(args: argparse.Namespace, work: Path, report: dict[str, Any], procs: list[Any],
        daemon_box: list[DaemonProc]) -> None:
    deadline = Deadline(args.timeout)
    if args.images is not None:
        files = images_from_dir(args.images, args.n, work / "images")
        desc = f"images from {args.images}"
    else:
        srcs = source_images(args.source, args.photos, REPO / "tests" / "data")
        files = build_crops(srcs, args.n, args.side, work / "images")
        desc = f"{args.side}x{args.side} PNG crops from {len(srcs)} source images ({args.source})"
    raw = sum(raw_rgb_bytes(f) for f in files)
    subpixels = sum(int(np.prod(pixels(f)[1].shape)) for f in files)
    n = len(files)
    report["images"] = {"n": n, "description": desc, "raw_rgb_bytes": raw, "files": [f.name for f in files]}
    log(f"{n} images ({desc}), {raw / 1e6:.3f} MB raw RGB in {work}")
    scen: list[dict[str, Any]] = report["scenarios"]
    reference: dict[str, bytes] = {}  # watched-folder outputs, by image name
    other_outputs: dict[str, list[Path]] = {}

    watch_in, watch_out = work / "watch-in", work / "watch-out"
    watch_in.mkdir()
    watch_out.mkdir()
    if not {"clients", "watch"} <= args.skip_set:
        daemon = DaemonProc(work, args, watch_in, watch_out)
        daemon_box.append(daemon)
        log(f"starting {' '.join(daemon.cmd)}")
        report["daemon_start_s"] = daemon.start(deadline)
        st = daemon.call("stats").fields
        report["model"], report["daemon_devices"] = st.get("model"), st.get("devices")
        log(f"daemon ready in {report['daemon_start_s']:.1f} s (model {st.get('model', {}).get('model_id')}, "
            f"devices {st.get('devices')})")
        if "clients" not in args.skip_set:
            modes = ("batch", "serial") if args.client_mode == "both" else (args.client_mode,)
            for mode in modes:
                for c in args.clients_list:
                    name = f"daemon {c} client{'s' if c > 1 else ''} {mode}"
                    log(f"scenario A: {name}")
                    out = work / f"clients-{mode}-{c}"
                    res = run_clients(daemon, files, c, mode, out, args, deadline, procs)
                    scen.append(summarize(name, "clients", res, n, raw, subpixels,
                                          "daemon job finished - client submit sent"))
                    other_outputs[name] = [out / (f.name + BSW) for f in files]
        if "watch" not in args.skip_set:
            log("scenario B: watched folder")
            res = run_watch(daemon, files, watch_in, watch_out, deadline)
            scen.append(summarize("daemon watched folder", "watch", res, n, raw, subpixels,
                                  "output seen - input copied"))
            reference = {p.name[: -len(BSW)]: p.read_bytes() for p in res["outputs"]}
        log("stopping the daemon (SIGTERM)")
        daemon.stop()
        report["daemon_exit_code"] = daemon.exit_code
        if daemon.exit_code != 0:
            report["checks"]["daemon exit"] = f"FAILED: bswd serve exited {daemon.exit_code} after SIGTERM"
        if reference:
            log("decoding every watched-folder output with bswd decompress")
            v = verify_decodes([watch_out / (k + BSW) for k in reference], {f.name: f for f in files},
                               work / "decoded", args, deadline)
            report["checks"]["watched outputs decode to their inputs"] = (
                f"{v['identical']}/{v['files']} identical" + (f" FAILED: {v['problems'][:5]}" if v["problems"] else ""))
            report["verify"] = v
    if "sequential" not in args.skip_set:
        log(f"baseline: bswd compress, one process per file ({n} processes, one after the other)")
        res = run_sequential(files, work / "seq-out", args, deadline)
        scen.append(summarize("bswd compress 1 file/proc", "baseline", res, n, raw, subpixels,
                              "process wall time"))
        other_outputs["bswd compress 1 file/proc"] = res["outputs"]
    if "all" not in args.skip_set:
        log(f"baseline: one bswd compress with all {n} files")
        res = run_all_at_once(files, work / "all-out", args, deadline)
        scen.append(summarize(f"bswd compress {n} files/proc", "baseline", res, n, raw, subpixels,
                              "process wall time (outputs written at its end)"))
        other_outputs[f"bswd compress {n} files/proc"] = res["outputs"]
    if reference:
        same = total = 0
        for paths in other_outputs.values():
            for p in paths:
                if p.exists():
                    total += 1
                    same += p.read_bytes() == reference.get(p.name[: -len(BSW)])
        report["checks"]["same .bsw bytes as the watched folder's"] = f"{same}/{total}"
        if same != total:
            report["checks"]["same .bsw bytes as the watched folder's"] += " FAILED"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)  # so that the clean-up below runs
    report: dict[str, Any] = {"machine": machine_info(args), "scenarios": [], "checks": {},
                              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                         if k not in ("clients_list", "skip_set")}}
    report["config"]["clients"] = args.clients_list
    work = Path(tempfile.mkdtemp(prefix="bswd-daemon-bench-"))
    procs: list[Any] = []
    daemon_box: list[DaemonProc] = []
    status = 0
    t0 = time.monotonic()
    try:
        run(args, work, report, procs, daemon_box)
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        report["error"] = str(exc)
        status = 143 if isinstance(exc, Terminated) else 1
    except KeyboardInterrupt:
        report["error"] = "interrupted"
        status = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up is bounded; let it finish
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
        for d in daemon_box:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
                report.setdefault("daemon_exit_code", d.exit_code)
            if status and d.log_path.exists():
                log(f"daemon log tail:\n{d.log_tail()}")
        if args.keep:
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["total_seconds"] = time.monotonic() - t0
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if any(s["failed"] or s["done"] != s["images"] for s in report["scenarios"]):
        status = status or 1
    if any("FAILED" in str(c) for c in report["checks"].values()):
        status = status or 1
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
