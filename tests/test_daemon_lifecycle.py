"""Load, crashes and shutdown of a real ``bswd serve``: 200 jobs at once against a bounded queue,
``kill -9`` mid-batch then restart, SIGTERM drains, and a drain that runs out of grace."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
import zmq
from daemonkit import Daemon, all_jobs, png_bytes, write_tiny_model

from bswd import protocol


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.bswm")


def _states(state: Path) -> dict[int, str]:
    with sqlite3.connect(state / "jobs.sqlite3") as db:
        return dict(db.execute("SELECT id, state FROM jobs").fetchall())


def test_200_jobs_at_once_accepted_done_rest_busy(model_path, tmp_path):
    d = Daemon(tmp_path / "state", model_path, env={"BSWD_QUEUE_MAX": "40"}).start()
    try:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(d.endpoint)
        requests = {}
        for i in range(200):  # pipelined on one socket: all 200 are in before the first reply
            req = protocol.request("submit", (png_bytes(8, 8, seed=i),), op="compress", name=f"s{i}.png")
            requests[req.id] = i
            sock.send_multipart(protocol.encode(req))
        replies = {}
        deadline = time.monotonic() + 30
        while len(replies) < 200 and time.monotonic() < deadline:
            if sock.poll(1000):
                r = protocol.decode(sock.recv_multipart())
                replies[r.id] = r
        sock.close(0)
        ctx.term()
        assert set(replies) == set(requests), "every submit got an explicit reply"
        codes = [r.code for r in replies.values()]
        assert set(codes) <= {"ok", "busy"}
        busy = [r for r in replies.values() if r.code == "busy"]
        accepted = {r.fields["job"] for r in replies.values() if r.code == "ok"}
        assert busy and accepted, codes
        assert all(r.fields["retry_after_ms"] > 0 and "queue is full" in r.fields["error"] for r in busy)
        counts = d.wait_jobs_final(60)
        assert counts == {"done": len(accepted)}
        assert {j["id"] for j in all_jobs(d)} == accepted
        assert d.metric("bswd_jobs_completed_total", op="compress", result="rejected") == len(busy)
        assert d.metric("bswd_jobs_completed_total", op="compress", result="ok") == len(accepted)
        assert d.metric("bswd_step_lanes_sum") >= len(accepted)  # shared steps: fewer steps than jobs
        assert d.metric("bswd_step_lanes_count") < len(accepted)
    finally:
        d.stop()


def test_kill_9_mid_batch_then_restart_loses_and_duplicates_nothing(model_path, tmp_path):
    state = tmp_path / "state"
    env = {"BSWD_BATCHING_MAX_LANES": "2", "BSWD_BATCHING_MAX_DELAY_MS": "0"}
    d = Daemon(state, model_path, env=env).start()
    images = {f"k{i}.png": png_bytes(64, 64, seed=50 + i) for i in range(8)}
    ids = {}
    for name, data in images.items():
        r = d.call("submit", (data,), op="compress", name=name)
        assert r.code == "ok"
        ids[r.fields["job"]] = name
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until a batch is running and some jobs are left
        counts = d.call("status", limit=1).fields["counts"]
        if counts.get("running"):
            break
        time.sleep(0.02)
    assert counts.get("running") and counts.get("queued"), counts
    d.proc.kill()  # SIGKILL: no drain, no cleanup
    d.proc.wait(10)
    before = _states(state)
    assert set(before) == set(ids) and "running" in before.values()

    d2 = Daemon(state, model_path, env=env).start()
    try:
        counts = d2.wait_jobs_final(60)
        assert counts == {"done": len(images)}
        jobs = all_jobs(d2)
        assert sorted(j["id"] for j in jobs) == sorted(ids)  # no job lost, none added
        resumed = [e for e in d2.logs() if e["msg"] == "starting"][-1]["resumed_jobs"]
        assert resumed >= 1
        results = sorted(p.name for p in (state / "results").iterdir())
        assert results == sorted(f"{i}.bsw" for i in ids)  # one output per job, no temp leftovers
        assert not list((state / "spool").iterdir())
        # each output decodes to its own input (through the daemon)
        for job_id, name in ids.items():
            bsw = d2.call("result", job=job_id).payloads[0]
            back = d2.call("submit", (bsw,), op="decompress", name=name + ".bsw")
            assert back.code == "ok"
        d2.wait_jobs_final(60)
        from daemonkit import pixels

        for j in all_jobs(d2):
            if j["op"] == "decompress":
                data = d2.call("result", job=j["id"]).payloads[0]
                assert (pixels(data) == pixels(images[j["name"][:-4]])).all()
    finally:
        d2.stop()


def test_sigterm_drains_and_exits_0(model_path, tmp_path):
    state = tmp_path / "state"
    d = Daemon(state, model_path, env={"BSWD_BATCHING_MAX_LANES": "1"}).start()
    for i in range(4):  # enough work that the drain is still going when "late.png" arrives
        assert d.call("submit", (png_bytes(64, 64, seed=i),), op="compress", name=f"t{i}.png").code == "ok"
    d.signal(signal.SIGTERM)
    time.sleep(0.05)
    r = d.call("submit", (png_bytes(8, 8),), op="compress", name="late.png", timeout=5)
    assert r.code == "draining"
    status, body = d.http("/readyz")
    assert status in (0, 503), body  # 503 while draining (0: already gone)
    assert d.wait(60) == 0
    assert set(_states(state).values()) == {"done"}
    assert any(e["msg"] == "draining: intake stopped" for e in d.logs())


def test_drain_out_of_grace_keeps_jobs_queued_for_next_start(model_path, tmp_path):
    state = tmp_path / "state"
    env = {"BSWD_BATCHING_MAX_LANES": "1", "BSWD_BATCHING_MAX_DELAY_MS": "0", "BSWD_DRAIN_GRACE_S": "0.3"}
    d = Daemon(state, model_path, env=env).start()
    # enough work that it cannot all finish inside the 0.3 s grace, however fast the coder gets
    for i in range(6):
        assert d.call("submit", (png_bytes(192, 192, seed=i),), op="compress", name=f"g{i}.png").code == "ok"
    d.signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert d.wait(30) == 0
    assert time.monotonic() - t0 < 15
    states = _states(state)
    assert "queued" in states.values() and set(states.values()) <= {"done", "queued"}
    d2 = Daemon(state, model_path).start()
    try:
        assert d2.wait_jobs_final(60) == {"done": 6}
    finally:
        d2.stop()
