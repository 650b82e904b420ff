"""Per-episode seeds derived from (base seed, episode index, stream) alone.

Every episode's seed depends only on those three values, so collected data is identical whatever the
number of workers or the order episodes run in, and `--resume` reproduces exactly the missing episodes.
Streams keep independent uses apart: `"collect"` (environment resets during collection), `"eval"`
(evaluation episodes, so evaluation never reuses a collection start state) and `"collect-policy"` (the
exploration policy's own generator, so it never shares a random stream with the environment).
"""

from __future__ import annotations

import hashlib

import numpy as np

STREAMS: tuple[str, ...] = ("collect", "collect-policy", "eval")
"""The streams in use; a name outside this list is rejected to catch typos."""

_SEED_BITS = 63  # non-negative int64: fits torch.manual_seed, numpy and gymnasium; collisions ~ n^2 / 2^64


def _stream_key(stream: str) -> int:
    """A stable 64-bit integer for a stream name (sha256, not Python's randomized hash())."""
    return int.from_bytes(hashlib.sha256(stream.encode("utf-8")).digest()[:8], "little")


def episode_seed(base_seed: int, index: int, stream: str) -> int:
    """Seed of episode `index` in `stream` for the run seeded with `base_seed`; an int in [0, 2**63).

    Uses numpy's SeedSequence with spawn key (stream, index): outputs for different streams or indices
    are hashed independently, so they collide only by chance (about n^2 / 2^64 for n seeds).
    """
    if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)) or base_seed < 0:
        raise ValueError(f"base seed must be a non-negative integer, got {base_seed!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"episode index must be a non-negative integer, got {index!r}")
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}; use one of {', '.join(STREAMS)}")
    seq = np.random.SeedSequence(entropy=int(base_seed), spawn_key=(_stream_key(stream), int(index)))
    state = seq.generate_state(1, dtype=np.uint64)[0]
    return int(state) >> (64 - _SEED_BITS)


def planning_seed(episode: int, step: int) -> int:
    """The solver seed of an episode's MPC call at control step `step` (episode: its seed); an int in
    [0, 2**63). `planner eval`, the planner collection policy, `planner pictures` and the HTTP demo all
    use it, so an episode is planned with the same random draws however it is driven."""
    return (int(episode) + 7919 * int(step)) % (2**_SEED_BITS)
