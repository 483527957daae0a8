"""``bswctl``: submit images to a running ``bswd serve`` and ask it how it is doing.

Imports only light modules (typer, pyzmq, bswd.protocol): never torch. Every command ends within
``--timeout`` seconds when the daemon does not answer, with exit code NO_REPLY and a message.

    bswctl submit a.png b.png --wait -o out/     # compress through the daemon
    bswctl submit --decompress x.bsw --wait -o back/
    bswctl status [JOB]    bswctl stats    bswctl cancel JOB    bswctl drain
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import typer

from bswctl.transport import BadReply, CurveKeys, NoReply, Transport
from bswd import protocol
from bswd.outputs import BSW_SUFFIX, compressed_name, decompressed_name
from bswd.protocol import Code, Message
from bswd.shell import atomic_write

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


class Exit(IntEnum):
    """bswctl's exit status; with several files, the most severe outcome wins (highest here)."""

    OK = 0
    SKIPPED = 3  # a job was skipped on purpose (e.g. an already-lossy JPEG)
    CANCELLED = 4
    JOB_FAILED = 5  # a job ended failed (bad input, verification); its reason is printed
    NOT_FOUND = 6
    REJECTED = 7  # refused by policy: path outside the roots, too large, or the daemon is draining
    BUSY = 8  # the daemon's queue is full: nothing recorded, retry later
    WAIT_TIMEOUT = 9  # --wait ran out before every job finished
    PROTOCOL = 10  # the daemon replied with an error or speaks another protocol version
    NO_REPLY = 11  # no daemon answered within --timeout
    USAGE = 2  # bad arguments or unreadable local files (typer uses 2 too)


_SEVERITY = [Exit.OK, Exit.SKIPPED, Exit.CANCELLED, Exit.JOB_FAILED, Exit.NOT_FOUND, Exit.REJECTED,
             Exit.BUSY, Exit.WAIT_TIMEOUT, Exit.USAGE, Exit.PROTOCOL, Exit.NO_REPLY]
_CODE_EXIT = {Code.BUSY.value: Exit.BUSY, Code.DRAINING.value: Exit.REJECTED,
              Code.REJECTED.value: Exit.REJECTED, Code.NOT_FOUND.value: Exit.NOT_FOUND,
              Code.CONFLICT.value: Exit.REJECTED}
_STATE_EXIT = {"done": Exit.OK, "failed": Exit.JOB_FAILED, "skipped": Exit.SKIPPED,
               "cancelled": Exit.CANCELLED}


def worst(codes: list[Exit]) -> Exit:
    return max(codes, key=_SEVERITY.index, default=Exit.OK)


@dataclass
class Ctl:
    """What every command needs; tests may build one with their own streams."""

    endpoint: str
    timeout_s: float
    retries: int
    curve: CurveKeys | None = None
    json_out: bool = False
    out: Any = field(default_factory=lambda: sys.stdout)
    err: Any = field(default_factory=lambda: sys.stderr)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(f"bswctl: {text}", file=self.err, flush=True)

    def call(self, t: Transport, kind: str, payloads: tuple[bytes, ...] = (), **fields: Any) -> Message:
        return t.call(protocol.request(kind, payloads, **fields))

    def transport(self) -> Transport:
        return Transport(self.endpoint, self.timeout_s, self.retries, curve=self.curve)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Control a running bswd daemon (compress and decompress through it, status, stats).")


