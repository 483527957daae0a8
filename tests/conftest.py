"""Shared fixtures: a tiny random integer model (fast, exact) and engines over it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bswd.engine import Engine, EngineConfig
from bswd.model.config import ModelConfig
from bswd.model.modelfile import ModelFile
from bswd.model.net import BitSwapVAE
from bswd.model.quant import CodingModel, export_model, load_coding_model

# One intra-op thread: the suite must not oversubscribe CI's two cores (OpenMP spin-waits
# turn that into a 10x slowdown). test_codec checks that the thread count never changes bytes.
torch.set_num_threads(1)

TINY = ModelConfig(n_layers=2, width=16, upsample_width=8, latent_channels=4)
TINY_CONTEXT = ModelConfig(n_layers=2, width=16, latent_channels=4, pixel_context=True, context_width=8)


def make_model_file(seed: int = 0, cfg: ModelConfig = TINY, model_id: str = "tiny-test") -> ModelFile:
    torch.manual_seed(seed)
    net = BitSwapVAE(cfg)
    net.set_quant(True)
    return export_model(net, model_id)


@pytest.fixture(scope="session")
def tiny_model_file() -> ModelFile:
    return make_model_file()


@pytest.fixture(scope="session")
def tiny_model(tiny_model_file: ModelFile) -> CodingModel:
    return load_coding_model(tiny_model_file)


@pytest.fixture(scope="session")
def context_model() -> CodingModel:
    """A tiny random model with the pixel-context likelihood (cfg.pixel_context)."""
    return load_coding_model(make_model_file(1, TINY_CONTEXT, "tiny-context-test"))


@pytest.fixture()
def make_engine(tiny_model: CodingModel):
    def factory(**options) -> Engine:
        return Engine(tiny_model, EngineConfig(**options))

    return factory


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
