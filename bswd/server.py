"""The ZeroMQ front end: a ROUTER socket answering ``bswctl`` (protocol in ``docs/protocol.md``).

``Requests`` turns one request ``Message`` into one reply (no sockets, testable alone);
``FrontEnd`` owns the ROUTER socket and, beyond loopback, CurveZMQ with allowed client keys.

Security rules kept here: path submissions must resolve (symlinks followed) inside one of the
configured ``submit_roots`` and may not contain ``..``; payloads and files over ``max_bytes`` are
refused; a full queue answers ``busy`` with ``retry_after_ms`` and records nothing.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from bswd import protocol
from bswd.config import ConfigError, DaemonConfig, is_loopback
from bswd.jobs import JobConflict, JobNotFound, JobStore, QueueFull
from bswd.metrics import Metrics
from bswd.protocol import Code, Message, ProtocolError

RETRY_AFTER_MS = 500


class PathRefused(ValueError):
    """A submitted path is outside the configured roots, or not a readable regular file."""


def resolve_inside(path_text: str, roots: tuple[Path, ...], want_dir: bool = False) -> Path:
    """The real path of ``path_text`` if it lies inside one of ``roots``; else PathRefused."""
    if not roots:
        raise PathRefused("path submissions are disabled (no submit_roots configured); send the bytes")
    p = Path(path_text)
    if not p.is_absolute():
        raise PathRefused(f"{path_text}: path must be absolute")
    if ".." in p.parts:
        raise PathRefused(f"{path_text}: '..' is not allowed in paths")
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise PathRefused(f"{path_text}: {getattr(exc, 'strerror', None) or exc}") from exc
    if not any(real.is_relative_to(r.resolve()) for r in roots):
        raise PathRefused(f"{path_text}: outside the allowed roots")
    mode = os.stat(real).st_mode
    if want_dir and not stat.S_ISDIR(mode) or not want_dir and not stat.S_ISREG(mode):
        raise PathRefused(f"{path_text}: not a {'folder' if want_dir else 'regular file'}")
    return real


def read_limited(path: Path, max_bytes: int) -> bytes:
    """The file's bytes (final component never followed as a symlink), or PathRefused if too big."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise PathRefused(f"{path}: {size:,} bytes exceeds the limit of {max_bytes:,}")
        return fh.read()


@dataclass
class Requests:
    """What each request type does; the daemon passes in its collaborators."""

    store: JobStore
    metrics: Metrics
    config: Callable[[], DaemonConfig]
    wake: Callable[[], None]  # a new job is queued
    draining: Callable[[], bool]
    start_drain: Callable[[], None]
    stats: Callable[[], dict[str, Any]]
    log: logging.Logger

    def handle(self, m: Message) -> Message:
        if m.version != protocol.VERSION:
            return protocol.reply(m, Code.UNSUPPORTED, supported=[protocol.VERSION],
                                  error=f"protocol version {m.version} is not supported")
        handler = getattr(self, "_" + m.type, None) if m.type in protocol.REQUEST_TYPES else None
        if handler is None:
            return protocol.reply(m, Code.BAD_REQUEST, error=f"unknown request type {m.type!r}")
        try:
            return handler(m)
        except ProtocolError as exc:
            return protocol.reply(m, Code.BAD_REQUEST, error=str(exc))
        except JobNotFound as exc:
            return protocol.reply(m, Code.NOT_FOUND, error=str(exc))
        except JobConflict as exc:
            return protocol.reply(m, Code.CONFLICT, error=str(exc))

    def _refuse(self, m: Message, op: str, code: Code, error: str, **fields: Any) -> Message:
        self.metrics.job_done(op, "rejected")
        self.log.info("submit refused", extra={"fields": {"code": code.value, "reason": error}})
        return protocol.reply(m, code, error=error, **fields)

    def _submit(self, m: Message) -> Message:
        cfg = self.config()
        op = protocol.require_str(m, "op", protocol.OPS)
        assert op is not None
        path_text = protocol.require_str(m, "path", optional=True)
        out_text = protocol.require_str(m, "output_dir", optional=True)
        key = protocol.require_str(m, "key", optional=True) or m.id or None
        if (path_text is None) == (len(m.payloads) != 1):
            raise ProtocolError('a submit carries either one payload frame or a "path", not both')
        if key is not None:
            existing = self.store.by_key(key)
            if existing is not None:  # a retried submit: the same job, never a second one
                return protocol.reply(m, Code.OK, job=existing.id, state=existing.state, duplicate=True)
        if self.draining():
            return self._refuse(m, op, Code.DRAINING, "the daemon is draining and takes no new jobs")
        try:
            source = resolve_inside(path_text, cfg.submit_roots) if path_text else None
            target = resolve_inside(out_text, cfg.submit_roots, want_dir=True) if out_text else None
            data = read_limited(source, cfg.limits.max_bytes) if source else m.payloads[0]
        except (PathRefused, OSError) as exc:
            return self._refuse(m, op, Code.REJECTED, str(exc))
        if len(data) > cfg.limits.max_bytes:
            return self._refuse(m, op, Code.REJECTED,
                                f"{len(data):,} bytes exceeds the limit of {cfg.limits.max_bytes:,}")
        name = protocol.require_str(m, "name", optional=True) or (source.name if source else "input")
        name = Path(name).name or "input"
        try:
            job, new = self.store.submit(op, name, data, key=key, source=str(source) if source else None,
                                         target=str(target) if target else None, queue_max=cfg.queue_max)
        except QueueFull:
            return self._refuse(m, op, Code.BUSY, f"the queue is full ({cfg.queue_max} jobs); retry later",
                                retry_after_ms=RETRY_AFTER_MS)
        if new:
            self.wake()
            self.log.info("job accepted", extra={"fields": {"job": job.id, "op": op, "name": name,
                                                            "input_bytes": len(data)}})
        return protocol.reply(m, Code.OK, job=job.id, state=job.state, duplicate=not new)

    def _status(self, m: Message) -> Message:
        job_id = protocol.require_int(m, "job", optional=True)
        if job_id is not None:
            return protocol.reply(m, Code.OK, job=self.store.get(job_id).public())
        limit = protocol.require_int(m, "limit", optional=True) or 20
        return protocol.reply(m, Code.OK, counts=self.store.counts(),
                              jobs=[j.public() for j in self.store.recent(min(limit, 1000))])

    def _result(self, m: Message) -> Message:
        job_id = protocol.require_int(m, "job")
        assert job_id is not None
        job = self.store.get(job_id)
        if job.state == "done" and not job.output and m.fields.get("fetch") is not False:
            keep = self.config().results_keep_hours
            return protocol.reply(m, Code.ERROR, job=job.public(),
                                  error=f"job {job_id}'s output was deleted: results are kept {keep:g} hours "
                                        "after a job ends (results_keep_hours)")
        if job.state != "done" or not job.output or m.fields.get("fetch") is False:
            return protocol.reply(m, Code.OK, job=job.public())
        try:
            data = Path(job.output).read_bytes()
        except OSError as exc:
            return protocol.reply(m, Code.ERROR, job=job.public(), error=f"output unreadable: {exc}")
        return protocol.reply(m, Code.OK, (data,), job=job.public(), filename=Path(job.output).name)

    def _cancel(self, m: Message) -> Message:
        job_id = protocol.require_int(m, "job")
        assert job_id is not None
        job = self.store.cancel(job_id)
        self.metrics.job_done(job.op, "cancelled")
        return protocol.reply(m, Code.OK, job=job.public())

    def _stats(self, m: Message) -> Message:
        return protocol.reply(m, Code.OK, **self.stats())

    def _drain(self, m: Message) -> Message:
        self.start_drain()
        return protocol.reply(m, Code.OK, draining=True)

    def _ping(self, m: Message) -> Message:
        return protocol.reply(m, Code.OK, protocol=protocol.VERSION)


