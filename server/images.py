"""Image transport: base64 / PNG / JPEG bytes <-> RGB uint8 [H,W,3], checked against the model's size."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from planner.preprocess import Preprocessing, check_rgb_uint8, preprocess_image

ACCEPTED_FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding


class ImageError(ValueError):
    """An image the client must fix; the message says what (served as 422)."""


def decode_bytes(data: bytes, what: str = "image") -> np.ndarray:
    """PNG or JPEG bytes -> RGB uint8 [H,W,3]."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ACCEPTED_FORMATS:
            raise ImageError(f"{what}: format {img.format} is not accepted; send PNG or JPEG")
        if img.width * img.height > MAX_PIXELS:
            raise ImageError(f"{what}: {img.width}x{img.height} is too large; send the model's image size")
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ImageError(f"{what}: not a readable PNG or JPEG image ({type(e).__name__})") from e
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def decode_base64(text: str, what: str = "image") -> np.ndarray:
    """Base64 PNG/JPEG (a `data:image/...;base64,` prefix is allowed) -> RGB uint8 [H,W,3]."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"{what}: invalid base64 ({e}); send standard base64 of PNG or JPEG bytes") from e
    if not data:
        raise ImageError(f"{what}: empty image")
    return decode_bytes(data, what)


def conform(image: np.ndarray, rule: Preprocessing, resize: bool, what: str = "image") -> np.ndarray:
    """Check an image against the model's size (rule.shape: V square views side by side); resize via the
    shared preprocessing only if asked."""
    h, w, _ = image.shape
    want_h, want_w, _ = rule.shape
    if (h, w) == (want_h, want_w):
        return image
    if not resize:
        views = f" ({rule.views} {rule.size}x{rule.size} views side by side)" if rule.views > 1 else ""
        raise ImageError(
            f"{what}: got {w}x{h}, the model expects {want_w}x{want_h} RGB{views}; "
            'send that size or set "resize": true to apply the model\'s preprocessing'
        )
    return preprocess_image(image, rule)


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 [H,W,3] -> PNG bytes."""
    image = check_rgb_uint8(image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_base64_png(image: np.ndarray) -> str:
    """RGB uint8 [H,W,3] -> base64 PNG text."""
    return base64.b64encode(encode_png(image)).decode("ascii")
