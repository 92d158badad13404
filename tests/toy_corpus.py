"""A trivially separable corpus: each person's face colour and voice pitch come from one number,
so a working model must beat chance on it within seconds of training. The faces are the
generator's cartoon faces and the voices espeak-ng's speech, so that the service's guards (a
face, and speech) pass them as they pass the demo corpus."""

from __future__ import annotations

import colorsys
import io
import subprocess
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from facevoice.service.corpus import Item, write_manifest
from facevoice.training.corpus.faces import FaceNuisance, render_face
from facevoice.training.corpus.people import sample_population

FACE_SIZE = 96
TEXT = "Four score and seven years ago our fathers brought forth a new nation."


@cache
def _speech(pitch: int) -> tuple[np.ndarray, int]:
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "190", "-p", str(pitch), TEXT], check=True,
                         capture_output=True).stdout
    x, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return x, sr


def _face(k: int, rgb: np.ndarray, rng: np.random.Generator, noise: float) -> Image.Image:
    person = sample_population(k + 1, 4242).people[k]
    colour = tuple(int(c) for c in rgb)
    face = replace(person.face, skin_rgb=colour)
    nuisance = FaceNuisance(noise_sd=noise)  # the canonical grey background, a face of its colour
    return render_face(face, nuisance, FACE_SIZE, rng)


def build_toy_corpus(out: Path, identities: int = 24, faces: int = 2, clips: int = 2, seed: int = 0,
                     canonical: bool = False, val: bool = True) -> Path:
    """With `canonical`, each person also gets a noiseless face (the Speech2Face decoder's target);
    without `val`, the validation identities train (Kim et al.'s split: train and test only)."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(identities):
        split = "train" if k % 4 < 2 or (k % 4 == 2 and not val) else "val" if k % 4 == 2 else "test"
        ident = f"toy{k:03d}"
        u = k / identities  # the one shared factor
        gender = "female" if (k // 4) % 2 else "male"
        attrs = dict(gender=gender, age_group="30s", appearance_group="A" if u < 0.5 else "B",
                     first_language="native")
        (out / ident).mkdir(parents=True, exist_ok=True)
        rgb = np.array(colorsys.hsv_to_rgb(0.8 * u, 0.9, 0.9)) * 255
        for j in range(faces):
            _face(k, rgb, rng, 6.0).save(out / ident / f"{j}.png")
            items.append(Item(f"{ident}-face-{j}", ident, "face", f"{ident}/{j}.png", split, **attrs))
        if canonical:
            _face(k, rgb, rng, 0.0).save(out / ident / "canonical.png")
            items.append(Item(f"{ident}-canonical", ident, "canonical_face", f"{ident}/canonical.png", split, **attrs))
        speech, sr = _speech(int(10 + 80 * u))
        for j in range(clips):
            x = 0.4 * speech / np.abs(speech).max() + 0.003 * rng.normal(size=speech.size)
            sf.write(out / ident / f"{j}.wav", x.astype(np.float32), sr)
            items.append(Item(f"{ident}-voice-{j}", ident, "voice", f"{ident}/{j}.wav", split, **attrs))
    write_manifest(out, items)
    return out


# a config tiny enough to train in seconds on two cores
TINY = ["face.size=32", "face.widths=[4, 8, 8, 16, 16]", "face.batch_norm=true",
        "voice.seconds=1.0", "voice.widths=[4, 8, 8, 16, 16, 16]",
        "embedding.hidden=16", "embedding.dim=8",
        "train.batch=16", "train.eval_every=20", "train.checkpoint_every=20", "train.val_trials=200"]
