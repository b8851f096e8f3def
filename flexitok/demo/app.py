"""The demo web app: upload an image (or pick a sample), choose k, see the reconstruction; optionally generate.

JSON API (the static page in ``static/`` is its only client):

* ``GET  /api/info`` -> model facts, sample names, the upload limit, the generator panel description (or null)
* ``POST /api/images`` (multipart field ``file``) -> ``{"id", "note", "original"}``; 413 when larger than
  ``max_upload_bytes``, 415 for non-image files, 400 for other bad requests
* ``POST /api/samples/{name}`` -> same as an upload, for a bundled sample image
* ``GET  /api/images/{id}/reconstruction?k=K&seed=S`` -> ``{"k", "image", "psnr", "ftok_bytes"}``
* ``POST /api/generate`` ``{"k", "seed", "class_index" | "prompt"}`` -> ``{"k", "image"}`` (404 without generator)

Images travel as ``data:image/png;base64`` URLs. Model calls are serialized by a lock (one CPU/GPU model).
"""

from __future__ import annotations

import base64
import io
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from torch import Tensor

from flexitok.codec.adaptive import decode_tokens
from flexitok.codec.ftok import FtokFile
from flexitok.errors import FlexiTokError, InvalidInputError
from flexitok.eval.metrics import psnr
from flexitok.io.images import load_image, load_pil, tensor_to_pil
from flexitok.sampling.decode import DecodeConfig

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Room for the multipart boundary and part headers around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024
# skimage.data colour photos bundled with scikit-image (no download needed).
SKIMAGE_SAMPLES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


class GeneratorBackend(Protocol):
    """What the optional generation panel needs. ``condition`` is ``"class"``, ``"text"`` or ``"none"``."""

    condition: str
    class_names: list[str]
    max_tokens: int

    def generate(self, k: int, seed: int, class_index: int | None, prompt: str | None) -> Tensor:
        """-> one image ``[3, H, W]`` in [-1, 1] decoded from ``k`` generated tokens."""
        ...


@dataclass
class DemoConfig:
    """Server-side limits and decoder settings (a request's seed replaces ``decode.seed``)."""

    model_name: str = "model"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_cached_images: int = 64
    max_cached_reconstructions: int = 512
    decode: DecodeConfig = DecodeConfig()
    samples_dir: Path | None = None  # extra sample images (e.g. the model's own); shown before the skimage photos
    skimage_samples: tuple[str, ...] = SKIMAGE_SAMPLES

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise InvalidInputError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")


@dataclass
class _Entry:
    image: Tensor  # [3, H, W] in [-1, 1], the converted input
    tokens: Tensor  # LongTensor [N]


@dataclass
class _State:
    model: Any
    config: DemoConfig
    generator: GeneratorBackend | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    images: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    recons: OrderedDict[tuple[str, int, int], dict[str, Any]] = field(default_factory=OrderedDict)


class GenerateRequest(BaseModel):
    k: int
    seed: int = 0
    class_index: int | None = None
    prompt: str | None = None


