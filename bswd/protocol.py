"""The wire protocol between ``bswctl`` (ZeroMQ DEALER) and ``bswd serve`` (ROUTER).

Light on purpose: standard library only (no zmq, no torch), so the client and the daemon share
it. See ``docs/protocol.md`` for the full description; in short, every message is

    frame 0       UTF-8 JSON header: {"v": 1, "id": "<request id>", "type": "<kind>", ...}
    frames 1..n   raw payload bytes (file contents), referenced from the header

and every reply echoes the request ``id`` and carries a ``code`` (see ``Code``). A DEALER peer may
put one empty delimiter frame first (REQ style); the daemon strips it and echoes it.

>>> frames = encode(Message("submit", {"op": "compress", "name": "a.png"}, (b"PNG...",), "r1"))
>>> m = decode(frames)
>>> (m.type, m.id, m.fields["name"], m.payloads)
('submit', 'r1', 'a.png', (b'PNG...',))
>>> decode(encode(reply(m, Code.BUSY, retry_after_ms=250))).fields
{'code': 'busy', 'retry_after_ms': 250}
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

VERSION = 1
MAX_HEADER_BYTES = 64 * 1024

REQUEST_TYPES = ("submit", "status", "result", "cancel", "stats", "drain", "ping")
OPS = ("compress", "decompress")
# job states; "skipped" ends a job that was not coded on purpose (an already-lossy source)
STATES = ("queued", "running", "done", "failed", "cancelled", "skipped")
FINAL_STATES = ("done", "failed", "cancelled", "skipped")


class Code(str, Enum):
    """Reply codes. Only ``OK`` means the request did what it asked."""

    OK = "ok"
    BUSY = "busy"  # the queue is full: nothing was recorded; retry after ``retry_after_ms``
    DRAINING = "draining"  # the daemon is shutting down and takes no new jobs
    BAD_REQUEST = "bad_request"  # malformed message or fields
    REJECTED = "rejected"  # a valid request refused by policy (path outside roots, too large)
    NOT_FOUND = "not_found"  # no such job
    CONFLICT = "conflict"  # e.g. cancel of a job that is already running or finished
    UNSUPPORTED = "unsupported_version"  # the header's "v" is not one this daemon speaks
    ERROR = "error"  # the daemon failed to handle the request (its log says why)


class ProtocolError(ValueError):
    """A message that does not follow this protocol."""


@dataclass(frozen=True)
class Message:
    """One request or reply: a type, its header fields, and payload frames."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    payloads: tuple[bytes, ...] = ()
    id: str = ""
    version: int = VERSION

    @property
    def code(self) -> str:
        return str(self.fields.get("code", ""))


def new_id() -> str:
    """A fresh request id (also used as the idempotency key of a submit)."""
    return uuid.uuid4().hex


def encode(m: Message) -> list[bytes]:
    """Frames for ``m``: the JSON header, then the payloads."""
    header = {"v": m.version, "id": m.id, "type": m.type, **m.fields}
    return [json.dumps(header, separators=(",", ":")).encode("utf-8"), *m.payloads]


def decode(frames: list[bytes]) -> Message:
    """The message in ``frames`` (without routing frames); raises ProtocolError."""
    if not frames:
        raise ProtocolError("empty message")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header frame of {len(frames[0])} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frames[0]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header frame is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("header frame must be a JSON object")
    version = header.pop("v", None)
    kind = header.pop("type", None)
    mid = header.pop("id", "")
    if not isinstance(version, int):
        raise ProtocolError('header has no integer "v"')
    if not isinstance(kind, str) or not kind:
        raise ProtocolError('header has no "type"')
    if not isinstance(mid, str):
        raise ProtocolError('"id" must be a string')
    return Message(kind, header, tuple(bytes(f) for f in frames[1:]), mid, version)


def reply(request: Message, code: Code, payloads: tuple[bytes, ...] = (), **fields: Any) -> Message:
    """The reply to ``request``: same id, type ``<type>.reply``, with ``code`` and ``fields``."""
    return Message(request.type + ".reply", {"code": code.value, **fields}, payloads, request.id)


def request(kind: str, payloads: tuple[bytes, ...] = (), id: str = "", **fields: Any) -> Message:
    if kind not in REQUEST_TYPES:
        raise ValueError(f"unknown request type {kind!r}")
    return Message(kind, fields, payloads, id or new_id())


# --- field checks shared by both ends ------------------------------------------------------------

def require_str(m: Message, key: str, choices: tuple[str, ...] | None = None,
                optional: bool = False) -> str | None:
    value = m.fields.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ProtocolError(f'"{key}" must be a non-empty string')
    if choices is not None and value not in choices:
        raise ProtocolError(f'"{key}" must be one of {", ".join(choices)}, not {value!r}')
    return value


def require_int(m: Message, key: str, optional: bool = False) -> int | None:
    value = m.fields.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f'"{key}" must be an integer')
    return value
