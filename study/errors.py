"""The study's refusals: each a FacevoiceError carrying the HTTP status it is answered with. The
study's rules (study/rules.py, study/participation.py) raise them; study/app.py turns every one
into its HTTP answer in one place (`{"detail": message}` with the status and the error's headers),
as service/handlers.py turns the service's errors into gRPC status codes."""

from __future__ import annotations

from facevoice.service.errors import FacevoiceError


class StudyError(FacevoiceError):
    """Base of every refusal the study's API answers; `status` is its HTTP status."""

    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers


class Invalid(StudyError):
    """A value the request carries cannot be taken (an unknown question, a platform id missing)."""

    status = 400


class Unauthorized(StudyError):
    """The admin token is missing or wrong."""

    status = 401


class Forbidden(StudyError):
    """Not this participant's to do: another role's task, a step before its turn, a study's policy."""

    status = 403


class NotFound(StudyError):
    """No such participant, trial or recording."""

    status = 404


class Conflict(StudyError):
    """Not now: the participant's state has moved on (a replay, a second submission, an answer
    before its recording could have ended)."""

    status = 409


class Gone(StudyError):
    """The participation was withdrawn while the request was handled."""

    status = 410


class TooLarge(StudyError):
    status = 413


class UnsupportedType(StudyError):
    """An upload of a content type its kind does not take."""

    status = 415


class Unusable(StudyError):
    """An upload the media pipeline refused (no speech, no face, not decodable): its message says why."""

    status = 422


class TooMany(StudyError):
    """Too many joins from one address (Retry-After says when one may go ahead)."""

    status = 429


class NotOpen(StudyError):
    """The study cannot take this yet: its pages lack jsPsych, or it runs its pilot only."""

    status = 503
