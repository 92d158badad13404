"""Fig. 4's attribute classifier on pixels, independent of the model under test.

Oh et al. 2019 sec. 4.1 ("Demographic attributes") run Face++ on the original images and on the
Speech2Face reconstructions and compare the labels (Fig. 4(a): gender, age, ethnicity). The
read-out `measures.attribute_agreement` classifies the face network's features, the space the
voice encoder regresses, so it shares that network's blind spots. This one looks at pixels only:
a small CNN (`AttributeCNN`) trained on the training split's face photos and their labels (gender,
age group, appearance group: our stand-in for Face++'s gender, age and ethnicity), then run on the
test photos (how well it reads a photo), on the S2F reconstructions (scored against the speaker's
true attributes), on the F2F reconstructions (what the decoder keeps), and compared photo against
reconstruction as Fig. 4(a) does.

`python -m facevoice.training.speech2face.pixel_attributes --corpus demo/corpus` trains it and
scores it on the test photos alone (no Speech2Face run needed)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from facevoice.cli import run_script
from facevoice.service.media import FaceImage
from facevoice.training.association.augment import augment_faces
from facevoice.training.speech2face.data import S2FSplit, rows_tensor, to_normalised
from facevoice.training.speech2face.measures import ATTRS, _labels, ordered, same_person_pairs

WIDTHS = (16, 32, 64, 64)  # conv channels, one 2x max-pool after each block
BATCH = 32
LR = 1e-3
# steps when none are asked for (`eval s2f --classifier-steps 0`): 75 passes over the training
# photos, within [50, 5,000]. On demo/corpus (840 photos, 64 px) that is 1,969; at 2,000 steps the
# held-out gender accuracy was 95.8%, at 800 90.8% (docs/speech2face.md)
EPOCHS, MIN_STEPS, MAX_STEPS = 75, 50, 5000


def auto_steps(photos: int) -> int:
    return int(min(MAX_STEPS, max(MIN_STEPS, round(EPOCHS * photos / BATCH))))


class AttributeCNN(nn.Module):
    """Blocks of (conv 3x3, BN, ReLU, max-pool 2), average-pooled to 2x2 (any input size), one
    linear softmax head per attribute."""

    def __init__(self, classes: dict[str, int], widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2))
        self.heads = nn.ModuleDict({a: nn.Linear(4 * c, n) for a, n in classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {a: head(h) for a, head in self.heads.items()}


@dataclass
class PixelClassifier:
    net: AttributeCNN
    classes: dict[str, list[str]]  # per attribute, the classes its head predicts (head order)
    frontend: FaceImage  # the normalisation its input takes (the face network's)
    steps: int
    train_photos: int
    seconds: float

    @torch.no_grad()
    def predict(self, normalised: np.ndarray | torch.Tensor, batch: int = 256) -> dict[str, np.ndarray]:
        """Class names per attribute for [N, 3, H, W] images in the front end's normalisation."""
        self.net.eval()
        logits: dict[str, list[torch.Tensor]] = {a: [] for a in self.classes}
        for i in range(0, len(normalised), batch):
            x = normalised[i:i + batch] if isinstance(normalised, torch.Tensor) else \
                rows_tensor(normalised, range(i, min(i + batch, len(normalised))))
            for a, out in self.net(x.float()).items():
                logits[a].append(out)
        return {a: np.array(self.classes[a])[torch.cat(v).argmax(1).numpy()] for a, v in logits.items()}

    def predict_rgb(self, rgb: torch.Tensor) -> dict[str, np.ndarray]:
        """The same for reconstructions: RGB in [0, 1], resized to the photos' size if needed."""
        size = self.frontend.size
        if rgb.shape[-1] != size:
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.predict(to_normalised(rgb, self.frontend))


def attribute_classes(split: S2FSplit) -> dict[str, list[str]]:
    """The attributes a classifier can learn from this split: known for everyone, two classes at least."""
    out = {}
    for attr in ATTRS:
        values = {a.get(attr, "") for a in split.attributes}
        if len(values) >= 2 and "" not in values:
            out[attr] = ordered(list(values))
    return out


