"""Writers of small robot datasets, field by field to each published layout, for the import tests.

Nothing here uses planner code: the LeRobot v3.0 / v2.1 and robomimic files are written with pyarrow,
PyAV and h5py directly, so the importers are checked against the specs, not against our exporter.
Synthetic episodes: a coloured square moving over a gradient whose blue level steps each frame;
state = (x, y, gripper), action = the commanded (dx, dy) plus gripper.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 10
SIZE = 64


def synthetic_episode(seed: int, n: int, size: int = SIZE) -> dict[str, np.ndarray]:
    """n frames: images uint8 [n,size,size,3], state float32 [n,3], action float32 [n,3] (native)."""
    rng = np.random.default_rng(seed)
    xy = np.cumsum(rng.uniform(-3, 3, size=(n, 2)), axis=0) + size / 2
    xy = np.clip(xy, 8, size - 9)
    grip = (np.arange(n) >= n // 2).astype(np.float32)
    state = np.concatenate([xy, grip[:, None]], axis=1).astype(np.float32)
    action = np.zeros((n, 3), np.float32)
    action[:-1, :2] = xy[1:] - xy[:-1]
    action[-1, :2] = action[-2, :2]
    action[:, 2] = 2 * grip - 1
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = np.stack([xx * 2, yy * 2, np.full_like(xx, 40 + 15 * (i % 14))], axis=-1).astype(np.float64)
        x, y = int(xy[i, 0]), int(xy[i, 1])
        img[y - 6 : y + 6, x - 6 : x + 6] = (230, 40, 40) if grip[i] else (40, 230, 40)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return {"images": images, "state": state, "action": action}


def write_mp4(path: Path, frames: np.ndarray, codec: str, fps: int = FPS) -> None:
    """RGB uint8 [N,H,W,3] -> MP4 (frame i at i/fps), as LeRobot encodes: yuv420p, GOP 2."""
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only, no banner
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "15", "g": "2"}
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            c.mux(s.encode(vf))
        c.mux(s.encode(None))


def _features(cameras: list[str]) -> dict:
    feats = {
        cam: {
            "dtype": "video",
            "shape": [SIZE, SIZE, 3],
            "names": ["height", "width", "channels"],
            "info": {"video.fps": FPS, "video.codec": "av1", "video.pix_fmt": "yuv420p", "has_audio": False},
        }
        for cam in cameras
    }
    feats["observation.state"] = {"dtype": "float32", "shape": [3], "names": {"motors": ["x", "y", "grip"]}}
    feats["action"] = {"dtype": "float32", "shape": [3], "names": ["dx", "dy", "grip"]}
    for k, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                     ("index", "int64"), ("task_index", "int64")):  # fmt: skip
        feats[k] = {"dtype": dtype, "shape": [1], "names": None}
    return feats


def _data_table(episodes: list[dict], ids: list[int], start_index: int, fixed: bool):
    import pyarrow as pa

    def vec(x):
        x = np.asarray(x, np.float32)
        if fixed:
            return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        return pa.array([list(r) for r in x], pa.list_(pa.float32()))

    state = np.concatenate([episodes[i]["state"] for i in ids])
    action = np.concatenate([episodes[i]["action"] for i in ids])
    lengths = [len(episodes[i]["state"]) for i in ids]
    return pa.table({
        "observation.state": vec(state),
        "action": vec(action),
        "timestamp": pa.array(np.concatenate([np.arange(n) / FPS for n in lengths]).astype(np.float32)),
        "frame_index": pa.array(np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)),
        "episode_index": pa.array(np.repeat(np.asarray(ids, np.int64), lengths)),
        "index": pa.array(np.arange(start_index, start_index + sum(lengths), dtype=np.int64)),
        "task_index": pa.array(np.zeros(sum(lengths), np.int64)),
    })  # fmt: skip


def write_lerobot_v30(root: Path, episodes: list[dict], codec: str = "libsvtav1") -> None:
    """LeRobot v3.0: episodes 0,1 in data file-000, the rest in file-001; each camera's frames of all
    episodes in one mp4 (front) or split 2+rest like the data (wrist)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cams = ["observation.images.front", "observation.images.wrist"]
    lengths = [len(e["state"]) for e in episodes]
    info = {
        "codebase_version": "v3.0", "robot_type": "synthetic", "total_episodes": len(episodes),
        "total_frames": sum(lengths), "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500, "fps": FPS, "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": _features(cams),
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    groups = [[0, 1], list(range(2, len(episodes)))]
    rows, start = [], 0
    for fileno, ids in enumerate(groups):
        path = root / f"data/chunk-000/file-{fileno:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(episodes, ids, start, fixed=fileno == 0), path)
        wrist_offset = 0
        for i in ids:
            n = lengths[i]
            front_from = sum(lengths[:i]) / FPS
            rows.append({
                "episode_index": i, "tasks": ["move the square"], "length": n,
                "data/chunk_index": 0, "data/file_index": fileno,
                "dataset_from_index": start, "dataset_to_index": start + n,
                "videos/observation.images.front/chunk_index": 0,
                "videos/observation.images.front/file_index": 0,
                "videos/observation.images.front/from_timestamp": front_from,
                "videos/observation.images.front/to_timestamp": front_from + n / FPS,
                "videos/observation.images.wrist/chunk_index": 0,
                "videos/observation.images.wrist/file_index": fileno,
                "videos/observation.images.wrist/from_timestamp": wrist_offset / FPS,
                "videos/observation.images.wrist/to_timestamp": (wrist_offset + n) / FPS,
                "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                "stats/action/min": episodes[i]["action"].min(0).tolist(),
                "stats/action/max": episodes[i]["action"].max(0).tolist(),
            })  # fmt: skip
            start += n
            wrist_offset += n
        wrist = np.concatenate([255 - episodes[i]["images"] for i in ids])
        write_mp4(root / f"videos/observation.images.wrist/chunk-000/file-{fileno:03d}.mp4", wrist, codec)
    front = np.concatenate([e["images"] for e in episodes])
    write_mp4(root / "videos/observation.images.front/chunk-000/file-000.mp4", front, codec)
    meta_path = root / "meta/episodes/chunk-000/file-000.parquet"
    meta_path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), meta_path)
    # pandas writes an unnamed index as __index_level_0__ (named: "task"); exercise the unnamed form here
    tasks = pa.table({"task_index": pa.array([0], pa.int64()), "__index_level_0__": ["move the square"]})
    pq.write_table(tasks, root / "meta/tasks.parquet")
    actions = np.concatenate([e["action"] for e in episodes])
    stats = {"action": {"min": actions.min(0).tolist(), "max": actions.max(0).tolist(),
                        "mean": actions.mean(0).tolist(), "std": actions.std(0).tolist(),
                        "count": [len(actions)]}}  # fmt: skip
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))


