"""Decode a corpus split once into arrays (memory-mapped .npy in a cache directory) and draw
Kim et al. 2018 sec. 4.3 training tuples from them."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from facevoice.service.corpus import ATTRIBUTES, MANIFEST, Item, read_manifest
from facevoice.service.errors import CorpusError
from facevoice.service.media import AssociationAudio, MediaError
from facevoice.service.media.frontends import Frontend, model_input
from facevoice.training.association.augment import (
    FaceMargin,
    augment_faces,
    augment_voices,
    face_margin,
    face_with_margin,
)
from facevoice.training.association.config import AssociationConfig

# Training's cache holds float16 (half the memory; inputs are normalised images and [-1, 1]
# waveforms). Evaluation decodes into float32, so it measures exactly what the service serves.
STORE, EXACT = np.float16, np.float32


@dataclass
class Modality:
    """The decoded items of one modality: data [N, ...] and each item's identity index."""

    data: np.ndarray
    identity: np.ndarray
    item_ids: list[str]
    video: np.ndarray | None = None  # each item's source recording ("" unknown), from the manifest
    # faces only, for the augmentation's wider windows: () -> [N, 3, L, L], each row's crop with
    # a margin of its photo around it (FaceMargin), decoded on the first call
    wide: Callable[[], np.ndarray] | None = None


@dataclass
class SplitData:
    identities: list[str]
    attributes: list[dict[str, str]]
    face: Modality
    voice: Modality
    # items the service's front end refused (load_split(skip_refused=True)): modality -> item ids
    refused: dict[str, list[str]] = field(default_factory=dict)


def cache_key(corpus: Path, split: str, modality: str, frontend, store=STORE) -> str:
    manifest = (corpus / MANIFEST).stat()
    text = json.dumps([str(corpus.resolve()), manifest.st_size, manifest.st_mtime_ns, split, modality,
                       repr(frontend)] + ([] if store is STORE else [np.dtype(store).name]))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


_WORKER: tuple[Path, Frontend | FaceMargin, type, bool] | None = None


def _set_worker(corpus: Path, frontend: Frontend | FaceMargin, store, skip: bool = False) -> None:
    global _WORKER
    _WORKER = (corpus, frontend, store, skip)


def _init_worker(corpus: Path, frontend: Frontend | FaceMargin, store, skip: bool = False) -> None:
    torch.set_num_threads(1)  # in the decode processes only: the parent keeps its threads
    _set_worker(corpus, frontend, store, skip)


def _decode(item: Item) -> np.ndarray | None:
    """One item through the service's own media front end (model_input), stored as `store`;
    None for an item the front end refuses, when refusals are skipped."""
    corpus, frontend, store, skip = _WORKER
    try:
        # the manifest's face box, cropped as the index build and the service crop it
        data = (corpus / item.path).read_bytes()
        if isinstance(frontend, FaceMargin):
            return face_with_margin(data, frontend, item.face_box()).astype(store)
        return model_input(data, frontend, item.face_box()).astype(store)
    except MediaError as e:
        if skip:
            return None
        raise MediaError(f"{item.item_id} ({item.path}): {e}") from e