@app.callback()
def main(
    ctx: typer.Context,
    endpoint: str = typer.Option(DEFAULT_ENDPOINT, "--endpoint", envvar="BSWD_ENDPOINT",
                                 help="The daemon's ZeroMQ endpoint."),
    timeout: float = typer.Option(5.0, "--timeout", envvar="BSWD_TIMEOUT",
                                  help="Seconds to wait for each reply, retries included."),
    retries: int = typer.Option(1, "--retries", help="Resend a request this many times (each on a new socket)."),
    server_key: Path | None = typer.Option(None, "--server-key", envvar="BSWD_SERVER_KEY",
                                              help="CurveZMQ: the daemon's public certificate."),
    client_cert: Path | None = typer.Option(None, "--client-cert", envvar="BSWD_CLIENT_CERT",
                                               help="CurveZMQ: this client's secret certificate."),
    json_out: bool = typer.Option(False, "--json", help="Print replies as JSON."),
) -> None:
    if timeout <= 0:
        raise typer.BadParameter("must be positive", param_hint="--timeout")
    curve = None
    if server_key or client_cert:
        if not (server_key and client_cert):
            raise typer.BadParameter("CurveZMQ needs both --server-key and --client-cert")
        curve = CurveKeys(server_key, client_cert)
    ctx.obj = Ctl(endpoint, timeout, retries, curve, json_out)


def _run(ctl: Ctl, body: Any) -> None:
    """Run ``body(transport) -> Exit`` and turn transport failures into named exits."""
    try:
        with ctl.transport() as t:
            code = body(t)
    except NoReply as exc:
        ctl.warn(str(exc))
        code = Exit.NO_REPLY
    except BadReply as exc:
        ctl.warn(str(exc))
        code = Exit.PROTOCOL
    raise typer.Exit(int(code))


def _check(ctl: Ctl, reply: Message, what: str) -> Exit:
    if reply.code == Code.OK.value:
        return Exit.OK
    extra = f" (retry after {reply.fields['retry_after_ms'] / 1000:g} s)" if "retry_after_ms" in reply.fields else ""
    ctl.warn(f"{what}: {reply.code}: {reply.fields.get('error', '')}{extra}")
    return _CODE_EXIT.get(reply.code, Exit.PROTOCOL)


@app.command()
def submit(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., help="Images to compress (or .bsw files with --decompress)."),
    decompress: bool = typer.Option(False, "--decompress", "-d", help="Decompress .bsw files instead."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Wait for the jobs and write their outputs."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                          help="With --wait: output folder (default: next to each input)."),
    by_path: bool = typer.Option(False, "--path", help="Send paths for the daemon to read (inside its submit_roots)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing outputs."),
    wait_timeout: float = typer.Option(0, "--wait-timeout", help="Give up waiting after this many seconds (0: never)."),
    busy_wait: float = typer.Option(0, "--busy-wait",
                                    help="When the queue is full, keep retrying this many seconds (0: report busy)."),
) -> None:
    """Submit files as jobs; with --wait, fetch the results. Exit code: the worst outcome."""
    ctl: Ctl = ctx.obj
    op = "decompress" if decompress else "compress"
    if output is not None and not wait:  # it used to be ignored silently
        ctl.warn(f"-o {output} needs --wait: without it the daemon keeps each result; fetch one later with "
                 "`bswctl result ID -o DIR`")
        raise typer.Exit(int(Exit.USAGE))
    payloads: list[bytes | None] = []
    for f in files:
        if by_path:
            payloads.append(None)
            continue
        try:
            payloads.append(f.read_bytes())
        except OSError as exc:
            ctl.warn(f"{f}: cannot read: {exc.strerror}")
            raise typer.Exit(int(Exit.USAGE)) from exc
    if output is not None and wait:
        output.mkdir(parents=True, exist_ok=True)
    if wait:  # refuse now what could not be written, not after the daemon did the work
        problems = []
        targets: dict[Path, Path] = {}
        for f in files:
            target = (output or f.parent) / _expected_name(f.name, op)
            if target in targets:
                problems.append(f"{f}: its output {target} would also be {targets[target]}'s output")
            elif target.exists() and not force:
                problems.append(f"{target}: already exists (use --force to overwrite)")
            targets.setdefault(target, f)
        for message in problems:
            ctl.warn(message + "; nothing submitted")
        if problems:
            raise typer.Exit(int(Exit.USAGE))

    def body(t: Transport) -> Exit:
        codes: list[Exit] = []
        jobs: list[tuple[Path, int]] = []
        for f, data in zip(files, payloads):
            fields: dict[str, Any] = {"op": op, "name": f.name}
            if data is None:
                fields["path"] = str(f.resolve())
            req = protocol.request("submit", (data,) if data is not None else (), **fields)
            give_up = time.monotonic() + busy_wait
            while True:
                reply = t.call(req)
                if reply.code != Code.BUSY.value or time.monotonic() >= give_up:
                    break
                time.sleep(min(reply.fields.get("retry_after_ms", 500) / 1000, 5.0))
            code = _check(ctl, reply, str(f))
            codes.append(code)
            if code == Exit.OK:
                jobs.append((f, int(reply.fields["job"])))
                if not wait:
                    ctl.say(f"{f}: job {reply.fields['job']} {reply.fields.get('state', '')}")
        if wait:
            codes += _wait_all(ctl, t, jobs, op, output, force, wait_timeout)
        return worst(codes)

    _run(ctl, body)


