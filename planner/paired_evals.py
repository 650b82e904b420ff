"""`planner paired-evals`: compare two evaluations episode by episode (same env, same episode seeds).

Two `planner eval` runs on the same seeds differ only in what was changed, so their episodes pair up: the
comparison counts the episodes the change won (failed before, succeeds now) and lost, and tests them with
McNemar's exact test (a two-sided binomial test on those discordant episodes); final distances are
compared with the Wilcoxon signed-rank test. docs/BENCHMARKS.md reports its figures as "won / lost, p":

    planner paired-evals --base docs/results/push_s17_fresh_eval_300-399.json \
        --new docs/results/push_s17_s256_eval_300-399.json

Each side may be several shards or ranges (`--base A.json B.json`); episodes are matched by their seed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from planner.evaluate import episode_outcome, read_eval_json, write_json_atomic


@dataclass
class PairedEvalsConfig:
    """Paired comparison of two sets of `planner eval --json` results on the same episode seeds."""

    base: tuple[str, ...]
    """Results JSONs of the reference run (shards or ranges; episodes matched by seed)."""
    new: tuple[str, ...]
    """Results JSONs of the changed run."""
    json: str | None = None
    """Also write the comparison object here (atomically)."""


def load_episodes(paths: tuple[str, ...] | list[str]) -> tuple[str, dict[int, dict]]:
    """(env id, {episode seed: agent episode record}) of one side; all files must share the env."""
    env, episodes = None, {}
    for p in paths:
        res = read_eval_json(p, ("env", "per_episode"))
        if env is not None and res.get("env") != env:
            raise ValueError(f"{p} evaluates {res.get('env')!r}, the other files of its side {env!r}")
        env = res.get("env")
        for rec in res["per_episode"]:
            if rec["seed"] in episodes:
                raise ValueError(f"{p}: episode seed {rec['seed']} appears twice on one side")
            episodes[rec["seed"]] = rec
    if not episodes:
        raise ValueError(f"no episode records in {list(paths)}")
    return env, episodes


def mcnemar_exact_p(won: int, lost: int) -> float:
    """Two-sided exact McNemar p: binomial test of `won` among the `won + lost` discordant pairs at 1/2."""
    from scipy.stats import binomtest

    return 1.0 if won + lost == 0 else float(binomtest(won, won + lost, 0.5).pvalue)


def wilcoxon_p(base: list[float], new: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired samples; 1.0 when every pair is equal."""
    from scipy.stats import wilcoxon

    if all(a == b for a, b in zip(base, new, strict=True)):
        return 1.0
    return float(wilcoxon(base, new).pvalue)


def compare(base: tuple[str, ...] | list[str], new: tuple[str, ...] | list[str]) -> dict:
    """The comparison object: episodes paired, success rates, won / lost, McNemar p, mean final distances
    (metres), Wilcoxon p, and how each side's paired episodes ended (evaluate.episode_outcome)."""
    env_a, a = load_episodes(base)
    env_b, b = load_episodes(new)
    if env_a != env_b:
        raise ValueError(f"the two sides evaluate different envs: {env_a!r} and {env_b!r}")
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two sides share no episode seed: run them with the same --seed and episodes")
    won = sum(b[s]["success"] and not a[s]["success"] for s in seeds)
    lost = sum(a[s]["success"] and not b[s]["success"] for s in seeds)
    dist_a = [float(a[s]["final_distance"]) for s in seeds]
    dist_b = [float(b[s]["final_distance"]) for s in seeds]
    n = len(seeds)
    return dict(
        env=env_a, episodes=n, unpaired=len(set(a) ^ set(b)),
        base_success_rate=sum(a[s]["success"] for s in seeds) / n,
        new_success_rate=sum(b[s]["success"] for s in seeds) / n,
        won=int(won), lost=int(lost), mcnemar_p=mcnemar_exact_p(won, lost),
        base_mean_final_distance=sum(dist_a) / n, new_mean_final_distance=sum(dist_b) / n,
        wilcoxon_p=wilcoxon_p(dist_a, dist_b),
        base_outcomes=dict(Counter(episode_outcome(a[s]) for s in seeds)),
        new_outcomes=dict(Counter(episode_outcome(b[s]) for s in seeds)),
        base=list(base), new=list(new),
    )


def run(cfg: PairedEvalsConfig) -> None:
    c = compare(cfg.base, cfg.new)
    print(f"{c['env']}, {c['episodes']} paired episodes ({c['unpaired']} unpaired left out): success "
          f"{c['base_success_rate']:.0%} -> {c['new_success_rate']:.0%}, won {c['won']} / lost {c['lost']}, "
          f"McNemar p = {c['mcnemar_p']:.3f}; mean final distance {100 * c['base_mean_final_distance']:.1f} "
          f"-> {100 * c['new_mean_final_distance']:.1f} cm, Wilcoxon p = {c['wilcoxon_p']:.3f}")
    if cfg.json:
        write_json_atomic(cfg.json, c)
        print(f"wrote {cfg.json}")
