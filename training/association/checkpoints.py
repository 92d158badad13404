"""A trained association run loaded back: what evaluation, export and the tests start from."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from facevoice.service.errors import FormatError
from facevoice.training.association.config import AssociationConfig, from_dict
from facevoice.training.association.model import AssociationModel


def load_run(run: Path, checkpoint: str, device: torch.device) -> tuple[AssociationModel, AssociationConfig, dict]:
    path = run / checkpoint
    if not path.exists():
        raise FormatError(f"{path}: no checkpoint (train first, or pass --checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never run code from a file
        cfg = from_dict(state["config"])
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise FormatError(f"{path}: not a `facevoice train association` checkpoint ({type(e).__name__}: {e})") from e
    model = AssociationModel(cfg)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, cfg, state
