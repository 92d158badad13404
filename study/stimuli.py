"""The voice stimuli, built once per study (Kim et al. A.1.2: "ten-second-long audio clips
containing their voices"): every clip an experiment plays has its `[stimuli]` length exactly.

For each stimulus person's voice: decode it (the service's media pipeline), find the speech with
the VAD (`trim_to_speech`, leading and trailing silence cut), take its first `clip_seconds`, and
fill a shorter one to the length with silence (or by tiling it, as sec. 4's training data is).
Each clip is brought to the same loudness (RMS -23 dBFS, peaks below -1 dBFS), so no voice of an
F->V pair stands out by level. The clips lie in STUDY_DIR/stimuli/<length>s/<identity>.wav; a
clip already there and newer than its source is kept, so replicas sharing STUDY_DIR and restarts
do not rebuild. `facevoice study build` builds them ahead and prints what it did."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from facevoice.cli import options
from facevoice.service.media import DEFAULT_LIMITS, decode_audio
from facevoice.service.media.audio import resample
from facevoice.service.media.errors import MediaError
from facevoice.service.media.speech import trim_to_speech
from facevoice.study.config import Study

RATE = 22_050
TARGET_RMS_DB, PEAK_DB = -23.0, -1.0


@dataclass(frozen=True)
class Built:
    path: Path
    seconds: float  # the clip's length (the experiment's)
    source_seconds: float  # the speech the source held, after the VAD's trim (0: not measured, kept clip)
    filled: bool  # shorter than the length: padded or tiled


def clip(x: np.ndarray, sr: int, seconds: float, fill: str) -> tuple[np.ndarray, float, bool]:
    """(the clip at RATE, the speech's seconds, filled?): the VAD's speech cut or filled to `seconds`."""
    with contextlib.suppress(MediaError):  # no speech the VAD is sure of: the whole recording, as it is
        x = trim_to_speech(x, sr, 0.2)
    x = resample(x, sr, RATE)
    n = round(seconds * RATE)
    speech_s = len(x) / RATE
    filled = len(x) < n
    if filled:
        x = np.tile(x, -(-n // max(1, len(x))))[:n] if fill == "tile" and len(x) else np.pad(x, (0, n - len(x)))
    x = x[:n].astype(np.float32)
    rms = float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0
    if rms > 0:
        x = x * (10 ** (TARGET_RMS_DB / 20) / rms)
        peak = float(np.abs(x).max())
        if peak > 10 ** (PEAK_DB / 20):
            x = x * (10 ** (PEAK_DB / 20) / peak)
    return x, speech_s, filled


def build(study: Study, voices: dict[str, Path], seconds: float, progress: bool = False) -> dict[str, Built]:
    """identity -> its clip of `seconds` (built or found); voices maps identity -> source file."""
    folder = study.stimuli_dir / f"{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, (identity, source) in enumerate(sorted(voices.items())):
        path = folder / f"{identity}.wav"
        if path.exists() and path.stat().st_mtime >= source.stat().st_mtime:
            out[identity] = Built(path, seconds, 0.0, False)
            continue
        x, sr = decode_audio(source.read_bytes(), DEFAULT_LIMITS)
        y, speech_s, filled = clip(x, sr, seconds, study.stimuli.fill)
        tmp = folder / f".{identity}.{os.getpid()}.part"
        sf.write(tmp, y, RATE, format="WAV", subtype="PCM_16")
        tmp.replace(path)  # atomic: a replica reading it never sees half a clip
        out[identity] = Built(path, seconds, speech_s, filled)
        if progress:
            print(f"\rstimuli {seconds:g} s: {k + 1}/{len(voices)}", end="", flush=True)
    if progress and voices:
        print()
    return out


def build_all(study: Study, people: dict, progress: bool = False) -> dict[int, dict[str, Built]]:
    """Per experiment, identity -> clip (experiments of one length share their clips)."""
    voices = {i: study.corpus / p.voice for i, p in people.items()}
    by_length: dict[float, dict[str, Built]] = {}
    for e in study.experiments:
        seconds = study.stimuli.seconds(e)
        if seconds not in by_length:
            by_length[seconds] = build(study, voices, seconds, progress)
    return {e: by_length[study.stimuli.seconds(e)] for e in study.experiments}


@dataclass(frozen=True)
class StudyBuildOptions:
    study: Path  # the study directory (with study.toml)


@dataclass(frozen=True)
class StudyBuildResult:
    stimuli_dir: Path
    fill: str  # how a shorter speech was filled: silence or tile
    seconds: dict[int, float]  # experiment -> its clips' length
    clips: dict[int, dict[str, Built]]  # experiment -> identity -> its clip

    def summary(self) -> str:
        lines = []
        for e, clips in self.clips.items():
            measured = [b for b in clips.values() if b.source_seconds]
            line = f"experiment {e}: {len(clips)} clips of {self.seconds[e]:g} s in {self.stimuli_dir}"
            if measured:
                speech = np.array([b.source_seconds for b in measured])
                line += (f"; built {len(measured)}, speech {speech.min():.1f}-{speech.max():.1f} s "
                         f"(median {np.median(speech):.1f}), {sum(b.filled for b in measured)} {self.fill}-filled")
            lines.append(line)
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=Path, required=True, help="the study directory (with study.toml)")


def study_build(opts: StudyBuildOptions, *, progress: bool = True) -> StudyBuildResult:
    """`study build`: every stimulus person's clip at each experiment's length (`build_all`)."""
    from facevoice.study.config import load_study
    from facevoice.study.design import stimulus_people

    study = load_study(opts.study)
    built = build_all(study, stimulus_people(study), progress=progress)
    return StudyBuildResult(study.stimuli_dir, study.stimuli.fill, {e: study.stimuli.seconds(e) for e in built}, built)


def run(args: argparse.Namespace) -> int:
    print(study_build(options(StudyBuildOptions, args)).summary())
    return 0
