"""A study is data, not code: STUDY_DIR/study.toml plus a stimulus corpus in the manifest format.

study.toml (every key but `title` has a default; study/examples/demo/study.toml shows them all):

    title = "Matching voices and faces"
    corpus = "../../demo/corpus"      # relative to STUDY_DIR; the stimulus people
    splits = ["val", "test"]          # which of its identities are stimuli (not the trained-on ones)
    experiments = [1, 2, 3, 4]        # Kim et al. sec. 3: V->F G, G/E, G/E/F/A; F->V G/E/F/A
    roles = ["record", "match"]       # the tasks it runs; a study on a platform runs one
    seed = 0
    scripts = ["...", "..."]          # read aloud in the recording task (Kim A.1.2)

    [consent]                         # the consent page; `study serve` refuses a real run without
    version = "1"                     # every field (`--pilot` serves the preview link only)
    researcher = "Dr. A. Researcher"
    institution = "..."
    ethics_approval = "IRB 2026-123"
    contact = "study@example.org"
    payment = "GBP 2.00 for about ten minutes"
    data_kept = "your answers and, if you record yourself, your voice and one photo"
    retention = "until the end of 2028"
    withdrawal = "at any time, with your participant code, on the withdrawal page"
    text = "<p>...</p>"               # optional: more HTML, shown after the fields

    [platform]                        # the recruitment hand-off
    name = "prolific"                 # prolific | mturk | generic | none
    params = ["PROLIFIC_PID", "STUDY_ID", "SESSION_ID"]   # the URL parameters kept (default: the name's)
    once = true                       # one platform id takes part once (per role)
    required = false                  # true: a join without the id is refused

    [outcomes.completed]              # one per outcome: completed, screened_out, failed_checks,
    code = "C0FFEE"                   # declined, no_device; its own code, and where the page sends
    redirect = "https://app.prolific.com/submissions/complete?cc={code}"   # the participant

    [stimuli]                         # Kim et al. A.1.2: ten-second clips
    clip_seconds = 10.0
    by_experiment = {"4" = 10.0}      # optional: one experiment's own length
    fill = "silence"                  # a shorter voice is padded with silence, or "tile"d

    [listening]
    enforce = true                    # the server refuses an answer before the clip could have ended
    slack_seconds = 0.3

    [sound_check]
    enabled = false                   # count the beeps before the tasks; failing screens out
    tries = 2

    [headphone_check]                 # Huggins pitch (Milne et al. 2021), after the sound check
    enabled = false                   # which of three noises holds a faint tone: only headphones
    trials = 6                        # carry it; fewer than `min_correct` right screens out
    min_correct = 5

    [devices]
    allowed = ["desktop", "tablet", "phone"]

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
    min_speech_seconds = 5.0          # per script read aloud
    max_upload_bytes = 10485760
    video = false                     # true: each script is filmed (Kim et al. 3.1) and the video kept

    [joins]
    inactive_after_s = 1800.0
    per_minute = 30                   # joins one address may make per minute (a burst of 10)
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import asdict, dataclass, field
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
CONSENT_FIELDS = {  # key -> the label the consent page gives it
    "researcher": "Researcher", "institution": "Institution", "ethics_approval": "Ethics approval",
    "contact": "Contact", "payment": "Payment", "data_kept": "What we keep", "retention": "For how long",
    "withdrawal": "Withdrawing"}
# how a participant's part ends; each has its own code and redirect (Prolific's completion codes)
OUTCOMES = ("completed", "screened_out", "failed_checks", "declined", "no_device")
# the URL parameters each platform hands over; the first is the participant's platform id
PLATFORM_PARAMS = {"prolific": ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID"),
                   "mturk": ("workerId", "assignmentId", "hitId"), "generic": ("participant_id",), "none": ()}
PLATFORM_REDIRECTS = {"prolific": "https://app.prolific.com/submissions/complete?cc={code}"}
DEVICES = ("desktop", "tablet", "phone")


@dataclass(frozen=True)
class Design:
    partners: int = 8
    pairs_per_gender: int = 8
    consistency_controls: int = 2
    correctness_controls: int = 2
    max_failed_controls: int = 1


@dataclass(frozen=True)
class Recording:
    # detected speech each script read aloud must hold (two scripts give a 10 s clip, A.1.2)
    min_speech_seconds: float = 5.0
    max_upload_bytes: int = 10 * 1024 * 1024
    # Kim et al. 3.1 filmed each reading. Off by default: a video is more of a person than a
    # corpus needs (the speech and one still). On, the page films each script and the upload,
    # checked like any voice, is kept beside its speech.
    video: bool = False

    def __post_init__(self):
        _switch(self.video, "recording.video")


def _number(value, name: str, low: float = 0.0, strict: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value > low if strict else value >= low):
        raise TypeError(f"{name} must be a number {'above' if strict else 'of at least'} {low:g}, not {value!r}")


def _switch(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, not {value!r}")


def _integer(value, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise TypeError(f"{name} must be a whole number from {low}{f' to {high}' if high is not None else ''}, "
                        f"not {value!r}")


@dataclass(frozen=True)
class Joins:
    # a matcher who has neither finished nor done anything (joined, consented, answered) for this
    # long stops counting for the experiment balancing, so abandoned joins do not skew it
    inactive_after_s: float = 1800.0
    per_minute: float = 30.0  # joins per client address and minute (a burst of `burst`)
    burst: int = 10
    trust_proxy: bool = False  # behind the TLS proxy: the address is X-Forwarded-For's first

    def __post_init__(self):
        _number(self.inactive_after_s, "joins.inactive_after_s")
        _number(self.per_minute, "joins.per_minute")
        _number(self.burst, "joins.burst", 1, strict=False)


@dataclass(frozen=True)
class Consent:
    version: str = ""
    researcher: str = ""
    institution: str = ""
    ethics_approval: str = ""
    contact: str = ""
    payment: str = ""
    data_kept: str = ""
    retention: str = ""
    withdrawal: str = ""
    text: str = ""  # HTML shown after the fields

    def missing(self) -> list[str]:
        """The fields a real run needs that are empty."""
        return [k for k in ("version", *CONSENT_FIELDS) if not str(getattr(self, k)).strip()]

    def html(self) -> str:
        """The consent page's text: the fields as a list, then `text`."""
        from html import escape

        rows = "".join(f"<li><strong>{label}:</strong> {escape(str(getattr(self, k)))}</li>"
                       for k, label in CONSENT_FIELDS.items() if str(getattr(self, k)).strip())
        return (f"<ul class=\"consent\">{rows}</ul>" if rows else "") + self.text

    def digest(self) -> str:
        """sha256 of what the participant was shown (kept with their consent)."""
        return hashlib.sha256(self.html().encode()).hexdigest()


