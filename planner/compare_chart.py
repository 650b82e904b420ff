"""`planner compare-chart`: success rates of several `planner eval --json` results side by side.

One bar per (condition, model) with its 95% Wilson interval from the episode count, bars grouped by
condition (e.g. "push, red block" and "push, green block"), models in a fixed colour across groups.
docs/COMPARISON.md draws its figures with it:

    planner compare-chart --out docs/img/comparison_push.png \
        --results "red block::jepa=docs/results/push_eval.json" \
                  "red block::gcbc=docs/results/cmp_push_gcbc.json" ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.evaluate import read_eval_json
from planner.pictures import pyplot, save_figure, wilson_interval


@dataclass
class CompareChartConfig:
    """Grouped bar chart of success rates (95% Wilson intervals) from `planner eval --json` files."""

    results: tuple[str, ...]
    """Entries `CONDITION::MODEL=PATH` (quote each); bars are grouped by CONDITION in the order given.
    `PATH#random` or `PATH#simulator` takes that baseline block of a `--baselines` result (floor, ceiling)."""
    out: Path
    """PNG to write (atomic)."""
    title: str = ""
    """Figure title (default: the env of the first result)."""


@dataclass(frozen=True)
class Bar:
    """One eval result: its condition, model label, success rate, episodes and 95% interval."""

    condition: str
    model: str
    success_rate: float
    episodes: int
    low: float
    high: float
    env: str


def parse_entry(entry: str) -> tuple[str, str, Path]:
    """'CONDITION::MODEL=PATH' -> (condition, model, path); a clear error otherwise."""
    head, sep, path = entry.partition("=")
    condition, sep2, model = head.partition("::")
    if not (sep and sep2 and condition.strip() and model.strip() and path.strip()):
        raise ValueError(f"--results entry {entry!r} must look like 'CONDITION::MODEL=PATH'")
    return condition.strip(), model.strip(), Path(path.strip())


def read_bar(condition: str, model: str, path: Path) -> Bar:
    """Read one eval JSON (needs success_rate and episodes), or its baseline block for `PATH#NAME`."""
    file, _, baseline = str(path).partition("#")
    path = Path(file)
    d = read_eval_json(path, ("success_rate", "episodes"))
    if baseline:
        if baseline not in d.get("baselines", {}):
            raise ValueError(f"{path}: no baseline {baseline!r} (run `planner eval --baselines`; has: "
                             f"{', '.join(d.get('baselines', {})) or 'none'})")
        d = dict(d["baselines"][baseline], env=d.get("env", ""))
    rate, n = float(d["success_rate"]), int(d["episodes"])
    if n < 1 or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{path}: episodes must be >= 1 and success_rate in [0, 1]")
    low, high = wilson_interval(rate * n, n)
    return Bar(condition, model, rate, n, low, high, str(d.get("env", "")))


def plot_bars(bars: list[Bar], path: str | Path, title: str = "") -> Path:
    """Grouped bars (conditions on x, one colour per model) with Wilson error bars, rate and n above each."""
    plt = pyplot()
    conditions = list(dict.fromkeys(b.condition for b in bars))
    models = list(dict.fromkeys(b.model for b in bars))
    colours = {m: f"C{j % 10}" for j, m in enumerate(models)}
    width = 0.8 / max(sum(b.condition == c for b in bars) for c in conditions)
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * len(bars), 4.2))
    labelled = set()
    for i, cond in enumerate(conditions):
        group = [b for b in bars if b.condition == cond]  # the models present here, side by side
        for j, b in enumerate(group):
            x = i + (j - (len(group) - 1) / 2) * width
            ax.bar(x, b.success_rate, width * 0.9, color=colours[b.model],
                   yerr=[[b.success_rate - b.low], [b.high - b.success_rate]], capsize=2,
                   label=None if b.model in labelled else b.model)
            labelled.add(b.model)
            ax.text(x, b.high + 0.02, f"{b.success_rate:.0%}\nn={b.episodes}", ha="center", va="bottom",
                    fontsize=6)
    ax.set_xticks(range(len(conditions)), conditions, fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or (bars[0].env if bars else ""), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def run(cfg: CompareChartConfig) -> list[Bar]:
    if not cfg.results:
        raise ValueError("--results needs at least one CONDITION::MODEL=PATH entry")
    bars = [read_bar(*parse_entry(e)) for e in cfg.results]
    seen = set()
    for b in bars:
        if (b.condition, b.model) in seen:
            raise ValueError(f"--results names {b.model!r} under {b.condition!r} twice")
        seen.add((b.condition, b.model))
    plot_bars(bars, cfg.out, cfg.title)
    for b in bars:
        print(f"{b.condition:<24} {b.model:<28} {b.success_rate:>5.0%} of {b.episodes:<3} "
              f"[{b.low:.0%}, {b.high:.0%}]")
    print(f"wrote {cfg.out}")
    return bars
