"""A study is data, not code: STUDY_DIR/study.toml plus a stimulus corpus in the manifest format.

study.toml (every key but `title` has a default; study/examples/demo/study.toml shows them all):

    title = "Matching voices and faces"
    corpus = "../../demo/corpus"      # relative to STUDY_DIR; the stimulus people
    splits = ["val", "test"]          # which of its identities are stimuli (not the trained-on ones)
    experiments = [1, 2, 3, 4]        # Kim et al. sec. 3: V->F G, G/E, G/E/F/A; F->V G/E/F/A
    seed = 0
    consent = "..."                   # HTML shown before anything is asked
    completion_code = "C0FFEE"        # shown at the end (Prolific/MTurk style)
    scripts = ["...", "..."]          # read aloud in the recording task (Kim A.1.2)

    [design]                          # sec. 3.2's counts
    partners = 8                      # each person is paired with 8 others within the constraint
    pairs_per_gender = 8              # each participant: 8 male and 8 female pairs
    consistency_controls = 2
    correctness_controls = 2
    max_failed_controls = 1           # failing 2 or more excludes

    [constraints]                     # which manifest column each letter of G/E/F/A means
    G = "gender"
    E = "appearance_group"
    F = "first_language"
    A = "age_group"

    [[survey]]                        # the demographic questionnaire (sec. 3.1), editable
    name = "gender"
    label = "Gender"
    options = ["female", "male", "other", "prefer not to say"]

    [recording]
    min_speech_seconds = 3.0
    max_upload_bytes = 10485760
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from facevoice.service.errors import UsageError

STUDY_FILE = "study.toml"

# Kim et al. sec. 3: the experiment number -> (direction, demographic constraint letters)
EXPERIMENTS: dict[int, tuple[str, str]] = {1: ("V->F", "G"), 2: ("V->F", "GE"), 3: ("V->F", "GEFA"),
                                           4: ("F->V", "GEFA")}

DEFAULT_SURVEY = (
    {"name": "gender", "label": "Gender", "options": ["female", "male", "other", "prefer not to say"]},
    {"name": "ethnicity", "label": "Ethnicity",
     "options": ["Asian", "Black or African American", "Hispanic or Latino", "White (non-Hispanic)",
                 "Other", "prefer not to say"]},
    {"name": "age", "label": "Age (years)", "type": "number", "min": 18, "max": 120},
    {"name": "first_language", "label": "First language", "type": "text"},
    {"name": "recorded", "label": "Did you record yourself for this study before?", "options": ["no", "yes"]},
)
# Kim et al. A.1.2: the scripts read aloud (two of the paper's pool, shortened to one sentence each)
DEFAULT_SCRIPTS = (
    "Forty-four Americans have now taken the presidential oath. The words have been spoken during "
    "rising tides of prosperity and the still waters of peace.",
    "That we are in the midst of crisis is now well understood. Our nation is at war, against a "
    "far-reaching network of violence and hatred.",
)
DEFAULT_CONSENT = (
    "<p>This study is about how people match voices and faces. It takes about ten minutes.</p>"
    "<p>We store your answers and, if you record yourself, your voice and one photo of your face. "
    "We do not store your name, e-mail or IP address. You can withdraw at any time, and then "
    "everything you gave is deleted.</p>")


@dataclass(frozen=True)
class Design:
    partners: int = 8
    pairs_per_gender: int = 8
    consistency_controls: int = 2
    correctness_controls: int = 2
    max_failed_controls: int = 1


@dataclass(frozen=True)
class Recording:
    min_speech_seconds: float = 3.0
    max_upload_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class Joins:
    # a matcher who has neither finished nor done anything (joined, consented, answered) for this
    # long stops counting for the experiment balancing, so abandoned joins do not skew it
    inactive_after_s: float = 1800.0

    def __post_init__(self):
        if not self.inactive_after_s > 0:
            raise TypeError("joins.inactive_after_s must be a positive number of seconds")


@dataclass(frozen=True)
class Study:
    """A study.toml, read and checked. `directory` is where it lies (the database and the
    recordings go there too)."""

    directory: Path
    title: str
    corpus: Path
    splits: tuple[str, ...] = ("val", "test")
    experiments: tuple[int, ...] = (1, 2, 3, 4)
    seed: int = 0
    consent: str = DEFAULT_CONSENT
    completion_code: str = "FACEVOICE"
    scripts: tuple[str, ...] = DEFAULT_SCRIPTS
    survey: tuple[dict, ...] = DEFAULT_SURVEY
    constraints: dict[str, str] = field(default_factory=lambda: {
        "G": "gender", "E": "appearance_group", "F": "first_language", "A": "age_group"})
    design: Design = Design()
    recording: Recording = Recording()
    joins: Joins = Joins()

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.directory / 'study.sqlite3'}"

    @property
    def recordings_dir(self) -> Path:
        return self.directory / "recordings"


def load_study(directory: Path) -> Study:
    """STUDY_DIR/study.toml -> Study; UsageError naming the key when something is wrong."""
    directory = Path(directory).resolve()
    path = directory / STUDY_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{path}: cannot read the study file ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not TOML ({e})") from e
    known = {"title", "corpus", "splits", "experiments", "seed", "consent", "completion_code", "scripts",
             "survey", "constraints", "design", "recording", "joins"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"{path}: unknown keys {unknown} (known: {sorted(known)})")
    if not isinstance(raw.get("title"), str) or not raw["title"].strip():
        raise UsageError(f"{path}: `title` is required")
    try:
        design = Design(**raw.get("design", {}))
        recording = Recording(**raw.get("recording", {}))
        joins = Joins(**raw.get("joins", {}))
    except TypeError as e:
        raise UsageError(f"{path}: {e}") from e
    experiments = tuple(int(e) for e in raw.get("experiments", (1, 2, 3, 4)))
    if not experiments or any(e not in EXPERIMENTS for e in experiments):
        raise UsageError(f"{path}: experiments must be a non-empty list of {sorted(EXPERIMENTS)}")
    survey = tuple(raw.get("survey", DEFAULT_SURVEY))
    names = [q.get("name") for q in survey]
    if "gender" not in names or len(set(names)) != len(names):
        raise UsageError(f"{path}: the survey needs unique question names, `gender` among them")
    constraints = {"G": "gender", "E": "appearance_group", "F": "first_language", "A": "age_group",
                   **raw.get("constraints", {})}
    scripts = tuple(raw.get("scripts", DEFAULT_SCRIPTS))
    if not scripts or not all(isinstance(s, str) and s.strip() for s in scripts):
        raise UsageError(f"{path}: scripts must be a non-empty list of texts")
    corpus = (directory / raw.get("corpus", "corpus")).resolve()
    return Study(directory=directory, title=raw["title"], corpus=corpus,
                 splits=tuple(raw.get("splits", ("val", "test"))), experiments=experiments,
                 seed=int(raw.get("seed", 0)), consent=raw.get("consent", DEFAULT_CONSENT),
                 completion_code=str(raw.get("completion_code", "FACEVOICE")), scripts=scripts,
                 survey=survey, constraints=constraints, design=design, recording=recording, joins=joins)
