"""``bswctl`` against no daemon, a daemon that never answers, and scripted replies (BUG-18);
its exit codes; and that it never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import zmq
from bswctl.cli import Exit
from daemonkit import BSWCTL, free_port, png_bytes

from bswd import protocol


def _ctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([BSWCTL, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "BSWD_ENDPOINT": "tcp://127.0.0.1:1"})


class FakeDaemon:
    """A ROUTER on loopback that records requests and answers with ``answer(msg)`` (None: silence)."""

    def __init__(self, answer):
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.seen: list[tuple[bytes, protocol.Message]] = []
        self._answer = answer
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        self._ready.set()
        while not self._stop.is_set():
            if sock.poll(50):
                frames = sock.recv_multipart()
                m = protocol.decode(frames[1:])
                self.seen.append((frames[0], m))
                out = self._answer(m)
                if out is not None:
                    sock.send_multipart([frames[0], *protocol.encode(out)])
        sock.close(0)
        ctx.term()

    def __enter__(self) -> FakeDaemon:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def test_no_daemon_exits_within_timeout_with_a_clear_message(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(png_bytes(8, 8))
    t0 = time.monotonic()
    r = _ctl("--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "1.5", "submit", str(f))
    elapsed = time.monotonic() - t0
    assert r.returncode == Exit.NO_REPLY
    assert "no reply from the bswd daemon" in r.stderr and "bswd serve" in r.stderr
    assert elapsed < 1.5 + 1.0 + 0.8, elapsed  # timeout + 1 s (+ interpreter start-up)


def test_silent_daemon_each_retry_on_a_fresh_socket(tmp_path):
    """BUG-18: the request arrives but no reply comes; retries use new sockets; no hang at exit."""
    f = tmp_path / "x.png"
    f.write_bytes(png_bytes(8, 8))
    with FakeDaemon(lambda m: None) as fake:
        t0 = time.monotonic()
        r = _ctl("--endpoint", fake.endpoint, "--timeout", "2", "--retries", "2", "submit", str(f))
        elapsed = time.monotonic() - t0
    assert r.returncode == Exit.NO_REPLY, r.stderr
    assert elapsed < 2 + 1.0 + 0.8, elapsed
    assert len(fake.seen) == 3
    assert len({ident for ident, _ in fake.seen}) == 3  # three different sockets
    assert len({m.id for _, m in fake.seen}) == 1  # the same request (idempotency key) each time


@pytest.mark.parametrize("code,exit_code", [("busy", Exit.BUSY), ("rejected", Exit.REJECTED),
                                            ("draining", Exit.REJECTED),
                                            ("unsupported_version", Exit.PROTOCOL)])
def test_refusals_map_to_named_exit_codes(tmp_path, code, exit_code):
    f = tmp_path / "x.png"
    f.write_bytes(png_bytes(8, 8))
    with FakeDaemon(lambda m: protocol.reply(m, protocol.Code(code), error="no", retry_after_ms=200)) as fake:
        r = _ctl("--endpoint", fake.endpoint, "--timeout", "3", "submit", str(f))
    assert r.returncode == exit_code, r.stderr
    assert code in r.stderr


def test_busy_wait_retries_until_accepted(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(png_bytes(8, 8))
    calls = []

    def answer(m):
        calls.append(m.id)
        if len(calls) < 3:
            return protocol.reply(m, protocol.Code.BUSY, error="full", retry_after_ms=50)
        return protocol.reply(m, protocol.Code.OK, job=7, state="queued")

    with FakeDaemon(answer) as fake:
        r = _ctl("--endpoint", fake.endpoint, "submit", "--busy-wait", "5", str(f))
    assert r.returncode == Exit.OK, r.stderr
    assert "job 7 queued" in r.stdout and len(set(calls)) == 1


def test_wait_reports_failed_job_with_reason(tmp_path):
    f = tmp_path / "bad.png"
    f.write_bytes(b"not a png")

    def answer(m):
        if m.type == "submit":
            return protocol.reply(m, protocol.Code.OK, job=3, state="queued")
        return protocol.reply(m, protocol.Code.OK, job={"id": 3, "state": "failed", "error": "not an image"})

    with FakeDaemon(answer) as fake:
        r = _ctl("--endpoint", fake.endpoint, "submit", "--wait", str(f))
    assert r.returncode == Exit.JOB_FAILED and "not an image" in r.stderr


def test_missing_local_file_is_a_usage_error(tmp_path):
    r = _ctl("submit", str(tmp_path / "missing.png"))
    assert r.returncode == Exit.USAGE and "cannot read" in r.stderr


def test_an_existing_output_is_refused_before_anything_is_submitted(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(png_bytes(8, 8))
    (tmp_path / "a.png.bsw").write_bytes(b"mine")
    with FakeDaemon(lambda m: protocol.reply(m, protocol.Code.OK, job=1, state="queued")) as fake:
        r = _ctl("--endpoint", fake.endpoint, "submit", "--wait", str(f))
    assert r.returncode == Exit.USAGE
    assert f"{tmp_path / 'a.png.bsw'}: already exists (use --force to overwrite); nothing submitted" in r.stderr
    assert not fake.seen and (tmp_path / "a.png.bsw").read_bytes() == b"mine"


def test_decompress_and_duplicate_names_are_refused_before_submitting(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d in ("x", "y"):
        (tmp_path / d / "p.png").write_bytes(png_bytes(8, 8))
    (tmp_path / "p.png.bsw").write_bytes(b"coded")
    (tmp_path / "p.png").write_bytes(b"already decoded")
    with FakeDaemon(lambda m: protocol.reply(m, protocol.Code.OK, job=1, state="queued")) as fake:
        r = _ctl("--endpoint", fake.endpoint, "submit", "--decompress", "--wait", str(tmp_path / "p.png.bsw"))
        assert r.returncode == Exit.USAGE and f"{tmp_path / 'p.png'}: already exists" in r.stderr
        out = tmp_path / "out"
        r2 = _ctl("--endpoint", fake.endpoint, "submit", "--wait", "-o", str(out),
                  str(tmp_path / "x" / "p.png"), str(tmp_path / "y" / "p.png"))
        assert r2.returncode == Exit.USAGE
        assert f"{tmp_path / 'y' / 'p.png'}: its output {out / 'p.png.bsw'} would also be " in r2.stderr
    assert not fake.seen and (tmp_path / "p.png").read_bytes() == b"already decoded"


def test_bswctl_never_imports_torch():
    code = ("import sys, bswctl.cli, bswctl.transport, bswd.protocol, bswd.config\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'numpy' not in sys.modules, 'numpy imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_light_modules_doctests():
    import doctest

    import bswd.config
    import bswd.jobs
    import bswd.metrics
    import bswd.protocol
    import bswd.watcher

    for mod in (bswd.protocol, bswd.config, bswd.jobs, bswd.metrics, bswd.watcher):
        result = doctest.testmod(mod)
        assert result.failed == 0, mod.__name__


def test_an_output_folder_without_wait_is_a_usage_error(tmp_path):
    """-o used to be ignored without --wait: the result went to the daemon's store, not to -o."""
    f = tmp_path / "a.png"
    f.write_bytes(png_bytes(8, 8))
    with FakeDaemon(lambda m: protocol.reply(m, protocol.Code.OK, job=1, state="queued")) as fake:
        r = _ctl("--endpoint", fake.endpoint, "submit", "-o", str(tmp_path / "out"), str(f))
    assert r.returncode == Exit.USAGE and "needs --wait" in r.stderr and "bswctl result ID -o DIR" in r.stderr
    assert not fake.seen and not (tmp_path / "out").exists()
