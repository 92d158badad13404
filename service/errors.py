"""The project's error types. Request-path errors become gRPC status codes once, in
service/handlers.py; every FacevoiceError a command meets becomes its message and exit status 2
once, in facevoice/cli.py."""

from __future__ import annotations


class FacevoiceError(Exception):
    """Base of everything this project raises on purpose; the message says what to do."""


class FormatError(FacevoiceError):
    """A file that is not in the format it should be (a manifest, a checkpoint, a config)."""


class UsageError(FacevoiceError):
    """Settings or arguments that cannot work (a bad value, a missing tool, a refused overwrite)."""


class CorpusError(FacevoiceError):
    """A corpus that lacks what a command needs (a split, a modality, an attribute's values)."""


class ServiceError(FacevoiceError):
    """Base of everything the request path raises on purpose."""


class BadRequest(ServiceError):
    """The request itself is wrong (INVALID_ARGUMENT)."""


class NotLoaded(ServiceError):
    """No index of the needed kind is loaded (NOT_FOUND)."""


class Unsupported(ServiceError):
    """The loaded models cannot answer this (FAILED_PRECONDITION)."""


class DependencyUnavailable(ServiceError):
    """Triton (or another dependency) did not answer within the deadline (UNAVAILABLE)."""


class DeadlineExceeded(ServiceError):
    """The call's own deadline passed (DEADLINE_EXCEEDED)."""


class Cancelled(ServiceError):
    """The client cancelled the call while it waited (CANCELLED)."""


class Exhausted(ServiceError):
    """A bound was reached (concurrent calls, the live-edit overlay); RESOURCE_EXHAUSTED."""


class Stopped(ServiceError):
    """An operator must act first: the gallery log is damaged (FAILED_PRECONDITION)."""
