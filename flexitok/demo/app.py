"""The demo web app: pick a tokenizer, upload an image (or pick a sample), choose k, see the reconstruction and
the whole coarse-to-fine strip; optionally generate.

JSON API (the static page in ``static/`` is its only client). ``model=NAME`` picks one of the served tokenizers
(default: the first); an uploaded image stays with the tokenizer that tokenized it.

* ``GET  /api/info?model=NAME`` -> model facts, the served model names, the strip's k values, sample names, the
  upload limits, the generator panel description (or null)
* ``POST /api/images?model=NAME`` (multipart field ``file``) -> ``{"id", "model", "note", "original"}``; 413 when
  larger than ``max_upload_bytes``, 415 for non-image files, 400 for other bad requests
* ``POST /api/samples/{name}?model=NAME`` -> same as an upload, for one of that model's sample images
* ``GET  /api/images/{id}/reconstruction?k=K&seed=S`` -> ``{"k", "image", "psnr", "ftok_bytes"}``
* ``GET  /api/images/{id}/strip?seed=S`` -> ``{"ks", "reconstructions"}``: one reconstruction (as above) for every
  k of the coarse-to-fine ladder 1, 2, 4, ..., N
* ``POST /api/generate`` ``{"model", "k", "seed", "class_index" | "prompt"}`` -> ``{"k", "image"}`` (404 when that
  model has no generator)

Images travel as ``data:image/png;base64`` URLs. Heavy work (image decoding, model calls) is admitted through a
:class:`WorkQueue`: at most ``workers`` requests run at once and ``max_queue`` wait; beyond that, or after
waiting ``queue_timeout_s``, the answer is 503 with a JSON error. Model calls are serialized by a lock (one
CPU/GPU at a time). An upload's pixel count is checked from its header before it is decoded (413 over
``max_pixels``). Every error, user input or not, is a JSON ``{"detail": ...}``; user errors are 4xx.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, StrictInt, StrictStr, ValidationError
from torch import Tensor

from flexitok.codec.adaptive import decode_tokens
from flexitok.codec.ftok import FtokFile
from flexitok.errors import FlexiTokError, InvalidInputError
from flexitok.eval.metrics import psnr
from flexitok.eval.reconstruction import default_ks
from flexitok.io.images import ImageTooLargeError, load_image, load_pil, tensor_to_pil
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.limits import MAX_SEED, check_seed

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Room for the multipart boundary and part headers around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024
# Decoded-pixel floor: a 4096 x 4096 photo (48 MiB as RGB) is accepted whatever the model's size.
MIN_DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_PROMPT_CHARS = 1000
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


def default_max_pixels(image_size: tuple[int, int]) -> int:
    """The decoded-pixel limit for uploads to a model of ``image_size``: 256 times its pixels, at least 4096^2."""
    return max(MIN_DEFAULT_MAX_PIXELS, 256 * int(image_size[0]) * int(image_size[1]))


@dataclass
class DemoConfig:
    """Server-side limits and decoder settings (a request's seed replaces ``decode.seed``).

    ``max_pixels``: uploads declaring more pixels are refused before decoding (None: :func:`default_max_pixels`
    of the model). ``workers``: requests doing heavy work at once; ``max_queue``: requests allowed to wait for a
    worker; ``queue_timeout_s``: the longest wait. Beyond these, 503.
    """

    model_name: str = "model"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_cached_images: int = 64
    max_cached_reconstructions: int = 512
    decode: DecodeConfig = DecodeConfig()
    samples_dir: Path | None = None  # extra sample images (e.g. the model's own); shown before the skimage photos
    skimage_samples: tuple[str, ...] = SKIMAGE_SAMPLES
    max_pixels: int | None = None
    workers: int = 2
    max_queue: int = 16
    queue_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise InvalidInputError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise InvalidInputError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.workers < 1 or self.max_queue < 0:
            raise InvalidInputError(f"need workers >= 1 and max_queue >= 0, got {self.workers} and {self.max_queue}")
        if not self.queue_timeout_s > 0:
            raise InvalidInputError(f"queue_timeout_s must be positive, got {self.queue_timeout_s}")


class Busy(Exception):
    """The server is at capacity (answered with 503)."""


class WorkQueue:
    """Admission for heavy work: ``workers`` threads run it, ``max_queue`` more requests wait (at most
    ``timeout_s``).

    :meth:`admit` is called first (cheap, on the event loop): it raises :class:`Busy` when workers and queue are
    full, so an overloaded server answers 503 at once instead of piling up requests (and their bodies).
    :meth:`run` then runs the work on one of the ``workers`` threads. A fixed, small set of threads also bounds
    memory: each thread's allocator keeps some of what it freed, and a decoded photo is tens of MB.
    """

    def __init__(self, workers: int, max_queue: int, timeout_s: float) -> None:
        self.capacity, self.timeout_s = workers + max_queue, timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flexitok-demo")
        self._lock = threading.Lock()
        self.admitted = 0  # running + waiting

    def admit(self) -> None:
        with self._lock:
            if self.admitted >= self.capacity:
                raise Busy("the server is busy (all workers and queue places are taken); try again shortly")
            self.admitted += 1

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a worker thread (call after :meth:`admit`; always :meth:`leave` after)."""
        queued = time.monotonic()

        def job() -> Any:
            if time.monotonic() - queued > self.timeout_s:
                raise Busy(f"the server is busy (no worker became free within {self.timeout_s:g} s); try again")
            return fn(*args)

        return await asyncio.wrap_future(self._pool.submit(job))


@dataclass
class DemoModel:
    """One tokenizer the page can switch to: a loaded :class:`flexitok.FlexTok` (eval mode) under ``name``, its
    sample images (``samples_dir``, listed before ``skimage_samples``; ``None``: the :class:`DemoConfig`'s), its
    decoder settings (``None``: the config's) and an optional generator for the generation panel."""

    name: str
    model: Any
    samples_dir: Path | None = None
    skimage_samples: tuple[str, ...] | None = None
    decode: DecodeConfig | None = None
    generator: GeneratorBackend | None = None


@dataclass
class _Served:
    spec: DemoModel
    samples: list[str]
    samples_dir: Path | None
    decode: DecodeConfig
    max_pixels: int


@dataclass
class _Entry:
    model: str  # name of the tokenizer that tokenized it
    image: Tensor  # [3, H, W] in [-1, 1], the converted input
    tokens: Tensor  # LongTensor [N]


@dataclass
class _State:
    config: DemoConfig
    lock: threading.Lock = field(default_factory=threading.Lock)  # the model: held by worker threads only
    cache_lock: threading.Lock = field(default_factory=threading.Lock)  # the caches: brief, safe on the event loop
    images: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    recons: OrderedDict[tuple[str, int, int], dict[str, Any]] = field(default_factory=OrderedDict)


class GenerateRequest(BaseModel):
    model: StrictStr | None = None
    k: StrictInt
    seed: StrictInt = 0
    class_index: StrictInt | None = None
    prompt: StrictStr | None = None


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


def _sample_names(samples_dir: Path | None, skimage_samples: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    if samples_dir is not None and samples_dir.is_dir():
        from flexitok.io.images import is_image_file

        names += sorted(p.name for p in samples_dir.iterdir() if p.is_file() and is_image_file(p))
    if skimage_samples:
        try:
            import skimage.data  # noqa: F401  (optional: scikit-image is a dev/demo nicety)

            names += [n for n in skimage_samples if n not in names]
        except ImportError:
            pass
    return names


def create_app(
    model: Any | list[DemoModel],
    config: DemoConfig | None = None,
    generator: GeneratorBackend | None = None,
) -> FastAPI:
    """Build the FastAPI app around one loaded :class:`flexitok.FlexTok` (eval mode; served as
    ``config.model_name`` with ``config.samples_dir`` and the optional ``generator``), or around a list of
    :class:`DemoModel` the page lets the user pick from (the first is the one it opens on)."""
    config = config or DemoConfig()
    if isinstance(model, (list, tuple)):
        specs = list(model)
        if not specs or not all(isinstance(m, DemoModel) for m in specs):
            raise InvalidInputError("create_app needs a FlexTok model or a non-empty list of DemoModel")
        if generator is not None:
            raise InvalidInputError("with a list of DemoModel, give each its own generator")
    else:
        specs = [DemoModel(config.model_name, model, config.samples_dir, generator=generator)]
    names = [m.name for m in specs]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"demo model names must be unique, got {names}")
    served: dict[str, _Served] = {}
    for m in specs:
        samples_dir = m.samples_dir if m.samples_dir is not None else config.samples_dir
        skimage = m.skimage_samples if m.skimage_samples is not None else config.skimage_samples
        served[m.name] = _Served(
            m,
            _sample_names(samples_dir, skimage),
            samples_dir,
            m.decode or config.decode,
            config.max_pixels or default_max_pixels(m.model.image_size),
        )
    state = _State(config=config)
    work = WorkQueue(config.workers, config.max_queue, config.queue_timeout_s)
    limit_msg = (
        f"the upload is too large: this server accepts images up to {_human(config.max_upload_bytes)} "
        "(flexitok demo --max-upload-mb)"
    )

    app = FastAPI(title="flexitok demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(Busy)
    def busy(request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(FlexiTokError)
    def user_error(request: Request, exc: FlexiTokError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    def server_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not user input (those are 4xx above): still a JSON answer; the traceback goes to the log.
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    async def heavy(fn: Callable[..., Any], *args: Any) -> Any:
        """Admit (or 503), then run ``fn`` in a worker thread once a worker is free."""
        work.admit()
        try:
            return await work.run(fn, *args)
        finally:
            work.leave()

    def check_seed_param(seed: int) -> int:
        """The one seed rule of every endpoint (flexitok.utils.limits): an integer in 0..MAX_SEED."""
        try:
            return check_seed(seed)
        except InvalidInputError as e:
            raise HTTPException(400, str(e)) from None

    def pick(name: str | None) -> _Served:
        if name is None:
            return served[names[0]]
        if name not in served:
            raise HTTPException(404, f"no model named {name[:100]!r}; this demo serves: {', '.join(names)}")
        return served[name]

    def remember(m: _Served, image: Tensor, note: str) -> dict[str, Any]:
        image_id = uuid.uuid4().hex
        tok = m.spec.model
        with state.lock:  # one device, shared by the worker threads
            tokens = tok.tokenize(image[None].to(tok.device))[0].cpu()
        with state.cache_lock:
            state.images[image_id] = _Entry(model=m.spec.name, image=image, tokens=tokens)
            while len(state.images) > config.max_cached_images:
                state.images.popitem(last=False)
        return {"id": image_id, "model": m.spec.name, "note": note, "original": png_data_url(image)}

    def load_and_remember(m: _Served, data: bytes, name: str) -> dict[str, Any]:
        try:
            # Decoding a large photo is slow (off the event loop); the pixel count is checked before decoding.
            loaded = load_image(data, m.spec.model.image_size, max_pixels=m.max_pixels)
        except ImageTooLargeError as e:
            raise HTTPException(413, f"{str(e).replace('<bytes>', name)} (flexitok demo --max-megapixels)") from None
        except InvalidInputError as e:
            detail = str(e).replace("<bytes>", name)
            raise HTTPException(415, f"{detail}; upload a PNG, JPEG, WebP, BMP, GIF or TIFF image") from None
        return remember(m, loaded.tensor, loaded.note)

    def entry_of(image_id: str) -> _Entry:
        with state.cache_lock:  # never the model lock here: this runs on the event loop
            entry = state.images.get(image_id)
        if entry is None:
            raise HTTPException(404, "unknown image id (the server may have restarted or evicted it): upload again")
        return entry

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info(model: str | None = None) -> dict[str, Any]:
        m = pick(model)
        tok, generator = m.spec.model, m.spec.generator
        gen = None
        if generator is not None:
            gen = {
                "condition": generator.condition,
                "class_names": list(generator.class_names),
                "max_tokens": generator.max_tokens,
            }
        h, w = tok.image_size
        return {
            "model": m.spec.name,
            "models": names,
            "n_registers": tok.n_registers,
            "strip_ks": default_ks(tok.n_registers),
            "image_size": [h, w],
            "vocab_size": tok.vocab_size,
            "bits_per_token": math.ceil(math.log2(tok.vocab_size)),
            "max_upload_bytes": config.max_upload_bytes,
            "max_pixels": m.max_pixels,
            "max_seed": MAX_SEED,
            "samples": m.samples,
            "generator": gen,
        }

    @app.post("/api/images")
    async def upload(request: Request, model: str | None = None) -> dict[str, Any]:
        m = pick(model)
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise HTTPException(400, "send the image as multipart/form-data with a field named 'file'")
        work.admit()  # before the body is read: an overloaded server neither buffers nor parses it
        try:
            return await _upload(m, request)
        finally:
            work.leave()

    async def _upload(m: _Served, request: Request) -> dict[str, Any]:
        try:
            form = await request.form()
        except (ValueError, KeyError, AssertionError) as e:  # malformed multipart (starlette's parser errors)
            raise HTTPException(400, f"malformed multipart/form-data body ({str(e)[:200]})") from None
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
        return await work.run(load_and_remember, m, data, name)

    def load_sample(m: _Served, name: str) -> dict[str, Any]:
        size = m.spec.model.image_size
        if m.samples_dir is not None and (m.samples_dir / name).is_file():
            loaded = load_image(m.samples_dir / name, size)
        else:
            from flexitok.data.skimage_photos import load_skimage_photo

            loaded = load_pil(load_skimage_photo(name), size)
        return remember(m, loaded.tensor, f"sample {name}" + (f": {loaded.note}" if loaded.note else ""))

    @app.post("/api/samples/{name}")
    async def sample(name: str, model: str | None = None) -> dict[str, Any]:
        m = pick(model)
        if name not in m.samples:
            raise HTTPException(
                404, f"no sample image named {name[:100]!r}; available: {', '.join(m.samples) or 'none'}"
            )
        return await heavy(load_sample, m, name)

    @app.get("/api/images/{image_id}/reconstruction")
    async def reconstruction(image_id: str, k: int, seed: int = 0) -> dict[str, Any]:
        entry = entry_of(image_id)
        n = served[entry.model].spec.model.n_registers
        if not 1 <= k <= n:
            raise HTTPException(400, f"k must lie in 1..{n}, got {k}")
        seed = check_seed_param(seed)
        return await heavy(reconstruct, image_id, entry, k, seed)

    @app.get("/api/images/{image_id}/strip")
    async def strip(image_id: str, seed: int = 0) -> dict[str, Any]:
        entry = entry_of(image_id)
        seed = check_seed_param(seed)
        ks = default_ks(served[entry.model].spec.model.n_registers)
        return {"ks": ks, "reconstructions": await heavy(reconstruct_all, image_id, entry, ks, seed)}

    def reconstruct_all(image_id: str, entry: _Entry, ks: list[int], seed: int) -> list[dict[str, Any]]:
        return [reconstruct(image_id, entry, k, seed) for k in ks]

    def reconstruct(image_id: str, entry: _Entry, k: int, seed: int) -> dict[str, Any]:
        m = served[entry.model]
        tok = m.spec.model
        key = (image_id, k, seed)
        decode = replace(m.decode, seed=seed)
        with state.cache_lock:
            if key in state.recons:
                return state.recons[key]
        with state.lock:
            image = decode_tokens(tok, entry.tokens[:k].to(tok.device), decode)[0].float().cpu()
        ftok = FtokFile.from_model(tok, entry.tokens[:k], m.spec.name, decode)
        out = {
            "k": k,
            "image": png_data_url(image),
            "psnr": round(float(psnr(entry.image[None], image[None])[0]), 3),
            "ftok_bytes": len(ftok.to_bytes()),
        }
        with state.cache_lock:
            state.recons[key] = out
            while len(state.recons) > config.max_cached_reconstructions:
                state.recons.popitem(last=False)
        return out

    @app.post("/api/generate")
    async def generate(request: Request) -> Any:
        # The body is parsed here, not by FastAPI: its JSON decoding lets non-UTF-8 bodies through as a 500.
        try:
            req = GenerateRequest.model_validate_json(await request.body())
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
            )
            return _error(422, f"invalid request body: {problems[:500]}")
        generator = pick(req.model).spec.generator
        if generator is None:
            raise HTTPException(404, "this model has no generator in this demo (start it with --generator)")
        if not 1 <= req.k <= generator.max_tokens:
            raise HTTPException(400, f"k must lie in 1..{generator.max_tokens}, got {req.k}")
        seed = check_seed_param(req.seed)
        if req.prompt is not None and len(req.prompt) > MAX_PROMPT_CHARS:
            raise HTTPException(
                400, f"the prompt is too long ({len(req.prompt)} characters; at most {MAX_PROMPT_CHARS})"
            )
        return await heavy(run_generation, generator, req, seed)

    def run_generation(generator: GeneratorBackend, req: GenerateRequest, seed: int) -> dict[str, Any]:
        try:
            with state.lock:
                image = generator.generate(req.k, seed, req.class_index, req.prompt)
        except FlexiTokError as e:
            raise HTTPException(400, str(e)) from None
        return {"k": req.k, "image": png_data_url(image.float().cpu())}

    app.add_middleware(UploadLimit, max_body=config.max_upload_bytes + _MULTIPART_OVERHEAD, limit_message=limit_msg)
    return app


def decode_data_url(url: str) -> Image.Image:
    """``data:image/png;base64,...`` -> PIL image (for clients and tests)."""
    prefix = "data:image/png;base64,"
    if not url.startswith(prefix):
        raise InvalidInputError("not a PNG data URL")
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
