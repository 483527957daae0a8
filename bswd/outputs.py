"""Putting verified outputs in place and applying a watched folder's policy to the original.

``publish`` writes to a hidden temporary name in the target folder, fsyncs, reads the file back and
compares it with the bytes that were verified by decoding, then renames it into place and fsyncs
the folder: a reader sees either no output or a complete, verified one. ``apply_policy`` touches
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


def publish(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically and durably, read back and compared before it
    replaces an earlier output."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(target, data, overwrite=True, read_back=True)
    except OSError as exc:
        if "read back" in str(exc):
            raise PublishError(str(exc)) from exc
        raise


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
            dest = done_dir / f"{original.stem}.{n}{original.suffix}"
            n += 1
        os.rename(original, dest)
        fsync_dir(original.parent)
        return f"moved to {dest}"
    if policy == "delete-after-verify":
        original.unlink()
        fsync_dir(original.parent)
        return "deleted"
    raise ValueError(f"unknown policy {policy!r}")
