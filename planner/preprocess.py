"""The one image-preprocessing rule, shared by collection, import, training, evaluation, server and client.

A rule is recorded in the store's meta.json and the checkpoint's config.json; every consumer rebuilds it
with `Preprocessing.from_dict` so that what the model sees at serving time is what it saw in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """RGB uint8 HxWx3 of any size -> RGB uint8 size x (views * size) x 3."""

    size: int = 64
    """Output side length of each view in pixels (square)."""
    crop: str = "center"
    """`center`: crop the largest centred square first; `none`: resize the full frame (aspect changes)."""
    views: int = 1
    """V: square views side by side in the image (an env's `view_layout="wide"`): the input is cut into V
    panels of equal width, each preprocessed by the rule, and they are put back side by side."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"preprocessing size must be >= 8, got {self.size}")
        if self.crop not in ("center", "none"):
            raise ValueError(f"preprocessing crop must be 'center' or 'none', got {self.crop!r}")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or not 1 <= self.views <= 8:
            raise ValueError(f"preprocessing views must be an int in 1..8, got {self.views!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of a preprocessed image: (size, views * size, 3)."""
        return self.size, self.views * self.size, 3

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.views == 1:
            del d["views"]  # one view: the dict (and stores' fingerprints) as before views existed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(size=int(d["size"]), crop=str(d.get("crop", "center")), views=int(d.get("views", 1)))

    @classmethod
    def from_checkpoint_config(cls, config: dict) -> Preprocessing:
        """The rule a checkpoint's config.json records under image.preprocessing (else: its image size)."""
        image = config["image"]
        return cls.from_dict(image.get("preprocessing") or {"size": image["size"]})


def check_rgb_uint8(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an HxWx3 uint8 RGB array; raises ValueError that says what is wrong."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{what} must be an HxWx3 RGB array, got shape {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {image.dtype}")
    return image


def preprocess_image(image: np.ndarray, rule: Preprocessing) -> np.ndarray:
    """RGB uint8 [H,W,3] -> RGB uint8 rule.shape, [size,V*size,3] (identity when already that shape)."""
    image = check_rgb_uint8(image)
    if rule.views == 1:
        return _preprocess_view(image, rule)
    if image.shape[1] % rule.views:
        raise ValueError(f"image holds {rule.views} views side by side: its width must be divisible by "
                         f"{rule.views}, got shape {tuple(image.shape)}")
    panels = np.split(image, rule.views, axis=1)
    return np.concatenate([_preprocess_view(np.ascontiguousarray(p), rule) for p in panels], axis=1)


def _preprocess_view(image: np.ndarray, rule: Preprocessing) -> np.ndarray:
    """One view, RGB uint8 [H,W,3] -> [size,size,3]."""
    h, w, _ = image.shape
    if rule.crop == "center" and h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = image[top : top + s, left : left + s]
    if image.shape[0] == rule.size and image.shape[1] == rule.size:
        return np.ascontiguousarray(image)
    shrinking = image.shape[0] > rule.size
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    out = Image.fromarray(image).resize((rule.size, rule.size), resample=resample)
    return np.asarray(out, dtype=np.uint8)


def images_to_model_input(images, device=None):
    """uint8 [..., H, W, 3] (numpy or torch) -> float32 torch tensor [..., 3, H, W] in [-1, 1]."""
    import torch

    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # torch wants writable memory (decoded request images are read-only)
    t = torch.as_tensor(images, device=device)
    if t.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {t.dtype}")
    t = t.movedim(-1, -3).float()
    return t.div_(127.5).sub_(1.0)
