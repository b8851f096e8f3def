"""The demo web app: pick a tokenizer, upload an image (or pick a sample), choose k, see the reconstruction and
the whole coarse-to-fine strip; optionally generate.

JSON API (the static page in ``static/`` is its only client). ``model=NAME`` picks one of the served tokenizers
(default: the first); an uploaded image stays with the tokenizer that tokenized it.

* ``GET  /api/info?model=NAME`` -> model facts, the served model names, the strip's k values, sample names, the
  upload limits, the generator panel description (or null)
* ``POST /api/images?model=NAME`` (multipart field ``file``) -> ``{"id", "model", "note", "original"}``; 413 when
  larger than ``max_upload_bytes``, 408 when the body takes longer than ``upload_timeout_s``, 415 for non-image
  files, 400 for other bad requests
* ``POST /api/samples/{name}?model=NAME`` -> same as an upload, for one of that model's sample images
* ``GET  /api/images/{id}/reconstruction?k=K&seed=S`` -> ``{"k", "image", "psnr", "ftok_bytes"}``
* ``GET  /api/images/{id}/strip?seed=S`` -> ``{"ks", "reconstructions"}``: one reconstruction (as above) for every
  k of the coarse-to-fine ladder 1, 2, 4, ..., N
* ``POST /api/generate`` ``{"model", "k", "seed", "class_index" | "prompt"}`` -> ``{"k", "image"}`` (404 when that
  model has no generator)

Images travel as ``data:image/png;base64`` URLs. The routes are thin: :class:`DemoService` does the work, through
its :class:`~flexitok.demo.queue.WorkQueue` (503 when busy) after reading request bodies within bounds
(:mod:`flexitok.demo.upload`). Every error, user input or not, is a JSON ``{"detail": ...}``; user errors are 4xx.
A client that goes away mid-request is logged as one line (logger ``flexitok.demo``), not as a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from flexitok.demo.config import DemoConfig, DemoModel, GeneratorBackend, default_max_pixels
from flexitok.demo.dataurl import decode_data_url, png_data_url
from flexitok.demo.errors import DemoHTTPError
from flexitok.demo.service import DemoService
from flexitok.errors import FlexiTokError, InvalidInputError

__all__ = [
    "DemoConfig",
    "DemoModel",
    "GeneratorBackend",
    "create_app",
    "decode_data_url",
    "default_max_pixels",
    "png_data_url",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("flexitok.demo")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def served_models(
    model: Any | list[DemoModel], config: DemoConfig, generator: GeneratorBackend | None
) -> list[DemoModel]:
    """``create_app``'s arguments as the list of :class:`DemoModel` it serves."""
    if not isinstance(model, (list, tuple)):
        return [DemoModel(config.model_name, model, config.samples_dir, generator=generator)]
    if not model or not all(isinstance(m, DemoModel) for m in model):
        raise InvalidInputError("create_app needs a FlexTok model or a non-empty list of DemoModel")
    if generator is not None:
        raise InvalidInputError("with a list of DemoModel, give each its own generator")
    return list(model)


def create_app(
    model: Any | list[DemoModel],
    config: DemoConfig | None = None,
    generator: GeneratorBackend | None = None,
) -> FastAPI:
    """Build the FastAPI app around one loaded :class:`flexitok.FlexTok` (eval mode; served as
    ``config.model_name`` with ``config.samples_dir`` and the optional ``generator``), or around a list of
    :class:`DemoModel` the page lets the user pick from (the first is the one it opens on)."""
    config = config or DemoConfig()
    service = DemoService(served_models(model, config, generator), config)

    app = FastAPI(title="flexitok demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(DemoHTTPError)
    def demo_error(request: Request, exc: DemoHTTPError) -> JSONResponse:
        return _error(exc.status, exc.detail, exc.headers)

    @app.exception_handler(FlexiTokError)
    def user_error(request: Request, exc: FlexiTokError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(ClientDisconnect)
    def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Not a server fault: one line, no traceback (nobody reads the answer).
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s went away before sending all of %s %s", client, request.method, request.url.path)
        return _error(400, "the client disconnected")

    @app.exception_handler(Exception)
    def server_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not user input (those are 4xx above): still a JSON answer; the traceback goes to the log.
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info(model: str | None = None) -> dict[str, Any]:
        return service.info(model)

    @app.post("/api/images")
    async def upload(request: Request, model: str | None = None) -> dict[str, Any]:
        return await service.upload(request, model)

    @app.post("/api/samples/{name}")
    async def sample(name: str, model: str | None = None) -> dict[str, Any]:
        return await service.sample(name, model)

    @app.get("/api/images/{image_id}/reconstruction")
    async def reconstruction(image_id: str, k: int, seed: int = 0) -> dict[str, Any]:
        return await service.reconstruction(image_id, k, seed)

    @app.get("/api/images/{image_id}/strip")
    async def strip(image_id: str, seed: int = 0) -> dict[str, Any]:
        return await service.strip(image_id, seed)

    @app.post("/api/generate")
    async def generate(request: Request) -> dict[str, Any]:
        return await service.generate(request)

    return app
