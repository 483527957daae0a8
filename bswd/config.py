"""The daemon's configuration: typed, frozen dataclasses read from one TOML file.

Precedence, lowest first: the defaults below, the TOML file (``bswd serve --config``), environment
variables ``BSWD_*``, then command-line flags. Every scalar field has an environment name built
from its path: ``endpoint`` -> ``BSWD_ENDPOINT``, ``batching.max_delay_ms`` ->
``BSWD_BATCHING_MAX_DELAY_MS``; lists of strings are comma-separated (``BSWD_DEVICES=cuda:0,cuda:1``).
Watched folders come from the file (``[[watch]]`` tables) or ``--watch IN:OUT`` flags.

Example ``bswd.toml``::

    endpoint = "tcp://127.0.0.1:5555"
    metrics = "127.0.0.1:9464"
    state_dir = "/var/lib/bswd"
    devices = ["auto"]               # every visible GPU, else the CPU
    submit_roots = ["/srv/images"]   # path submissions must resolve inside one of these

    [batching]
    max_lanes = 64                   # lanes per engine step
    max_delay_ms = 20                # wait at most this long to fill a micro-batch

    [limits]
    max_pixels = 89478485
    max_bytes = 268435456

    [[watch]]
    input = "/srv/in"
    output = "/srv/out"
    policy = "keep"                  # keep | move | delete-after-verify
    polling = false                  # true for NFS/SMB

    [curve]                          # required when the endpoint is not loopback
    server_secret_key_file = "/etc/bswd/server.key_secret"
    allowed_clients_dir = "/etc/bswd/clients"

>>> c = load_config(None, env={"BSWD_BATCHING_MAX_LANES": "8"}, overrides={"verify": False})
>>> (c.batching.max_lanes, c.verify, c.endpoint)
(8, False, 'tcp://127.0.0.1:5555')
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

POLICIES = ("keep", "move", "delete-after-verify")
WATCH_OPS = ("compress", "decompress")
DEFAULT_PATTERNS = ("*.png", "*.PNG", "*.tif", "*.tiff", "*.bmp", "*.ppm", "*.pgm", "*.gif",
                    "*.webp", "*.jpg", "*.jpeg", "*.JPG", "*.JPEG")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class WatchFolder:
    input: Path
    output: Path
    policy: str = "keep"  # what happens to an original after its output is verified
    polling: bool = False  # PollingObserver (network filesystems) instead of inotify
    settle_s: float = 1.0  # size and mtime must stay unchanged this long (no close event)
    poll_interval_s: float = 0.5
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    op: str = "compress"  # or "decompress" for a folder of .bsw files
    moved_to: Path | None = None  # policy "move": where originals go (default input/.done)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"watch {self.input}: policy must be one of {', '.join(POLICIES)}, "
                              f"not {self.policy!r}")
        if self.op not in WATCH_OPS:
            raise ConfigError(f"watch {self.input}: op must be compress or decompress, not {self.op!r}")
        if self.settle_s < 0 or self.poll_interval_s <= 0:
            raise ConfigError(f"watch {self.input}: settle_s must be >= 0 and poll_interval_s > 0")
        if self.moved_to is not None and os.path.realpath(self.moved_to) == os.path.realpath(self.input):
            raise ConfigError(f"watch {self.input}: moved_to must be another folder than input (a moved "
                              "original would be picked up again, without end)")
        if os.path.realpath(self.output) == os.path.realpath(self.input):
            raise ConfigError(f"watch {self.input}: output must be another folder than input "
                              "(outputs would land among the files being watched)")
        if self.op == "decompress" and self.patterns == DEFAULT_PATTERNS:
            object.__setattr__(self, "patterns", ("*.bsw",))

    @property
    def done_dir(self) -> Path:
        return self.moved_to or self.input / ".done"


@dataclass(frozen=True)
class Batching:
    max_lanes: int = 64  # lanes coded per engine step (EngineConfig.max_rows)
    max_delay_ms: float = 20.0  # longest wait for more jobs before running a micro-batch


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 89_478_485  # per image, checked before any pixel is decoded
    max_bytes: int = 256 * 1024 * 1024  # per submitted file


@dataclass(frozen=True)
class Curve:
    server_secret_key_file: str = ""  # a zmq.auth secret certificate (z85); "" = CURVE off
    allowed_clients_dir: str = ""  # a folder of client public certificates (*.key)


@dataclass(frozen=True)
class DaemonConfig:
    endpoint: str = "tcp://127.0.0.1:5555"
    metrics: str = "127.0.0.1:9464"  # host:port of /metrics, /healthz, /readyz; "" = off
    state_dir: Path = Path("bswd-state")
    model: str = ""  # a .bswm path; "" = the bundled default
    devices: tuple[str, ...] = ("auto",)
    queue_max: int = 1000  # queued jobs above this answer "busy"
    ready_high_water: float = 0.9  # /readyz fails once the queue is this full
    verify: bool = True  # decode every output and compare before it is published
    skip_lossy_sources: bool = True  # JPEG inputs end as "skipped" with a reason
    drain_grace_s: float = 30.0
    results_keep_hours: float = 168.0  # outputs kept in state_dir/results for `bswctl result`; 0 = forever
    submit_roots: tuple[Path, ...] = ()  # path submissions only inside these (none: refused)
    log_level: str = "info"
    torch_threads: int = 0  # CPU: coder threads (one torch thread each); 0 = bswd.shell.default_threads()
    batching: Batching = field(default_factory=Batching)
    limits: Limits = field(default_factory=Limits)
    curve: Curve = field(default_factory=Curve)
    watch: tuple[WatchFolder, ...] = ()

    def __post_init__(self) -> None:
        if self.queue_max < 1:
            raise ConfigError("queue_max must be at least 1")
        if self.results_keep_hours < 0:
            raise ConfigError("results_keep_hours must be >= 0 (0 keeps results forever)")
        if self.batching.max_lanes < 1 or self.batching.max_delay_ms < 0:
            raise ConfigError("batching.max_lanes must be >= 1 and batching.max_delay_ms >= 0")
        if not self.endpoint.startswith(("tcp://", "ipc://")):
            raise ConfigError(f"endpoint must be tcp://HOST:PORT or ipc://PATH, not {self.endpoint!r}")


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` (from TOML or an environment string) as type ``tp``, or ConfigError."""
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    try:
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a table")
            return _build(tp, value, name + ".")
        if origin is tuple:
            inner = typing.get_args(tp)[0]
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(_coerce(name, inner, v.strip() if isinstance(v, str) else v)
                         for v in items if not (isinstance(v, str) and not v.strip()))
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if tp is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is Path:
            return Path(os.path.expanduser(str(value)))
        if tp is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except ConfigError:
        raise  # already names the key and the reason (e.g. a [[watch]] table's bad policy)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot use {value!r} as {getattr(tp, '__name__', tp)}") from exc
    raise ConfigError(f"{name}: unsupported type {tp}")