def train_pixel_classifier(train: S2FSplit, frontend: FaceImage, steps: int = 0, seed: int = 0,
                           progress: bool = True) -> PixelClassifier | None:
    """The CNN on the training split's face photos (augmented as the association model's faces:
    crop, rotation, flip, brightness, contrast), cross-entropy summed over the heads, on the CPU,
    `steps` steps (0: `auto_steps`). None when no attribute has two classes."""
    classes = attribute_classes(train)
    if not classes:
        return None
    steps = steps or auto_steps(len(train.face.identity))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    targets = {a: torch.tensor([c.index(v) for v in _labels(train, a, train.face.identity)])
               for a, c in classes.items()}
    net = AttributeCNN({a: len(c) for a, c in classes.items()})
    opt = torch.optim.Adam(net.parameters(), LR, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    start = time.perf_counter()
    net.train()
    for _ in tqdm(range(steps), desc="attribute classifier (pixels)", disable=not progress, leave=False):
        rows = rng.integers(len(train.face.identity), size=BATCH)
        x = augment_faces(rows_tensor(train.face.data, rows), rng)
        out = net(x)
        loss = sum(F.cross_entropy(out[a], t[rows]) for a, t in targets.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    net.eval()
    return PixelClassifier(net, classes, frontend, steps, len(train.face.identity), time.perf_counter() - start)


def _confusion(rows: np.ndarray, cols: np.ndarray, classes: list[str]) -> list[list[int]]:
    m = np.zeros((len(classes), len(classes)), dtype=int)
    for a, b in zip(rows, cols, strict=True):
        m[classes.index(a), classes.index(b)] += 1
    return m.tolist()


def pixel_agreement(clf: PixelClassifier, test: S2FSplit, s2f: torch.Tensor, f2f: torch.Tensor | None = None) -> dict:
    """Per attribute (Fig. 4(a)): `confusion`, rows the class the classifier gives a test photo,
    columns the class it gives the S2F reconstruction of a clip of the same person, over every
    (clip, photo) pair of a person, and `agreement` its diagonal share; `confusion_truth`, rows the
    speaker's true class, columns the reconstruction's, one count per clip. Accuracies against the
    truth: `photo_accuracy` (test photos), `s2f_accuracy` (one S2F reconstruction per clip, `s2f`
    RGB rows in clip order), `f2f_accuracy` (one F2F reconstruction per photo, `f2f`); `majority`
    (the test photos' commonest true class) and `chance` (1 / classes) are the baselines."""
    photo = clf.predict(test.face.data)
    recon = clf.predict_rgb(s2f)
    redrawn = clf.predict_rgb(f2f) if f2f is not None else None
    c, f = same_person_pairs(test)
    out = {}
    for attr, trained in clf.classes.items():
        truth_photo, truth_clip = _labels(test, attr, test.face.identity), _labels(test, attr, test.voice.identity)
        classes = ordered(sorted({*trained, *truth_photo, *truth_clip}))
        m = _confusion(photo[attr][f], recon[attr][c], classes)
        out[attr] = {"classes": classes, "confusion": m, "agreement": float(np.trace(m) / np.sum(m)),
                     "confusion_truth": _confusion(truth_clip, recon[attr], classes),
                     "photo_accuracy": float((photo[attr] == truth_photo).mean()),
                     "s2f_accuracy": float((recon[attr] == truth_clip).mean()),
                     "majority": float(max((truth_photo == k).mean() for k in classes)),
                     "chance": 1 / len(trained)}
        if redrawn is not None:
            out[attr]["f2f_accuracy"] = float((redrawn[attr] == truth_photo).mean())
    return out


def classifier_record(clf: PixelClassifier) -> dict:
    """What metrics.json says of the classifier."""
    return {"architecture": f"CNN {'-'.join(map(str, WIDTHS))}, BN, 2x2 pool, a softmax head per attribute",
            "steps": clf.steps, "batch": BATCH, "train_photos": clf.train_photos, "input_px": clf.frontend.size,
            "seconds": round(clf.seconds, 1), "classes": clf.classes}


def main(argv: list[str] | None = None) -> int:
    from facevoice.training.speech2face.config import load_config
    from facevoice.training.speech2face.data import load_s2f_split

    p = argparse.ArgumentParser(description="Train the pixel attribute classifier of `eval s2f` (Fig. 4) on a "
                                "corpus's training photos and score it on its test photos")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--config", default="small", help="whose face front end (size, detector, crop): small | paper")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--steps", type=int, default=0, help="0: 75 passes over the photos, 50 to 5,000 steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/s2f-cache"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    progress = not args.no_progress
    train = load_s2f_split(args.corpus, "train", cfg, args.cache_dir, progress=progress, modalities=("face",))
    test = load_s2f_split(args.corpus, "test", cfg, args.cache_dir, progress=progress, modalities=("face",))
    clf = train_pixel_classifier(train, cfg.face.frontend(), args.steps, args.seed, progress)
    if clf is None:
        print(f"{args.corpus}: no attribute with two classes in the training split")
        return 0
    photo = clf.predict(test.face.data)
    print(f"pixel attribute classifier: {clf.steps} steps on {clf.train_photos} training photos "
          f"({cfg.face.size} px) in {clf.seconds:.0f} s; on {len(test.face.identity)} test photos of "
          f"{len(test.identities)} new people:")
    for attr in clf.classes:
        truth = _labels(test, attr, test.face.identity)
        majority = max((truth == k).mean() for k in set(truth))
        print(f"  {attr:17s} accuracy {100 * (photo[attr] == truth).mean():5.1f}%  (majority class "
              f"{100 * majority:.1f}%, chance {100 / len(clf.classes[attr]):.1f}%)")
    return 0


if __name__ == "__main__":
    run_script(main, "python -m facevoice.training.speech2face.pixel_attributes")
