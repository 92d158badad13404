"""`facevoice train face-detector`: a dlib HOG detector for the synthetic corpus's faces.

dlib's frontal detector finds about 60% of the generator's cartoon faces, so a front end that
relied on it alone would refuse the corpus it was trained on. This trains a second detector
(dlib's `train_simple_object_detector`, Dalal-Triggs HOG + a linear SVM, as dlib's frontal one is
made) from the boxes the generator records (`drawn_box`), on people no corpus uses. Half the
faces are pasted onto real textures and drawn clutter, and 500 pictures with no face at all are
added, so the SVM learns what is not a face (without them it fires on bricks and coffee cups).
The service runs it beside dlib's frontal detector (`service/media/faces.py`).

It is evaluated on new people (found at IoU 0.5 against the drawn box), on the real photos
packages ship (found by the pair), and on a set of negatives that no training picture comes
from (`negative_images`): photos of animals, objects and places, their crops, noise and
drawings that are not faces.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.errors import FormatError
from facevoice.service.media.faces import iou
from facevoice.training.corpus.faces import FaceNuisance, drawn_box, render_face
from facevoice.training.corpus.people import sample_population

# scikit-image's photos: textures to train against, and others kept for the negative test set
TRAIN_TEXTURES = ("brick.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
                  "coins.png", "cell.png")
TEST_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "moon.png", "horse.png", "motorcycle_left.png",
               "page.png", "text.png", "clock_motion.png", "logo.png", "phantom.png", "color.png",
               "chessboard_RGB.png")
CANVAS = 256


@dataclass(frozen=True)
class DetectorConfig:
    seed: int = 9001  # people of seeds 9001 (training) and 9002 (evaluation): no corpus uses them
    people: int = 300
    faces: int = 4  # per person: the canonical face, then sampled nuisances
    eval_people: int = 100
    negatives: int = 400  # pictures without a face, besides the 100 of LFW's non-face patches
    face_size: int = 128  # the corpus's default
    C: float = 5.0
    window: int = 80  # the detection window's side in pixels (dlib's default area, 80 x 80)
    workers: int = 2


@dataclass(frozen=True)
class TrainFaceDetectorOptions:
    out: Path  # the detector file to write (dlib's .svm); its record goes beside it (.json)
    people: int = DetectorConfig.people
    eval_people: int = DetectorConfig.eval_people
    seed: int = DetectorConfig.seed
    workers: int = DetectorConfig.workers

    def config(self) -> DetectorConfig:
        return DetectorConfig(seed=self.seed, people=self.people, eval_people=self.eval_people, workers=self.workers)


@dataclass
class DetectorRecord:
    """The detector's record (its .svm's name with .json): how it was trained and how it did, read
    and written only here."""

    config: dict  # asdict(DetectorConfig)
    pictures: int  # training pictures, with and without a face
    faces: int  # faces among them
    train_seconds: float
    evaluation: dict = field(default_factory=dict)  # evaluate()'s figures

    @staticmethod
    def path(detector: Path) -> Path:
        return Path(detector).with_suffix(".json")

    def write(self, detector: Path) -> Path:
        path = self.path(detector)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, detector: Path) -> DetectorRecord:
        """FormatError naming the file when it is missing or not a detector's record."""
        path = cls.path(detector)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
            raise FormatError(f"{path}: not a face detector's record ({type(e).__name__}: {e})") from e


@dataclass(frozen=True)
class TrainFaceDetectorResult:
    out: Path  # the detector written
    record: DetectorRecord  # and its record, written beside it

    def summary(self) -> str:
        r, out = self.record, self.out
        ev = r.evaluation
        neg = ev["negatives"]
        return "\n".join([
            f"detector written to {out} ({r.pictures} pictures, {r.faces} faces, "
            f"{r.train_seconds} s); its record beside it ({DetectorRecord.path(out).name})",
            f"new people: {ev['new_people']['found_iou_0.5']:.1%} of {ev['new_people']['faces']} faces found at "
            f"IoU 0.5 (median IoU {ev['new_people']['median_iou']:.2f}; target 98%)",
            f"negatives: {len(neg['with_a_detection'])} of {neg['pictures']} with a detection "
            f"{neg['with_a_detection'] or ''}",
            "real faces: " + ", ".join(f"{k} {v}" for k, v in ev["real_faces"].items()),
        ])


def _person_faces(job: tuple[int, int, int, object, int]) -> list[tuple[np.ndarray, tuple]]:
    seed, index, size, face, faces = job
    rng = np.random.default_rng([seed, index, 7])
    out = []
    for k in range(faces):
        nuisance = FaceNuisance.sample(rng) if k else FaceNuisance.canonical()
        out.append((np.asarray(render_face(face, nuisance, size, rng)), drawn_box(face, nuisance, size)))
    return out


