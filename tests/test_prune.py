"""Pruning latent channels (`bswd train --init RUN --latent-channels C`): the kept channels'
networks are the full model's networks, dropped inputs become bias, the most informative
channels are the ones kept."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from bswd.cli import app
from bswd.model.net import BitSwapVAE
from bswd.model.prune import prune_latent_channels
from bswd.train import Trainer, latent_statistics
from tests.test_train import DATA, SMALL_CONTEXT, CropPatches, config

KEEP = [[0, 3], [1, 2]]


def full_and_pruned(means: torch.Tensor | None = None) -> tuple[BitSwapVAE, BitSwapVAE]:
    torch.manual_seed(3)
    full = BitSwapVAE(SMALL_CONTEXT)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # every bias non-zero, no symmetric weights
    pruned = BitSwapVAE(replace(SMALL_CONTEXT, latent_channels=2))
    pruned.load_state_dict(prune_latent_channels(full.state_dict(), 2, 4, KEEP, means))
    return full.eval(), pruned.eval()


def test_heads_keep_the_chosen_channels_exactly():
    full, pruned = full_and_pruned()
    x = torch.rand(2, 3, 32, 32) * 255
    mean_full, scale_full = full.posteriors[0](full.pixel_input(x))
    mean, scale = pruned.posteriors[0](pruned.pixel_input(x))
    assert torch.allclose(mean, mean_full[:, KEEP[0]], atol=1e-5)
    assert torch.allclose(scale, scale_full[:, KEEP[0]], atol=1e-5)
    z2 = torch.randn(2, 4, 16, 16)
    mean_full, _ = full.priors[1](z2)  # p(z_1 | z_2): predicts layer 0's channels
    mean, _ = pruned.priors[1](z2[:, KEEP[1]])
    assert not torch.allclose(mean, mean_full[:, KEEP[0]], atol=1e-3)  # z_2's dropped inputs mattered
    z2[:, [0, 3]] = 0.0  # dropped inputs at zero: no bias change needed
    mean_full, _ = full.priors[1](z2)
    assert torch.allclose(mean, mean_full[:, KEEP[0]], atol=1e-5)


def test_dropped_inputs_move_into_the_bias_as_their_means():
    means = torch.tensor([[0.0, 0.7, -0.4, 0.0], [0.3, 0.0, 0.0, -0.9]])
    full, pruned = full_and_pruned(means)
    z1 = torch.randn(2, 4, 16, 16)
    z1[:, 1], z1[:, 2] = 0.7, -0.4  # layer 0's dropped channels at their means
    out_full = full.posteriors[1].stem(z1, 5, 127, False)
    out = pruned.posteriors[1].stem(z1[:, KEEP[0]], 5, 127, False)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # the border sees zero padding
    assert torch.allclose(out[inner], out_full[inner], atol=1e-5)
    assert not torch.allclose(out[:, :, 0], out_full[:, :, 0], atol=1e-3)


def test_bad_keep_lists_are_refused():
    state = BitSwapVAE(SMALL_CONTEXT).state_dict()
    with pytest.raises(ValueError, match="same number"):
        prune_latent_channels(state, 2, 4, [[0, 1], [2]])
    with pytest.raises(ValueError, match="distinct"):
        prune_latent_channels(state, 2, 4, [[0, 0], [1, 2]])
    with pytest.raises(ValueError, match="layers"):
        prune_latent_channels(state, 2, 4, [[0, 1]])


def test_init_keeps_the_channels_with_the_most_information(tmp_path):
    data = CropPatches()
    old = Trainer(config(20, qat_start=1.0, model=SMALL_CONTEXT), tmp_path / "old", data)
    old.run()
    new = Trainer(config(2, model=replace(SMALL_CONTEXT, latent_channels=2)), tmp_path / "new", data)
    copied, fresh = new.init_from(tmp_path / "old" / "checkpoint.pt")
    assert fresh == 0 and copied == len(new.model.state_dict())
    big = BitSwapVAE(SMALL_CONTEXT)
    big.load_state_dict(old.ema.state_dict())
    big.set_quant(True)
    kl, _ = latent_statistics(big, new.val_patches)
    kept = new.pruned_from["kept"]
    for layer in range(2):
        dropped = [c for c in range(4) if c not in kept[layer]]
        assert min(kl[layer, kept[layer]]) >= max(kl[layer, dropped])
    rows = kept[0] + [4 + c for c in kept[0]]
    assert torch.equal(new.model.state_dict()["posteriors.0.head.b"], old.ema.state_dict()["posteriors.0.head.b"][rows])


def test_cli_records_the_kept_channels(tmp_path):
    data = CropPatches()
    Trainer(config(2, model=SMALL_CONTEXT), tmp_path / "old", data).run()
    res = CliRunner().invoke(app, ["train", "--data", str(DATA), "--out", str(tmp_path / "new"), "--init",
                                   str(tmp_path / "old"), "--latent-channels", "2", "--layers", "2", "--width", "16",
                                   "--context-width", "8", "--steps", "2", "--batch", "4", "--lr", "5e-4"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "new" / "pruned_from.json").read_text())
    assert record["init"] == str(tmp_path / "old") and [len(k) for k in record["kept"]] == [2, 2]
    assert "kept the latent channels with the most information" in res.output
    cfg = json.loads((tmp_path / "new" / "train_config.json").read_text())
    assert (cfg["lr"], cfg["lr_final"], cfg["model"]["latent_channels"]) == (5e-4, 1.25e-4, 2)
