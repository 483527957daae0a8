"""What every command-line entry point shares: exit codes, errors, atomic writes, model loading."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Callable, Iterator


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # at least one input failed; the others were processed
    USAGE = 2


def fail(message: str) -> None:
    print(f"bswd: error: {message}", file=sys.stderr)


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` must not be read as an input (a folder, FIFO or device: reading one can block
    forever), or None; a missing path is left to the read, which names it."""
    if path.exists() and not path.is_file():
        return f"{path}: not a regular file"
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} GB"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


PARTIAL_PREFIX, PARTIAL_SUFFIX = ".bswd-", ".part"  # atomic_write's temporary files (what a crash leaves)


def atomic_write(path: Path, data: bytes, *, overwrite: bool = False, read_back: bool = False) -> None:
    """Write ``data`` so that ``path`` either does not change or holds all of it, durably.

    The bytes go to a temporary file in the same folder, are fsynced (and with ``read_back``
    read again and compared), then renamed into place and the folder fsynced. Without
    ``overwrite`` an existing file is never replaced.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (use --force to overwrite)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    # A short temporary name: one derived from a long final name could exceed NAME_MAX (255).
    fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if read_back:
            with open(tmp, "rb") as fh:
                if fh.read() != data:
                    raise OSError(f"{path}: the written file does not read back identically")
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: never clobbers
                os.unlink(tmp)
            except OSError as exc:
                if isinstance(exc, FileExistsError):
                    raise FileExistsError(f"{path}: already exists (use --force to overwrite)") from exc
                if path.exists():  # no hard links here (FAT, some SMB): check, then rename
                    raise FileExistsError(f"{path}: already exists (use --force to overwrite)") from exc
                os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is available")
    return device


def load_model_file(path: Path | None):
    """The ModelFile at ``path``, or the bundled default."""
    from bswd.model.modelfile import read_model_file
    from bswd.model.registry import default_model_path

    return read_model_file(path or default_model_path())


CPU_ROWS_PER_THREAD = 16


def default_threads() -> int:
    """Coder threads: one per core, at most 8; BSWD_THREADS overrides.

    On the CPU each coder thread runs the model with a single torch thread, on its own lanes
    (EngineConfig.workers): torch's intra-op threads gained nothing on batches of a few patches
    (a 512x512 photo: 0.270 MPix/s with 1, 0.271 with 2), and on a busy machine OpenMP threads that
    outnumber free cores spin and stall (a 512x512 compress took 33 s with 2 on a loaded 2-core
    machine, 7.5 s with 1). On a GPU it is the number of torch threads for the host-side work.
    """
    env = os.environ.get("BSWD_THREADS")
    if env:
        return max(1, int(env))
    return min(8, max(1, os.cpu_count() or 1))


def build_engine(mf, device: str = "auto", threads: int | None = None, **engine_options):
    """An Engine holding ``mf`` on ``device``. On the CPU, ``threads`` (default_threads) coder
    threads with one torch thread each; on a GPU, one coder thread and ``threads`` torch threads."""
    import torch

    from bswd.engine import Engine, EngineConfig
    from bswd.model.modelfile import ModelFileError
    from bswd.model.quant import load_coding_model

    n = threads or default_threads()
    dev = resolve_device(device)
    if torch.device(dev).type == "cpu":
        torch.set_num_threads(1)
        engine_options.setdefault("workers", n)
        # 16 lanes per coder thread: a 2048x2048 photo coded 25% faster than with 32 per thread
        # (0.66 vs 0.53 MPix/s on 2 cores; the GPU default of 64 rows in all stays for CUDA)
        engine_options.setdefault("max_rows", CPU_ROWS_PER_THREAD * n)
    else:
        torch.set_num_threads(n)
    try:
        model = load_coding_model(mf, dev)
    except (ValueError, KeyError) as exc:
        raise ModelFileError(f"model {mf.model_id!r} ({mf.sha256.hex()[:16]}...) cannot be used by this "
                             f"release: {exc} (made by another bswd version?)") from exc
    return Engine(model, EngineConfig(**engine_options))


def engine_or_fail(model: Path | None, device: str = "auto", threads: int | None = None):
    """build_engine for a command: the bundled model or ``model``; None after a one-line error
    (a missing or unreadable model file, a bad or absent device)."""
    try:
        return build_engine(load_model_file(model), device, threads=threads)
    except (ValueError, OSError) as exc:
        fail(str(exc))
        return None


@contextmanager
def progress_bar(total: int, desc: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr counting patches; a no-op when quiet or not on a terminal."""
    if quiet or total <= 0:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="patch", file=sys.stderr, leave=False,
              disable=not sys.stderr.isatty()) as bar:
        yield bar.update
