"""A trivially separable corpus: each person's face colour and voice pitch come from one number,
so a working model must beat chance on it within seconds of training."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from facevoice.service.corpus import Item, write_manifest


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
        for j in range(faces):
            rgb = np.array(colorsys.hsv_to_rgb(0.8 * u, 0.9, 0.9)) * 255
            img = np.clip(rgb + rng.normal(0, 12, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(out / ident / f"{j}.png")
            items.append(Item(f"{ident}-face-{j}", ident, "face", f"{ident}/{j}.png", split, **attrs))
        if canonical:
            Image.fromarray(np.full((48, 48, 3), rgb, np.uint8)).save(out / ident / "canonical.png")
            items.append(Item(f"{ident}-canonical", ident, "canonical_face", f"{ident}/canonical.png", split, **attrs))
        for j in range(clips):
            sr, freq = 22_050, 110 * 2 ** (3 * u)
            t = np.arange(int(sr * 1.5)) / sr
            x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.normal(size=t.size)
            sf.write(out / ident / f"{j}.wav", x.astype(np.float32), sr)
            items.append(Item(f"{ident}-voice-{j}", ident, "voice", f"{ident}/{j}.wav", split, **attrs))
    write_manifest(out, items)
    return out


# a config tiny enough to train in seconds on two cores
TINY = ["face.size=32", "face.widths=[4, 8, 8, 16, 16]", "face.batch_norm=true",
        "voice.seconds=1.0", "voice.widths=[4, 8, 8, 16, 16, 16]",
        "embedding.hidden=16", "embedding.dim=8",
        "train.batch=16", "train.eval_every=20", "train.checkpoint_every=20", "train.val_trials=200"]
