"""Watched folders on a real ``bswd serve``: a file written in chunks is taken once, after it is
complete (BUG-15); polling mode (BUG-17b); exactly once across restarts; policies; and the
inotify-limit fallback (BUG-17a) on the watcher alone."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemonkit import Daemon, all_jobs, pixels, png_bytes, write_tiny_model

from bswd.config import WatchFolder
from bswd.watcher import FolderWatcher


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.bswm")


def _config(tmp_path: Path, folders: list[dict]) -> Path:
    lines = []
    for f in folders:
        lines.append("[[watch]]")
        lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {str(v).lower()}" for k, v in f.items()]
    cfg = tmp_path / "bswd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _wait_for(pred, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


def _decode(d: Daemon, bsw: Path) -> bytes:
    r = d.call("submit", (bsw.read_bytes(),), op="decompress", name=bsw.name)
    assert r.code == "ok"
    d.wait_jobs_final(30)
    return d.call("result", job=r.fields["job"]).payloads[0]


def test_watched_folders_chunks_polling_policies_and_restart(model_path, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    poll_in, poll_out = tmp_path / "poll_in", tmp_path / "poll_out"
    move_in, move_out = tmp_path / "move_in", tmp_path / "move_out"
    cfg = _config(tmp_path, [
        {"input": str(inbox), "output": str(out), "settle_s": 1.0},
        {"input": str(poll_in), "output": str(poll_out), "polling": True, "settle_s": 0.3,
         "poll_interval_s": 0.2},
        {"input": str(move_in), "output": str(move_out), "policy": "move", "settle_s": 0.3},
    ])
    state = tmp_path / "state"
    for p in (inbox, poll_in, move_in):
        p.mkdir()
    (inbox / "before.png").write_bytes(png_bytes(16, 16, seed=9))  # present at start: rescan
    d = Daemon(state, model_path, extra=["--config", str(cfg)]).start()
    try:
        # BUG-15: three chunks 200 ms apart through one handle; ignored temp names alongside
        data = png_bytes(64, 64, seed=3)
        (inbox / "partial.png.part").write_bytes(data)
        (inbox / ".hidden.png").write_bytes(data)
        third = len(data) // 3
        with open(inbox / "chunked.png", "wb") as fh:
            for i in range(3):
                fh.write(data[i * third: len(data) if i == 2 else (i + 1) * third])
                fh.flush()
                time.sleep(0.2)
            last_write = time.time()
        target = out / "chunked.png.bsw"
        assert _wait_for(target.exists, 15), d.log.read_text()[-3000:]
        assert _wait_for((out / "before.png.bsw").exists, 10)
        jobs = [j for j in all_jobs(d) if j["name"] == "chunked.png"]
        assert len(jobs) == 1 and jobs[0]["state"] == "done", jobs
        assert jobs[0]["created"] >= last_write - 0.05  # taken only after the last chunk
        assert not [j for j in all_jobs(d) if j["state"] == "failed"]
        assert np.array_equal(pixels(_decode(d, target)), pixels(data))
        assert sorted(p.name for p in out.iterdir()) == ["before.png.bsw", "chunked.png.bsw"]

        # BUG-17b: polling mode picks a file up within poll interval + settle (+ margin)
        t0 = time.monotonic()
        tmp = poll_in / ".incoming"
        tmp.write_bytes(png_bytes(24, 24, seed=4))
        os.rename(tmp, poll_in / "polled.png")
        assert _wait_for((poll_out / "polled.png.bsw").exists, 10)
        assert time.monotonic() - t0 < 5

        # policy move: the original moves to .done only after the verified output exists
        (move_in / "m.png").write_bytes(png_bytes(16, 16, seed=5))
        assert _wait_for(lambda: (move_in / ".done" / "m.png").exists(), 10)
        assert (move_out / "m.png.bsw").exists() and not (move_in / "m.png").exists()
        # another image under the same name: neither the first output nor the first original is replaced
        first = (move_out / "m.png.bsw").read_bytes()
        (move_in / "m.png").write_bytes(png_bytes(16, 16, seed=6))
        assert _wait_for(lambda: (move_in / ".done" / "m-1.png").exists(), 10)
        assert (move_out / "m.png.bsw").read_bytes() == first
        assert np.array_equal(pixels(_decode(d, move_out / "m-1.png.bsw")), pixels(png_bytes(16, 16, seed=6)))
        assert (move_in / ".done" / "m.png").read_bytes() == png_bytes(16, 16, seed=5)
        n_jobs = len(all_jobs(d))
        assert (inbox / "chunked.png").exists()  # policy keep: originals stay
    finally:
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0

    # exactly once across restarts: the rescan finds every file already recorded
    d2 = Daemon(state, model_path, extra=["--config", str(cfg)]).start()
    try:
        time.sleep(1.5)  # longer than every settle time
        assert len(all_jobs(d2)) == n_jobs
        # a file rewritten in place is a new version: taken again, next to the old version's output
        old = (out / "before.png.bsw").read_bytes()
        (inbox / "before.png").write_bytes(png_bytes(16, 16, seed=10))
        assert _wait_for(lambda: len(all_jobs(d2)) == n_jobs + 1, 10)
        assert _wait_for((out / "before-1.png.bsw").exists, 10)
        assert (out / "before.png.bsw").read_bytes() == old
    finally:
        d2.stop()


def test_sighup_reloads_watched_folders(model_path, tmp_path):
    a_in, a_out, b_in, b_out = (tmp_path / n for n in ("a_in", "a_out", "b_in", "b_out"))
    cfg = _config(tmp_path, [{"input": str(a_in), "output": str(a_out), "settle_s": 0.2}])
    d = Daemon(tmp_path / "state", model_path, extra=["--config", str(cfg)]).start()
    try:
        _config(tmp_path, [{"input": str(b_in), "output": str(b_out), "settle_s": 0.2}])
        d.signal(signal.SIGHUP)
        assert _wait_for(b_in.exists, 10)
        (b_in / "x.png").write_bytes(png_bytes(8, 8))
        assert _wait_for((b_out / "x.png.bsw").exists, 10)
        (a_in / "y.png").write_bytes(png_bytes(8, 8))
        time.sleep(1.0)
        assert not (a_out / "y.png.bsw").exists()  # no longer watched
    finally:
        d.stop()


class _LimitObserver:
    """An inotify observer whose watch fails as on a machine at fs.inotify.max_user_watches."""

    def schedule(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    def start(self):
        pass

    def stop(self):
        pass


def test_inotify_limit_falls_back_to_polling_with_a_warning(tmp_path, caplog):
    folder = WatchFolder(tmp_path / "in", tmp_path / "out", settle_s=0.2, poll_interval_s=0.1)
    taken = []
    got = threading.Event()

    def take(f, path):
        taken.append(path.name)
        got.set()
        return True

    log = logging.getLogger("test-watch")
    with caplog.at_level(logging.WARNING, logger="test-watch"):
        w = FolderWatcher(folder, take, log, observer_factory=lambda f: _LimitObserver())
        w.start()
        try:
            assert w.polling
            (folder.input / "a.png").write_bytes(b"x")
            assert got.wait(5) and taken == ["a.png"]
        finally:
            w.stop()
    text = caplog.text
    assert "fs.inotify.max_user_watches" in text and "sysctl" in text and "polling" in text


def test_watcher_other_errors_fail_fast(tmp_path):
    class Broken(_LimitObserver):
        def schedule(self, *args, **kwargs):
            raise OSError(errno.EACCES, "permission denied")

    w = FolderWatcher(WatchFolder(tmp_path / "in", tmp_path / "out"), lambda f, p: True,
                      logging.getLogger("t"), observer_factory=lambda f: Broken())
    with pytest.raises(OSError):
        w.start()