def render_faces(seed: int, people: int, faces: int, size: int = 128, workers: int = 2,
                 progress: bool = True) -> tuple[list[np.ndarray], list[tuple]]:
    """`faces` pictures of each of `people` new people, with their drawn boxes."""
    population = sample_population(people, seed).people
    jobs = [(seed, i, size, p.face, faces) for i, p in enumerate(population)]
    images, boxes = [], []
    bar = tqdm(total=len(jobs), desc=f"drawing faces (seed {seed})", unit="person", disable=not progress)
    with mp.get_context("fork").Pool(workers) as pool:
        for rows in pool.imap(_person_faces, jobs, chunksize=4):
            for img, box in rows:
                images.append(img)
                boxes.append(box)
            bar.update()
    bar.close()
    return images, boxes


def package_photo(name: str) -> Image.Image:
    """One of the photos scikit-image ships (its data folder), as RGB."""
    import skimage

    return Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")


def drawn_clutter(rng: np.random.Generator, side: int = CANVAS) -> Image.Image:
    """Noise (white, or 1/f like a landscape), a scatter of ellipses and rectangles, or ellipses
    inside an ellipse (a head's outline with no face in it: what a CT phantom looks like)."""
    kind = rng.integers(4)
    if kind == 3:
        img = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(img)
        cx, cy = side / 2 + rng.uniform(-20, 20), side / 2 + rng.uniform(-20, 20)
        rx, ry = rng.uniform(0.25, 0.45) * side, rng.uniform(0.3, 0.48) * side
        d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        for _ in range(int(rng.integers(2, 9))):
            ex, ey = cx + rng.uniform(-0.6, 0.6) * rx, cy + rng.uniform(-0.6, 0.6) * ry
            a, b = rng.uniform(0.05, 0.3) * rx, rng.uniform(0.05, 0.4) * ry
            d.ellipse((ex - a, ey - b, ex + a, ey + b), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        return img
    if kind == 0:
        return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    if kind == 1:
        spectrum = np.fft.fft2(rng.normal(size=(side, side, 3)), axes=(0, 1))
        f = np.hypot(np.fft.fftfreq(side)[:, None], np.fft.fftfreq(side)[None])
        x = np.real(np.fft.ifft2(spectrum / (f + 1e-3)[..., None], axes=(0, 1)))
        return Image.fromarray(((x - x.min()) / (np.ptp(x) + 1e-9) * 255).astype(np.uint8))
    img = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = (int(v) for v in rng.integers(0, side, 2))
        x1, y1 = x0 + int(rng.integers(10, side // 2)), y0 + int(rng.integers(10, side // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
    return img


def _crop(photo: np.ndarray, side: int, rng: np.random.Generator, out: int = CANVAS) -> Image.Image:
    h, w = photo.shape[:2]
    side = min(side, h, w)
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return Image.fromarray(photo[y:y + side, x:x + side]).resize((out, out), Image.BILINEAR)


def training_set(images: list[np.ndarray], boxes: list[tuple], cfg: DetectorConfig
                 ) -> tuple[list[np.ndarray], list[list[tuple]]]:
    """Half the faces as drawn, half pasted at 0.6-1.2x onto textures or clutter; then pictures
    with no face (texture crops, clutter, LFW's non-face patches)."""
    import skimage

    rng = np.random.default_rng([cfg.seed, 99])
    textures = [np.asarray(package_photo(n)) for n in TRAIN_TEXTURES]

    def background() -> Image.Image:
        if rng.random() < 0.6:
            return _crop(textures[rng.integers(len(textures))], int(rng.integers(128, 512)), rng)
        return drawn_clutter(rng)

    out_images, out_boxes = [], []
    for img, (x, y, w, h) in zip(images, boxes, strict=True):
        if rng.random() < 0.5:
            out_images.append(img)
            out_boxes.append([(x, y, w, h)])
            continue
        scale = rng.uniform(0.6, 1.2)
        side = int(img.shape[0] * scale)
        canvas = background()
        at = rng.integers(0, CANVAS - side + 1, 2)
        canvas.paste(Image.fromarray(img).resize((side, side), Image.BILINEAR), (int(at[0]), int(at[1])))
        out_images.append(np.asarray(canvas))
        out_boxes.append([(at[0] + x * scale, at[1] + y * scale, w * scale, h * scale)])
    for k in range(cfg.negatives):
        out_images.append(np.asarray(background() if k % 3 else drawn_clutter(rng)))
        out_boxes.append([])
    lfw = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")[100:]  # its 100 non-faces
    for patch in lfw:
        out_images.append(np.asarray(Image.fromarray((patch * 255).astype(np.uint8)).convert("RGB").resize((100, 100))))
        out_boxes.append([])
    return out_images, out_boxes


def train(cfg: DetectorConfig, out: Path, progress: bool = True) -> DetectorRecord:
    """Train on new people and write the detector to `out` (dlib's format); returns its record
    (not yet evaluated)."""
    import dlib

    start = time.perf_counter()
    images, boxes = render_faces(cfg.seed, cfg.people, cfg.faces, cfg.face_size, cfg.workers, progress)
    images, boxes = training_set(images, boxes, cfg)
    rects = [[dlib.rectangle(round(x), round(y), round(x + w), round(y + h)) for x, y, w, h in b] for b in boxes]
    opts = dlib.simple_object_detector_training_options()
    opts.add_left_right_image_flips = True
    opts.C = cfg.C
    opts.num_threads = cfg.workers
    opts.detection_window_size = cfg.window * cfg.window
    if progress:
        print(f"training the HOG detector on {len(images)} pictures ({sum(map(len, boxes))} faces)...", flush=True)
    detector = dlib.train_simple_object_detector(images, rects, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    detector.save(str(out))
    return DetectorRecord(asdict(cfg), len(images), sum(map(len, boxes)), round(time.perf_counter() - start, 1))


def negative_images(seed: int = 0) -> dict[str, Image.Image]:
    """At least 50 pictures with no face, none of them used in training: photos of animals,
    objects and places that packages ship (scikit-image, scikit-learn, matplotlib), a crop of
    each, noise, and drawings (shapes, text, a chessboard)."""
    import matplotlib
    import sklearn

    rng = np.random.default_rng([seed, 5])
    photos = {n: package_photo(n) for n in TEST_PHOTOS}
    images = Path(sklearn.__file__).parent / "datasets" / "images"
    photos.update({p.name: Image.open(p).convert("RGB") for p in sorted(images.glob("*.jpg"))})
    mpl = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    photos.update({n: Image.open(mpl / n).convert("RGB") for n in ("logo2.png", "Minduka_Present_Blue_Pack.png")})
    out = dict(photos)
    for name, img in photos.items():
        arr = np.asarray(img)
        if min(arr.shape[:2]) >= 160:
            out[f"{name} (crop)"] = _crop(arr, int(min(arr.shape[:2]) * 0.6), rng)
    for k in range(20):
        out[f"drawn {k}"] = drawn_clutter(rng)
    text = Image.new("RGB", (400, 200), (250, 250, 245))
    ImageDraw.Draw(text).multiline_text((10, 10), "\n".join(["no face here,", "only words", "on a page"] * 3),
                                        fill=(20, 20, 20))
    out["drawn text"] = text
    out["grey"] = Image.new("RGB", (300, 300), (128, 128, 128))
    return out


def evaluate(path: Path, cfg: DetectorConfig, progress: bool = True) -> dict:
    """Found at IoU >= 0.5 on new people; detections on the negatives; real faces found by the
    pair the service runs (dlib's frontal detector beside this one)."""
    from facevoice.service.media.faces import detect_faces

    synth = str(Path(path).resolve())
    images, boxes = render_faces(cfg.seed + 1, cfg.eval_people, cfg.faces, cfg.face_size, cfg.workers, progress)
    ious = []
    for img, box in zip(tqdm(images, desc="detecting new people", disable=not progress), boxes, strict=True):
        found = detect_faces(Image.fromarray(img), "hog+synth", synth_path=synth)
        ious.append(max((iou(f.box, box) for f in found), default=0.0))
    ious = np.array(ious)
    negatives = {name: len(detect_faces(img, "hog+synth", synth_path=synth)) for name, img in negative_images().items()}
    real = {name: len(detect_faces(img, "hog+synth", synth_path=synth)) for name, img in real_faces().items()}
    return {"new_people": {"faces": len(ious), "found_iou_0.5": float(np.mean(ious >= 0.5)),
                           "median_iou": float(np.median(ious))},
            "negatives": {"pictures": len(negatives), "with_a_detection": sorted(k for k, v in negatives.items() if v)},
            "real_faces": real}


def real_faces() -> dict[str, Image.Image]:
    """The real photos of one face each that packages ship."""
    from matplotlib import cbook

    return {"astronaut.png": package_photo("astronaut.png"),
            "grace_hopper.jpg": Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainFaceDetectorOptions
    p.add_argument("--out", type=Path, required=True, help="the detector file to write (dlib's .svm)")
    p.add_argument("--people", type=int, default=d.people)
    p.add_argument("--eval-people", type=int, default=d.eval_people)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)


def train_face_detector(opts: TrainFaceDetectorOptions, *, progress: bool = True) -> TrainFaceDetectorResult:
    """`train face-detector`: train, evaluate, and write the detector to `opts.out` with its record
    (`opts.out` with .json) beside it."""
    cfg = opts.config()
    record = train(cfg, opts.out, progress)
    record.evaluation = evaluate(opts.out, cfg, progress)
    record.write(opts.out)
    return TrainFaceDetectorResult(opts.out, record)


def run(args: argparse.Namespace) -> int:
    print(train_face_detector(options(TrainFaceDetectorOptions, args)).summary())
    return 0
