"""Score a user's trial list with a trained model (for real data such as VoxCeleb).

Two line formats, whitespace- or comma-separated, `#` comments allowed:
- matching (1:2):     PROBE CANDIDATE_A CANDIDATE_B LABEL   LABEL = A|B|0|1, the true match
- verification:       LABEL PATH_1 PATH_2                   LABEL = 1 same person, 0 not
  (the layout of the public VoxCeleb1 verification lists)

Paths are relative to --media-root; audio and images are told apart by extension and go through
service.media exactly as the service decodes them. Unreadable files are skipped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from facevoice.service.media import MediaError, association_waveform, face_input
from facevoice.training.association.config import AssociationConfig
from facevoice.training.association.model import AssociationModel
from facevoice.training.metrics import one_of_n_correct, roc_auc_eer, wilson_interval

AUDIO = {".wav", ".flac", ".ogg", ".oga", ".m4a", ".mp3"}
IMAGE = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
LABELS = {"a": 0, "0": 0, "b": 1, "1": 1}


def modality(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in AUDIO:
        return "voice"
    if suffix in IMAGE:
        return "face"
    raise ValueError(f"{path}: cannot tell audio from image by its extension")


def parse_trial_list(path: Path) -> tuple[str, list[tuple]]:
    """('matching', [(probe, a, b, label)]) or ('verification', [(label, p1, p2)])."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f for f in re.split(r"[,\s]+", line) if f]
        if len(fields) == 4 and fields[3].lower() in LABELS:
            rows.append(("matching", (fields[0], fields[1], fields[2], LABELS[fields[3].lower()])))
        elif len(fields) == 3 and fields[0] in ("0", "1"):
            rows.append(("verification", (int(fields[0]), fields[1], fields[2])))
        else:
            raise ValueError(f"{path}:{n}: expected 'PROBE A B LABEL' or 'LABEL PATH PATH', got {line!r}")
    kinds = {k for k, _ in rows}
    if len(kinds) != 1:
        raise ValueError(f"{path}: " + ("no trials" if not kinds else "mixes matching and verification lines"))
    return kinds.pop(), [r for _, r in rows]


@torch.no_grad()
def _embed_paths(model: AssociationModel, cfg: AssociationConfig, root: Path, paths: set[str],
                 device) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    vectors, skipped = {}, {}
    model.eval()
    for p in sorted(paths):
        try:
            data = (root / p).read_bytes()
            if modality(p) == "face":
                x = torch.from_numpy(face_input(data, cfg.face.frontend()))[None].to(device)
                vectors[p] = model.face_encoder(x)[0].float().cpu().numpy()
            else:
                x = torch.from_numpy(association_waveform(data, cfg.voice.frontend()))[None].to(device)
                vectors[p] = model.voice_encoder(x)[0].float().cpu().numpy()
        except (OSError, MediaError, ValueError) as e:
            skipped[p] = str(e)
    return vectors, skipped


def score_trial_list(model: AssociationModel, cfg: AssociationConfig, path: Path, root: Path, device) -> dict:
    kind, rows = parse_trial_list(path)
    paths = {p for r in rows for p in (r[:3] if kind == "matching" else r[1:])}
    vectors, skipped = _embed_paths(model, cfg, Path(root), paths, device)
    out = {"list": str(path), "kind": kind, "lines": len(rows), "skipped_files": skipped}
    if kind == "matching":
        usable = [r for r in rows if all(p in vectors for p in r[:3])]
        if any(modality(r[1]) == modality(r[0]) or modality(r[1]) != modality(r[2]) for r in usable):
            raise ValueError(f"{path}: candidates must share a modality, different from the probe's")
        if not usable:
            raise ValueError(f"{path}: no trial could be decoded")
        probe = np.stack([vectors[r[0]] for r in usable])
        cands = np.stack([[vectors[r[1 + r[3]]], vectors[r[2 - r[3]]]] for r in usable])
        right = one_of_n_correct(probe, cands)
        lo, hi = wilson_interval(right.sum(), len(right))
        out.update(trials=len(usable), accuracy=float(right.mean()), ci95=(lo, hi))
        out["summary"] = (f"{path.name}: 1:2 accuracy {100 * right.mean():.1f}% (95% CI {100 * lo:.1f}-"
                          f"{100 * hi:.1f}) over {len(usable)} trials; chance 50%; {len(skipped)} files skipped")
    else:
        usable = [r for r in rows if r[1] in vectors and r[2] in vectors]
        scores = [-float(np.linalg.norm(vectors[a] - vectors[b])) for _, a, b in usable]
        auc, eer = roc_auc_eer(np.array(scores), np.array([r[0] for r in usable]))
        out.update(trials=len(usable), auc=auc, eer=eer)
        out["summary"] = (f"{path.name}: verification AUC {auc:.3f}, EER {100 * eer:.1f}% over {len(usable)} "
                          f"pairs; chance 0.5 / 50%; {len(skipped)} files skipped")
    return out
