"""Kim et al. 2018 eq. (1), the hard-negative selection of sec. 4.3, the contrastive loss of
the Siamese baseline that Table 7 compares against (sec. 4.6), and our InfoNCE option."""

from __future__ import annotations

import torch

EPS = 1e-12  # keeps the distance differentiable when two representations coincide


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance ||a - b||_2."""
    return ((a - b).pow(2).sum(dim=-1) + EPS).sqrt()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Eq. (1), per tuple: || softmax([d+, d-]) - [0, 1] ||_2^2 with d the L2 distance between the
    anchor's representation and the positive's / negative's.

    Expanded: with s = softmax([d+, d-]), the loss is s_0^2 + (s_1 - 1)^2 = 2 sigmoid(d+ - d-)^2;
    the softmax form is kept so it reads as the paper writes it.
    """
    d = torch.stack([l2_distance(anchor, positive), l2_distance(anchor, negative)], dim=-1)
    target = torch.zeros_like(d)
    target[..., 1] = 1.0
    return (torch.softmax(d, dim=-1) - target).pow(2).sum(dim=-1)


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                     margin: float = 1.0) -> torch.Tensor:
    """Table 7's "Siamese net with same subnets, trained with a contrastive loss" (Hadsell et al.
    2006), per tuple: its positive pair pulled together, d+^2, and its negative pair pushed past
    the margin, max(0, margin - d-)^2."""
    d_pos, d_neg = l2_distance(anchor, positive), l2_distance(anchor, negative)
    return d_pos.pow(2) + torch.clamp(margin - d_neg, min=0).pow(2)


def pair_classification_loss(logits_positive: torch.Tensor, logits_negative: torch.Tensor) -> torch.Tensor:
    """Table 7's classification network, per tuple: cross-entropy of its matching pair as class 1
    (same person) plus its mismatched pair as class 0."""
    ones = torch.ones(len(logits_positive), dtype=torch.long, device=logits_positive.device)
    return (torch.nn.functional.cross_entropy(logits_positive, ones, reduction="none")
            + torch.nn.functional.cross_entropy(logits_negative, 0 * ones, reduction="none"))


def hardest(losses: torch.Tensor, keep: int) -> torch.Tensor:
    """Sec. 4.3 after 120k iterations: of the tuples drawn, the `keep` with the highest loss."""
    return losses.topk(min(keep, losses.numel())).indices


def info_nce(voices: torch.Tensor, faces: torch.Tensor, direction: str = "both",
             temperature: float = 1.0) -> torch.Tensor:
    """Not in Kim et al.: InfoNCE over a batch of distinct people (van den Oord et al. 2018; CLIP's
    symmetric form, Radford et al. 2021), per person. voices[k] and faces[k] are person k's; every
    other person's item in the batch is a negative. Logits are -||v - f||^2 / temperature, so the
    distance trained is the L2 the service searches by. "v2f": each voice picks its face among the
    batch's faces; "f2v" each face its voice; "both" the mean of the two."""
    # expanded rather than cdist(...)**2: cdist's square root has no gradient at a zero distance
    d2 = (voices.pow(2).sum(1, keepdim=True) + faces.pow(2).sum(1) - 2 * voices @ faces.T).clamp(min=0)
    logits = -d2 / temperature
    target = torch.arange(len(voices), device=voices.device)
    v2f = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    f2v = torch.nn.functional.cross_entropy(logits.T, target, reduction="none")
    return {"v2f": v2f, "f2v": f2v}.get(direction, (v2f + f2v) / 2)