@dataclass(frozen=True)
class Outcome:
    code: str
    redirect: str = ""  # a URL; {code} is replaced by the code

    def url(self) -> str:
        return self.redirect.replace("{code}", self.code) if self.redirect else ""


@dataclass(frozen=True)
class Platform:
    name: str = "none"
    params: tuple[str, ...] = ()
    once: bool = True
    required: bool = False


@dataclass(frozen=True)
class Stimuli:
    clip_seconds: float = 10.0  # Kim et al. A.1.2: "ten-second-long audio clips"
    by_experiment: dict[int, float] = field(default_factory=dict)
    fill: str = "silence"

    def seconds(self, experiment: int) -> float:
        return self.by_experiment.get(experiment, self.clip_seconds)


@dataclass(frozen=True)
class Listening:
    enforce: bool = True
    slack_seconds: float = 0.3


@dataclass(frozen=True)
class SoundCheck:
    enabled: bool = False
    tries: int = 2

    def __post_init__(self):
        _switch(self.enabled, "sound_check.enabled")


@dataclass(frozen=True)
class HeadphoneCheck:
    """Milne et al. 2021's Huggins-pitch test (study/checks.py): `trials` tries of three
    intervals; fewer than `min_correct` right screens out (chance passes 5 of 6 at 1.8%)."""
    enabled: bool = False
    trials: int = 6
    min_correct: int = 5

    def __post_init__(self):
        _switch(self.enabled, "headphone_check.enabled")
        _integer(self.trials, "headphone_check.trials", 1)
        _integer(self.min_correct, "headphone_check.min_correct", 1, self.trials)


