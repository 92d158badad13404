"""Eq. (1) of Oh et al. 2019, per sample:

    L = || f_dec(v_f) - f_dec(v_s) ||_1 + lambda1 || v_f/|v_f| - v_s/|v_s| ||_2^2
        + lambda2 L_distill(f_VGG(v_f), f_VGG(v_s)),

L_distill(a, b) = -sum_i p_i(a) log p_i(b), p_i(a) = softmax(a / T)_i, T = 2, lambda1 = 0.025,
lambda2 = 200. f_dec is the face decoder's first layer and f_VGG the face network's last layer;
both are pretrained and fixed.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def distillation(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """-sum_i p_i(a) log p_i(b) per row, a the teacher (from v_f), b the student (from v_s)."""
    p = F.softmax(teacher_logits / temperature, dim=-1)
    return -(p * F.log_softmax(student_logits / temperature, dim=-1)).sum(dim=-1)


def normalised_l2(v_f: torch.Tensor, v_s: torch.Tensor) -> torch.Tensor:
    """|| v_f/|v_f| - v_s/|v_s| ||_2^2 per row."""
    return (F.normalize(v_f, dim=-1) - F.normalize(v_s, dim=-1)).pow(2).sum(dim=-1)


def s2f_terms(v_f: torch.Tensor, v_s: torch.Tensor, f_dec, f_vgg, temperature: float) -> dict[str, torch.Tensor]:
    """The three eq. (1) terms per sample, unweighted: {"decoder_l1", "feature_l2", "distill"}."""
    return {
        "decoder_l1": (f_dec(v_f) - f_dec(v_s)).abs().sum(dim=-1),
        "feature_l2": normalised_l2(v_f, v_s),
        "distill": distillation(f_vgg(v_f), f_vgg(v_s), temperature),
    }


def s2f_loss(terms: dict[str, torch.Tensor], lambda1: float, lambda2: float) -> torch.Tensor:
    """Eq. (1) per sample from `s2f_terms`."""
    return terms["decoder_l1"] + lambda1 * terms["feature_l2"] + lambda2 * terms["distill"]


def ranking(v_s: torch.Tensor, gallery: torch.Tensor, person: torch.Tensor, temperature: float) -> torch.Tensor:
    """Our addition to eq. (1), off in the paper config: cross-entropy of a softmax over the training
    people by cosine between v_s and each person's mean face feature (`gallery`, [people, d]) at
    `temperature`, so that v_s ranks its own person first, as retrieval (Table 3) asks. Per row."""
    logits = F.normalize(v_s, dim=-1) @ F.normalize(gallery, dim=-1).T / temperature
    return F.cross_entropy(logits, person, reduction="none")
