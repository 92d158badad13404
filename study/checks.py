"""The checks a matcher takes before the tasks (study.toml [sound_check], [headphone_check]):
their sounds, drawn per try on the server, and each check's state (kept with the participant):
a draw, and how an answer is scored. Neither is in Kim et al.; both are what online listening
studies run (docs/study.md, "Protocol, point by point")."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from facevoice.study.errors import Conflict

CHECK_RATE = 44_100
# Huggins pitch (Milne et al. 2021, Behav. Res. Methods 53:1551): white noise whose band around
# 600 Hz (+-6%) is phase-inverted in one ear. Over headphones a faint tone is heard in that noise;
# through loudspeakers the two ears' signals mix and it is not. Three 1 s intervals, 0.5 s apart.
HUGGINS_HZ, HUGGINS_HALF_BAND = 600.0, 0.06
INTERVAL_S, GAP_S, RAMP_S = 1.0, 0.5, 0.02
INTERVALS = 3


def beeps_wav(n: int, seed: int) -> bytes:
    """The sound check's clip: n short 1 kHz beeps at irregular gaps, 16-bit WAV."""
    rng = np.random.default_rng(seed)
    sr, beep = 16_000, 0.15
    t = np.arange(int(sr * beep)) / sr
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t) * np.hanning(len(t))).astype(np.float32)
    parts = [np.zeros(int(sr * 0.4), np.float32)]
    for _ in range(n):
        parts += [tone, np.zeros(int(sr * rng.uniform(0.35, 0.7)), np.float32)]
    return _wav(np.concatenate(parts), sr)


def huggins_band(n: int, sr: int = CHECK_RATE) -> np.ndarray:
    """The rfft bins of an n-sample interval that one ear hears phase-inverted."""
    f = np.fft.rfftfreq(n, 1 / sr)
    return np.abs(f - HUGGINS_HZ) <= HUGGINS_HZ * HUGGINS_HALF_BAND


def huggins_interval(rng: np.random.Generator, dichotic: bool, sr: int = CHECK_RATE) -> np.ndarray:
    """One interval, (samples, 2): diotic white noise, or with `dichotic` the Huggins band
    inverted in the right ear (the same noise otherwise)."""
    n = int(sr * INTERVAL_S)
    left = rng.standard_normal(n)
    spectrum = np.fft.rfft(left)
    right = np.fft.irfft(np.where(huggins_band(n, sr), -spectrum, spectrum), n) if dichotic else left
    ramp = np.ones(n)
    k = int(sr * RAMP_S)
    ramp[:k], ramp[-k:] = np.linspace(0, 1, k), np.linspace(1, 0, k)
    return 0.1 * np.stack([left, right], axis=1) * ramp[:, None]  # about -20 dBFS


def huggins_wav(target: int, seed: int) -> bytes:
    """A headphone-check trial: three intervals, the `target`-th (1-3) with Huggins pitch; stereo WAV."""
    if not 1 <= target <= INTERVALS:
        raise ValueError(f"target {target}: expected 1-{INTERVALS}")
    rng = np.random.default_rng(seed)
    gap = np.zeros((int(CHECK_RATE * GAP_S), 2))
    parts = []
    for k in range(1, INTERVALS + 1):
        parts += [huggins_interval(rng, k == target), gap]
    return _wav(np.concatenate(parts[:-1]), CHECK_RATE)


def headphone_passed(answers: list[int], targets: list[int], min_correct: int) -> bool:
    """Whether at least `min_correct` of the trials' answers named the Huggins interval (all
    trials are taken, and no answer is told right or wrong, as in Milne et al.)."""
    return sum(a == t for a, t in zip(answers, targets, strict=True)) >= min_correct


def draw_beeps(state: dict | None, beeps: int, seed: int) -> dict:
    """The sound check's state with a new clip drawn (`beeps` beeps, made from `seed`): each try
    hears another; the tries and answers so far are kept."""
    check = dict(state or {"tries": 0, "answers": []})
    check["beeps"], check["seed"] = beeps, seed
    return check


def count_beeps(state: dict, count: int, tries: int) -> tuple[dict, int]:
    """The answer `count` to the drawn clip -> (the state after it, tries left of `tries`): passed
    when it is the clip's number of beeps. The clip is used up; Conflict when none was drawn."""
    if "beeps" not in state:
        raise Conflict("play the sound check first")
    check = dict(state)
    check["tries"] = check.get("tries", 0) + 1
    check["answers"] = [*check.get("answers", []), count]
    check["passed"] = count == check.pop("beeps")
    check.pop("seed", None)
    return check, tries - check["tries"]


def draw_huggins(state: dict, target: int, seed: int) -> dict:
    """The headphone check's state with the next trial drawn: its Huggins interval `target` (1-3)
    and the noise's `seed`. A trial drawn and not answered is replaced, so drawing again cannot
    add a trial."""
    hp = dict(state)
    if len(hp["targets"]) > len(hp["answers"]):
        hp["targets"] = hp["targets"][:-1]
    hp["targets"] = [*hp["targets"], target]
    hp["seed"] = seed
    return hp


def answer_huggins(state: dict, interval: int, trials: int, min_correct: int) -> tuple[dict, int]:
    """The answer `interval` to the drawn trial -> (the state after it, trials left of `trials`);
    after the last one, `passed` (headphone_passed). Conflict when no trial is drawn."""
    if len(state["targets"]) <= len(state["answers"]):
        raise Conflict("play the headphone check first")
    hp = dict(state)
    hp["answers"] = [*hp["answers"], interval]
    hp.pop("seed", None)
    left = trials - len(hp["answers"])
    if left == 0:
        hp["passed"] = headphone_passed(hp["answers"], hp["targets"], min_correct)
    return hp, left


def _wav(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()