@dataclass(frozen=True)
class Study:
    """A study.toml, read and checked. `directory` is where it lies (the database, the built
    stimuli and the recordings go there too)."""

    directory: Path
    title: str
    corpus: Path
    splits: tuple[str, ...] = ("val", "test")
    experiments: tuple[int, ...] = (1, 2, 3, 4)
    roles: tuple[str, ...] = ("record", "match")  # the tasks this study runs (one per study on a platform)
    seed: int = 0
    consent: Consent = Consent()
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    platform: Platform = Platform()
    scripts: tuple[str, ...] = DEFAULT_SCRIPTS
    survey: tuple[dict, ...] = DEFAULT_SURVEY
    constraints: dict[str, str] = field(default_factory=lambda: {
        "G": "gender", "E": "appearance_group", "F": "first_language", "A": "age_group"})
    design: Design = Design()
    recording: Recording = Recording()
    joins: Joins = Joins()
    stimuli: Stimuli = Stimuli()
    listening: Listening = Listening()
    sound_check: SoundCheck = SoundCheck()
    headphone_check: HeadphoneCheck = HeadphoneCheck()
    devices: tuple[str, ...] = DEVICES
    digest: str = ""  # sha256 of study.toml as read (the export's manifest names it)

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.directory / 'study.sqlite3'}"

    @property
    def recordings_dir(self) -> Path:
        return self.directory / "recordings"

    @property
    def stimuli_dir(self) -> Path:
        return self.directory / "stimuli"

    def outcome(self, name: str) -> Outcome:
        return self.outcomes[name]


def _table(raw: dict, key: str, cls, path: Path, **fixed):
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"{path}: [{key}] must be a table")
    try:
        return cls(**{**value, **fixed})
    except TypeError as e:
        raise UsageError(f"{path}: [{key}]: {e}") from e


def _outcomes(raw: dict, platform: Platform, path: Path) -> dict[str, Outcome]:
    given = raw.get("outcomes", {})
    unknown = sorted(set(given) - set(OUTCOMES))
    if unknown:
        raise UsageError(f"{path}: unknown outcomes {unknown} (known: {list(OUTCOMES)})")
    # the older single `completion_code` stays the completed outcome's
    legacy = str(raw.get("completion_code", "FACEVOICE"))
    out = {}
    for name in OUTCOMES:
        spec = given.get(name, {})
        if not isinstance(spec, dict) or set(spec) - {"code", "redirect"}:
            raise UsageError(f"{path}: [outcomes.{name}] takes `code` and `redirect`")
        code = str(spec.get("code", legacy if name == "completed" else f"{legacy}-{name.upper().replace('_', '-')}"))
        if not code.strip() or len(code) > 64:
            raise UsageError(f"{path}: [outcomes.{name}] code must be 1-64 characters")
        redirect = str(spec.get("redirect", PLATFORM_REDIRECTS.get(platform.name, "")))
        if redirect and not redirect.startswith(("https://", "http://")):
            raise UsageError(f"{path}: [outcomes.{name}] redirect must be an http(s) URL")
        out[name] = Outcome(code, redirect)
    if len({o.code for o in out.values()}) != len(out):
        raise UsageError(f"{path}: each outcome needs its own code (they are how a platform tells them apart)")
    return out