def decode_items(corpus: Path, items: list[Item], frontend: Frontend | FaceMargin, cache_dir: Path, key: str,
                 workers: int = 2, progress: bool = True, store=STORE, refused: list[int] | None = None
                 ) -> np.ndarray:
    """Every item through service.media once, as `store`; later calls map the cached file. With
    `refused` (a list), items the front end refuses are left as zeros and their positions added
    to it (kept beside the cache, KEY.refused.json) instead of failing the whole decode."""
    path = cache_dir / f"{key}.npy"
    skipped = cache_dir / f"{key}.refused.json"
    if path.exists() and (refused is None or skipped.exists()):
        if refused is not None:
            refused += json.loads(skipped.read_text())
        return np.load(path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    _set_worker(corpus, frontend, store, refused is not None)
    first = next((x for x in map(_decode, items) if x is not None), None)
    if first is None:
        raise MediaError(f"{corpus}: the front end refused every one of {len(items)} items")
    shape = (len(items), *first.shape)
    found: list[int] = []
    tmp = cache_dir / f"{key}.{os.getpid()}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=store, shape=shape)
    bar = tqdm(total=len(items), desc=f"decode {key[:8]}", unit="item", disable=not progress, leave=False)
    if workers > 1:
        with mp.get_context("fork").Pool(workers, _init_worker, (corpus, frontend, store, refused is not None)) as pool:
            for k, arr in enumerate(pool.imap(_decode, items, chunksize=8)):
                if arr is None:
                    found.append(k)
                else:
                    out[k] = arr
                bar.update()
    else:
        for k, item in enumerate(items):
            arr = _decode(item)
            if arr is None:
                found.append(k)
            else:
                out[k] = arr
            bar.update()
    bar.close()
    out.flush()
    del out
    if refused is not None:
        skipped.write_text(json.dumps(found))
        refused += found
    tmp.rename(path)
    return np.load(path, mmap_mode="r")


def has_items(corpus: Path, split: str, modalities: tuple[str, ...]) -> bool:
    """Whether the split has items of every one of these modalities."""
    found = {i.modality for i in read_manifest(corpus) if i.split == split}
    return set(modalities) <= found


def load_split(corpus: Path, split: str, cfg: AssociationConfig, cache_dir: Path, workers: int = 2,
               progress: bool = True, voice_frontend: AssociationAudio | None = None, store=STORE,
               skip_refused: bool = False) -> SplitData:
    """Faces at cfg.face.size and voices of cfg.voice.cache_frontend() for one split, as `store`
    (EXACT for evaluation). With skip_refused, items the front end refuses (no face found, no
    speech) are left out and listed in `refused`, as `index build` skips them; else they fail it.
    When training augments faces from a margin (face_margin(cfg)), face.wide decodes the same
    faces with it, on its first call."""
    corpus = Path(corpus)
    items = [i for i in read_manifest(corpus) if i.split == split]
    identities = sorted({i.identity for i in items})
    index = {name: k for k, name in enumerate(identities)}
    attributes: list[dict[str, str]] = [{} for _ in identities]
    for i in items:
        attributes[index[i.identity]] = {a: getattr(i, a) for a in ATTRIBUTES}
    mods, refused = {}, {}
    frontends = {"face": cfg.face.frontend(), "voice": voice_frontend or cfg.voice.cache_frontend()}
    for modality, frontend in frontends.items():
        chosen = [i for i in items if i.modality == modality]
        if not chosen:
            raise CorpusError(f"{corpus}: no {modality} items in split {split!r}")
        lost: list[int] | None = [] if skip_refused else None
        data = decode_items(corpus, chosen, frontend, Path(cache_dir),
                            cache_key(corpus, split, modality, frontend, store), workers, progress, store, lost)
        if lost:
            refused[modality] = [chosen[k].item_id for k in lost]
            keep = np.setdiff1d(np.arange(len(chosen)), lost)
            data, chosen = _Rows(data, keep), [chosen[k] for k in keep]
        wide = None
        margin = face_margin(cfg) if modality == "face" else None
        if margin is not None:
            wide = _margin_loader(corpus, chosen, margin, Path(cache_dir),
                                  cache_key(corpus, split, modality, margin, store), workers, progress, store)
        mods[modality] = Modality(data, np.array([index[i.identity] for i in chosen]),
                                  [i.item_id for i in chosen], np.array([i.video for i in chosen]), wide)
    return SplitData(identities, attributes, mods["face"], mods["voice"], refused)


def _margin_loader(corpus: Path, items: list[Item], margin: FaceMargin, cache_dir: Path, key: str, workers: int,
                   progress: bool, store) -> Callable[[], np.ndarray]:
    """The items (those the face front end took) with their margins, decoded once into the cache."""
    return lambda: decode_items(corpus, items, margin, cache_dir, key, workers, progress, store)


def first_identities(split: SplitData, n: int) -> SplitData:
    """The split cut to its first n identities (sorted ids; the generator draws people at random,
    so the first n are a random sample) with their items; n = 0 or n >= their number: unchanged.
    train.identities = n trains on these only (the learning curve against training identities)."""
    if not n or n >= len(split.identities):
        return split

    def cut(m: Modality) -> Modality:
        keep = np.flatnonzero(m.identity < n)
        wide = None if m.wide is None else (lambda: _Rows(m.wide(), keep))
        return Modality(m.data if len(keep) == len(m.identity) else _Rows(m.data, keep), m.identity[keep],
                        [m.item_ids[k] for k in keep], None if m.video is None else m.video[keep], wide)

    return SplitData(split.identities[:n], split.attributes[:n], cut(split.face), cut(split.voice))


class _Rows:
    """A row subset of a (memory-mapped) array, read lazily: data[rows] and data[row, a:b]."""

    def __init__(self, data: np.ndarray, keep: np.ndarray):
        self.data, self.keep = data, keep
        self.shape = (len(keep), *data.shape[1:])
        self.dtype = data.dtype

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self.data[(self.keep[key[0]], *key[1:])]
        return self.data[self.keep[key]]


def windows(data: np.ndarray, rows, starts, length: int) -> np.ndarray:
    """float32 [len(rows), length]: data[row, start:start + length] for each (row, start)."""
    return np.stack([np.asarray(data[r, s:s + length], np.float32) for r, s in zip(rows, starts, strict=True)])


@dataclass
class Batch:
    """Inputs for one step: the faces and voices to encode, and for each tuple the rows of
    cat([face representations, voice representations]) that are its anchor, positive, negative."""

    faces: torch.Tensor
    voices: torch.Tensor
    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    voice_anchor: torch.Tensor  # True where the tuple is V->F

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.faces, self.voices, self.anchor, self.positive, self.negative,
                        self.voice_anchor)))


