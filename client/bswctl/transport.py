"""Talking to ``bswd serve``: one request, one reply, over a DEALER socket that never hangs.

Rules from BUG-18: every attempt uses a fresh socket (a socket whose reply was lost is never
reused), LINGER is 0 so nothing unsent blocks the exit, and the whole call, retries included, ends
within ``timeout_s``. A retried request keeps its id, and the daemon treats the id of a submit as
its idempotency key, so a retry never makes a second job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from bswd import protocol
from bswd.protocol import Message


class NoReply(Exception):
    """The daemon did not answer within the timeout (not running, unreachable, or stuck)."""


class BadReply(Exception):
    """The daemon answered something that is not a reply to our request."""


@dataclass(frozen=True)
class CurveKeys:
    """CurveZMQ: the server's public certificate and this client's secret certificate."""

    server_public_file: Path
    client_secret_file: Path


class Transport:
    def __init__(self, endpoint: str, timeout_s: float = 5.0, retries: int = 1,
                 ctx: zmq.Context | None = None, curve: CurveKeys | None = None):
        if timeout_s <= 0:
            raise ValueError("timeout must be positive")
        self.endpoint, self.timeout_s, self.retries = endpoint, timeout_s, max(0, retries)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.curve = curve

    def close(self) -> None:
        if self._own_ctx:
            self.ctx.term()  # every socket was closed with linger 0: this cannot block

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # do not queue messages for a peer that is not there
        if self.curve is not None:
            from zmq.auth import load_certificate

            server_public, _ = load_certificate(self.curve.server_public_file)
            public, secret = load_certificate(self.curve.client_secret_file)
            if secret is None:
                raise ValueError(f"{self.curve.client_secret_file}: not a secret certificate")
            sock.curve_serverkey = server_public
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(self.endpoint)
        return sock

    def call(self, request: Message) -> Message:
        """Send ``request`` and return its reply; raises NoReply after ``timeout_s`` in all."""
        deadline = time.monotonic() + self.timeout_s
        per_try = self.timeout_s / (self.retries + 1)
        frames = protocol.encode(request)
        for _attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try_deadline = time.monotonic() + min(per_try, left)
            sock = self._socket()
            try:
                # with IMMEDIATE and no connection yet, send would block: poll for writability
                if not sock.poll(max(1, int(1000 * (try_deadline - time.monotonic()))), zmq.POLLOUT):
                    continue
                sock.send_multipart(frames, zmq.NOBLOCK)
                while True:
                    wait_ms = int(1000 * (try_deadline - time.monotonic()))
                    if wait_ms <= 0 or not sock.poll(wait_ms, zmq.POLLIN):
                        break
                    reply = protocol.decode(sock.recv_multipart())
                    if reply.id == request.id:
                        return reply
                    if reply.type == "error":  # the daemon could not even parse our request
                        raise BadReply(str(reply.fields.get("error")))
            except zmq.Again:
                continue
            except protocol.ProtocolError as exc:
                raise BadReply(f"unreadable reply from {self.endpoint}: {exc}") from exc
            finally:
                sock.close(linger=0)
        raise NoReply(f"no reply from the bswd daemon at {self.endpoint} within {self.timeout_s:g} s "
                      f"({self.retries + 1} attempt(s)); is `bswd serve` running there?")
