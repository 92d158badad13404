"""Cues measured from the media themselves, for the backbones' auxiliary heads (issue 30).

Unlike the generator's parameters, these can be measured on any corpus, so a recipe that uses
them carries over to VoxCeleb:

- voice: the median F0 of the voiced frames, by YIN (service.media.pitch; issue 34, before it the
  voice guard's normalised autocorrelation), as log Hz;
- face: the face box's width over its height, as log. A detector's box on real photos (the
  manifest's `box`); on the synthetic corpus the box the generator drew (`drawn_box`), which is
  what the shipped corpus detector is trained to find.

Each is z-scored over the training items before a head regresses it.
"""

from __future__ import annotations

import numpy as np

from facevoice.service.corpus import Item
from facevoice.service.media.pitch import median_f0, yin

MEASURES = {"face": ("box_aspect",), "voice": ("log_f0",)}


def f0_track(x: np.ndarray, sr: int) -> np.ndarray:
    """F0 (Hz) of each voiced 10 ms frame of x, by YIN (service.media.pitch: aperiodicity under
    0.25, within 35 dB of the loudest frame); the unvoiced frames left out."""
    track = yin(x, sr).f0
    return track[np.isfinite(track)]


def log_f0(x: np.ndarray, sr: int) -> float:
    """log of the median F0 over the voiced frames (NaN when none is voiced)."""
    track = f0_track(x, sr)
    return float(np.log(np.median(track))) if len(track) else float("nan")


def clip_f0(waves, sr: int, progress: bool = False) -> np.ndarray:
    """Each clip's median F0 in Hz by YIN (NaN where no frame is voiced): [N] for waves [N, samples]."""
    from tqdm import tqdm

    return np.array([median_f0(np.asarray(w, np.float32), sr)
                     for w in tqdm(waves, desc="F0 (YIN)", unit="clip", disable=not progress, leave=False)])


def speaker_f0(clips: np.ndarray, identity: np.ndarray, identities: int) -> np.ndarray:
    """[identities]: the median of each speaker's clip F0s (NaN for a speaker with none measured)."""
    out = np.full(identities, np.nan)
    for i in range(identities):
        mine = clips[(identity == i) & np.isfinite(clips)]
        if len(mine):
            out[i] = np.median(mine)
    return out


def f0_against_pitch(corpus, estimator=median_f0, progress: bool = True, skip_accents: tuple[str, ...] = ()) -> dict:
    """The check of the measured F0 against the generator (issue 34): per speaker of a synthetic
    corpus, the median of its clips' F0 (`estimator(x, sr)` in Hz; YIN by default) against the
    espeak-ng `-p` the generator gave it (identities.csv `voice_pitch`); per gender, Pearson r of
    log F0 on `-p` across speakers, and the same r with both centred within each espeak-ng variant
    (what the variants add to F0 taken out). `skip_accents` leaves out the speakers of those
    accents (`voice_accent`; espeak-ng 1.51 ignores the variant of `en-gb+fN`, docs/association.md).
    {gender: {"speakers", "r", "r_within_variant", "median_hz"}}; CorpusError without the table."""
    from pathlib import Path

    from tqdm import tqdm

    from facevoice.service.corpus import read_identities, read_manifest
    from facevoice.service.errors import CorpusError
    from facevoice.service.media import decode_audio

    corpus = Path(corpus)
    people = {r["identity"]: r for r in read_identities(corpus)} if (corpus / "identities.csv").exists() else {}
    if not people or any(not r.get("voice_pitch") for r in people.values()):
        raise CorpusError(f"{corpus}: identities.csv records no generator pitch (voice_pitch); a synthetic corpus does")
    voices = [i for i in read_manifest(corpus) if i.modality == "voice" and i.identity in people
              and people[i.identity].get("voice_accent") not in skip_accents]
    clips: dict[str, list[float]] = {}
    for item in tqdm(voices, desc="F0 of the corpus", unit="clip", disable=not progress):
        x, sr = decode_audio((corpus / item.path).read_bytes())
        clips.setdefault(item.identity, []).append(estimator(x, sr))
    out = {}
    for gender in sorted({r["gender"] for r in people.values()}):
        ids = [i for i in clips if people[i]["gender"] == gender and np.isfinite(clips[i]).any()]
        f0 = np.log([np.nanmedian(clips[i]) for i in ids])
        pitch = np.array([float(people[i]["voice_pitch"]) for i in ids])
        variant = np.array([people[i].get("voice_variant", "") for i in ids])
        # within variant: both sides centred on their variant's mean, then one r
        cf, cp = f0.copy(), pitch.copy()
        for v in np.unique(variant):
            cf[variant == v] -= cf[variant == v].mean()
            cp[variant == v] -= cp[variant == v].mean()
        out[gender] = {"speakers": len(ids), "r": float(np.corrcoef(f0, pitch)[0, 1]),
                       "r_within_variant": float(np.corrcoef(cf, cp)[0, 1]),
                       "median_hz": float(np.exp(np.median(f0)))}
    return out


def box_aspect(item: Item) -> float:
    """log(width / height) of the item's face box (NaN without one)."""
    text = item.box or item.drawn_box
    if not text:
        return float("nan")
    _, _, w, h = (float(v) for v in text.split())
    return float(np.log(w / h)) if w > 0 and h > 0 else float("nan")


def measure(modality: str, data, items: list[Item], sr: int) -> np.ndarray:
    """[N, len(MEASURES[modality])] for the decoded items (in the order of `items`)."""
    if modality == "face":
        return np.array([[box_aspect(i)] for i in items])
    return np.array([[log_f0(data[k], sr)] for k in range(len(items))])


def standardised(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores (NaN kept: a head skips them) and whether each row is usable."""
    ok = np.isfinite(values).all(1)
    mean, sd = values[ok].mean(0), values[ok].std(0) + 1e-9
    return np.where(ok[:, None], (values - mean) / sd, 0.0), ok