class TupleSampler:
    """Sec. 4.3: "for a random voice, a random but distinct face of the same identity and a random
    face of a different identity": a random item of the reference modality (an item, so a person
    with more clips anchors more tuples), a random item of the other modality of the same
    identity, from another video than the anchor's where the manifest records videos and the
    person has one, and an item of a different identity (optionally of the same gender).

    `draw_people` is the batch of train.loss = "infonce": distinct people, one anchor and one
    positive each, every other person's item a negative."""

    def __init__(self, split: SplitData, cfg: AssociationConfig, direction: str, seed: int):
        self.split, self.cfg, self.direction = split, cfg, direction
        self.rng = np.random.default_rng(seed)
        n = len(split.identities)
        self.by_identity = {m: [np.flatnonzero(getattr(split, m).identity == i) for i in range(n)]
                            for m in ("face", "voice")}
        usable = [i for i in range(n) if len(self.by_identity["face"][i]) and len(self.by_identity["voice"][i])]
        if len(usable) < 2:
            raise CorpusError("training needs at least two identities with both a face and a voice")
        self.usable = np.array(usable)
        self.anchors = {m: np.concatenate([self.by_identity[m][i] for i in usable]) for m in ("face", "voice")}
        gender = [split.attributes[i].get("gender", "") for i in range(n)]
        self.peers = {"any": {}, "same-gender": {}}
        for i in usable:
            others = [j for j in usable if j != i]
            self.peers["any"][i] = np.array(others)
            self.peers["same-gender"][i] = np.array([j for j in others if gender[j] == gender[i]] or others)
        self.genders = {g: np.array([i for i in usable if gender[i] == g]) for g in sorted(set(gender))}
        self.same_gender = cfg.train.negatives == "same-gender"
        self.voice_len = cfg.voice.frontend().samples
        # faces augment from their margins where there are some (decoded here, once)
        self.face_source = split.face.wide() if cfg.face.augment and split.face.wide is not None else None

    def restrict(self, same_gender: bool) -> None:
        """Impostors of the anchor's gender from now on (train.negatives = "curriculum" calls it at
        hard_after)."""
        self.same_gender = same_gender

    def _item(self, modality: str, identity: int) -> int:
        return int(self.rng.choice(self.by_identity[modality][identity]))

    def _positive(self, ref: str, anchor: int, other: str, identity: int) -> int:
        """An item of `other` of the anchor's identity, from another video where there is one."""
        rows = self.by_identity[other][identity]
        video = getattr(self.split, ref).video
        theirs = getattr(self.split, other).video
        if video is not None and theirs is not None and video[anchor]:
            elsewhere = rows[theirs[rows] != video[anchor]]
            if len(elsewhere):
                rows = elsewhere
        return int(self.rng.choice(rows))

    def draw(self, n: int) -> Batch:
        faces, voices, slots, voice_anchor = [], [], [], []
        peers = self.peers["same-gender" if self.same_gender else "any"]
        for _ in range(n):
            v2f = self.direction == "v2f" or (self.direction == "both" and self.rng.random() < 0.5)
            ref, other = ("voice", "face") if v2f else ("face", "voice")
            anchor = int(self.rng.choice(self.anchors[ref]))
            ident = int(getattr(self.split, ref).identity[anchor])
            impostor = int(self.rng.choice(peers[ident]))
            rows = (anchor, self._positive(ref, anchor, other, ident), self._item(other, impostor))
            for modality, row in zip((ref, other, other), rows, strict=True):
                bucket = voices if modality == "voice" else faces
                slots.append((modality == "voice", len(bucket)))
                bucket.append(row)
            voice_anchor.append(v2f)
        # voice representations follow the face ones in cat([faces, voices])
        rows = torch.tensor([k + len(faces) * is_voice for is_voice, k in slots]).view(n, 3)
        return Batch(self._faces(faces), self._voices(voices), rows[:, 0], rows[:, 1], rows[:, 2],
                     torch.tensor(voice_anchor))

    def draw_people(self, n: int) -> Batch:
        """n distinct people (of one gender, drawn at random per batch, when impostors are
        same-gender), each with a random item of the reference modality and an item of the other
        from another video where there is one: faces[k] and voices[k] are person k's. `anchor`
        holds the voice rows of cat([faces, voices]), `positive` the face rows; `negative` is
        every other person's, so it repeats `positive`. In direction "both" the loss goes both
        ways; `voice_anchor` then is all True."""
        pool = self.usable
        if self.same_gender:
            fit = [g for g in self.genders.values() if len(g) >= 2]
            pool = fit[int(self.rng.integers(len(fit)))] if fit else pool
        people = self.rng.choice(pool, size=min(n, len(pool)), replace=False)
        ref = "face" if self.direction == "f2v" else "voice"
        other = "voice" if ref == "face" else "face"
        rows: dict[str, list[int]] = {"face": [], "voice": []}
        for ident in people:
            anchor = self._item(ref, int(ident))
            rows[ref].append(anchor)
            rows[other].append(self._positive(ref, anchor, other, int(ident)))
        k = len(people)
        face_rows = torch.arange(k)
        return Batch(self._faces(rows["face"]), self._voices(rows["voice"]), face_rows + k, face_rows, face_rows,
                     torch.full((k,), self.direction != "f2v"))

    def _faces(self, rows: list[int]) -> torch.Tensor:
        f = self.cfg.face
        if not f.augment:
            return torch.from_numpy(np.asarray(self.split.face.data[rows], dtype=np.float32))
        source = self.split.face.data if self.face_source is None else self.face_source
        x = torch.from_numpy(np.asarray(source[rows], dtype=np.float32))
        return augment_faces(x, self.rng, tuple(f.augment_scale), f.augment_shift, f.size)

    def _voices(self, rows: list[int]) -> torch.Tensor:
        data = self.split.voice.data
        random = self.cfg.voice.crop == "random"
        starts = [int(self.rng.integers(data.shape[1] - self.voice_len + 1)) if random else 0 for _ in rows]
        x = torch.from_numpy(windows(data, rows, starts, self.voice_len))
        return augment_voices(x, self.rng) if self.cfg.voice.augment else x
