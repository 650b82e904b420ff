"""MP4 encode/decode through PyAV (bundled FFmpeg): the video side of LeRobot import and export.

Decoding streams frames between two timestamps, so a file holding many episodes (LeRobot v3.0) is never
decoded whole. Encoding prefers AV1 (LeRobot's default codec) through the bundled SVT-AV1 encoder, then
libaom-av1, and falls back to H.264 (libx264) when the FFmpeg build has no AV1 encoder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

AV1_ENCODERS = ("libsvtav1", "libaom-av1")
H264_ENCODERS = ("libx264",)


class VideoError(ValueError):
    """A video is missing, undecodable, or holds other frames than its table says; names the file."""


def _encoder_available(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def pick_encoder(codec: str = "auto") -> tuple[str, str]:
    """-> (FFmpeg encoder name, codec label for info.json: `av1` or `h264`).

    `auto` takes AV1 when the bundled FFmpeg can encode it, else H.264; `av1`/`h264` insist.
    """
    wanted = {"auto": AV1_ENCODERS + H264_ENCODERS, "av1": AV1_ENCODERS, "h264": H264_ENCODERS}
    if codec not in wanted:
        raise ValueError(f"codec must be one of {sorted(wanted)}, got {codec!r}")
    for name in wanted[codec]:
        if _encoder_available(name):
            return name, ("h264" if name in H264_ENCODERS else "av1")
    raise VideoError(
        f"this PyAV/FFmpeg build has no {codec} encoder (tried {', '.join(wanted[codec])}); "
        "install a PyAV wheel with libsvtav1 or libx264, or pass --codec h264"
    )


def encode_video(
    path: Path, frames: Iterable[np.ndarray], fps: float, encoder: str, *, crf: int = 18, gop: int = 2
) -> int:
    """Encode RGB uint8 frames [H,W,3] (H, W even) into an MP4 at `fps`; frame i at time i/fps.

    A short GOP (LeRobot uses 2) keeps seeking to an episode in a multi-episode file cheap. Returns the
    number of frames written.
    """
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told errors only
    options = {"crf": str(crf), "g": str(gop)}
    if encoder == "libsvtav1":
        options["preset"] = "8"
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with av.open(str(path), "w", format="mp4") as container:
        stream = None
        for frame in frames:
            if stream is None:
                h, w = frame.shape[:2]
                if h % 2 or w % 2:
                    raise VideoError(f"{path}: yuv420p video needs even width and height, got {w}x{h}")
                stream = container.add_stream(encoder, rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.time_base = 1 / rate
                stream.options = options
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = n
            vf.time_base = 1 / rate
            container.mux(stream.encode(vf))
            n += 1
        if stream is None:
            raise VideoError(f"{path}: no frames to encode")
        container.mux(stream.encode(None))
    return n


def probe(path: Path) -> dict:
    """-> {codec, width, height, fps, pix_fmt, frames} of the first video stream (else VideoError)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream in the file")
            s = container.streams.video[0]
            return {
                "codec": s.codec_context.name,
                "width": s.codec_context.width,
                "height": s.codec_context.height,
                "fps": float(s.average_rate) if s.average_rate else None,
                "pix_fmt": s.codec_context.pix_fmt,
                "frames": int(s.frames),
            }
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: cannot open video ({exc})") from exc


class VideoReader:
    """Reads frames of one MP4 by time window; keep one open per file while walking its episodes."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: video file is missing")
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: cannot open video ({exc})") from exc
        if not self._container.streams.video:
            self.close()
            raise VideoError(f"{self.path}: no video stream in the file")
        self._stream = self._container.streams.video[0]

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decoded(self, start: float) -> Iterator[tuple[float, np.ndarray]]:
        import av

        s = self._stream
        try:
            self._container.seek(max(0, int(start / s.time_base)), stream=s, backward=True)
            for frame in self._container.decode(s):
                t = frame.time if frame.time is not None else float(frame.pts * s.time_base)
                yield t, frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: undecodable video ({exc})") from exc

    def window(self, start: float, stop: float, fps: float) -> Iterator[np.ndarray]:
        """RGB uint8 [H,W,3] frames whose time lies in [start, stop), within half a frame period."""
        half = 0.5 / fps
        for t, image in self._decoded(start - half):
            if t < start - half:
                continue
            if t >= stop - half:
                break
            yield image
