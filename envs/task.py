"""TaskSpec: what a task measures and when an episode counts as a success (DESIGN.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """Success rule and budgets of one task; distances in metres."""

    name: str
    """Task id, e.g. `ArmReach-v0`."""
    success_threshold: float
    """Success when `distance()` (task state to goal task state) is at most this many metres."""
    step_budget: int
    """Control steps per episode; `step` truncates at this count."""
    min_start_distance: float
    """Sampled start states are at least this far (metres, task-state distance) from the goal."""

    def __post_init__(self) -> None:
        if self.success_threshold <= 0 or self.min_start_distance <= self.success_threshold:
            raise ValueError(
                f"TaskSpec {self.name}: need 0 < success_threshold < min_start_distance, got "
                f"{self.success_threshold} and {self.min_start_distance}"
            )
        if self.step_budget < 1:
            raise ValueError(f"TaskSpec {self.name}: step_budget must be >= 1, got {self.step_budget}")

    def is_success(self, distance: float) -> bool:
        return bool(distance <= self.success_threshold)
