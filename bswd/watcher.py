"""Watched folders: hand each complete new file to the daemon exactly once.

When is a file complete? (BUG-15: "created" fires when a writer opens the file, not when it is done.)

* inotify: the file is taken on close-after-write when no other handle is open on it (``opened``
  and ``closed`` events are counted), or when it was renamed or moved in (a rename is atomic).
* polling observer (``polling = true``, for NFS/SMB, where other hosts' writes make no events),
  or a file with no close event (present at start-up, moved in from elsewhere): taken when its
  size and mtime have not changed for ``settle_s`` (and, on inotify, no handle is open on it).

Names that are temporary or partial are ignored: dotfiles, ``*.part``, ``*.tmp``,
``*.crdownload``, ``*.swp`` and a trailing ``~``. Only top-level files matching ``patterns`` count.

Exactly once: ``take`` records the job keyed by path+size+mtime+inode in the job store, in the same
transaction as the job, so a file seen again (a rescan at start-up, a late event) is not taken
again, while a file that is rewritten in place is a new version and is taken again.

inotify limits (BUG-17): when the kernel refuses a watch or an instance (errno 28 ENOSPC or 24
EMFILE), the folder falls back to the polling observer and a warning names
``fs.inotify.max_user_watches`` / ``fs.inotify.max_user_instances`` and the sysctl to raise them.
We chose falling back over failing: the folder keeps working (slower to notice files), and the
warning is logged once per folder at start, so it is visible in the journal.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from bswd.config import WatchFolder

IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload", ".swp", "~")
LIMIT_ERRNOS = {errno.ENOSPC: "fs.inotify.max_user_watches", errno.EMFILE: "fs.inotify.max_user_instances"}

# take(folder, path) -> True when the file is recorded (a new job or one recorded before),
# False to try again later (queue full). OSError: the file went away or cannot be read.
Take = Callable[[WatchFolder, Path], bool]
ObserverFactory = Callable[[WatchFolder], BaseObserver]


def default_observer(folder: WatchFolder) -> BaseObserver:
    if folder.polling:
        return PollingObserver(timeout=folder.poll_interval_s)
    return Observer()


def is_candidate(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a file name is one to take: not temporary/partial, and matching a pattern.

    >>> [is_candidate(n, ("*.png",)) for n in ("a.png", ".a.png", "a.png.part", "a.png~", "a.jpg")]
    [True, False, False, False, False]
    """
    if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass
class _Candidate:
    ident: tuple[int, int] | None = None  # (size, mtime_ns) when last looked at
    since: float = 0.0  # when ident last changed
    opens: int = 0  # handles open on it (inotify only)
    complete: bool = False  # closed after write or renamed in: take at once


