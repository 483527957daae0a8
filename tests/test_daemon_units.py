"""The daemon's parts alone (in-process): job store recovery, batcher verification failures,
the originals policy, config precedence and path roots."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from daemonkit import png_bytes, write_tiny_model
from prometheus_client import CollectorRegistry

from bswd import protocol
from bswd.config import ConfigError, load_config
from bswd.jobs import JobConflict, JobStore, QueueFull
from bswd.metrics import Metrics
from bswd.outputs import apply_policy, file_ident, publish
from bswd.protocol import Code
from bswd.server import PathRefused, Requests, resolve_inside


def test_store_recover_requeues_running_and_drops_orphans(tmp_path):
    store = JobStore(tmp_path)
    a, _ = store.submit("compress", "a.png", b"a")
    b, _ = store.submit("compress", "b.png", b"b")
    store.claim(1)
    (store.spool_dir / "orphan.in").write_bytes(b"x")  # spooled, then the process died
    store.close()
    store = JobStore(tmp_path)
    assert store.recover() == 1
    assert store.get(a.id).state == "queued" and store.get(a.id).attempts == 1
    assert not (store.spool_dir / "orphan.in").exists()
    assert store.cancel(b.id).state == "cancelled"
    with pytest.raises(JobConflict):
        store.cancel(b.id)
    with pytest.raises(QueueFull):
        store.submit("compress", "c.png", b"c", queue_max=1)
    assert len(list(store.spool_dir.iterdir())) == 1  # nothing spooled for the refused job


def test_expired_results_are_deleted_and_result_says_why(tmp_path):
    now = [1000.0]
    store = JobStore(tmp_path / "state", clock=lambda: now[0])
    elsewhere = tmp_path / "out" / "kept.bsw"
    elsewhere.parent.mkdir()
    jobs = []
    for name, target in [("old.png", None), ("new.png", None), ("own.png", str(elsewhere.parent))]:
        job, _ = store.submit("compress", name, b"x", target=target)
        [job] = store.claim(1)
        out = store.result_path(job, ".bsw") if target is None else elsewhere
        out.write_bytes(b"coded " + name.encode())
        store.finish(job.id, "done", output=str(out), output_bytes=len(name) + 6)
        jobs.append(job.id)
        now[0] += 3000  # old finished at 1000, new at 4000, own at 7000
    now[0] = 1000 + 3600 + 1  # one hour and a second after the first job finished
    assert store.prune_results(3600) == [jobs[0]]
    assert sorted(p.name for p in store.results_dir.iterdir()) == [f"{jobs[1]}.bsw"]
    assert store.get(jobs[0]).output is None and store.get(jobs[0]).state == "done"
    now[0] = 1e9
    assert store.prune_results(3600) == [jobs[1]]  # a job's own target is never the store's to delete
    assert elsewhere.read_bytes() == b"coded own.png"

    with pytest.raises(ConfigError, match="results_keep_hours must be >= 0"):
        load_config(None, env={"BSWD_RESULTS_KEEP_HOURS": "-1"})
    cfg = load_config(None, env={}, overrides={"results_keep_hours": 1.0})
    requests = Requests(store, Metrics(CollectorRegistry(), "test"), lambda: cfg, lambda: None, lambda: False,
                        lambda: None, dict, logging.getLogger("test"))
    r = requests.handle(protocol.request("result", job=jobs[0]))
    assert r.code == Code.ERROR and not r.payloads
    assert r.fields["error"] == (f"job {jobs[0]}'s output was deleted: results are kept 1 hours after a job "
                                 "ends (results_keep_hours)")
    r = requests.handle(protocol.request("result", job=jobs[2]))
    assert r.code == Code.OK and r.payloads == (b"coded own.png",)
    store.close()


def test_verification_failure_writes_nothing_and_counts(tmp_path, monkeypatch):
    from bswd import batcher as batcher_mod
    from bswd.batcher import Batcher, BatchSettings
    from bswd.shell import build_engine, load_model_file

    model = write_tiny_model(tmp_path / "m.bswm")
    engine = build_engine(load_model_file(model), "cpu")
    store = JobStore(tmp_path / "state")
    metrics = Metrics(CollectorRegistry(), "test")
    good = png_bytes(16, 16, 1)
    wrong = png_bytes(16, 16, 2)
    monkeypatch.setattr(batcher_mod, "decompress_many", lambda eng, files, progress=None:
                        [(wrong, ".png") for _ in files])
    job, _ = store.submit("compress", "a.png", good, target=str(tmp_path / "out"))
    b = Batcher(engine, store, metrics, BatchSettings(max_delay_s=0), "cpu", logging.getLogger("t"),
                threading.Event())
    b.process(b.collect(threading.Event()), threading.Event())
    done = store.get(job.id)
    assert done.state == "failed" and "verification failed" in (done.error or "")
    assert metrics.registry.get_sample_value("bswd_verify_failures_total") == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_policy_touches_only_the_unchanged_original(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"one")
    ident = file_ident(f)
    f.write_bytes(b"changed!")
    assert "changed" in apply_policy(f, ident, "delete-after-verify", tmp_path / ".done")
    assert f.exists()
    assert apply_policy(f, file_ident(f), "delete-after-verify", tmp_path / ".done") == "deleted"
    assert not f.exists()


def test_publish_never_replaces_another_file(tmp_path):
    out = tmp_path / "out"
    first = publish(out / "IMG_0001.png.bsw", b"first image")
    assert first == out / "IMG_0001.png.bsw"
    assert publish(out / "IMG_0001.png.bsw", b"first image") == first  # the same output again: kept
    # a reused name (a camera counter reset, a second image dropped under the same name)
    assert publish(out / "IMG_0001.png.bsw", b"second image") == out / "IMG_0001-1.png.bsw"
    assert publish(out / "IMG_0001.png.bsw", b"third image") == out / "IMG_0001-2.png.bsw"
    assert publish(out / "IMG_0001.png.bsw", b"second image") == out / "IMG_0001-1.png.bsw"
    (out / "keep.png").write_bytes(b"somebody's picture")
    (out / "keep-1.png").mkdir()
    assert publish(out / "keep.png", b"decoded") == out / "keep-2.png"
    assert (out / "keep.png").read_bytes() == b"somebody's picture"
    assert sorted(p.name for p in out.iterdir()) == ["IMG_0001-1.png.bsw", "IMG_0001-2.png.bsw", "IMG_0001.png.bsw",
                                                     "keep-1.png", "keep-2.png", "keep.png"]
    assert [(out / n).read_bytes() for n in ("IMG_0001.png.bsw", "IMG_0001-1.png.bsw", "IMG_0001-2.png.bsw")] == [
        b"first image", b"second image", b"third image"]


def test_config_precedence_file_env_flags(tmp_path):
    cfg = tmp_path / "b.toml"
    cfg.write_text('queue_max = 10\nverify = false\n[batching]\nmax_lanes = 8\n')
    c = load_config(cfg, env={"BSWD_QUEUE_MAX": "20"}, overrides={"queue_max": 30})
    assert (c.queue_max, c.verify, c.batching.max_lanes) == (30, False, 8)
    assert load_config(cfg, env={"BSWD_QUEUE_MAX": "20"}).queue_max == 20
    cfg.write_text('queue_maxx = 1\n')
    with pytest.raises(ConfigError, match="queue_maxx"):
        load_config(cfg, env={})
    cfg.write_text('[[watch]]\ninput = "a"\noutput = "b"\npolicy = "shred"\n')
    with pytest.raises(ConfigError, match="watch a: policy must be one of keep, move, delete-after-verify, "
                                          "not 'shred'"):
        load_config(cfg, env={})
    cfg.write_text('[[watch]]\ninput = "in"\noutput = "./in/"\n')
    with pytest.raises(ConfigError, match="output must be another folder than input"):
        load_config(cfg, env={})
    # each move renamed the original inside the watched folder: a new file, coded again, without end
    cfg.write_text('[[watch]]\ninput = "in"\noutput = "out"\npolicy = "move"\nmoved_to = "in/."\n')
    with pytest.raises(ConfigError, match="moved_to must be another folder than input"):
        load_config(cfg, env={})


def test_recover_removes_a_result_left_half_written(tmp_path):
    store = JobStore(tmp_path)
    (store.results_dir / ".bswd-x1y2.part").write_bytes(b"half")
    (store.results_dir / "7.bsw").write_bytes(b"kept")
    store.recover()
    assert sorted(p.name for p in store.results_dir.iterdir()) == ["7.bsw"]


def test_resolve_inside_roots(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.png").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"x")
    os.symlink(tmp_path / "secret", root / "escape.png")
    assert resolve_inside(str(root / "ok.png"), (root,)) == (root / "ok.png").resolve()
    for bad in (str(root / "escape.png"), str(root / ".." / "secret"), "ok.png", str(tmp_path / "secret")):
        with pytest.raises(PathRefused):
            resolve_inside(bad, (root,))
    with pytest.raises(PathRefused, match="disabled"):
        resolve_inside(str(root / "ok.png"), ())


def test_daemon_sd_notify_datagrams(tmp_path):
    import socket

    from bswd.daemon import sd_notify

    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": path})
        assert s.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", {})


def test_curve_required_beyond_loopback(tmp_path):
    import zmq

    from bswd.config import DaemonConfig
    from bswd.server import FrontEnd

    cfg = DaemonConfig(endpoint="tcp://0.0.0.0:0")
    ctx = zmq.Context()
    try:
        with pytest.raises(ConfigError, match="CurveZMQ"):
            FrontEnd(ctx, cfg, None, logging.getLogger("t"))  # type: ignore[arg-type]
    finally:
        ctx.destroy(0)


def test_curve_allows_only_listed_clients(tmp_path):
    import zmq
    import zmq.auth
    from bswctl.transport import CurveKeys, NoReply, Transport

    from bswd import protocol
    from bswd.config import Curve, DaemonConfig
    from bswd.server import FrontEnd

    keys, allowed, other = tmp_path / "keys", tmp_path / "allowed", tmp_path / "other"
    for d in (keys, allowed, other):
        d.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(keys, "server")
    _, client_sec = zmq.auth.create_certificates(allowed, "client")
    _, stranger_sec = zmq.auth.create_certificates(other, "stranger")

    class Echo:
        def handle(self, m):
            return protocol.reply(m, protocol.Code.OK)

    cfg = DaemonConfig(endpoint="tcp://127.0.0.1:0",
                       curve=Curve(server_secret_key_file=str(server_sec), allowed_clients_dir=str(allowed)))
    ctx = zmq.Context()
    front = FrontEnd(ctx, cfg, Echo(), logging.getLogger("t"))  # type: ignore[arg-type]
    stop = threading.Event()
    t = threading.Thread(target=lambda: [front.poll(50) for _ in iter(stop.is_set, True)], daemon=True)
    t.start()
    try:
        with Transport(front.endpoint, 3, 0, curve=CurveKeys(Path(server_pub), Path(client_sec))) as tr:
            assert tr.call(protocol.request("ping")).code == "ok"
        with Transport(front.endpoint, 1, 0, curve=CurveKeys(Path(server_pub), Path(stranger_sec))) as tr:
            with pytest.raises(NoReply):
                tr.call(protocol.request("ping"))
    finally:
        stop.set()
        t.join(5)
        front.close()
        ctx.destroy(0)


def test_second_daemon_on_the_same_state_folder_refuses(tmp_path):
    from bswd.daemon import StateDirBusy, lock_state_dir

    held = lock_state_dir(tmp_path)
    try:
        with pytest.raises(StateDirBusy, match="in use by another bswd serve"):
            lock_state_dir(tmp_path)
    finally:
        held.close()
    lock_state_dir(tmp_path).close()  # free again once the first one is gone
