"""The durable job store: one SQLite database (WAL, synchronous=FULL) plus a payload spool.

A job is acknowledged only after ``submit`` returns, and ``submit`` returns only after the input
bytes are in ``spool/`` (written to a temporary name, fsynced, renamed, folder fsynced) and the
row naming them is committed (the WAL is fsynced on commit). Lifecycle::

    queued -> running -> done | failed | skipped
    queued -> cancelled

``recover`` (run once at start-up) puts every ``running`` job back to ``queued``: the daemon died
mid-batch, and outputs are written atomically and deterministically, so doing the job again
produces the same bytes once. Submits carry an idempotency key (the client's request id, or a
watched file's path+size+mtime+inode), so a retried submit or a rescanned file never makes a
second job.

>>> import tempfile
>>> store = JobStore(Path(tempfile.mkdtemp()))
>>> job, new = store.submit("compress", "a.png", b"x", key="k1")
>>> again, new2 = store.submit("compress", "a.png", b"x", key="k1")
>>> (job.id == again.id, new, new2, job.state)
(True, True, False, 'queued')
>>> [j.id for j in store.claim(5)] == [job.id], store.get(job.id).state
(True, 'running')
>>> store.close()
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bswd.shell import PARTIAL_PREFIX, PARTIAL_SUFFIX, fsync_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE,             -- idempotency key: client request id or watched-file identity
    op TEXT NOT NULL,            -- compress | decompress
    name TEXT NOT NULL,          -- the input's file name, for messages and output names
    state TEXT NOT NULL,
    spool TEXT NOT NULL,         -- file name of the spooled input under spool/
    input_bytes INTEGER NOT NULL,
    source TEXT,                 -- original path (path submissions, watched files)
    source_ident TEXT,           -- size:mtime_ns:inode of the original when it was spooled
    target TEXT,                 -- where the output goes; NULL: results/ (fetched with `result`)
    watch TEXT,                  -- the watched folder (its input path) that made the job
    policy TEXT,                 -- keep | move | delete-after-verify (watched files)
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    output TEXT,                 -- the path the output was written to
    output_bytes INTEGER,
    pixels INTEGER,
    patches INTEGER,
    bits_per_dim REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
"""


class QueueFull(Exception):
    """The bounded queue is full; nothing was recorded."""


class JobNotFound(LookupError):
    pass


class JobConflict(Exception):
    """The job is not in a state that allows the operation (e.g. cancelling a running job)."""


