"""Face detection and alignment: dlib's detectors and 5-point landmarks, shipped with their
weights (`dlib-bin`, `face-recognition-models`), in-process; and our HOG detector for the
synthetic corpus's faces (`detectors/synth_faces.svm`, made by `facevoice train face-detector`).

Detectors are named alone or joined with "+": "hog" (dlib's frontal HOG, for real faces),
"cnn" (dlib's MMOD CNN), "synth" (ours, for the corpus's cartoon faces), "hog+synth" (both: what
every guard runs). Where two detectors find the same face (IoU over 0.3), one box is kept: the
first named detector's, except that "synth" wins over "hog" (its boxes are the drawn boxes the
corpus's models were trained on).

A photo whose face is a small part of the frame becomes the crop the papers feed their face
networks: detect (HOG, or dlib's CNN), pick a face (the largest, or the one the request names),
rotate about the face so the eyes are level (from the 5 landmarks), then crop the box enlarged
1.5x about its centre (Kim et al. sec. 4.2) and resize. A photo with no face above the score
threshold is refused: "no face found". A client's box always wins (no detection runs).
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facevoice.service.media.errors import InvalidSignalError

DETECTORS = ("hog", "cnn", "synth")
GUARD = "hog+synth"  # what finds a face for a model trained without detection
MAX_DETECT_SIDE = 1024  # detection runs on a copy at most this large; boxes are scaled back
SYNTH_DETECTOR = Path(__file__).with_name("detectors") / "synth_faces.svm"
SAME_FACE_IOU = 0.3
# our detector's own floor: a CT phantom's nested ellipses reach 0.07; new people's faces lose
# 0.25% of 400 at 0.1 (docs/media.md)
SYNTH_MIN_SCORE = 0.1


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x, y, width, height in pixels of the upright image
    score: float
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None  # eye centres, image-left first
    nose: tuple[float, float] | None = None  # the nose tip (below the nose, dlib's point 4)

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


def models_dir() -> Path:
    """Where face-recognition-models keeps its weights (found without importing it: its
    __init__ needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed (pip install face-recognition-models)")
    return Path(spec.submodule_search_locations[0]) / "models"


_local = threading.local()


def parse_detector(detector: str) -> tuple[str, ...]:
    """"hog+synth" -> ("hog", "synth"); ValueError for a name that is not a detector."""
    names = tuple(detector.split("+"))
    if not detector or any(n not in DETECTORS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"face detector must be one of {DETECTORS}, or several joined by '+', not {detector!r}")
    return names


def load_synth_detector(path: Path | str = SYNTH_DETECTOR):
    """Our corpus-face detector from its file (dlib's fhog_object_detector format)."""
    import dlib

    path = Path(path)
    if not path.is_file():
        raise RuntimeError(f"face detector file {path} is missing")
    return dlib.fhog_object_detector(str(path))


def _models(detector: str, synth_path: str = ""):
    """This thread's detector and landmark model (dlib's are not documented as thread-safe, so
    each gRPC worker thread loads its own, once: about 10 MB each)."""
    import dlib

    cache = getattr(_local, "models", None)
    if cache is None:
        cache = _local.models = {}
    key = (detector, synth_path)
    if key not in cache:
        if detector == "hog":
            detect = dlib.get_frontal_face_detector()
        elif detector == "cnn":
            detect = dlib.cnn_face_detection_model_v1(str(models_dir() / "mmod_human_face_detector.dat"))
        elif detector == "synth":
            detect = load_synth_detector(synth_path or SYNTH_DETECTOR)
        else:
            raise ValueError(f"face detector must be one of {DETECTORS}, not {detector!r}")
        cache[key] = (detect, dlib.shape_predictor(str(models_dir() / "shape_predictor_5_face_landmarks.dat")))
    return cache[key]


def detect_faces(img: Image.Image, detector: str = "hog", min_score: float = 0.0, upsample: int | None = None,
                 synth_path: str = "") -> list[Detection]:
    """Every face scoring at least min_score, largest first, with its eye centres, from one
    detector or several joined by "+" (module docstring). By default the image is searched as it
    is (faces from about 80 px), then at twice its size when that finds none (faces from about
    40 px: 4x the time). `synth_path` names the corpus-face detector to use instead of the one
    this package ships (loaded once per thread)."""
    names = parse_detector(detector)
    if len(names) > 1:
        found = [detect_faces(img, n, min_score, upsample, synth_path) for n in names]
        return _merge(names, found)
    if upsample is None:
        return (detect_faces(img, detector, min_score, 0, synth_path)
                or detect_faces(img, detector, min_score, 1, synth_path))
    detect, landmarks = _models(detector, synth_path)
    if detector == "synth":
        min_score = max(min_score, SYNTH_MIN_SCORE)
    scale = min(1.0, MAX_DETECT_SIDE / max(img.size))
    small = img if scale == 1.0 else img.resize((round(img.width * scale), round(img.height * scale)),
                                                 Image.BILINEAR)
    pixels = np.asarray(small)
    if detector in ("hog", "synth"):
        rects, scores, _ = detect.run(pixels, upsample, min_score)
        found = list(zip(rects, scores, strict=True))
    else:
        found = [(d.rect, d.confidence) for d in detect(pixels, upsample) if d.confidence >= min_score]
    out = []
    for rect, score in found:
        shape = landmarks(pixels, rect)
        pts = [(shape.part(i).x / scale, shape.part(i).y / scale) for i in range(5)]
        right = ((pts[0][0] + pts[1][0]) / 2, (pts[0][1] + pts[1][1]) / 2)  # dlib: 0-1 one eye, 2-3 the other
        left = ((pts[2][0] + pts[3][0]) / 2, (pts[2][1] + pts[3][1]) / 2)
        if right[0] > left[0]:
            right, left = left, right  # image-left first
        box = (rect.left() / scale, rect.top() / scale, rect.width() / scale, rect.height() / scale)
        out.append(Detection(box, float(score), (right, left), pts[4]))
    return sorted(out, key=lambda d: -d.area)


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _merge(names: tuple[str, ...], found: list[list[Detection]]) -> list[Detection]:
    """One detection per face across detectors: "synth" first, then the order named."""
    order = sorted(range(len(names)), key=lambda k: (names[k] != "synth", k))
    kept: list[Detection] = []
    for k in order:
        for face in found[k]:
            if all(iou(face.box, other.box) <= SAME_FACE_IOU for other in kept):
                kept.append(face)
    return sorted(kept, key=lambda d: -d.area)


def pick(faces: list[Detection], index: int = 0) -> Detection:
    """The face to use: faces come largest first; `index` names another."""
    if not faces:
        raise InvalidSignalError("image: no face found")
    if not 0 <= index < len(faces):
        raise InvalidSignalError(f"image: face {index} asked for, {len(faces)} found")
    return faces[index]


Box = tuple[float, float, float, float]


def face_region(img: Image.Image, face: Detection) -> tuple[Image.Image, Box]:
    """A square of twice the face box around it (outside the frame is black), and the box in it:
    what a corpus keeps of a photo or a video frame (the video ingest, the study's recordings)."""
    x, y, w, h = face.box
    side = 2 * max(w, h)
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    return img.crop((x0, y0, x0 + round(side), y0 + round(side))), (x - x0, y - y0, w, h)


def align(img: Image.Image, face: Detection, margin: float = 1.5) -> tuple[Image.Image, Box]:
    """The region around the face rotated about the face's centre so that its eyes are level,
    and the face's box in it. Only a square of 1.5 * margin * the box side is rotated (what a
    `margin` crop can reach at any angle), not the whole photo; outside the photo is black."""
    x, y, w, h = face.box
    cx, cy = x + w / 2, y + h / 2
    half = max(w, h) * margin * 0.75  # > (side / 2) * sqrt(2): the crop's corners at 45 degrees
    region = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
    sub = img.crop(region)
    box = (x - region[0], y - region[1], w, h)
    if face.eyes is None:
        return sub, box
    (x1, y1), (x2, y2) = face.eyes
    angle = math.degrees(math.atan2(y2 - y1, x2 - x1))
    if abs(angle) < 0.5:
        return sub, box
    return sub.rotate(angle, resample=Image.BICUBIC, center=(cx - region[0], cy - region[1])), box
