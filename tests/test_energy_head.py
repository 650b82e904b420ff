"""The energy head turns a saturating latent distance into one that keeps growing with true distance."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from planner.energy_head import EnergyHead, EnergyHeadConfig, fit_energy_head


def random_walks(episodes: int, steps: int, seed: int):
    """2-D correlated random walks in [-1,1]^2 and a saturating (RBF) 64-d embedding of each state."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(64, 2, generator=g) * 2 - 1
    states = []
    for _ in range(episodes):
        p, vel, traj = torch.rand(2, generator=g) * 2 - 1, torch.zeros(2), []
        for _ in range(steps + 1):
            traj.append(p)
            vel = 0.7 * vel + 0.3 * (torch.rand(2, generator=g) * 2 - 1)
            p = (p + vel.clamp(-1, 1) * 0.05).clamp(-1, 1)
        states.append(torch.stack(traj))

    def embed(s):
        return torch.exp(-((s[:, None] - centers[None]) ** 2).sum(-1) / (2 * 0.25**2))

    return states, [embed(s) for s in states]


def rank_correlations(head, states, latents, seed=1):
    g = torch.Generator().manual_seed(seed)
    s, z = torch.cat(states), torch.cat(latents)
    i, j = (torch.randint(len(s), (2000,), generator=g) for _ in range(2))
    true = (s[i] - s[j]).norm(dim=-1)
    with torch.no_grad():
        m = head(z)
    raw = spearmanr((z[i] - z[j]).norm(dim=-1), true)[0]
    learned = spearmanr((m[i] - m[j]).norm(dim=-1), true)[0]
    return raw, learned


def test_fitted_energy_ranks_true_distance_far_better_than_raw_latents():
    torch.set_num_threads(1)
    states, latents = random_walks(episodes=100, steps=50, seed=0)
    cfg = EnergyHeadConfig(dim=8, hidden=64, steps=1200, batch_size=256, lr=3e-3, seed=0)
    head, fit = fit_energy_head(latents, 64, cfg, progress=False)
    raw, learned = rank_correlations(head, states, latents)
    assert learned > 0.85 and learned > raw + 0.2, (raw, learned)
    assert fit.transition_distance < 1.2  # one step stays about one unit of energy
    assert fit.random_pair_distance > 5 * fit.transition_distance


def test_fit_is_deterministic_and_shapes():
    _, latents = random_walks(episodes=4, steps=10, seed=2)
    cfg = EnergyHeadConfig(dim=4, hidden=16, steps=5, batch_size=8, seed=3)
    h1, _ = fit_energy_head(latents, 64, cfg, progress=False)
    h2, _ = fit_energy_head(latents, 64, cfg, progress=False)
    z = torch.randn(2, 3, 64)
    assert h1(z).shape == (2, 3, 4)
    assert torch.equal(h1(z), h2(z))
    assert isinstance(h1, EnergyHead)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="two or more frames"):
        fit_energy_head([torch.zeros(1, 8)], 8, EnergyHeadConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="saturation"):
        EnergyHeadConfig(saturation=0.5)


def test_state_head_reads_the_state_in_its_units():
    """Saturating RBF latents of a 2-D state: the state head's outputs are the state itself (standardization
    folded into the layers), so its distance is the true distance; weights scale the parts; deterministic."""
    import numpy as np

    from planner.energy_head import fit_state_head, state_targets

    torch.set_num_threads(1)
    states, latents = random_walks(episodes=60, steps=50, seed=0)
    s, z = torch.cat(states), torch.cat(latents)
    cfg = EnergyHeadConfig(kind="state", hidden=64, steps=1500, batch_size=256, lr=3e-3, state_proprio_dims=1,
                           state_weights=(1.0, 2.0))
    proprio, task = s[:, :1].numpy(), s[:, 1:].numpy()
    y = state_targets(proprio, task, cfg)
    assert torch.equal(y, torch.cat([s[:, :1], 2 * s[:, 1:]], 1))
    head, fit = fit_state_head(z, y, cfg, progress=False)
    assert max(fit.median_error) < 0.05 and len(fit.median_error) == 2
    with torch.no_grad():
        out = head(z)
    assert (out - y).abs().median() < 0.05  # readings in the state's (weighted) units, no rescaling needed
    weighted = [torch.cat([st[:, :1], 2 * st[:, 1:]], 1) for st in states]
    raw, learned = rank_correlations(head, weighted, latents)
    assert learned > 0.95 and learned > raw
    again, _ = fit_state_head(z, y, cfg, progress=False)
    assert torch.equal(again(z[:5]), head(z[:5]))
    with pytest.raises(ValueError, match="proprio columns"):
        state_targets(None, task, cfg)
    with pytest.raises(ValueError, match="kind"):
        EnergyHeadConfig(kind="oracle")
    with pytest.raises(ValueError, match="N >= 2"):
        fit_state_head(z[:1], y[:1], cfg, progress=False)
    assert np.isfinite(fit.mean_median_error)
