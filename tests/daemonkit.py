"""Helpers for the daemon tests: a real ``bswd serve`` subprocess on loopback, tiny images, a
tiny random model file, metrics scraping and a raw protocol client."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

VENV_BIN = Path(sys.executable).parent
BSWD = str(VENV_BIN / "bswd")
BSWCTL = str(VENV_BIN / "bswctl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA", "L") else im).copy()


def write_tiny_model(path: Path) -> Path:
    """A small random integer model (fast on 2 CPU cores); written once per session."""
    import torch

    from bswd.model.config import ModelConfig
    from bswd.model.net import BitSwapVAE
    from bswd.model.quant import export_model

    torch.manual_seed(0)
    net = BitSwapVAE(ModelConfig(width=16, n_layers=2))
    net.set_quant(True)
    path.write_bytes(export_model(net, "daemon-test").to_bytes())
    return path


@dataclass
class Daemon:
    """``bswd serve`` as a subprocess; its stderr (JSON logs) goes to ``log``."""

    state: Path
    model: Path
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.state.parent / f"{self.state.name}.log"

    def start(self, ready_timeout: float = 60.0) -> Daemon:
        env = {**os.environ, "BSWD_TORCH_THREADS": "1", "BSWD_DEVICES": "cpu", **self.env}
        args = [BSWD, "serve", "--model", str(self.model), "--state", str(self.state),
                "--endpoint", self.endpoint, "--metrics", f"127.0.0.1:{self.metrics_port}", *self.extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stderr=log, stdout=log, env=env)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bswd serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if self.http("/readyz")[0] == 200:
                return self
            time.sleep(0.1)
        self.proc.kill()  # never leave a half-started daemon behind
        self.proc.wait(10)
        raise RuntimeError(f"bswd serve not ready in {ready_timeout} s:\n{self.log.read_text()}")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.http("/metrics")
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        raise KeyError(f"{name}{labels} not exported")

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {**os.environ, "BSWD_ENDPOINT": self.endpoint}
        return subprocess.run([BSWCTL, *args], capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)

    def call(self, kind: str, payloads: tuple[bytes, ...] = (), timeout: float = 10, **fields):
        from bswctl.transport import Transport

        from bswd import protocol

        with Transport(self.endpoint, timeout, retries=0) as t:
            return t.call(protocol.request(kind, payloads, **fields))

    def wait_jobs_final(self, timeout: float = 60) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.call("status", limit=1).fields["counts"]
            if not counts.get("queued") and not counts.get("running"):
                return counts
            time.sleep(0.1)
        raise TimeoutError(f"jobs not finished: {counts}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def logs(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out


def all_jobs(d: Daemon) -> list[dict]:
    return d.call("status", limit=1000).fields["jobs"]
