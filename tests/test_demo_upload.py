"""The demo's upload path (#22.5): a request body is read, bounded in size and time, before the request takes a
work slot, so slow clients (a byte a second) cannot starve valid requests; a body that does not arrive in time is
answered 408; a client that goes away mid-upload is one log line, not a traceback. Loopback only; every loop is
bounded in time."""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from PIL import Image

from flexitok import DecodeConfig
from tests.conftest import tiny_model

pytest.importorskip("fastapi", reason="the demo needs the [demo] extra")
uvicorn = pytest.importorskip("uvicorn", reason="the demo needs the [demo] extra")

from flexitok.demo import DemoConfig, create_app  # noqa: E402

N_SLOW = 20
UPLOAD_TIMEOUT_S = 5.0


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png'
    body = f"{head}\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _request(port: int, method: str, path: str, body: bytes | None = None, ctype: str = "") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _read_answer(sock: socket.socket, first: bytes = b"") -> bytes:
    """The rest of the server's answer, up to its closing the connection (bounded: 10 reads of 1 s). A server
    closing with unread request bytes resets the connection, which may drop the rest of the answer."""
    got = first
    sock.settimeout(1.0)
    for _ in range(10):
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got


def _slow_head(port: int, length: int) -> socket.socket:
    """A connection that sent an upload's headers (declaring ``length`` body bytes) and nothing of its body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /api/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"--xyz\r\n")
    return sock


@pytest.fixture
def server(one_thread: None) -> Iterator[int]:
    """A demo with one worker and no queue (one request in flight fills it) on a loopback port; uvicorn's log
    records reach the root logger (``caplog``)."""
    app = create_app(
        tiny_model(),
        DemoConfig(workers=1, max_queue=0, upload_timeout_s=UPLOAD_TIMEOUT_S, decode=DecodeConfig(steps=1)),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", log_config=None))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the demo server did not start"
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    thread.join(10)


def test_slow_uploads_do_not_block_valid_requests_and_time_out(server: int) -> None:
    answers: list[bytes] = []
    lock = threading.Lock()
    ready = threading.Barrier(N_SLOW + 1, timeout=30)

    def slow_client() -> None:
        sock = _slow_head(server, 100_000)
        sock.settimeout(1.0)
        ready.wait()
        got = b""
        try:
            for _ in range(int(UPLOAD_TIMEOUT_S) + 10):  # a byte a second until the server answers (bounded)
                try:
                    got = sock.recv(4096)
                    got = _read_answer(sock, got)
                    break
                except TimeoutError:
                    sock.sendall(b"x")
        except OSError:
            pass
        finally:
            sock.close()
        with lock:
            answers.append(got)

    threads = [threading.Thread(target=slow_client) for _ in range(N_SLOW)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.monotonic()
    time.sleep(1.0)  # every slow client has its body reading under way
    # With one worker and no queue, a slow client holding a slot would make these 503.
    body, ctype = _multipart(_png())
    status, up = _request(server, "POST", "/api/images", body, ctype)
    assert status == 200, up
    status, rec = _request(server, "GET", f"/api/images/{up['id']}/reconstruction?k=2")
    assert status == 200, rec
    assert time.monotonic() - t0 < UPLOAD_TIMEOUT_S, "the valid requests did not overlap the slow ones"
    for t in threads:
        t.join(UPLOAD_TIMEOUT_S + 20)
    assert not any(t.is_alive() for t in threads)
    assert len(answers) == N_SLOW
    for raw in answers:  # each slow body is cut off at the deadline: 408, and the connection is closed
        assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
        assert b"connection: close" in raw.lower() and b"content-type: application/json" in raw.lower()


def test_abandoned_upload_logs_one_line_and_no_traceback(server: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sock = _slow_head(server, 50_000)
    sock.sendall(b"x" * 100)
    time.sleep(0.3)
    sock.close()  # gone mid-body
    deadline = time.monotonic() + 20
    while not any("went away" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no log line for the abandoned upload"
        time.sleep(0.1)
    notes = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(notes) == 1 and notes[0].name == "flexitok.demo" and "POST /api/images" in notes[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]
    # The server is fine and its worker free.
    body, ctype = _multipart(_png())
    assert _request(server, "POST", "/api/images", body, ctype)[0] == 200


def test_declared_oversized_body_is_413_before_it_is_read(server: int) -> None:
    sock = _slow_head(server, 10 * 1024 * 1024 + 10**6)  # over the default 10 MiB (+ multipart room)
    sock.settimeout(10)
    raw = _read_answer(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 413") and b"too large" in raw


def test_body_reader_bounds_time_and_open_bodies() -> None:
    import asyncio

    from starlette.requests import Request

    from flexitok.demo.errors import Busy, DemoHTTPError
    from flexitok.demo.upload import BodyReader

    async def never() -> dict:
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    def request() -> Request:
        return Request({"type": "http", "method": "POST", "headers": []}, never)

    reader = BodyReader(max_open=1, timeout_s=0.2)
    with pytest.raises(DemoHTTPError) as e:
        asyncio.run(reader.read(request(), 100, "too big"))
    assert e.value.status == 408 and "within 0.2 s" in e.value.detail and reader.open == 0

    async def two_at_once() -> None:
        first = asyncio.ensure_future(reader.read(request(), 100, "too big"))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy):  # the one reading place is taken
            await reader.read(request(), 100, "too big")
        with pytest.raises(DemoHTTPError):
            await first

    asyncio.run(two_at_once())
    assert reader.open == 0
