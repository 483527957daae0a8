"""The ``.bswm`` model file: config, integer weights and CDF tables, sealed by a content hash.

Layout (all little-endian):
    8 bytes   magic  b"\\x89BSWM\\r\\n\\n"
    u32       format version (1)
    u64       length J of the JSON header
    J bytes   UTF-8 JSON: {"model_id", "config", "meta", "tensors": [{"name", "dtype", "shape",
              "offset", "nbytes"}]}; offsets count from the first byte after the header
    ...       tensor bytes, each starting at a multiple of 8
    32 bytes  SHA-256 of everything above
The model hash that every ``.bsw`` names is that SHA-256, so a file cannot be decoded with a
model that differs in a single bit. Nothing here is pickled: the file stays readable anywhere.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"\x89BSWM\r\n\n"
VERSION = 1
_ALLOWED_DTYPES = {"|i1", "<i2", "<i4", "<i8", "|u1", "<u4", "<u8"}


class ModelFileError(ValueError):
    """A model file is damaged, foreign or of an unknown version."""


@dataclass(frozen=True)
class ModelFile:
    model_id: str
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: bytes = b""

    def to_bytes(self) -> bytes:
        entries = []
        blobs = []
        offset = 0
        for name, arr in self.tensors.items():
            arr = np.ascontiguousarray(arr)
            dtype = arr.dtype.newbyteorder("<").str
            if dtype not in _ALLOWED_DTYPES:
                raise ModelFileError(f"tensor {name}: dtype {arr.dtype} not allowed in a model file")
            raw = arr.astype(dtype, copy=False).tobytes()
            entries.append({"name": name, "dtype": dtype, "shape": list(arr.shape),
                            "offset": offset, "nbytes": len(raw)})
            pad = (-len(raw)) % 8
            blobs.append(raw + b"\0" * pad)
            offset += len(raw) + pad
        header = json.dumps({"model_id": self.model_id, "config": self.config, "meta": self.meta,
                             "tensors": entries}, sort_keys=True).encode()
        body = MAGIC + struct.pack("<IQ", VERSION, len(header)) + header + b"".join(blobs)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "model file") -> ModelFile:
        if len(data) < len(MAGIC) + 12 + 32:
            raise ModelFileError(f"{name}: too short to be a bswd model ({len(data)} bytes)")
        if data[: len(MAGIC)] != MAGIC:
            raise ModelFileError(f"{name}: not a bswd model file (bad magic)")
        digest = hashlib.sha256(data[:-32]).digest()
        if digest != data[-32:]:
            raise ModelFileError(f"{name}: content hash mismatch (file damaged or modified)")
        version, hlen = struct.unpack_from("<IQ", data, len(MAGIC))
        if version != VERSION:
            raise ModelFileError(f"{name}: model format v{version}; this release reads v{VERSION}")
        start = len(MAGIC) + 12
        if start + hlen > len(data) - 32:
            raise ModelFileError(f"{name}: header length {hlen} runs past the end")
        try:
            header = json.loads(data[start : start + hlen])
        except ValueError as exc:
            raise ModelFileError(f"{name}: header is not JSON: {exc}") from exc
        base = start + hlen
        tensors = {}
        for e in header["tensors"]:
            if e["dtype"] not in _ALLOWED_DTYPES:
                raise ModelFileError(f"{name}: tensor {e['name']} has dtype {e['dtype']}")
            lo = base + e["offset"]
            if lo + e["nbytes"] > len(data) - 32:
                raise ModelFileError(f"{name}: tensor {e['name']} runs past the end")
            arr = np.frombuffer(data, dtype=e["dtype"], count=e["nbytes"] // np.dtype(e["dtype"]).itemsize,
                                offset=lo)
            tensors[e["name"]] = arr.reshape(e["shape"]).astype(arr.dtype.newbyteorder("="))
        return cls(header["model_id"], header["config"], tensors, header.get("meta", {}), digest)


def read_model_file(path: Path) -> ModelFile:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read model file: {exc.strerror}") from exc
    return ModelFile.from_bytes(data, str(path))