@dataclass(frozen=True)
class Job:
    id: int
    key: str | None
    op: str
    name: str
    state: str
    spool: str
    input_bytes: int
    source: str | None
    source_ident: str | None
    target: str | None
    watch: str | None
    policy: str | None
    created: float
    started: float | None
    finished: float | None
    attempts: int
    error: str | None
    output: str | None
    output_bytes: int | None
    pixels: int | None
    patches: int | None
    bits_per_dim: float | None

    def public(self) -> dict[str, Any]:
        """The fields a client sees (no internal spool names)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("key", "spool", "source_ident"):
            d.pop(k)
        return d


_COLUMNS = ", ".join(f.name for f in fields(Job))


class JobStore:
    """Jobs in ``state_dir/jobs.sqlite3``, inputs in ``state_dir/spool``, results in ``results``."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time):
        self.root = Path(state_dir)
        self.spool_dir = self.root / "spool"
        self.results_dir = self.root / "results"
        for d in (self.root, self.spool_dir, self.results_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "jobs.sqlite3", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- intake ------------------------------------------------------------------------------
    def submit(self, op: str, name: str, data: bytes, *, key: str | None = None,
               source: str | None = None, source_ident: str | None = None,
               target: str | None = None, watch: str | None = None, policy: str | None = None,
               queue_max: int | None = None) -> tuple[Job, bool]:
        """Record a job durably; returns (job, created). Raises QueueFull (nothing recorded)."""
        if key is not None:
            existing = self.by_key(key)
            if existing is not None:
                return existing, False
        if queue_max is not None and self.queued_count() >= queue_max:
            raise QueueFull()
        spool = f"{uuid.uuid4().hex}.in"
        tmp = self.spool_dir / (spool + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.spool_dir / spool)
        fsync_dir(self.spool_dir)
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if key is not None:
                        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE key=?", (key,)).fetchone()
                        if row is not None:  # a concurrent submit with the same key won the race
                            self._db.execute("ROLLBACK")
                            os.unlink(self.spool_dir / spool)
                            return Job(*row), False
                    if queue_max is not None and self._db.execute(
                            "SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0] >= queue_max:
                        raise QueueFull()
                    cur = self._db.execute(
                        "INSERT INTO jobs (key, op, name, state, spool, input_bytes, source, source_ident,"
                        " target, watch, policy, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (key, op, name, "queued", spool, len(data), source, source_ident, target, watch,
                         policy, self._clock()))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            job_id = cur.lastrowid
        except BaseException:
            if (self.spool_dir / spool).exists():
                os.unlink(self.spool_dir / spool)
            raise
        return self.get(int(job_id)), True  # type: ignore[arg-type]

    def record_failed(self, op: str, name: str, error: str, *, key: str | None = None,
                      source: str | None = None, input_bytes: int = 0) -> Job:
        """A job that failed before its input was spooled (e.g. a watched file over the size limit)."""
        now = self._clock()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO jobs (key, op, name, state, spool, input_bytes, source, created,"
                " finished, error) VALUES (?,?,?,'failed','',?,?,?,?,?)",
                (key, op, name, input_bytes, source, now, now, error))
        existing = self.by_key(key) if key is not None else None
        return existing if existing is not None else self.get(int(cur.lastrowid))  # type: ignore[arg-type]

    def recover(self) -> int:
        """At start-up: running jobs go back to the queue; orphaned spool files are removed."""
        with self._lock:
            n = self._db.execute("UPDATE jobs SET state='queued', started=NULL WHERE state='running'").rowcount
            live = {r[0] for r in self._db.execute(
                "SELECT spool FROM jobs WHERE state IN ('queued','running')")}
        for p in self.spool_dir.iterdir():
            if p.name not in live:
                p.unlink(missing_ok=True)
        for p in self.results_dir.glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):  # being written when the daemon died
            p.unlink(missing_ok=True)
        return n

    # ---- work --------------------------------------------------------------------------------
    def claim(self, limit: int) -> list[Job]:
        """Move up to ``limit`` oldest queued jobs to running (atomically) and return them."""
        if limit < 1:
            return []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in self._db.execute(
                    "SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT ?", (limit,))]
                now = self._clock()
                self._db.executemany(
                    "UPDATE jobs SET state='running', started=?, attempts=attempts+1 WHERE id=?",
                    [(now, i) for i in ids])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [self.get(i) for i in ids]

    def finish(self, job_id: int, state: str, **values: Any) -> Job:
        """End a running job in ``state`` (done, failed, skipped) and drop its spooled input."""
        allowed = {"error", "output", "output_bytes", "pixels", "patches", "bits_per_dim"}
        bad = set(values) - allowed
        if bad:
            raise ValueError(f"unknown job fields {bad}")
        cols = "".join(f", {k}=?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET state=?, finished=?{cols} WHERE id=?",
                             (state, self._clock(), *values.values(), job_id))
        job = self.get(job_id)
        self._drop_spool(job)
        return job

    def _drop_spool(self, job: Job) -> None:
        if job.spool:
            (self.spool_dir / job.spool).unlink(missing_ok=True)

    def requeue(self, job_ids: list[int]) -> None:
        """Running jobs back to queued (a drain that ran out of grace)."""
        with self._lock:
            self._db.executemany("UPDATE jobs SET state='queued', started=NULL WHERE id=? AND state='running'",
                                 [(i,) for i in job_ids])

    def cancel(self, job_id: int) -> Job:
        with self._lock:
            n = self._db.execute("UPDATE jobs SET state='cancelled', finished=? WHERE id=? AND state='queued'",
                                 (self._clock(), job_id)).rowcount
        job = self.get(job_id)
        if not n:
            raise JobConflict(f"job {job_id} is {job.state}; only queued jobs can be cancelled")
        self._drop_spool(job)
        return job

    def prune_results(self, keep_s: float) -> list[int]:
        """Delete the outputs kept in results/ (jobs without a target, fetched with ``result``) of
        jobs that finished more than keep_s seconds ago; their rows stay (the idempotency keys and
        the history), with ``output`` cleared. Returns the pruned job ids."""
        cutoff = self._clock() - keep_s
        with self._lock:
            rows = self._db.execute("SELECT id, output FROM jobs WHERE state='done' AND target IS NULL "
                                    "AND output IS NOT NULL AND finished < ?", (cutoff,)).fetchall()
        pruned = []
        for job_id, output in rows:
            path = Path(output)
            if path.parent != self.results_dir:
                continue  # written elsewhere (a path submission's own target): never ours to delete
            path.unlink(missing_ok=True)
            with self._lock:
                self._db.execute("UPDATE jobs SET output=NULL WHERE id=?", (job_id,))
            pruned.append(job_id)
        if pruned:
            fsync_dir(self.results_dir)
        return pruned

    # ---- queries -----------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        return Job(*row)

    def by_key(self, key: str) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE key=?", (key,)).fetchone()
        return Job(*row) if row else None

    def recent(self, limit: int = 50) -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [Job(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    def queued_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0])

    def spool_path(self, job: Job) -> Path:
        return self.spool_dir / job.spool

    def result_path(self, job: Job, ext: str) -> Path:
        return self.results_dir / f"{job.id}{ext}"
