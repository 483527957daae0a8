"""Drop latent channels from a trained model's weights (pure tensor surgery, no data).

A Bit-Swap model trained with free bits leaves many latent channels at the free-bits floor: they
carry almost no information, yet every lane start pays their full entropy in seed bits and every
patch pops and pushes them. ``prune_latent_channels`` keeps chosen channels of every latent layer
and rewrites the networks around them (posterior heads that produce them, stems that read them,
prior heads that predict them) so a run can be fine-tuned from the smaller model
(``bswd train --init RUN --latent-channels C``).

Parameter names are those of net.BitSwapVAE: ``posteriors[i]`` produces z_{i+1} and reads z_i
(z_0 = x); ``priors[0]`` reads z_1; ``priors[j]`` (j >= 1) reads z_{j+1} and predicts z_j.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _out_rows(keep: list[int], channels: int) -> Tensor:
    """Rows of a head with 2 * channels outputs (means, then log-scales) for the kept channels."""
    return torch.tensor(keep + [channels + k for k in keep])


def _slice_outputs(state: dict[str, Tensor], prefix: str, rows: Tensor) -> None:
    for name in ("v", "g", "b"):
        state[f"{prefix}.{name}"] = state[f"{prefix}.{name}"][rows].clone()


def _slice_inputs(state: dict[str, Tensor], prefix: str, keep: list[int], input_means: Tensor | None) -> None:
    """Keep input channels ``keep`` of a weight-normalized conv (w = v * g / |v| per output row)
    without changing the kept weights: g is rescaled by the new row norms. A dropped channel's
    average contribution (its mean input times its kernel sum, ignoring the image border) moves
    into the bias, so the pruned net starts close to the full one."""
    v, g, b = state[f"{prefix}.v"], state[f"{prefix}.g"], state[f"{prefix}.b"]
    norm = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    weight = v * (g / norm).view(-1, 1, 1, 1)
    kept_v = v[:, keep].clone()
    kept_norm = kept_v.flatten(1).norm(dim=1).clamp_min(1e-12)
    state[f"{prefix}.v"] = kept_v
    state[f"{prefix}.g"] = g * kept_norm / norm
    if input_means is not None:
        dropped = [c for c in range(v.shape[1]) if c not in keep]
        if dropped:
            sums = weight[:, dropped].sum(dim=(2, 3))  # [cout, dropped]
            b = b + sums @ input_means[dropped].to(sums.dtype)
    state[f"{prefix}.b"] = b.clone()


def prune_latent_channels(state: dict[str, Tensor], n_layers: int, channels: int, keep: list[list[int]],
                          input_means: Tensor | None = None) -> dict[str, Tensor]:
    """A copy of a BitSwapVAE state dict keeping channels ``keep[i]`` of latent layer z_{i+1}.

    ``channels`` is the model's latent channel count; every layer must keep the same number of
    channels (the model format has one count for all layers). ``input_means`` [n_layers, channels]
    are the mean network inputs of each latent channel (see train.latent_statistics); with them
    the dropped channels' average contributions move into biases.
    """
    if len(keep) != n_layers:
        raise ValueError(f"keep names {len(keep)} layers; the model has {n_layers}")
    counts = {len(k) for k in keep}
    if len(counts) != 1:
        raise ValueError("every latent layer must keep the same number of channels")
    for layer in keep:
        if len(set(layer)) != len(layer) or not all(0 <= c < channels for c in layer):
            raise ValueError(f"channels to keep must be distinct and in 0..{channels - 1}: {layer}")
    out = dict(state)
    for i in range(n_layers):
        keep_i = sorted(keep[i])
        means_i = None if input_means is None else input_means[i]
        _slice_outputs(out, f"posteriors.{i}.head", _out_rows(keep_i, channels))
        if i + 1 < n_layers:
            _slice_inputs(out, f"posteriors.{i + 1}.stem", keep_i, means_i)
        _slice_inputs(out, f"priors.{i}.stem", keep_i, means_i)
        if i >= 1:
            _slice_outputs(out, f"priors.{i}.head", _out_rows(sorted(keep[i - 1]), channels))
    return out