def png_data_url(image: Tensor) -> str:
    """``[3, H, W]`` in [-1, 1] -> ``data:image/png;base64,...``."""
    buf = io.BytesIO()
    tensor_to_pil(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class UploadLimit:
    """ASGI middleware: refuse request bodies over ``max_body`` bytes with 413 before the app parses them.

    Checks the declared Content-Length first; for bodies without one (chunked) it counts bytes as they arrive
    and swaps the app's response for the 413 once the limit is crossed.
    """

    def __init__(self, app: ASGIApp, max_body: int, limit_message: str) -> None:
        self.app, self.max_body, self.message = app, max_body, limit_message

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _error(413, self.message)(scope, receive, send)
            return
        seen = 0
        too_large = False

        async def limited_receive() -> Any:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    too_large = True
                    # Pretend the body ended here: the app sees a truncated body; its response is replaced below.
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        replaced = False

        async def guarded_send(message: Any) -> None:
            nonlocal replaced
            if too_large:
                if not replaced:
                    replaced = True
                    await _error(413, self.message)(scope, receive, send)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _sample_names(config: DemoConfig) -> list[str]:
    names: list[str] = []
    if config.samples_dir is not None and config.samples_dir.is_dir():
        from flexitok.io.images import is_image_file

        names += sorted(p.name for p in config.samples_dir.iterdir() if p.is_file() and is_image_file(p))
    try:
        import skimage.data  # noqa: F401  (optional: scikit-image is a dev/demo nicety)

        names += [n for n in config.skimage_samples if n not in names]
    except ImportError:
        pass
    return names


def create_app(model: Any, config: DemoConfig | None = None, generator: GeneratorBackend | None = None) -> FastAPI:
    """Build the FastAPI app around a loaded :class:`flexitok.FlexTok` (eval mode) and an optional generator."""
    config = config or DemoConfig()
    state = _State(model=model, config=config, generator=generator)
    samples = _sample_names(config)
    limit_msg = (
        f"the upload is too large: this server accepts images up to {_human(config.max_upload_bytes)} "
        "(flexitok demo --max-upload-mb)"
    )

    app = FastAPI(title="flexitok demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def remember(image: Tensor, note: str) -> dict[str, Any]:
        image_id = uuid.uuid4().hex
        with state.lock:  # one model, and the caches are shared between worker threads
            tokens = model.tokenize(image[None].to(model.device))[0].cpu()
            state.images[image_id] = _Entry(image=image, tokens=tokens)
            while len(state.images) > config.max_cached_images:
                state.images.popitem(last=False)
        return {"id": image_id, "note": note, "original": png_data_url(image)}

    def load_and_remember(data: bytes, name: str) -> dict[str, Any]:
        try:
            loaded = load_image(data, model.image_size)  # decoding a large photo is slow: off the event loop
        except InvalidInputError as e:
            detail = str(e).replace("<bytes>", name)
            raise HTTPException(415, f"{detail}; upload a PNG, JPEG, WebP, BMP, GIF or TIFF image") from None
        return remember(loaded.tensor, loaded.note)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        gen = None
        if generator is not None:
            gen = {
                "condition": generator.condition,
                "class_names": list(generator.class_names),
                "max_tokens": generator.max_tokens,
            }
        h, w = model.image_size
        return {
            "model": config.model_name,
            "n_registers": model.n_registers,
            "image_size": [h, w],
            "vocab_size": model.vocab_size,
            "bits_per_token": math.ceil(math.log2(model.vocab_size)),
            "max_upload_bytes": config.max_upload_bytes,
            "samples": samples,
            "generator": gen,
        }

    @app.post("/api/images")
    async def upload(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise HTTPException(400, "send the image as multipart/form-data with a field named 'file'")
        form = await request.form()
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise HTTPException(400, "the form has no file field named 'file'")
        data = await part.read()
        name = part.filename or "upload"
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, limit_msg)
        if not data:
            raise HTTPException(400, f"{name}: the file is empty")
        part_type = (part.content_type or "").lower()
        if part_type and not part_type.startswith("image/") and part_type != "application/octet-stream":
            raise HTTPException(415, f"{name}: expected an image file (PNG, JPEG, WebP, ...), got {part_type}")
        return await _run(load_and_remember, data, name)

    @app.post("/api/samples/{name}")
    def sample(name: str) -> dict[str, Any]:
        if name not in samples:
            raise HTTPException(404, f"no sample image named {name!r}; available: {', '.join(samples) or 'none'}")
        if config.samples_dir is not None and (config.samples_dir / name).is_file():
            loaded = load_image(config.samples_dir / name, model.image_size)
        else:
            from flexitok.data.skimage_photos import load_skimage_photo

            loaded = load_pil(load_skimage_photo(name), model.image_size)
        return remember(loaded.tensor, f"sample {name}" + (f": {loaded.note}" if loaded.note else ""))

    @app.get("/api/images/{image_id}/reconstruction")
    def reconstruction(image_id: str, k: int, seed: int = 0) -> dict[str, Any]:
        with state.lock:
            entry = state.images.get(image_id)
        if entry is None:
            raise HTTPException(404, "unknown image id (the server may have restarted or evicted it): upload again")
        n = model.n_registers
        if not 1 <= k <= n:
            raise HTTPException(400, f"k must lie in 1..{n}, got {k}")
        if not 0 <= seed <= 0xFFFFFFFF:
            raise HTTPException(400, f"seed must lie in 0..{0xFFFFFFFF}, got {seed}")
        key = (image_id, k, seed)
        decode = replace(config.decode, seed=seed)
        with state.lock:
            if key in state.recons:
                return state.recons[key]
            image = decode_tokens(model, entry.tokens[:k].to(model.device), decode)[0].float().cpu()
        ftok = FtokFile.from_model(model, entry.tokens[:k], config.model_name, decode)
        out = {
            "k": k,
            "image": png_data_url(image),
            "psnr": round(float(psnr(entry.image[None], image[None])[0]), 3),
            "ftok_bytes": len(ftok.to_bytes()),
        }
        with state.lock:
            state.recons[key] = out
            while len(state.recons) > config.max_cached_reconstructions:
                state.recons.popitem(last=False)
        return out

    @app.post("/api/generate")
    def generate(req: GenerateRequest) -> dict[str, Any]:
        if generator is None:
            raise HTTPException(404, "this demo runs without a generator (start it with --generator)")
        if not 1 <= req.k <= generator.max_tokens:
            raise HTTPException(400, f"k must lie in 1..{generator.max_tokens}, got {req.k}")
        try:
            with state.lock:
                image = generator.generate(req.k, req.seed, req.class_index, req.prompt)
        except FlexiTokError as e:
            raise HTTPException(400, str(e)) from None
        return {"k": req.k, "image": png_data_url(image.float().cpu())}

    app.add_middleware(UploadLimit, max_body=config.max_upload_bytes + _MULTIPART_OVERHEAD, limit_message=limit_msg)
    return app


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking model work off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def decode_data_url(url: str) -> Image.Image:
    """``data:image/png;base64,...`` -> PIL image (for clients and tests)."""
    prefix = "data:image/png;base64,"
    if not url.startswith(prefix):
        raise InvalidInputError("not a PNG data URL")
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
