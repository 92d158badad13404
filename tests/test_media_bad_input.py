"""Every bad input becomes one MediaError subclass with a message that says what is wrong."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from devtools.media_samples import encode, video_without_audio, wav_bytes
from facevoice.service.media import (
    EmptyMediaError,
    InvalidSignalError,
    MediaDecodeError,
    MediaError,
    MediaLimits,
    MediaTooLargeError,
    association_waveform,
    decode_audio,
    decode_image,
    face_input,
    speech2face_spectrogram,
)
from tests.conftest import image_bytes, tone

GOOD_WAV = wav_bytes(tone(seconds=1.0), 16_000)
GOOD_FLAC = wav_bytes(tone(seconds=1.0), 16_000, "FLAC")
GOOD_OGG = wav_bytes(tone(seconds=1.0), 16_000, "OGG")
GOOD_JPEG = image_bytes(Image.new("RGB", (64, 64), (200, 100, 50)), "JPEG")
GOOD_PNG = image_bytes(Image.new("RGB", (64, 64), (200, 100, 50)), "PNG")
RANDOM = np.random.default_rng(0).bytes(4096)
# compressed formats, made by FFmpeg's encoders in the test (devtools/media_samples.py)
GOOD_MP3 = encode(tone(seconds=1.0), 16_000, "mp3")
GOOD_OGG_OPUS = encode(tone(seconds=1.0), 16_000, "ogg-opus")
GOOD_M4A = encode(tone(seconds=1.0), 16_000, "m4a")
LONG_MP3 = encode(tone(sr=8_000, seconds=70, amp=0.1), 8_000, "mp3")


def _flac_hour_without_length() -> bytes:
    """A 46 KB FLAC that decodes to an hour (a constant signal compresses to almost nothing),
    with the total-samples field of its STREAMINFO zeroed ("unknown"), so only decoding can tell."""
    buf = io.BytesIO()
    import soundfile as sf

    sf.write(buf, np.full(4_000 * 3_600, 0.25, np.float32), 4_000, format="FLAC", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    at = 8 + 10  # "fLaC", the block header, then rate | channels | bits | total samples (36 bits)
    packed = int.from_bytes(data[at:at + 8], "big") & ~((1 << 36) - 1)
    data[at:at + 8] = packed.to_bytes(8, "big")
    return bytes(data)


FLAC_BOMB = _flac_hour_without_length()


def _png_bomb(side: int) -> bytes:
    """A valid PNG header claiming side x side pixels, with a tiny IDAT: no pixels are needed
    to be caught, since the cap is checked from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


