"""The demo's request bodies, read within bounds before any work is queued.

A body is read whole, with a size limit (413, refused from ``Content-Length`` before reading when it declares
more, else while counting the bytes as they arrive) and one deadline for the whole body (408), before the
request takes a place in the work queue: a slow client (a byte every few seconds) only costs its connection and
one of ``max_open`` reading places until its deadline, never a worker. A client that goes away mid-body is not an
error of the server: :class:`ClientDisconnect` propagates, and the app logs one line for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from flexitok.demo.errors import Busy, DemoHTTPError

__all__ = ["BodyReader", "ClientDisconnect", "Upload", "human_size"]

# Room for the multipart boundary and part headers around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
# A body that did not arrive in time: the answer closes the connection (RFC 9110, 408). A 413 does not: the
# server discards the rest of the body and the client, still sending, can read the answer (no broken pipe).
_CLOSE = {"Connection": "close"}


def human_size(n: float) -> str:
    """``65536`` -> ``"64.0 KiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass(frozen=True)
class Upload:
    """The ``file`` field of a multipart upload."""

    data: bytes
    filename: str
    content_type: str  # lower case; "" when the part declares none


class BodyReader:
    """Reads request bodies whole: at most ``max_open`` at once (beyond: 503), each within ``timeout_s``."""

    def __init__(self, max_open: int, timeout_s: float) -> None:
        self.max_open, self.timeout_s = max_open, timeout_s
        self._lock = threading.Lock()
        self.open = 0

    async def read(self, request: Request, max_bytes: int, too_large: str) -> bytes:
        """The body of ``request`` (at most ``max_bytes``; else :class:`DemoHTTPError` 413 saying ``too_large``).

        Raises 408 when the body has not arrived within ``timeout_s``, :class:`Busy` when ``max_open`` bodies
        are being read, :class:`ClientDisconnect` when the client goes away.
        """
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise DemoHTTPError(too_large, 413)
        with self._lock:
            if self.open >= self.max_open:
                raise Busy("the server is busy (too many uploads in progress); try again shortly")
            self.open += 1
        try:
            return await asyncio.wait_for(self._read(request, max_bytes, too_large), self.timeout_s)
        except asyncio.TimeoutError:
            raise DemoHTTPError(
                f"the request body did not arrive within {self.timeout_s:g} s (flexitok demo --upload-timeout)",
                408,
                _CLOSE,
            ) from None
        finally:
            with self._lock:
                self.open -= 1

    @staticmethod
    async def _read(request: Request, max_bytes: int, too_large: str) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise DemoHTTPError(too_large, 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_upload(self, request: Request, max_file_bytes: int, too_large: str) -> Upload:
        """The ``file`` field of a ``multipart/form-data`` request (400 for other bodies, 413 over
        ``max_file_bytes``)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise DemoHTTPError("send the image as multipart/form-data with a field named 'file'")
        body = await self.read(request, max_file_bytes + MULTIPART_OVERHEAD, too_large)

        async def replay() -> AsyncGenerator[bytes, None]:
            yield body

        try:
            form = await MultiPartParser(request.headers, replay(), max_files=1, max_fields=16).parse()
        except (MultiPartException, ValueError, KeyError, AssertionError) as e:  # python-multipart's parse errors
            detail = getattr(e, "message", str(e))
            raise DemoHTTPError(f"malformed multipart/form-data body ({detail[:200]})") from None
        try:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise DemoHTTPError("the form has no file field named 'file'")
            data = await part.read()
            upload = Upload(data, part.filename or "upload", (part.content_type or "").lower())
        finally:
            await form.close()
        if len(data) > max_file_bytes:
            raise DemoHTTPError(too_large, 413)
        if not data:
            raise DemoHTTPError(f"{upload.filename}: the file is empty")
        return upload
