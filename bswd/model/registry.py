"""Which model files this installation has, found by content hash.

Every model that was ever the package default stays in ``bswd/models/`` so that old ``.bsw``
files keep decoding; ``DEFAULT_MODEL`` names the one new files are written with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bswd.model.modelfile import ModelFile, read_model_file

PACKAGE_MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "bswd-default-4.bswm"


class ModelNotFound(LookupError):
    """No model file with the hash a .bsw names is available."""


@dataclass(frozen=True)
class ModelRef:
    path: Path
    model_id: str
    sha256: bytes


def default_model_path() -> Path:
    return PACKAGE_MODELS / DEFAULT_MODEL


def known_models(extra: list[Path] | None = None) -> list[ModelRef]:
    """Every readable model file in the package and in ``extra``."""
    paths = sorted(PACKAGE_MODELS.glob("*.bswm")) + list(extra or [])
    refs = []
    for p in paths:
        mf = read_model_file(p)
        refs.append(ModelRef(p, mf.model_id, mf.sha256))
    return refs


def find_model(sha256: bytes, model_id: str, extra: list[Path] | None = None) -> ModelFile:
    """The model file whose content hash is ``sha256``, else a precise ModelNotFound."""
    for p in list(extra or []) + sorted(PACKAGE_MODELS.glob("*.bswm")):
        mf = read_model_file(p)
        if mf.sha256 == sha256:
            return mf
    given = [(p, read_model_file(p)) for p in extra or []]
    if given:
        told = ", ".join(f"{p} is {mf.model_id!r} (sha256 {mf.sha256.hex()})" for p, mf in given)
        raise ModelNotFound(
            f"this file was written with model {model_id!r} (sha256 {sha256.hex()}); the model given, {told}, "
            f"is another model, and no bundled model matches")
    raise ModelNotFound(
        f"this file was written with model {model_id!r} (sha256 {sha256.hex()}), which this "
        f"installation does not have; pass --model PATH to that .bswm file")
