"""One typed error family for bad media; the service maps `MediaError` to INVALID_ARGUMENT once."""

from __future__ import annotations


class MediaError(ValueError):
    """Input media that cannot become a model input; the message says what is wrong."""


class EmptyMediaError(MediaError):
    """No bytes, or no samples/pixels after decoding."""


class MediaTooLargeError(MediaError):
    """Over a byte, duration or pixel cap (decompression bombs included)."""


class MediaDecodeError(MediaError):
    """Not a readable file of a supported format (random bytes, truncated, wrong type)."""


class InvalidSignalError(MediaError):
    """Decoded, but unusable: NaN/Inf samples, digital silence, an image too small to hold a face."""
