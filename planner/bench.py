"""`planner bench`: planning latency per solver, rollout throughput, and the achieved matmul fraction.

Measured in one run on this machine: (1) median/p95 wall time of one MPC step (`MPCAgent.plan`, B=1,
history encoded every call, warm start passed back) per solver at its default budget; (2) candidate-steps
per second of `model.rollout` at several sample counts (S candidates x H steps per call, no encoding);
(3) the fp32 matmul FLOP/s of a large square matmul, and the fraction of it the rollout achieves, with the
predictor's FLOPs per candidate-step counted by torch.utils.flop_counter. Inputs are random images: timing
does not depend on image content.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import numpy as np
import torch

from planner.mpc import MPCAgent
from planner.planner_defaults import PlannerDefaults
from planner.solvers import SOLVERS


@dataclass
class BenchConfig:
    """Benchmark planning speed of a checkpoint on this machine."""

    checkpoint: str
    """Checkpoint directory."""
    json: str | None = None
    """Write the results object to this path (atomically)."""
    solvers: tuple[str, ...] = tuple(SOLVERS)
    """Solvers to time at their default budget."""
    horizon: int | None = None
    """Planning horizon (default: the checkpoint's config.json `planner` horizon, else 15)."""
    repeats: int = 20
    """Timed MPC steps per solver (after 2 warm-up steps)."""
    sample_counts: tuple[int, ...] = (64, 256, 1024, 4096)
    """Candidate counts for the rollout-throughput measurement."""
    matmul_size: int = 2048
    """Side of the square fp32 matmul used to measure this machine's FLOP/s."""
    device: str = "cpu"
    """Torch device (cpu, cuda, cuda:1)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice). On a loaded shared machine 1 is much faster (measured
    30x for CEM with 2 threads on 2 busy cores: idle threads spin-wait); see docs/PLANNING.md."""
    seed: int = 0
    """Seed for the random inputs and the solvers."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls (after one warm-up call)."""
    fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def matmul_flops(n: int, device: torch.device, repeats: int = 5) -> float:
    """Measured fp32 FLOP/s of an n x n @ n x n matmul (best of `repeats`)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g)
    b = torch.randn(n, n, device=device, generator=g)
    return 2.0 * n**3 / min(_timed(lambda: a @ b, device, repeats))


def predictor_flops_per_step(model, device: torch.device) -> float:
    """FLOPs of one predictor step for one candidate (counted by torch.utils.flop_counter on a batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    k, d, a = model.cfg.history_len, model.cfg.latent_dim, model.cfg.action_dim
    n = 64
    z = torch.zeros(n, k, d, device=device)
    acts = torch.zeros(n, k, a, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.predict(z, acts)
    return counter.get_total_flops() / n


def bench(cfg: BenchConfig) -> dict:
    """Run the benchmark; returns the results object."""
    from tqdm import tqdm

    from planner.checkpoint import load

    if cfg.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {cfg.repeats}")
    unknown = [s for s in cfg.solvers if s not in SOLVERS]
    if unknown:
        raise ValueError(f"unknown solver(s) {unknown}; choose from {list(SOLVERS)}")
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    loaded = load(cfg.checkpoint, device)
    model = loaded.model
    k, size = int(loaded.config["history_len"]), int(loaded.config["image"]["size"])
    a_dim = int(loaded.config["action"]["dim"])
    rng = np.random.default_rng(cfg.seed)
    images = rng.integers(0, 256, (1, k, size, size, 3), dtype=np.uint8)
    prev = np.zeros((1, k - 1, a_dim), np.float32)

    latency = {}
    horizon = PlannerDefaults.from_config(loaded.config).resolve_horizon(cfg.horizon)
    for name in tqdm(cfg.solvers, desc="bench solvers"):
        agent = MPCAgent(loaded, name, horizon=horizon, device=device)
        goal = agent.encode_goal(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))[None]
        warm = [None]
        for _ in range(2):
            warm = agent.plan(images, prev, goal, warm if warm[0] else None, seed=cfg.seed).warm_start
        ms = []
        for i in range(cfg.repeats):
            plan = agent.plan(images, prev, goal, warm, seed=cfg.seed + i)
            warm = plan.warm_start
            ms.append(plan.plan_ms)
        latency[name] = dict(
            samples=agent.solver.samples,
            iterations=agent.solver.iterations,
            horizon=horizon,
            plan_ms_median=float(np.median(ms)),
            plan_ms_p95=float(np.percentile(ms, 95)),
        )

    flops_step = predictor_flops_per_step(model, device)
    peak = matmul_flops(cfg.matmul_size, device)
    z_hist = torch.randn(1, k, model.cfg.latent_dim, device=device)
    a_prev = torch.zeros(1, k - 1, a_dim, device=device)
    throughput = []
    for s in tqdm(cfg.sample_counts, desc="bench rollouts"):
        acts = torch.rand(1, s, horizon, a_dim, device=device) * 2 - 1
        with torch.no_grad():
            secs = float(np.median(_timed(lambda a=acts: model.rollout(z_hist, a_prev, a), device, 5)))
        rate = s * horizon / secs
        throughput.append(dict(samples=s, horizon=horizon, ms_per_call=secs * 1e3,
                               candidate_steps_per_s=rate, achieved_flops=rate * flops_step,
                               fraction_of_matmul=rate * flops_step / peak))
    return dict(
        checkpoint=loaded.name,
        device=str(device),
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     torch=torch.__version__, threads=torch.get_num_threads()),
        planning_latency=latency,
        rollouts=throughput,
        predictor_flops_per_candidate_step=flops_step,
        matmul=dict(size=cfg.matmul_size, flops_per_s=peak),
        best_fraction_of_matmul=max(t["fraction_of_matmul"] for t in throughput),
    )


def run(cfg: BenchConfig) -> None:
    from planner.evaluate import write_json_atomic

    res = bench(cfg)
    print(f"{res['checkpoint']} on {res['device']} ({res['machine']['threads']} threads)")
    print("solver   S     I   H   median ms   p95 ms")
    for name, r in res["planning_latency"].items():
        print(f"{name:<7} {r['samples']:>5} {r['iterations']:>3} {r['horizon']:>3} "
              f"{r['plan_ms_median']:>10.1f} {r['plan_ms_p95']:>8.1f}")
    print(f"matmul {res['matmul']['size']}^3 fp32: {res['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s; "
          f"predictor {res['predictor_flops_per_candidate_step'] / 1e3:.1f} kFLOP per candidate-step")
    for t in res["rollouts"]:
        print(f"rollout S={t['samples']:>5}: {t['candidate_steps_per_s'] / 1e6:.2f} M candidate-steps/s, "
              f"{t['fraction_of_matmul']:.1%} of matmul")
    if cfg.json:
        write_json_atomic(cfg.json, res)
        print(f"wrote {cfg.json}")
