"""Capture errors as PostHog's capture reports them: JSON ``{"type", "code", "detail", "attr"}``."""

from __future__ import annotations

from typing import Any


class CaptureError(Exception):
    """A request we refuse; ``status`` is a 4xx except ``server_error`` (503, retryable).

    ``retry_after`` (seconds) becomes a Retry-After header: set on the 503s that shed load.
    """

    def __init__(
        self, status: int, type_: str, code: str, detail: str, attr: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type_
        self.code = code
        self.detail = detail
        self.attr = attr
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in decode worker processes and pickled back: keep every field, not just the message.
        return (CaptureError, (self.status, self.type, self.code, self.detail, self.attr, self.retry_after))

    def body(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.code, "detail": self.detail, "attr": self.attr}


def invalid(code: str, detail: str, attr: str | None = None) -> CaptureError:
    return CaptureError(400, "validation_error", code, detail, attr)


def unauthorized(code: str, detail: str) -> CaptureError:
    return CaptureError(401, "authentication_error", code, detail)


def key_refused(reason: str) -> CaptureError:
    """The 401 of a key refused by its shape (``eventpipe.teams.api_key_shape_error``'s reason), wherever it
    was sent: query, form field or payload."""
    if reason == "missing_api_key":
        return unauthorized(reason, "API key not found. You can find your project API key with `eventpipe teams list`.")
    if reason == "personal_api_key":
        return unauthorized(reason, "Personal API keys (phx_…) can't send events: use your project API key (phc_…).")
    return unauthorized(reason, "Project API key invalid.")


def too_large(detail: str) -> CaptureError:
    return CaptureError(413, "validation_error", "payload_too_large", detail)


def timed_out(detail: str) -> CaptureError:
    return CaptureError(408, "validation_error", "request_timeout", detail)


def unavailable(detail: str, retry_after: int | None = None) -> CaptureError:
    return CaptureError(503, "server_error", "server_error", detail, retry_after=retry_after)
