"""Contact sheets: a PNG grid of start and goal images (at the env's image size) for several seeds per task.

    MUJOCO_GL=egl python -m envs.contact_sheet [--out docs/img] [--seeds 6] [--image-size 64] [--scale 3]
        [--camera table+workspace [--view-layout wide] --env ArmPickPlace-v0]

Each row is one seed: start image | goal image | start image of the wrist camera. Pixels are upscaled by
`--scale` (nearest neighbour) so a person sees exactly what a 64x64 model sees.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import imageio.v3 as iio
import numpy as np

import envs
from envs.arm import VIEW_LAYOUTS

GAP = 2


def sheet(env_id: str, seeds: int, image_size: int, camera: str | None = None,
          view_layout: str = "squeeze") -> np.ndarray:
    """uint8 [seeds*(S+GAP), 2*(W+GAP)+S+GAP, 3], W the env's image width (S, or V*S for V whole views):
    per row start | goal (from `camera`, default the task's) | wrist-camera start."""
    env = envs.make_env(env_id, image_size=image_size, camera=camera, view_layout=view_layout)
    wrist = envs.make_env(env_id, image_size=image_size, camera="wrist", render_goal=False)
    s, w = image_size, env.unwrapped.image_shape[1]
    out = np.full((seeds * (s + GAP), 2 * (w + GAP) + s + GAP, 3), 255, np.uint8)
    for row in range(seeds):
        obs, info = env.reset(seed=row)
        wobs, _ = wrist.reset(seed=row)
        left = 0
        for img in (obs["image"], info["goal_image"], wobs["image"]):
            out[row * (s + GAP) : row * (s + GAP) + s, left : left + img.shape[1]] = img
            left += img.shape[1] + GAP
    return out


def write_png(path: str, image: np.ndarray) -> None:
    """Atomic PNG write (temp file in the same directory, then os.replace)."""
    fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        iio.imwrite(tmp, image, extension=".png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/img", help="output directory")
    p.add_argument("--seeds", type=int, default=6, help="rows (seeds 0..N-1) per task")
    p.add_argument("--image-size", type=int, default=64, help="rendered image size in pixels")
    p.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling for viewing")
    p.add_argument("--camera", default=None,
                   help="start and goal camera, e.g. table+workspace (default: the task's)")
    p.add_argument("--view-layout", default="squeeze", choices=VIEW_LAYOUTS,
                   help="several cameras squeezed into one square image, or whole views side by side")
    p.add_argument("--env", action="append", dest="env_ids", help="only this task (repeatable; default: all)")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.scale < 1:
        p.error("--seeds and --scale must be >= 1")
    os.makedirs(args.out, exist_ok=True)
    for env_id in args.env_ids or envs.known_env_ids():
        grid = sheet(env_id, args.seeds, args.image_size, args.camera, args.view_layout)
        grid = np.repeat(np.repeat(grid, args.scale, axis=0), args.scale, axis=1)
        name = env_id.split("-")[0].removeprefix("Arm").lower()
        if args.camera:
            name += "_" + args.camera.replace("+", "_") + ("_wide" if args.view_layout == "wide" else "")
        path = os.path.join(args.out, f"contact_sheet_{name}.png")
        write_png(path, grid)
        print(f"wrote {path} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    main()