class FolderWatcher:
    """One watched folder: an observer for events plus a thread that decides and takes."""

    def __init__(self, folder: WatchFolder, take: Take, log: logging.Logger,
                 observer_factory: ObserverFactory = default_observer,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = folder
        self._take, self.log, self._factory, self._clock = take, log, observer_factory, clock
        self._lock = threading.Lock()
        self._cands: dict[Path, _Candidate] = {}
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._thread = threading.Thread(target=self._loop, name=f"watch:{folder.input}", daemon=True)
        self.polling = folder.polling
        self.stale_open_s = max(30.0, 10 * folder.settle_s)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if not self.folder.input.is_dir():  # made for the operator, but said loudly: it may be a typo
            self.log.warning("watch folder did not exist; created it", extra={"fields": {
                "input": str(self.folder.input)}})
        self.folder.input.mkdir(parents=True, exist_ok=True)
        self.folder.output.mkdir(parents=True, exist_ok=True)
        self._observer = self._start_observer(self.folder)
        self.rescan()
        self._thread.start()
        self.log.info("watching folder", extra={"fields": {
            "input": str(self.folder.input), "output": str(self.folder.output),
            "policy": self.folder.policy, "polling": self.polling}})

    def _start_observer(self, folder: WatchFolder) -> BaseObserver:
        observer = self._factory(folder)
        try:
            observer.schedule(_Handler(self), str(folder.input), recursive=False)
            observer.start()
            return observer
        except OSError as exc:
            if exc.errno not in LIMIT_ERRNOS or folder.polling:
                raise
            key = LIMIT_ERRNOS[exc.errno]
            self.log.warning(
                f"inotify limit reached watching {folder.input} ({exc.strerror or exc}); falling back "
                f"to polling every {folder.poll_interval_s} s. Raise the limit with "
                f"`sysctl -w {key}=524288` (persist it in /etc/sysctl.d/) to get instant events.",
                extra={"fields": {"errno": exc.errno, "sysctl": key}})
            self.polling = True
            try:
                observer.stop()
            except RuntimeError:  # it never started; nothing to stop
                pass
            fallback = PollingObserver(timeout=folder.poll_interval_s)
            fallback.schedule(_Handler(self), str(folder.input), recursive=False)
            fallback.start()
            return fallback

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def rescan(self) -> None:
        """Every matching file already in the folder becomes a candidate (taken once settled)."""
        now = self._clock()
        with self._lock:
            for entry in os.scandir(self.folder.input):
                if entry.is_file(follow_symlinks=False) and is_candidate(entry.name, self.folder.patterns):
                    self._cands.setdefault(Path(entry.path), _Candidate(since=now))
        self._kick.set()

    # ---- events (observer thread) ------------------------------------------------------------
    def on_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        kind = event.event_type
        if kind == "moved":
            self._forget(Path(os.fsdecode(event.src_path)))
            self._note(Path(os.fsdecode(event.dest_path)), complete=True)
        elif kind == "deleted":
            self._forget(Path(os.fsdecode(event.src_path)))
        elif kind == "opened":
            self._note(Path(os.fsdecode(event.src_path)), opens=+1)
        elif kind == "closed":
            self._note(Path(os.fsdecode(event.src_path)), opens=-1, complete=True)
        elif kind == "closed_no_write":
            self._note(Path(os.fsdecode(event.src_path)), opens=-1)
        elif kind in ("created", "modified"):
            self._note(Path(os.fsdecode(event.src_path)))

    def _note(self, path: Path, opens: int = 0, complete: bool = False) -> None:
        if path.parent != self.folder.input or not is_candidate(path.name, self.folder.patterns):
            return
        with self._lock:
            c = self._cands.setdefault(path, _Candidate(since=self._clock()))
            c.opens = max(0, c.opens + opens)
            c.complete = c.complete or complete
        if complete:
            self._kick.set()

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._cands.pop(path, None)

    # ---- deciding (own thread) ---------------------------------------------------------------
    def _loop(self) -> None:
        tick = max(0.05, min(self.folder.poll_interval_s, self.folder.settle_s / 4 or 0.05))
        while not self._stop.is_set():
            self._kick.wait(tick)
            self._kick.clear()
            try:
                self.check()
            except Exception:
                self.log.exception("watched folder check failed", extra={"fields": {
                    "input": str(self.folder.input)}})

    def check(self) -> None:
        """Take every candidate that is complete now."""
        now = self._clock()
        with self._lock:
            items = list(self._cands.items())
        for path, c in items:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self._forget(path)
                continue
            ident = (st.st_size, st.st_mtime_ns)
            with self._lock:
                if ident != c.ident:
                    c.ident, c.since = ident, now
                settled = now - c.since >= self.folder.settle_s
                if c.opens > 0 and not self.polling:
                    # a writer still has it open: only a very long silence overrides that
                    ready = now - c.since >= self.stale_open_s
                else:
                    ready = c.complete or settled
            if not ready:
                continue
            try:
                taken = self._take(self.folder, path)
            except OSError as exc:
                self.log.warning("cannot take watched file", extra={"fields": {
                    "path": str(path), "reason": str(exc)}})
                self._forget(path)
                continue
            if taken:
                with self._lock:
                    if self._cands.get(path) is c and c.ident == ident:
                        del self._cands[path]


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher):
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher.on_event(event)