def _expected_name(name: str, op: str) -> str:
    """The output name --wait will write: a.png -> a.png.bsw; a.png.bsw -> a.png (a decompressed
    file takes the extension of its format, normally the one before .bsw)."""
    if op == "compress":
        return compressed_name(name)
    inner = name.removesuffix(BSW_SUFFIX)
    return decompressed_name(name, os.path.splitext(inner)[1] or ".png")


def _wait_all(ctl: Ctl, t: Transport, jobs: list[tuple[Path, int]], op: str, output: Path | None,
              force: bool, wait_timeout: float) -> list[Exit]:
    codes: list[Exit] = []
    pending = list(jobs)
    give_up = time.monotonic() + wait_timeout if wait_timeout > 0 else None
    delay = 0.05
    while pending:
        still = []
        for f, job in pending:
            reply = ctl.call(t, "result", job=job)
            if reply.code != Code.OK.value:
                codes.append(_check(ctl, reply, f"{f} (job {job})"))
                continue
            info = reply.fields["job"]
            if info["state"] not in protocol.FINAL_STATES:
                still.append((f, job))
                continue
            codes.append(_finished(ctl, f, info, reply, op, output, force))
        pending = still
        if pending:
            if give_up is not None and time.monotonic() >= give_up:
                for f, job in pending:
                    ctl.warn(f"{f}: job {job} not finished within --wait-timeout {wait_timeout:g} s")
                codes.append(Exit.WAIT_TIMEOUT)
                break
            time.sleep(delay)
            delay = min(1.0, delay * 1.5)
    return codes


def _finished(ctl: Ctl, f: Path, info: dict[str, Any], reply: Message, op: str, output: Path | None,
              force: bool) -> Exit:
    state = info["state"]
    if state != "done":
        ctl.warn(f"{f}: job {info['id']} {state}: {info.get('error') or ''}")
        return _STATE_EXIT.get(state, Exit.JOB_FAILED)
    if not reply.payloads:
        ctl.warn(f"{f}: job {info['id']} done but the daemon sent no output")
        return Exit.PROTOCOL
    data = reply.payloads[0]
    ext = os.path.splitext(reply.fields.get("filename", ""))[1]
    name = compressed_name(f.name) if op == "compress" else decompressed_name(f.name, ext)
    target = (output or f.parent) / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        atomic_write(target, data, overwrite=force)
    except (OSError, FileExistsError) as exc:
        ctl.warn(f"{target}: cannot write: {exc}")
        return Exit.USAGE
    if ctl.json_out:
        ctl.say(json.dumps({**info, "input": str(f), "output": str(target)}))  # where it is now, not the daemon's copy
    else:
        bpd = f", {info['bits_per_dim']:.3f} bits/dim" if info.get("bits_per_dim") else ""
        ctl.say(f"{f} -> {target}: {info['input_bytes']:,} -> {len(data):,} bytes{bpd} (job {info['id']})")
    return Exit.OK