AUDIO_CASES = [
    ("empty bytes", b"", EmptyMediaError, "empty input"),
    ("random bytes", RANDOM, MediaDecodeError, "not a readable"),
    ("text named .wav", b"RIFF? no, just a text file\n" * 10, MediaDecodeError, "not a readable"),
    ("image bytes as audio", GOOD_PNG, MediaDecodeError, "not a readable"),
    ("wav header only", GOOD_WAV[:44], EmptyMediaError, "no samples"),
    ("wav truncated in header", GOOD_WAV[:30], MediaDecodeError, "not a readable"),
    ("wav truncated to 2 ms", GOOD_WAV[:100], InvalidSignalError, "shorter than"),
    ("flac truncated", GOOD_FLAC[: len(GOOD_FLAC) // 2], MediaDecodeError, "not a readable"),
    ("ogg truncated", GOOD_OGG[: len(GOOD_OGG) // 2], MediaDecodeError, "malformed"),
    ("ogg header only", GOOD_OGG[:200], MediaDecodeError, "not a readable"),
    ("zero-length wav", wav_bytes(np.zeros(0, np.float32), 16_000), EmptyMediaError, "no samples"),
    ("all-silent", wav_bytes(np.zeros(16_000, np.float32), 16_000), InvalidSignalError, "silent"),
    ("near-silent dither", wav_bytes(np.full(16_000, 1e-4, np.float32), 16_000, subtype="FLOAT"),
     InvalidSignalError, "silent"),
    ("NaN samples", wav_bytes(np.full(16_000, np.nan, np.float32), 16_000, subtype="FLOAT"),
     InvalidSignalError, "NaN"),
    ("Inf samples", wav_bytes(np.r_[tone(), np.inf].astype(np.float32), 16_000, subtype="FLOAT"),
     InvalidSignalError, "NaN or Inf"),
    ("61 s, over the 60 s cap", wav_bytes(tone(sr=4_000, seconds=61, amp=0.1), 4_000),
     MediaTooLargeError, "60 s limit"),
    ("over the byte cap", GOOD_WAV + b"\0" * (20 * 1024 * 1024), MediaTooLargeError, "byte limit"),
    ("sample rate 2 kHz", wav_bytes(tone(sr=2_000), 2_000), MediaDecodeError, "sample rate"),
    ("flac: 46 KB, an hour, no length in the header", FLAC_BOMB, MediaTooLargeError, "longer than the 60 s"),
    ("mp3 truncated to 300 bytes", GOOD_MP3[:300], MediaDecodeError, "not a readable mp3"),
    ("mp3 of 70 s, refused from its header", LONG_MP3, MediaTooLargeError, "70.0 s .* over the 60 s limit"),
    ("opus with a bad OpusHead", GOOD_OGG_OPUS.replace(b"OpusHead", b"OpusHexx", 1), MediaDecodeError,
     "not a readable"),
    ("opus truncated", GOOD_OGG_OPUS[:200], MediaDecodeError, "not a readable"),
    ("m4a truncated (no moov)", GOOD_M4A[: len(GOOD_M4A) // 2], MediaDecodeError, "not a readable mp4"),
    ("mp4 with no audio track", video_without_audio(), MediaDecodeError, "no audio track"),
    ("ftyp magic, then garbage", b"\0\0\0\x18ftypisom" + bytes(range(256)) * 4, MediaDecodeError,
     "not a readable mp4"),
    ("an HLS playlist (would fetch a URL)", b"#EXTM3U\n#EXT-X-VERSION:3\nhttp://127.0.0.1:1/x.ts\n",
     MediaDecodeError, "not a readable audio file"),
    ("an ffconcat list (would open a file)", b"ffconcat version 1.0\nfile '/etc/passwd'\n", MediaDecodeError,
     "not a readable audio file"),
    ("str instead of bytes", "RIFF....WAVE", MediaDecodeError, "expected bytes"),
    ("None instead of bytes", None, MediaDecodeError, "expected bytes"),
]

IMAGE_CASES = [
    ("empty bytes", b"", EmptyMediaError, "empty input"),
    ("random bytes", RANDOM, MediaDecodeError, "not a readable"),
    ("text file", b"<html>not an image</html>", MediaDecodeError, "not a readable"),
    ("audio bytes as image", GOOD_WAV, MediaDecodeError, "not a readable"),
    ("jpeg truncated", GOOD_JPEG[: len(GOOD_JPEG) // 2], MediaDecodeError, "(?i)truncated"),
    ("png truncated", GOOD_PNG[: len(GOOD_PNG) - 30], MediaDecodeError, "not a readable"),
    ("jpeg header only", GOOD_JPEG[:20], MediaDecodeError, "not a readable"),
    ("1x1 image", image_bytes(Image.new("RGB", (1, 1))), InvalidSignalError, "too small"),
    ("decompression bomb 50k x 50k", _png_bomb(50_000), MediaTooLargeError, "decompression bomb"),
    ("8k x 8k, over the pixel cap", _png_bomb(8_000), MediaTooLargeError, "pixel limit"),
    ("over the byte cap", GOOD_JPEG + b"\0" * (20 * 1024 * 1024), MediaTooLargeError, "byte limit"),
    ("unsupported format (BMP)", image_bytes(Image.new("RGB", (64, 64)), "BMP"), MediaDecodeError,
     r"^image: BMP is not supported \(send JPEG/PNG/WEBP/GIF\)$"),
    ("unsupported format (TIFF)", image_bytes(Image.new("RGB", (64, 64)), "TIFF"), MediaDecodeError,
     r"^image: TIFF is not supported"),
    ("unsupported format (AVIF)", b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64, MediaDecodeError,
     r"^image: AVIF is not supported"),
    ("int instead of bytes", 12345, MediaDecodeError, "expected bytes"),
]


@pytest.mark.parametrize("name,data,error,message", AUDIO_CASES, ids=[c[0] for c in AUDIO_CASES])
@pytest.mark.parametrize("front_end", [decode_audio, association_waveform, speech2face_spectrogram])
def test_bad_audio(name, data, error, message, front_end):
    with pytest.raises(error, match=message) as info:
        front_end(data)
    assert isinstance(info.value, MediaError) and str(info.value).startswith("audio: ")


@pytest.mark.parametrize("name,data,error,message", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
@pytest.mark.parametrize("front_end", [decode_image, face_input])
def test_bad_image(name, data, error, message, front_end):
    with pytest.raises(error, match=message) as info:
        front_end(data)
    assert isinstance(info.value, MediaError) and str(info.value).startswith("image: ")


def test_good_inputs_of_the_table_decode():
    """The table's truncations start from files that are fine as they are."""
    for data in (GOOD_WAV, GOOD_FLAC, GOOD_OGG):
        x, sr = decode_audio(data)
        assert sr == 16_000 and abs(len(x) - 16_000) < 2
    for data in (GOOD_JPEG, GOOD_PNG):
        assert decode_image(data).size == (64, 64)


def test_limits_are_configurable():
    strict = MediaLimits(max_bytes=1000, max_audio_seconds=0.5)
    with pytest.raises(MediaTooLargeError, match="1,000-byte limit"):
        decode_audio(GOOD_WAV, strict)
    with pytest.raises(MediaTooLargeError, match=r"0\.5 s limit"):
        decode_audio(GOOD_WAV, MediaLimits(max_audio_seconds=0.5))


@pytest.mark.parametrize("box", [(0, 0, 0, 10), (0, 0, -5, 10), (float("nan"), 0, 10, 10),
                                 (1000, 1000, 10, 10)])
def test_bad_face_boxes(box):
    with pytest.raises(InvalidSignalError, match="face box"):
        face_input(GOOD_PNG, box=box)


def test_adversarial_many_frame_gif_reads_only_the_first():
    frames = [Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    img = decode_image(buf.getvalue())
    assert img.getpixel((0, 0))[0] == 0
