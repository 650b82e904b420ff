"""The real backend: a checkpoint (planner.checkpoint) planned with planner.mpc.MPCAgent on one device."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from planner import checkpoint
from planner.mpc import MPCAgent, WarmStart
from planner.objectives import energy, energy_space
from planner.preprocess import Preprocessing
from planner.solvers import SOLVERS, action_dims_record
from server.backend import ModelSpec, PlannerParams, PlanOutcome, PlanProblem


def _training_camera(cfg: dict) -> str | None:
    """The camera of the checkpoint's training images (envs.image_camera); None without a training env."""
    train = cfg.get("training_data", {})
    if not train.get("env_id"):
        return None
    from envs import image_camera

    return image_camera(train["env_id"], train.get("env_kwargs", {}))


class AgentBackend:
    """Wraps MPCAgent for the worker: batches of problems in, per-problem outcomes (numpy) out.

    Defaults for solver/horizon/samples/iterations come from the checkpoint's optional `planner` entry,
    else the planner-wide ones (planner.planner_defaults, resolved by MPCAgent). Goal proprio is accepted
    but unused (our models predict no proprio).
    """

    def __init__(self, loaded: checkpoint.Loaded, device: str = "cpu") -> None:
        cfg = loaded.config
        self.config = cfg
        from planner.surprise import ServingScore  # imports envs (clip generation): only when serving

        self.agent = MPCAgent(loaded, device=device)
        self.surprise_score = ServingScore.from_checkpoint(cfg, loaded.model)
        pre = Preprocessing.from_checkpoint_config(cfg)
        threshold = cfg.get("goal_energy_threshold")
        a = self.agent
        self.spec = ModelSpec(
            name=loaded.name,
            preprocessing=pre,
            action_low=a.action_spec.low,
            action_high=a.action_spec.high,
            action_units=a.action_spec.units,
            action_frame=str(cfg["action"].get("frame", "")),
            history_len=a.history_len,
            proprio_dim=(cfg.get("proprio") or {}).get("dim"),
            latent_dim=int(loaded.model.cfg.latent_dim),
            default_planner=PlannerParams(a.solver.name, a.horizon, a.solver.samples, a.solver.iterations),
            solvers=tuple(SOLVERS),
            goal_energy_threshold=None if threshold is None else float(threshold),
            action_dims=action_dims_record(a.solver),
            subgoal_energy_threshold=(float(a.subgoal_energy_threshold)
                                      if np.isfinite(a.subgoal_energy_threshold) else None),
            objective=asdict(a.objective),
            camera=_training_camera(cfg),
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> AgentBackend:
        return cls(checkpoint.load(path, device), device)

    def warmup(self) -> None:
        k = self.spec.history_len
        frames = np.zeros((1, k, *self.spec.preprocessing.shape), np.uint8)
        goal = self.agent.encode_goal(frames[0, -1])[None]
        self.agent.plan(frames, np.zeros((1, k - 1, self.spec.action_dim), np.float32), goal)

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.agent.encode(images).cpu().numpy()

    def encode_goals(self, images: np.ndarray, proprio: list[np.ndarray | None]) -> np.ndarray:
        return self.agent.encode_goal(images).cpu().numpy()

    def validate_warm_start(self, state: dict, params: PlannerParams) -> None:
        """Raise ValueError unless `state` came from this backend for `params` (thread-safe)."""
        WarmStart.from_dict(self._warm(state, params))

    def _warm(self, state: dict, params: PlannerParams) -> dict:
        return {
            "model": self.spec.name,
            "solver": params.solver,
            "horizon": params.horizon,
            "action_dim": self.spec.action_dim,
            "actions": state.get("actions"),
        }

    def plan(self, problems: list[PlanProblem], params: PlannerParams) -> list[PlanOutcome]:
        """One solver call for all problems (they share params and seed: batched == alone)."""
        seeds = {p.seed for p in problems}
        if len(seeds) != 1:
            raise ValueError(f"one batch must share one seed, got {sorted(seeds)}")
        agent = self.agent.with_planner(
            params.solver, horizon=params.horizon, samples=params.samples, iterations=params.iterations
        ).holding(dict(params.fixed_dims))
        missing = [i for i, p in enumerate(problems) if p.goal_latent is None]
        goals = [None if p.goal_latent is None else torch.as_tensor(p.goal_latent) for p in problems]
        if missing:
            fresh = agent.encode_goal(np.stack([problems[i].goal_image for i in missing])).cpu()
            for j, i in enumerate(missing):
                goals[i] = fresh[j]
        goal_latents = torch.stack(goals).float()
        warm = []
        for p in problems:
            if p.warm_start is None:
                warm.append(None)
                continue
            ws = WarmStart.from_dict(self._warm(p.warm_start, params))
            # shift per problem here, so problems with different executed_steps share one solver call
            actions = np.asarray(ws.actions)
            steps = min(p.executed_steps, params.horizon)
            if steps:
                actions = np.concatenate([actions[steps:], np.repeat(actions[-1:], steps, axis=0)])
            warm.append(WarmStart(ws.model, ws.solver, ws.horizon, ws.action_dim, tuple(map(tuple, actions))))
        plan = agent.plan(
            np.stack([p.frames for p in problems]),
            np.stack([p.prev_actions for p in problems]),
            goal_latents,
            warm if any(w is not None for w in warm) else None,
            executed_steps=0,
            seed=problems[0].seed,
            subgoal=[p.subgoal for p in problems],
        )
        ood = self._ood_scores(problems)
        return [
            PlanOutcome(
                actions=plan.actions[i],
                energy=float(plan.energy[i]),
                current_energy=float(plan.current_energy[i]),
                goal_reached=bool(plan.goal_reached[i]),
                goal_latent=goal_latents[i].numpy(),
                warm_start={"actions": [list(r) for r in plan.warm_start[i].actions]},
                ood_score=ood.get(i),
            )
            for i in range(len(problems))
        ]

    @torch.no_grad()
    def _ood_scores(self, problems: list[PlanProblem]) -> dict[int, float]:
        """One-step prediction error of the current latent from the K frames and actions before it."""
        idx = [i for i, p in enumerate(problems) if p.context_frames is not None]
        if not idx:
            return {}
        a, k = self.agent, self.spec.history_len
        ctx = np.stack([problems[i].context_frames for i in idx])  # [n,K,S,S,3]
        z_ctx = a.encode(ctx.reshape(-1, *ctx.shape[2:])).view(len(idx), k, -1)
        acts = a.action_spec.to_normalized(np.stack([problems[i].context_actions for i in idx]))
        z_pred = a.model.predict(z_ctx, torch.as_tensor(acts, device=a.device))
        z_now = a.encode(np.stack([problems[i].frames[-1] for i in idx]))
        return dict(zip(idx, energy(z_pred, z_now).cpu().tolist(), strict=True))

    @torch.no_grad()
    def rollout(
        self,
        frames: np.ndarray,
        prev_actions: np.ndarray,
        actions: np.ndarray,
        goal_latent: np.ndarray | None,
    ) -> dict[str, list[float] | None]:
        a = self.agent
        z = a.encode(frames)[None]  # [1,K,D]
        a_prev = torch.as_tensor(a.action_spec.to_normalized(prev_actions), device=a.device)[None]
        acts = torch.as_tensor(a.action_spec.to_normalized(actions), device=a.device)[None, None]
        zs = a.model.rollout(z, a_prev, acts)[0, 0]  # [T,D]
        now = z[0, -1]
        out: dict[str, list[float] | None] = {
            "energies": None,
            "latent_norms": torch.linalg.vector_norm(zs, dim=-1).cpu().tolist(),
            "latent_change": energy(zs, now).cpu().tolist(),
        }
        if goal_latent is not None:
            embed = energy_space(a.model)
            goal = embed(torch.as_tensor(goal_latent, device=a.device))
            out["energies"] = energy(embed(zs), goal).cpu().tolist()
        return out

    def surprise(self, frames: np.ndarray, actions: np.ndarray) -> dict:
        """planner.surprise.score_clip in the checkpoint's serving space (ServingScore: the calibrated space
        from `surprise` in config.json when it has one, else the energy space for a checkpoint with an
        energy head, self-normalized)."""
        from planner.surprise import score_clip

        a, how = self.agent, self.surprise_score
        r = score_clip(a.model, frames, a.action_spec.to_normalized(actions), device=a.device,
                       typical_error=how.typical_error, threshold=how.threshold, space=how.space,
                       feature_weight=how.feature_weight)
        return {
            "space": how.space,
            "errors": r.errors.tolist(),
            "normalized": r.normalized.tolist(),
            "flagged": r.flagged,
            "score": r.score,
            "peak_step": r.peak_step,
            "typical_error": r.typical_error,
            "threshold": r.threshold,
        }
