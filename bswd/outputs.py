"""Putting verified outputs in place and applying a watched folder's policy to the original.

``publish`` writes to a hidden temporary name in the target folder, fsyncs, reads the file back and
compares it with the bytes that were verified by decoding, then links it into place and fsyncs
the folder: a reader sees either no output or a complete, verified one, and no existing file is
ever replaced (a taken name gets a numbered sibling). ``apply_policy`` touches
an original only after that, and only when the original is still the file that was submitted
(same size, mtime and inode); otherwise it is kept and the reason is returned.
"""

from __future__ import annotations

import os
from pathlib import Path

from bswd.shell import atomic_write, fsync_dir

BSW_SUFFIX = ".bsw"


class PublishError(OSError):
    """The output could not be written or did not read back identically."""


def file_ident(path: Path) -> str:
    """``size:mtime_ns:inode`` of ``path`` (what makes a watched file "the same file")."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def publish(target: Path, data: bytes) -> Path:
    """Write ``data`` at ``target`` atomically and durably (read back and compared) and return
    where it went. An existing file is never replaced: one holding exactly ``data`` is this
    output already (a job done again after a crash, or the same image twice) and is kept; any
    other file keeps its name and the output goes to the first free ``name-N`` (``a-1.png.bsw``,
    ``a-1.png``), so a reused file name never costs an earlier output."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_RENAMES + 1):
        path = target.with_name(numbered_name(target.name, n)) if n else target
        for _ in range(2):  # a file that appears between the look and the write is looked at again
            if path.is_dir():
                break
            try:
                existing: bytes | None = path.read_bytes()
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if existing == data:
                    return path
                break  # another file's name
            try:
                atomic_write(path, data, overwrite=False, read_back=True)
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                if "read back" in str(exc):
                    raise PublishError(str(exc)) from exc
                raise
    raise PublishError(f"{target}: {MAX_RENAMES} other files already hold this output's name")


MAX_RENAMES = 1000


def numbered_name(name: str, n: int) -> str:
    """The n-th alternative to an output name taken by another file: ``a.png.bsw`` ->
    ``a-1.png.bsw``, ``a.png`` -> ``a-1.png``."""
    inner = name.removesuffix(BSW_SUFFIX)
    return f"{Path(inner).stem}-{n}{Path(inner).suffix}" + (BSW_SUFFIX if name.endswith(BSW_SUFFIX) else "")


def compressed_name(name: str) -> str:
    """``a.png`` -> ``a.png.bsw``."""
    return Path(name).name + BSW_SUFFIX


def decompressed_name(name: str, ext: str) -> str:
    """``a.png.bsw`` -> ``a.png``; ``x.bsw`` with ext ``.png`` -> ``x.png``."""
    base = Path(name).name
    base = base.removesuffix(BSW_SUFFIX)
    suffix = Path(base).suffix.lower()
    same = {".jpg": ".jpeg", ".tif": ".tiff"}
    if suffix and same.get(suffix, suffix) == same.get(ext.lower(), ext.lower()):
        return base
    return (base[: -len(suffix)] if suffix else base) + ext


def apply_policy(original: Path, ident: str | None, policy: str, done_dir: Path) -> str:
    """Keep, move or delete ``original`` after its output was verified; returns what happened."""
    if policy == "keep":
        return "kept"
    try:
        now = file_ident(original)
    except FileNotFoundError:
        return "original already gone"
    if ident is not None and now != ident:
        return "original changed since it was taken; kept"
    if policy == "move":
        done_dir.mkdir(parents=True, exist_ok=True)
        dest = done_dir / original.name
        n = 1
        while dest.exists():
            dest = done_dir / numbered_name(original.name, n)
            n += 1
        os.rename(original, dest)
        fsync_dir(original.parent)
        return f"moved to {dest}"
    if policy == "delete-after-verify":
        original.unlink()
        fsync_dir(original.parent)
        return "deleted"
    raise ValueError(f"unknown policy {policy!r}")