@app.command()
def result(
    ctx: typer.Context,
    jobs: list[int] = typer.Argument(..., help="Job ids (from `bswctl submit` or `bswctl status`)."),
    output: Path = typer.Option(Path("."), "--output", "-o", help="Folder to write the outputs to."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Wait for unfinished jobs instead of reporting them."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing outputs."),
    wait_timeout: float = typer.Option(0, "--wait-timeout", help="With --wait: give up after this many seconds."),
) -> None:
    """Fetch the outputs of jobs submitted earlier (without --wait, or by a client that went away)."""
    ctl: Ctl = ctx.obj

    def body(t: Transport) -> Exit:
        codes: list[Exit] = []
        named: dict[str, list[tuple[Path, int]]] = {}
        for job in jobs:
            reply = ctl.call(t, "status", job=job)
            if reply.code != Code.OK.value:
                codes.append(_check(ctl, reply, f"job {job}"))
                continue
            info = reply.fields["job"]
            if info["state"] not in protocol.FINAL_STATES and not wait:
                ctl.warn(f"job {job} is {info['state']}; use --wait to wait for it")
                codes.append(Exit.WAIT_TIMEOUT)
                continue
            # the job's own name (the daemon does not know where its input came from)
            named.setdefault(info["op"], []).append((Path(info["name"]), job))
        for op, pairs in named.items():
            codes += _wait_all(ctl, t, pairs, op, output, force, wait_timeout)
        return worst(codes) if codes else Exit.OK

    _run(ctl, body)


@app.command()
def status(ctx: typer.Context, job: int | None = typer.Argument(None, help="A job id (default: recent jobs).")) -> None:
    """One job's state, or the counts and the most recent jobs."""
    ctl: Ctl = ctx.obj

    def body(t: Transport) -> Exit:
        reply = ctl.call(t, "status", **({"job": job} if job is not None else {}))
        code = _check(ctl, reply, f"job {job}" if job is not None else "status")
        if code != Exit.OK:
            return code
        if ctl.json_out:
            ctl.say(json.dumps(reply.fields))
            return code
        rows = [reply.fields["job"]] if job is not None else reply.fields["jobs"]
        if job is None:
            ctl.say("  ".join(f"{k} {v}" for k, v in sorted(reply.fields["counts"].items())) or "no jobs")
        for r in rows:
            ctl.say(f"{r['id']:>6}  {r['op']:<10}  {r['state']:<9}  {r['name']}"
                    + (f"  ({r['error']})" if r.get("error") else ""))
        return code

    _run(ctl, body)


@app.command()
def cancel(ctx: typer.Context, job: int = typer.Argument(..., help="A queued job's id.")) -> None:
    """Cancel a job that has not started."""
    ctl: Ctl = ctx.obj

    def body(t: Transport) -> Exit:
        reply = ctl.call(t, "cancel", job=job)
        code = _check(ctl, reply, f"job {job}")
        if code == Exit.OK:
            ctl.say(f"job {job} cancelled")
        return code

    _run(ctl, body)


@app.command()
def stats(ctx: typer.Context) -> None:
    """Queue, jobs by state, devices, model and readiness."""
    ctl: Ctl = ctx.obj

    def body(t: Transport) -> Exit:
        reply = ctl.call(t, "stats")
        code = _check(ctl, reply, "stats")
        if code == Exit.OK:
            fields = {k: v for k, v in reply.fields.items() if k != "code"}
            if ctl.json_out:
                ctl.say(json.dumps(fields))
            else:
                for k, v in fields.items():
                    ctl.say(f"{k:<14} {json.dumps(v) if isinstance(v, (dict, list)) else v}")
        return code

    _run(ctl, body)


@app.command()
def drain(ctx: typer.Context) -> None:
    """Ask the daemon to stop taking jobs, finish what it has, and exit."""
    ctl: Ctl = ctx.obj

    def body(t: Transport) -> Exit:
        reply = ctl.call(t, "drain")
        code = _check(ctl, reply, "drain")
        if code == Exit.OK:
            ctl.say("draining")
        return code

    _run(ctl, body)