class FrontEnd:
    """The ROUTER socket; ``poll`` answers every request waiting, in order."""

    def __init__(self, ctx: zmq.Context, config: DaemonConfig, requests: Requests, log: logging.Logger):
        self.log = log
        self._requests = requests
        self._auth = None
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, config.limits.max_bytes + protocol.MAX_HEADER_BYTES + 4096)
        curve = config.curve
        if curve.server_secret_key_file:
            self._setup_curve(ctx, curve.server_secret_key_file, curve.allowed_clients_dir)
        elif not is_loopback(config.endpoint):
            raise ConfigError(f"endpoint {config.endpoint} is beyond loopback: configure [curve] "
                              "server_secret_key_file and allowed_clients_dir (CurveZMQ)")
        self.sock.bind(config.endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _setup_curve(self, ctx: zmq.Context, secret_file: str, clients_dir: str) -> None:
        from zmq.auth import load_certificate
        from zmq.auth.thread import ThreadAuthenticator

        if not clients_dir or not Path(clients_dir).is_dir():
            raise ConfigError("[curve] allowed_clients_dir must be a folder of client public keys")
        public, secret = load_certificate(secret_file)
        if secret is None:
            raise ConfigError(f"{secret_file}: not a secret certificate")
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=clients_dir)
        self.sock.curve_secretkey = secret
        self.sock.curve_publickey = public
        self.sock.curve_server = True
        self.log.info("CurveZMQ on", extra={"fields": {"allowed_clients_dir": clients_dir}})

    def poll(self, timeout_ms: int) -> int:
        """Answer requests for up to ``timeout_ms``; returns how many were answered."""
        n = 0
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return 0
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return n
            self._answer(frames)
            n += 1

    def _answer(self, frames: list[bytes]) -> None:
        route = frames[:1]
        body = frames[1:]
        if body and body[0] == b"":  # REQ-style delimiter: strip and echo it
            route, body = route + [b""], body[1:]
        try:
            m = protocol.decode(body)
        except ProtocolError as exc:
            bad = Message("error", {"code": Code.BAD_REQUEST.value, "error": str(exc)})
            self.sock.send_multipart(route + protocol.encode(bad))
            return
        try:
            out = self._requests.handle(m)
        except Exception as exc:  # never let one request take the front end down
            self.log.exception("request failed", extra={"fields": {"type": m.type}})
            out = protocol.reply(m, Code.ERROR, error=f"internal error: {exc}")
        self.sock.send_multipart(route + protocol.encode(out), copy=False)

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
