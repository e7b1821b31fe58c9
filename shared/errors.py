"""Errors that a request can cause, each naming the gRPC status it is reported with.

A handler that catches one of these aborts with `shared.grpc_server.abort_for(context, exc)`, and the
CLI turns the same status into its exit code: the status is chosen by the exception's type, in one
place, never by matching its text. The message always says what to fix.
"""

from __future__ import annotations

from typing import ClassVar


class StatusError(Exception):
    """Base of the errors a request can cause; `status` is a `grpc.StatusCode` name."""

    status: ClassVar[str] = "INVALID_ARGUMENT"


class NotFoundError(StatusError):
    """Something the request names (a file, a model, a run, an artifact) does not exist."""

    status: ClassVar[str] = "NOT_FOUND"


class Overloaded(StatusError):
    """The replica cannot take the request now; another replica or a later retry may."""

    status: ClassVar[str] = "RESOURCE_EXHAUSTED"


class Unavailable(StatusError):
    """A dependency of the request is down."""

    status: ClassVar[str] = "UNAVAILABLE"
