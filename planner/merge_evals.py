"""`planner merge-evals`: join shards of one evaluation (`planner eval --first-episode`) into one results
JSON.

Shards must share the protocol (env, checkpoint weights, solver and budgets, objective, seed, thresholds,
baseline settings) and hold disjoint episodes; together they must cover a contiguous range of episode
indices (the simulator baseline, run on each shard's first `--sim-episodes` seeds, may leave gaps). Success
and distance are recomputed over all episodes; plan-time statistics over the per-step
times the episodes recorded (`plan_ms`; results written before that field existed carry none, and
`plan_ms_episodes` says how many episodes the figures rest on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.evaluate import SAMPLED_BASELINES, read_eval_json, summarize, write_json_atomic

PROTOCOL_KEYS = ("env", "env_kwargs", "camera_offset", "checkpoint_sha256", "solver", "samples",
                 "iterations", "horizon", "model_type", "objective", "seed", "success_threshold",
                 "step_budget", "replan_every", "subgoals", "subgoal_threshold_scale", "subgoal_patience",
                 "goal_energy_threshold", "success_rule")
DEFAULTS = {"subgoal_threshold_scale": 1.0, "subgoal_patience": None}
"""Protocol keys added after results were first written, with the value older results ran with."""
BASELINE_KEYS = ("solver", "samples", "iterations", "horizon", "subgoals")


@dataclass
class MergeEvalsConfig:
    """Join shards of one evaluation (`planner eval --first-episode K --episodes N`) into one results JSON."""

    shards: tuple[str, ...]
    """Results JSONs of `planner eval`, in any order."""
    json: str
    """Write the merged results object here (atomically)."""


def _records(block: dict, first: int) -> list[dict]:
    """Episode records with their global index (older results kept it on agent records only: position)."""
    return [dict(r, index=int(r.get("index", first + k))) for k, r in enumerate(block["per_episode"])]


def _summary(records: list[dict]) -> dict:
    return dict(episodes=len(records), plan_ms_episodes=sum("plan_ms" in r for r in records),
                **summarize(records))


def _check_same(name: str, shards: list[tuple[str, dict]], keys: tuple[str, ...]) -> None:
    ref_path, ref = shards[0]
    for path, res in shards[1:]:
        for k in keys:
            mine, theirs = res.get(k, DEFAULTS.get(k)), ref.get(k, DEFAULTS.get(k))
            if mine != theirs:
                raise ValueError(f"{name}: {path} has {k}={mine!r} but {ref_path} has {theirs!r}; "
                                 "shards must come from the same evaluation protocol")


def _join(name: str, blocks: list[tuple[str, dict, int]], contiguous: bool = True) -> list[dict]:
    """Records of all shards sorted by index; no index twice, and (when `contiguous`) no index left out."""
    records = sorted((r for _, block, first in blocks for r in _records(block, first)),
                     key=lambda r: r["index"])
    indices = [r["index"] for r in records]
    if len(set(indices)) != len(indices):
        dup = sorted({i for i in indices if indices.count(i) > 1})
        raise ValueError(f"{name}: episodes {dup} appear in more than one shard")
    if contiguous and indices != list(range(indices[0], indices[0] + len(indices))):
        missing = sorted(set(range(indices[0], indices[-1] + 1)) - set(indices))
        raise ValueError(f"{name}: the shards leave out episodes {missing}")
    return records


def merge(paths: list[str | Path]) -> dict:
    """Merged results object of the shards at `paths` (DESIGN 3 contract, plus `merged_from`)."""
    if len(paths) < 2:
        raise ValueError(f"merge-evals needs at least two shards, got {len(paths)}")
    shards = [(str(p), read_eval_json(p, ("per_episode",))) for p in paths]
    _check_same("agent", shards, PROTOCOL_KEYS)
    firsts = [int(res.get("first_episode", 0)) for _, res in shards]
    records = _join("agent", [(p, res, f) for (p, res), f in zip(shards, firsts, strict=True)])
    merged = dict(shards[0][1])
    merged.update(first_episode=records[0]["index"], **_summary(records), merged_from=[p for p, _ in shards])
    with_baselines = [(p, res, f) for (p, res), f in zip(shards, firsts, strict=True) if "baselines" in res]
    if with_baselines and len(with_baselines) != len(shards):
        raise ValueError("some shards ran --baselines and some did not; merge like with like")
    if with_baselines:
        merged["baselines"] = {}
        for name in shards[0][1]["baselines"]:
            blocks = [(p, res["baselines"][name], f) for p, res, f in with_baselines]
            _check_same(f"baseline {name}", [(p, b) for p, b, _ in blocks], BASELINE_KEYS)
            sampled = name in SAMPLED_BASELINES
            out = dict(blocks[0][1], **_summary(_join(f"baseline {name}", blocks, contiguous=not sampled)))
            if "wall_s" in out:
                out["wall_s"] = float(sum(b.get("wall_s", 0.0) for _, b, _ in blocks))
            merged["baselines"][name] = out
    return merged


def run(cfg: MergeEvalsConfig) -> None:
    merged = merge(list(cfg.shards))
    write_json_atomic(cfg.json, merged)
    first, n = merged["first_episode"], merged["episodes"]
    print(f"{merged['env']} {merged['checkpoint']}: success {merged['success_rate']:.0%} over {n} episodes "
          f"({first}-{first + n - 1}), final distance {merged['mean_final_distance']:.3f} m")
    for name, b in merged.get("baselines", {}).items():
        print(f"  baseline {name}: success {b['success_rate']:.0%} over {b['episodes']}")
    print(f"wrote {cfg.json}")