def _build(cls: Any, table: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + u for u in sorted(unknown))}")
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in table.items()}
    return cls(**kwargs)


def _env_overrides(cls: Any, env: Mapping[str, str], prefix: str = "") -> dict[str, Any]:
    """Nested dict of the ``BSWD_*`` variables that name a scalar (or string-list) field."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _strip_optional(hints[f.name])
        if f.name == "watch":
            continue  # folders come from the file or --watch
        if dataclasses.is_dataclass(tp):
            sub = _env_overrides(tp, env, prefix + f.name + "_")
            if sub:
                out[f.name] = sub
            continue
        key = "BSWD_" + (prefix + f.name).upper()
        if key in env:
            out[f.name] = env[key]
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = _merge(dict(merged[k]), v)
        else:
            merged[k] = v
    return merged


def parse_watch_flag(spec: str, polling: bool = False) -> WatchFolder:
    """``IN:OUT`` (the quick-start flag) as a WatchFolder with default policy ``keep``."""
    src, sep, dst = spec.partition(":")
    if not sep or not src or not dst:
        raise ConfigError(f"--watch expects IN:OUT, got {spec!r}")
    return WatchFolder(Path(src), Path(dst), polling=polling)


def load_config(path: Path | None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """Defaults <- TOML file <- ``BSWD_*`` environment <- ``overrides`` (already typed or strings)."""
    table: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    table = _merge(table, _env_overrides(DaemonConfig, os.environ if env is None else env))
    typed = {}
    for k, v in (overrides or {}).items():
        if isinstance(v, (WatchFolder, Path)) or (isinstance(v, tuple) and v and
                                                    isinstance(v[0], (WatchFolder, Path))):
            typed[k] = v
        elif isinstance(v, Mapping):
            table = _merge(table, {k: v})
        else:
            table[k] = v
    config = _build(DaemonConfig, {k: v for k, v in table.items() if k not in typed})
    return dataclasses.replace(config, **typed) if typed else config


def is_loopback(endpoint: str) -> bool:
    """True for ipc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    if endpoint.startswith("ipc://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")
