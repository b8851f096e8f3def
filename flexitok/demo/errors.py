"""The demo's HTTP errors: raised by the service, the work queue and the body reader, answered as JSON
``{"detail": ...}`` with their status by the app's one handler."""

from __future__ import annotations


class DemoHTTPError(Exception):
    """A request the demo answers with ``status`` (4xx for user input, 503 when busy) and ``detail``."""

    status = 400

    def __init__(self, detail: str, status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = headers or {}


class Busy(DemoHTTPError):
    """The server is at capacity (503, retry after 5 s)."""

    status = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})
