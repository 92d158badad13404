"""The service's error types; turned into gRPC status codes once, in service/handlers.py."""

from __future__ import annotations


class ServiceError(Exception):
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