def load_study(directory: Path) -> Study:
    """STUDY_DIR/study.toml -> Study; UsageError naming the key when something is wrong."""
    directory = Path(directory).resolve()
    path = directory / STUDY_FILE
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except OSError as e:
        raise UsageError(f"{path}: cannot read the study file ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not TOML ({e})") from e
    known = {"title", "corpus", "splits", "experiments", "roles", "seed", "consent", "completion_code", "outcomes",
             "platform", "scripts", "survey", "constraints", "design", "recording", "joins", "stimuli",
             "listening", "sound_check", "headphone_check", "devices"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"{path}: unknown keys {unknown} (known: {sorted(known)})")
    if not isinstance(raw.get("title"), str) or not raw["title"].strip():
        raise UsageError(f"{path}: `title` is required")
    design = _table(raw, "design", Design, path)
    recording = _table(raw, "recording", Recording, path)
    joins = _table(raw, "joins", Joins, path)
    listening = _table(raw, "listening", Listening, path)
    sound_check = _table(raw, "sound_check", SoundCheck, path)
    headphone_check = _table(raw, "headphone_check", HeadphoneCheck, path)
    if isinstance(raw.get("consent"), str):  # the older form: one HTML text, no fields
        raw["consent"] = {"text": raw["consent"]}
    consent = _table(raw, "consent", Consent, path)
    platform_raw = raw.get("platform", {})
    name = platform_raw.get("name", "none") if isinstance(platform_raw, dict) else None
    if name not in PLATFORM_PARAMS:
        raise UsageError(f"{path}: [platform] name must be one of {list(PLATFORM_PARAMS)}")
    params = tuple(platform_raw.get("params", PLATFORM_PARAMS[name]))
    if name != "none" and (not params or not all(isinstance(p, str) and p.isidentifier() for p in params)):
        raise UsageError(f"{path}: [platform] params must be URL parameter names")
    platform = _table(raw, "platform", Platform, path, name=name, params=params)
    stimuli_raw = dict(raw.get("stimuli", {}))
    try:
        stimuli_raw["by_experiment"] = {int(k): float(v) for k, v in stimuli_raw.get("by_experiment", {}).items()}
    except (TypeError, ValueError, AttributeError):
        raise UsageError(f"{path}: [stimuli] by_experiment maps experiment numbers to seconds") from None
    try:
        stimuli = Stimuli(**stimuli_raw)
        for seconds in (stimuli.clip_seconds, *stimuli.by_experiment.values()):
            _number(seconds, "stimuli.clip_seconds", 0.2)
        _number(listening.slack_seconds, "listening.slack_seconds", 0.0, strict=False)
        _number(recording.min_speech_seconds, "recording.min_speech_seconds", 0.0)
        _number(sound_check.tries, "sound_check.tries", 1, strict=False)
    except TypeError as e:
        raise UsageError(f"{path}: {e}") from e
    if stimuli.fill not in ("silence", "tile"):
        raise UsageError(f"{path}: [stimuli] fill must be \"silence\" or \"tile\"")
    devices = tuple(raw.get("devices", {}).get("allowed", DEVICES))
    if not devices or set(devices) - set(DEVICES):
        raise UsageError(f"{path}: [devices] allowed must be some of {list(DEVICES)}")
    roles = tuple(raw.get("roles", ("record", "match")))
    if not roles or set(roles) - {"record", "match"}:
        raise UsageError(f"{path}: roles must be some of [\"record\", \"match\"]")
    if platform.name != "none" and len(roles) > 1:
        # one completed code for both tasks would pay a matcher for opening /record instead
        raise UsageError(f"{path}: a study on {platform.name} runs one task: set roles = [\"match\"] or "
                         "[\"record\"] (a second study directory runs the other)")
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
                 splits=tuple(raw.get("splits", ("val", "test"))), experiments=experiments, roles=roles,
                 seed=int(raw.get("seed", 0)), consent=consent, outcomes=_outcomes(raw, platform, path),
                 platform=platform, scripts=scripts, survey=survey, constraints=constraints, design=design,
                 recording=recording, joins=joins, stimuli=stimuli, listening=listening, sound_check=sound_check,
                 headphone_check=headphone_check, devices=devices, digest=hashlib.sha256(text.encode()).hexdigest())


def public(study: Study) -> dict:
    """What the pages may know of the study (never the completed outcome's code)."""
    return {"title": study.title, "consent": study.consent.html(), "consent_version": study.consent.version,
            "survey": list(study.survey), "scripts": list(study.scripts),
            "min_speech_seconds": study.recording.min_speech_seconds,
            "max_upload_bytes": study.recording.max_upload_bytes,
            "platform": {"name": study.platform.name, "params": list(study.platform.params)},
            "devices": list(study.devices), "sound_check": asdict(study.sound_check),
            "headphone_check": asdict(study.headphone_check), "video": study.recording.video,
            "roles": list(study.roles),
            "listening": asdict(study.listening)}

