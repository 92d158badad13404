"""Caps that keep one request from taking the process down; defaults documented in docs/media.md."""

from __future__ import annotations

from dataclasses import dataclass

from facevoice.service.media.errors import EmptyMediaError, MediaDecodeError, MediaTooLargeError


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_audio_seconds: float = 60.0
    min_audio_seconds: float = 0.1
    # All-silent rule: a clip whose peak is below this level has nothing to embed.
    silence_peak_dbfs: float = -60.0
    max_image_pixels: int = 40_000_000  # checked from the header, before decoding
    min_image_side: int = 16


DEFAULT_LIMITS = MediaLimits()


def check_size(data: bytes, limits: MediaLimits, what: str) -> None:
    """Reject empty, wrong-type and oversized payloads before any decoder sees them."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MediaDecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise EmptyMediaError(f"{what}: empty input (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaTooLargeError(
            f"{what}: {len(data):,} bytes is over the {limits.max_bytes:,}-byte limit")
