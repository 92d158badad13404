"""The model repository manifest, `facevoice.json`: one set of dataclasses with one JSON form.

`facevoice export` writes it; the service and the index build read it once, at start-up, and
from then on name an embedding space (a `Space`) and get everything about it from here: its
modality, its front end, its network and the model version its indexes must carry. Its files are
checked against their recorded SHA-256s before they are served (`open_repository`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from facevoice.service import checksums
from facevoice.service.errors import FormatError, Unsupported
from facevoice.service.media import frontends
from facevoice.service.media.frontends import Frontend

REPOSITORY_MANIFEST = "facevoice.json"
DETECTOR_FILE = "face_detector.svm"  # the corpus-face detector a repository ships (faces.py)
FORMAT = 2  # format 1 (before spaces were recorded) is re-exported, not read

# The spaces by name. An indexed space's gallery items are embedded into an index of that name.
FACE, VOICE, S2F_VOICE, FACE_FEATURE = "face", "voice", "s2f_voice", "face_feature"
ASSOCIATION, SPEECH2FACE = "association", "speech2face"


@dataclass(frozen=True)
class NetworkEntry:
    """One exported ONNX network, as Triton serves it."""

    model: str
    triton_version: int
    input: str
    output: str
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    sha256: str
    parity_max_abs_diff: float


@dataclass(frozen=True)
class ModelGroup:
    """Networks exported together from one run; `version` (their content hash) is what an index
    built by them records."""

    version: str
    run: str
    metric: str  # l2 | cosine
    dim: int
    networks: dict[str, NetworkEntry]
    info: dict = field(default_factory=dict)  # what the run adds (direction, image size)


@dataclass(frozen=True)
class Space:
    """One embedding space: what bytes of one modality become, through which network, in which
    model version. Resolved from the manifest once, at load."""

    name: str
    modality: str  # face | voice
    group: str  # association | speech2face
    network: NetworkEntry
    frontend: Frontend
    version: str
    metric: str
    dim: int
    indexed: bool


@dataclass(frozen=True)
class Manifest:
    triton_version: int
    default_config: str
    created: str
    groups: dict[str, ModelGroup]
    spaces: dict[str, Space]
    decoder: str | None = None  # the Speech2Face face decoder's network, in the speech2face group

    def space(self, name: str) -> Space:
        if name not in self.spaces:
            raise Unsupported(f"this model repository has no {name!r} space"
                              + (" (export with --s2f)" if name in (S2F_VOICE, FACE_FEATURE) else ""))
        return self.spaces[name]

    def indexed(self) -> dict[str, Space]:
        """The spaces that have gallery indexes, by index name."""
        return {n: s for n, s in self.spaces.items() if s.indexed}

    def face_decoder(self) -> NetworkEntry:
        if self.decoder is None or SPEECH2FACE not in self.groups:
            raise Unsupported("this model repository has no Speech2Face networks (export with --s2f)")
        return self.groups[SPEECH2FACE].networks[self.decoder]

    def to_json(self) -> str:
        spaces = {n: {"modality": s.modality, "group": s.group, "network": s.network.model, "indexed": s.indexed,
                      "frontend": frontends.to_dict(s.frontend)} for n, s in self.spaces.items()}
        return json.dumps({"format": FORMAT, "triton_version": self.triton_version,
                           "default_config": self.default_config, "created": self.created, "decoder": self.decoder,
                           "groups": {n: asdict(g) for n, g in self.groups.items()}, "spaces": spaces}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """KeyError / TypeError / ValueError on anything but this format."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, this version reads format {FORMAT} "
                             "(run `facevoice export` again)")
        groups = {n: _group(g) for n, g in d["groups"].items()}
        spaces = {}
        for name, s in d["spaces"].items():
            if s["modality"] not in ("face", "voice"):
                raise ValueError(f"space {name!r}: modality {s['modality']!r} (face or voice)")
            group = groups[s["group"]]
            spaces[name] = Space(name, s["modality"], s["group"], group.networks[s["network"]],
                                 frontends.from_dict(s["frontend"]), group.version, group.metric, group.dim,
                                 bool(s["indexed"]))
        decoder = d["decoder"]
        if decoder is not None and (SPEECH2FACE not in groups or decoder not in groups[SPEECH2FACE].networks):
            raise ValueError(f"decoder {decoder!r} is not a speech2face network")
        return cls(int(d["triton_version"]), str(d["default_config"]), str(d["created"]), groups, spaces, decoder)


def _group(d: dict) -> ModelGroup:
    nets = {name: NetworkEntry(**{**e, "input_dims": tuple(e["input_dims"]), "output_dims": tuple(e["output_dims"])})
            for name, e in d["networks"].items()}
    return ModelGroup(str(d["version"]), str(d["run"]), str(d["metric"]), int(d["dim"]), nets, dict(d["info"]))


def read_repository_manifest(repo: Path) -> Manifest:
    """The manifest of a model repository as written; FormatError that says what to do otherwise."""
    path = Path(repo) / REPOSITORY_MANIFEST
    try:
        return Manifest.from_json(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{path}: not a facevoice model repository manifest ({type(e).__name__}: {e}); "
                          "run `facevoice export` first") from e


def _detectors_found(repo: Path, manifest: Manifest) -> Manifest:
    """The manifest with the face detector a front end names (relative to the repository, as
    export writes it) found in this repository, for the media pipeline to load."""
    for name, space in manifest.spaces.items():
        detector = getattr(space.frontend, "synth_detector", "")
        if detector and not Path(detector).is_absolute():
            frontend = replace(space.frontend, synth_detector=str(Path(repo).resolve() / detector))
            manifest.spaces[name] = replace(space, frontend=frontend)
    return manifest


def network_file(info: NetworkEntry) -> str:
    """Where a network's ONNX file is, relative to the repository."""
    return f"{info.model}/{info.triton_version}/model.onnx"


def open_repository(repo: Path, progress=None) -> Manifest:
    """The manifest, after checking the files: each served network's ONNX against the SHA-256 in
    `facevoice.json`, and every file `checksums.sha256` lists (export writes it). What the service
    and `index build` read; ChecksumMismatch (a FormatError) names the first file that differs."""
    manifest = read_repository_manifest(repo)
    digests = {network_file(n): n.sha256 for g in manifest.groups.values() for n in g.networks.values()}
    if (Path(repo) / checksums.NAME).exists():
        listed = checksums.read(repo)
        if disagree := sorted(f for f in set(listed) & set(digests) if listed[f] != digests[f]):
            raise checksums.ChecksumMismatch(f"{repo}: {checksums.NAME} and {REPOSITORY_MANIFEST} record different "
                                             f"SHA-256s for {disagree}")
        digests = {**listed, **digests}
    checksums.verify(repo, digests, progress)
    return _detectors_found(repo, manifest)


def write_repository_manifest(repo: Path, manifest: Manifest) -> None:
    """facevoice.json, replaced atomically, plus facevoice.vN.json kept for rollback (a file: a
    directory here would be read by Triton as a model)."""
    text = manifest.to_json()
    (Path(repo) / f"facevoice.v{manifest.triton_version}.json").write_text(text)
    tmp = Path(repo) / f".{REPOSITORY_MANIFEST}.tmp"
    tmp.write_text(text)
    tmp.replace(Path(repo) / REPOSITORY_MANIFEST)  # readers never see half a manifest
