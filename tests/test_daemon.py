"""The daemon through its real front door: one ``bswd serve`` subprocess on loopback shared by
this module (round trips, bad inputs, metrics, batch neighbours, path submissions)."""

from __future__ import annotations

import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from bswctl.cli import Exit
from daemonkit import Daemon, all_jobs, pixels, png_bytes, write_tiny_model


def png(w: int, h: int, depth: int, ctype: int, rows: list[bytes]) -> bytes:
    def ck(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + ck(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
            + ck(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows))) + ck(b"IEND", b""))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.bswm")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("roots")


@pytest.fixture(scope="module")
def stale_dir(tmp_path_factory) -> tuple[Path, list[str]]:
    """A PROMETHEUS_MULTIPROC_DIR holding a stale counter file worth 100 (BUG-20)."""
    import subprocess
    import sys

    d = tmp_path_factory.mktemp("multiproc")
    code = ("from prometheus_client import Counter, CollectorRegistry\n"
            "c = Counter('bswd_jobs_completed', 'x', ['op', 'result'], registry=CollectorRegistry())\n"
            "c.labels('compress', 'ok').inc(100)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PROMETHEUS_MULTIPROC_DIR": str(d)})
    assert list(d.glob("counter_*.db"))
    return d, sorted(p.name for p in d.glob("*.db"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, model_path, roots, stale_dir):
    state = tmp_path_factory.mktemp("daemon") / "state"
    d = Daemon(state, model_path, env={"BSWD_BATCHING_MAX_DELAY_MS": "300",
                                        "BSWD_SUBMIT_ROOTS": str(roots),
                                        "PROMETHEUS_MULTIPROC_DIR": str(stale_dir[0])})
    d.start()
    yield d
    d.stop()


def test_submit_round_trip_through_bswctl(daemon, tmp_path):
    sizes = [(8, 8), (33, 17), (64, 64)]
    files = []
    for i, (w, h) in enumerate(sizes):
        f = tmp_path / f"img{i}.png"
        f.write_bytes(png_bytes(w, h, seed=i))
        files.append(f)
    r = daemon.ctl("submit", *map(str, files), "--wait", "-o", str(tmp_path / "out"))
    assert r.returncode == Exit.OK, r.stderr
    bsws = sorted((tmp_path / "out").glob("*.bsw"))
    assert [b.name for b in bsws] == [f.name + ".bsw" for f in files]
    r = daemon.ctl("submit", "--decompress", *map(str, bsws), "--wait", "-o", str(tmp_path / "back"))
    assert r.returncode == Exit.OK, r.stderr
    for f in files:
        back = (tmp_path / "back" / f.name).read_bytes()
        assert np.array_equal(pixels(back), pixels(f.read_bytes()))
    r = daemon.ctl("status")
    assert r.returncode == 0 and "img0.png" in r.stdout
    r = daemon.ctl("--json", "stats")
    assert r.returncode == 0 and '"ready": true' in r.stdout


def test_result_fetches_a_job_submitted_without_wait(daemon, tmp_path):
    f = tmp_path / "later.png"
    f.write_bytes(png_bytes(20, 12, seed=9))
    r = daemon.ctl("submit", str(f))
    assert r.returncode == Exit.OK, r.stderr
    job = re.search(r"job (\d+)", r.stdout).group(1)
    r = daemon.ctl("result", job, "--wait", "-o", str(tmp_path / "fetched"))
    assert r.returncode == Exit.OK, r.stderr
    bsw = tmp_path / "fetched" / "later.png.bsw"
    assert bsw.exists() and bsw.read_bytes()[:4] == b"\x89BSW"
    assert f"later.png -> {bsw}:" in r.stdout  # the job's name, not a made-up path in the output folder
    r = daemon.ctl("result", "999999", "-o", str(tmp_path / "none"))
    assert r.returncode != Exit.OK and not (tmp_path / "none").exists()


def test_bad_inputs_fail_with_reasons_and_write_nothing(daemon, tmp_path):
    """BUG-08 and BUG-14: each ends failed with a reason; the daemon stays up; no .bsw."""
    before = daemon.metric("bswd_jobs_completed_total", op="compress", result="failed")
    good = png_bytes(64, 64, seed=7)
    bad = {
        "truncated.png": good[: len(good) // 2],
        "empty.png": b"",
        "notes.png": b"just some text, not an image\n",
        "bomb.png": png(65535, 65535, 8, 0, [b"\x00"]),
        "big.png": png(10000, 10000, 8, 0, [b"\x00"]),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = daemon.ctl("submit", *[str(tmp_path / n) for n in bad], "--wait", "-o", str(out))
    assert r.returncode == Exit.JOB_FAILED, r.stderr
    assert time.monotonic() - t0 < 20
    jobs = {j["name"]: j for j in all_jobs(daemon)}
    for name in bad:
        assert jobs[name]["state"] == "failed" and jobs[name]["error"], jobs[name]
        assert name in r.stderr
    assert "truncated" in jobs["truncated.png"]["error"] or "ends" in jobs["truncated.png"]["error"]
    assert "empty" in jobs["empty.png"]["error"]
    assert "pixel" in jobs["bomb.png"]["error"] and "pixel" in jobs["big.png"]["error"]
    assert not out.exists() or not list(out.iterdir())
    assert daemon.metric("bswd_jobs_completed_total", op="compress", result="failed") == before + len(bad)
    assert daemon.http("/healthz")[0] == 200 and daemon.call("ping").code == "ok"


def test_metrics_match_what_was_done(daemon, tmp_path, stale_dir):
    """Counters equal the jobs' own numbers; a stale multiprocess file does not leak in (BUG-20)."""
    _, stale = stale_dir
    removed = [e for e in daemon.logs() if e["msg"].startswith("removed stale prometheus")]
    assert removed and sorted(Path(f).name for f in removed[0]["files"]) == stale
    names = ["bswd_jobs_completed_total", "bswd_input_bytes_total", "bswd_output_bytes_total",
             "bswd_pixels_total", "bswd_patches_total"]
    base = {n: daemon.metric(n, op="compress") if n != names[0] else
            daemon.metric(n, op="compress", result="ok") for n in names}
    files = []
    for i, (w, h) in enumerate([(8, 8), (40, 24), (64, 64)]):
        f = tmp_path / f"m{i}.png"
        f.write_bytes(png_bytes(w, h, seed=100 + i))
        files.append((f, w, h))
    r = daemon.ctl("submit", *[str(f) for f, _, _ in files], "--wait", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    ins = sum(f.stat().st_size for f, _, _ in files)
    outs = sum((tmp_path / "out" / (f.name + ".bsw")).stat().st_size for f, _, _ in files)
    px = sum(w * h for _, w, h in files)
    patches = sum(-(-w // 32) * -(-h // 32) for _, w, h in files)
    got = {n: (daemon.metric(n, op="compress") if n != names[0] else
               daemon.metric(n, op="compress", result="ok")) - base[n] for n in names}
    assert got == {names[0]: 3, names[1]: ins, names[2]: outs, names[3]: px, names[4]: patches}
    # the first counter was 100 in the stale file: the daemon's own count is what it did
    assert daemon.metric("bswd_jobs_completed_total", op="compress", result="ok") < 100
    assert daemon.metric("bswd_ready") == 1
    assert daemon.metric("bswd_build_info", version="0.1.0") == 1
    assert daemon.metric("bswd_model_info", model_id="daemon-test") == 1
    assert daemon.metric("bswd_job_seconds_bucket", le="600.0") >= 3
    assert daemon.metric("bswd_step_lanes_count") >= 1
    assert daemon.metric("bswd_device_busy_seconds_total", device="cpu") > 0
    assert daemon.metric("bswd_bits_per_dim_count") >= 3
    _, text = daemon.http("/metrics")
    documented = Path(__file__).parents[1].joinpath("docs", "metrics.md").read_text()
    for line in text.splitlines():
        if line.startswith("bswd_"):
            name = line.split("{")[0].split(" ")[0]
            assert name in documented, f"{name} is exported but not in docs/metrics.md"


def test_batch_neighbours_do_not_change_bytes(daemon, tmp_path):
    """BUG-03 through the daemon: a.png alone, then with b and c in one batching window."""
    a, b, c = png_bytes(64, 64, 1), png_bytes(96, 32, 2), png_bytes(33, 17, 3)
    alone = daemon.call("submit", (a,), op="compress", name="a.png")
    assert alone.code == "ok"
    daemon.wait_jobs_final()
    ids = [daemon.call("submit", (data,), op="compress", name=n).fields["job"]
           for n, data in (("a.png", a), ("b.png", b), ("c.png", c))]
    daemon.wait_jobs_final()
    first = daemon.call("result", job=alone.fields["job"]).payloads[0]
    second = daemon.call("result", job=ids[0]).payloads[0]
    assert first == second
    batched = [daemon.call("status", job=i).fields["job"]["started"] for i in ids]
    assert max(batched) - min(batched) < 0.25, "b and c did not share a's batching window"


def test_path_submissions_stay_inside_roots(daemon, roots, tmp_path):
    inside = roots / "in.png"
    inside.write_bytes(png_bytes(16, 16, 5))
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes(16, 16, 6))
    (roots / "link.png").symlink_to(outside)
    ok = daemon.call("submit", op="compress", path=str(inside))
    assert ok.code == "ok", ok.fields
    for path in (str(outside), str(roots / "link.png"), str(roots / ".." / tmp_path.name / "secret.png"),
                 "relative.png", str(roots / "missing.png")):
        r = daemon.call("submit", op="compress", path=path)
        assert r.code == "rejected", (path, r.fields)
    r = daemon.ctl("submit", "--path", str(inside), "--wait", "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "in.png.bsw").exists()


def test_protocol_errors_get_explicit_codes(daemon):
    assert daemon.call("status", job=999999).code == "not_found"
    assert daemon.call("submit", op="shrink", name="x").code == "bad_request"
    from bswctl.transport import Transport

    from bswd.protocol import Message

    with Transport(daemon.endpoint, 5, 0) as t:
        assert t.call(Message("stats", {}, (), "v9", version=9)).code == "unsupported_version"
