"""Console script `planner`: one typed dataclass config per subcommand (field docstrings become --help).

Each subcommand module exposes a `*Config` dataclass and a `run(cfg)` function; this file only maps names.
"""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> (module, config class). Modules are imported only for the subcommand that runs.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("planner.collect", "CollectConfig"),
    "quality": ("planner.quality", "QualityConfig"),
    "probe-ceiling": ("planner.probe_ceiling", "ProbeCeilingConfig"),
    "import": ("planner.importers", "ImportConfig"),  # module name differs: `import` is a keyword
    "export": ("planner.export", "ExportConfig"),
    "train": ("planner.train", "TrainConfig"),
    "refit-predictor": ("planner.refit_predictor", "RefitConfig"),
    "fit-energy-head": ("planner.fit_energy_head", "FitEnergyHeadConfig"),
    "calibrate": ("planner.calibrate", "CalibrateConfig"),
    "set-planner": ("planner.set_planner", "SetPlannerConfig"),
    "ensemble": ("planner.ensemble", "EnsembleConfig"),
    "train-baseline": ("planner.train_baselines", "BaselineTrainConfig"),
    "eval": ("planner.evaluate", "EvalConfig"),
    "bench": ("planner.bench", "BenchConfig"),
    "surprise": ("planner.surprise", "SurpriseConfig"),
    "plots": ("planner.pictures", "PlotsConfig"),
    "compare-chart": ("planner.compare_chart", "CompareChartConfig"),
    "merge-evals": ("planner.merge_evals", "MergeEvalsConfig"),
    "paired-evals": ("planner.paired_evals", "PairedEvalsConfig"),
    "serve": ("server.serve", "ServeConfig"),  # the service layer sits above planner; named, not imported
}


def invoked_command(subcommand: str) -> str:
    """`planner SUBCOMMAND ARGS...` as typed, when this process is that subcommand run from the command line
    (recorded in a checkpoint's `commands`); "" otherwise (called from Python or a test)."""
    import shlex

    return shlex.join(["planner", subcommand, *sys.argv[2:]]) if sys.argv[1:2] == [subcommand] else ""


def main(argv: list[str] | None = None) -> None:
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        names = ", ".join(SUBCOMMANDS)
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: planner {{{names}}} [--help]")
            return
        print(f"usage: planner {{{names}}} ...\nunknown or missing subcommand; choose one of: {names}")
        raise SystemExit(2)
    name, rest = argv[0], argv[1:]
    module_name, config_name = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    cfg = tyro.cli(getattr(module, config_name), args=rest, prog=f"planner {name}")
    try:
        module.run(cfg)
    except (ValueError, OSError, RuntimeError) as exc:
        # Our error types (StoreError, CheckpointError, TrainError, CollapseError, ...) carry messages that
        # say what to fix; a traceback adds nothing for a user. PLANNER_DEBUG=1 shows it.
        if os.environ.get("PLANNER_DEBUG"):
            raise
        print(f"planner {name}: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"planner {name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
