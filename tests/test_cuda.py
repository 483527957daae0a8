"""CPU <-> GPU: the same .bsw bytes from either device, and each decodes the other's (BUG-05),
with the GPU engine coding on the device (torch backend: networks, tables and ANS lanes on the
GPU) and with networks on the GPU and ANS on the host (numpy backend).

Skipped where no CUDA device is visible; run by benchmarks/gpu_session.sh on a lent GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bswd.engine import Engine, EngineConfig
from bswd.model.quant import load_coding_model
from tests.conftest import noise

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module", params=["torch", "numpy"])
def engines(request, tiny_model_file):
    cpu = Engine(load_coding_model(tiny_model_file, "cpu"), EngineConfig(min_patches_per_lane=1))
    gpu = Engine(load_coding_model(tiny_model_file, "cuda"),
                 EngineConfig(min_patches_per_lane=1, backend=request.param))
    return cpu, gpu


def lane_bytes(coded):
    return [ln.heads.tobytes() + ln.words.tobytes() for c in coded for ln in c.lanes]


@pytest.mark.parametrize("scheme", ["bitswap", "bbans"])
def test_cpu_and_gpu_write_identical_bytes_and_cross_decode(engines, scheme):
    cpu, gpu = engines
    planes = [noise(64, 64, seed=1), noise(33, 17, seed=2), noise(40, 100, 1, seed=3)]
    a, b = cpu.encode(planes, scheme), gpu.encode(planes, scheme)
    assert lane_bytes(a) == lane_bytes(b)
    assert all(np.array_equal(x, y) for x, y in zip(gpu.decode(a), planes))
    assert all(np.array_equal(x, y) for x, y in zip(cpu.decode(b), planes))


def test_default_model_on_gpu_matches_cpu():
    from bswd.model.modelfile import read_model_file
    from bswd.model.registry import default_model_path

    mf = read_model_file(default_model_path())
    img = noise(96, 96, seed=4)
    a = Engine(load_coding_model(mf, "cpu")).encode([img])
    gpu = Engine(load_coding_model(mf, "cuda"))  # auto: the torch coder on the GPU
    assert type(gpu.coder("bitswap")).__name__ == "TorchPatchCoder"
    b = gpu.encode([img])
    assert lane_bytes(a) == lane_bytes(b)
    assert np.array_equal(gpu.decode(a)[0], img)