def write_lerobot_v21(root: Path, episodes: list[dict], codec: str = "libx264") -> None:
    """LeRobot v2.1: one parquet and one mp4 per episode, jsonl metadata, per-episode stats."""
    import pyarrow.parquet as pq

    lengths = [len(e["state"]) for e in episodes]
    info = {
        "codebase_version": "v2.1", "robot_type": "synthetic", "total_episodes": len(episodes),
        "total_frames": sum(lengths), "total_tasks": 1, "total_videos": len(episodes), "total_chunks": 1,
        "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": _features(["observation.images.front"]),
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    ep_lines, stat_lines, start = [], [], 0
    for i, e in enumerate(episodes):
        path = root / f"data/chunk-000/episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(episodes, [i], start, fixed=False), path)
        write_mp4(root / f"videos/chunk-000/observation.images.front/episode_{i:06d}.mp4", e["images"], codec)
        ep_lines.append(json.dumps({"episode_index": i, "tasks": ["move the square"], "length": lengths[i]}))
        a = e["action"]
        stat_lines.append(json.dumps({"episode_index": i, "stats": {"action": {
            "min": a.min(0).tolist(), "max": a.max(0).tolist(), "mean": a.mean(0).tolist(),
            "std": a.std(0).tolist(), "count": [len(a)]}}}))  # fmt: skip
        start += lengths[i]
    (root / "meta/episodes.jsonl").write_text("\n".join(ep_lines) + "\n")
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(stat_lines) + "\n")
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "move the square"}) + "\n")


def write_robomimic(path: Path, episodes: list[dict], next_obs: bool = True) -> None:
    """robomimic hdf5: data/demo_N/{actions, obs/*, next_obs/*, states, rewards, dones}, mask/{train,valid}.

    Each synthetic episode of n frames becomes n-1 samples: obs = frames 0..n-2, next_obs = frames 1..n-1.
    """
    import h5py

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        kwargs = {"control_freq": 20, "controller_configs": {"type": "OSC_POSE"}}
        env_args = {"env_name": "Synthetic", "type": 1, "env_kwargs": kwargs}
        data.attrs["env_args"] = json.dumps(env_args)
        total = 0
        for i, e in enumerate(episodes):
            n = len(e["state"]) - 1
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = n
            g.create_dataset("actions", data=e["action"][:n].astype(np.float64))
            g.create_dataset("states", data=np.zeros((n, 5)))
            g.create_dataset("rewards", data=np.zeros(n))
            g.create_dataset("dones", data=np.zeros(n, np.int64))
            for group, sl in (("obs", slice(0, n)), ("next_obs", slice(1, n + 1)))[: 2 if next_obs else 1]:
                o = g.create_group(group)
                o.create_dataset("agentview_image", data=e["images"][sl])
                o.create_dataset("robot0_eye_in_hand_image", data=255 - e["images"][sl])
                o.create_dataset(
                    "robot0_eef_pos", data=np.concatenate([e["state"][sl, :2], np.zeros((n, 1))], 1)
                )
                o.create_dataset("robot0_eef_quat", data=np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)))
                o.create_dataset(
                    "robot0_gripper_qpos", data=np.stack([e["state"][sl, 2], -e["state"][sl, 2]], 1)
                )
                o.create_dataset("object", data=np.zeros((n, 10)))
            total += n
        data.attrs["total"] = total
        mask = f.create_group("mask")
        mask.create_dataset(
            "train", data=np.array([f"demo_{i}" for i in range(len(episodes) - 1)], dtype="S")
        )
        mask.create_dataset("valid", data=np.array([f"demo_{len(episodes) - 1}"], dtype="S"))
