"""The demo's work behind its routes: :class:`DemoService` holds the served models, the image and
reconstruction caches, the work queue and the body reader; each public method is one API request."""

from __future__ import annotations

import math
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, StrictInt, StrictStr, ValidationError
from starlette.requests import Request
from torch import Tensor

from flexitok.codec.adaptive import decode_tokens
from flexitok.codec.ftok import FtokFile
from flexitok.demo.config import DemoConfig, DemoModel, GeneratorBackend, default_max_pixels
from flexitok.demo.dataurl import png_data_url
from flexitok.demo.errors import DemoHTTPError
from flexitok.demo.queue import WorkQueue
from flexitok.demo.upload import BodyReader, human_size
from flexitok.errors import FlexiTokError, InvalidInputError
from flexitok.eval.metrics import psnr
from flexitok.io.images import ImageTooLargeError, is_image_file, load_image, load_pil
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.limits import MAX_PROMPT_CHARS, MAX_SEED, check_seed

MAX_GENERATE_BODY = 64 * 1024  # a generation request is a small JSON object (prompts are at most 1000 characters)


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


class GenerateRequest(BaseModel):
    model: StrictStr | None = None
    k: StrictInt
    seed: StrictInt = 0
    class_index: StrictInt | None = None
    prompt: StrictStr | None = None


def sample_names(samples_dir: Path | None, skimage_samples: tuple[str, ...]) -> list[str]:
    """The images of ``samples_dir``, then those of ``skimage_samples`` when scikit-image is installed."""
    names: list[str] = []
    if samples_dir is not None and samples_dir.is_dir():
        names += sorted(p.name for p in samples_dir.iterdir() if p.is_file() and is_image_file(p))
    if skimage_samples:
        try:
            import skimage.data  # noqa: F401  (optional: scikit-image is a dev/demo nicety)

            names += [n for n in skimage_samples if n not in names]
        except ImportError:
            pass
    return names


def check_seed_param(seed: int) -> int:
    """The one seed rule of every endpoint (flexitok.utils.limits): an integer in 0..MAX_SEED."""
    try:
        return check_seed(seed)
    except InvalidInputError as e:
        raise DemoHTTPError(str(e)) from None


class DemoService:
    """The demo's state and requests for the tokenizers ``specs`` (unique names; the first is the default).

    Heavy work (image decoding, model calls) runs through :class:`WorkQueue` (``config.workers`` at once,
    ``config.max_queue`` waiting, else 503); request bodies are read by :class:`BodyReader` before that (bounded
    in size and time). Model calls are serialized by one lock (one CPU/GPU at a time); the caches have their own
    brief lock, safe to take on the event loop.
    """

    def __init__(self, specs: list[DemoModel], config: DemoConfig) -> None:
        self.config = config
        self.names = [m.name for m in specs]
        if not specs:
            raise InvalidInputError("the demo needs at least one model")
        if len(set(self.names)) != len(self.names):
            raise InvalidInputError(f"demo model names must be unique, got {self.names}")
        self.served: dict[str, _Served] = {}
        for m in specs:
            samples_dir = m.samples_dir if m.samples_dir is not None else config.samples_dir
            skimage = m.skimage_samples if m.skimage_samples is not None else config.skimage_samples
            self.served[m.name] = _Served(
                m,
                sample_names(samples_dir, skimage),
                samples_dir,
                m.decode or config.decode,
                config.max_pixels or default_max_pixels(m.model.image_size),
            )
        self.work = WorkQueue(config.workers, config.max_queue, config.queue_timeout_s)
        self.bodies = BodyReader(config.max_uploads, config.upload_timeout_s)
        self.too_large = (
            f"the upload is too large: this server accepts images up to {human_size(config.max_upload_bytes)} "
            "(flexitok demo --max-upload-mb)"
        )
        self._model_lock = threading.Lock()  # the device: held by worker threads only
        self._cache_lock = threading.Lock()
        self._images: OrderedDict[str, _Entry] = OrderedDict()
        self._recons: OrderedDict[tuple[str, int, int], dict[str, Any]] = OrderedDict()

    # ------------------------------------------------------------------------------------------- lookups
    def pick(self, name: str | None) -> _Served:
        if name is None:
            return self.served[self.names[0]]
        if name not in self.served:
            raise DemoHTTPError(f"no model named {name[:100]!r}; this demo serves: {', '.join(self.names)}", 404)
        return self.served[name]

    def _entry(self, image_id: str) -> _Entry:
        with self._cache_lock:  # never the model lock here: this runs on the event loop
            entry = self._images.get(image_id)
        if entry is None:
            raise DemoHTTPError("unknown image id (the server may have restarted or evicted it): upload again", 404)
        return entry

    # ------------------------------------------------------------------------------------------- requests
    def info(self, model: str | None) -> dict[str, Any]:
        m = self.pick(model)
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
            "models": self.names,
            "n_registers": tok.n_registers,
            "strip_ks": tok.default_ks(),
            "image_size": [h, w],
            "vocab_size": tok.vocab_size,
            "bits_per_token": math.ceil(math.log2(tok.vocab_size)),
            "max_upload_bytes": self.config.max_upload_bytes,
            "max_pixels": m.max_pixels,
            "max_seed": MAX_SEED,
            "samples": m.samples,
            "generator": gen,
        }

    async def upload(self, request: Request, model: str | None) -> dict[str, Any]:
        """An uploaded image (multipart field ``file``), converted and tokenized -> ``{id, model, note, original}``."""
        m = self.pick(model)
        self.work.check()  # full right now: 503 before the body is read
        upload = await self.bodies.read_upload(request, self.config.max_upload_bytes, self.too_large)
        if upload.content_type and not (
            upload.content_type.startswith("image/") or upload.content_type == "application/octet-stream"
        ):
            raise DemoHTTPError(
                f"{upload.filename}: expected an image file (PNG, JPEG, WebP, ...), got {upload.content_type}", 415
            )
        return await self.work.run(self._load_upload, m, upload.data, upload.filename)

    async def sample(self, name: str, model: str | None) -> dict[str, Any]:
        m = self.pick(model)
        if name not in m.samples:
            raise DemoHTTPError(
                f"no sample image named {name[:100]!r}; available: {', '.join(m.samples) or 'none'}", 404
            )
        return await self.work.run(self._load_sample, m, name)

    async def reconstruction(self, image_id: str, k: int, seed: int) -> dict[str, Any]:
        entry = self._entry(image_id)
        n = self.served[entry.model].spec.model.n_registers
        if not 1 <= k <= n:
            raise DemoHTTPError(f"k must lie in 1..{n}, got {k}")
        seed = check_seed_param(seed)
        return await self.work.run(self._reconstruct, image_id, entry, k, seed)

    async def strip(self, image_id: str, seed: int) -> dict[str, Any]:
        entry = self._entry(image_id)
        seed = check_seed_param(seed)
        ks = self.served[entry.model].spec.model.default_ks()
        return {"ks": ks, "reconstructions": await self.work.run(self._reconstruct_all, image_id, entry, ks, seed)}

    async def generate(self, request: Request) -> dict[str, Any]:
        body = await self.bodies.read(request, MAX_GENERATE_BODY, "the request body is too large")
        # Parsed here, not by FastAPI: its JSON decoding lets non-UTF-8 bodies through as a 500.
        try:
            req = GenerateRequest.model_validate_json(body)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
            )
            raise DemoHTTPError(f"invalid request body: {problems[:500]}", 422) from None
        generator = self.pick(req.model).spec.generator
        if generator is None:
            raise DemoHTTPError("this model has no generator in this demo (start it with --generator)", 404)
        if not 1 <= req.k <= generator.max_tokens:
            raise DemoHTTPError(f"k must lie in 1..{generator.max_tokens}, got {req.k}")
        seed = check_seed_param(req.seed)
        if req.prompt is not None and len(req.prompt) > MAX_PROMPT_CHARS:
            raise DemoHTTPError(f"the prompt is too long ({len(req.prompt)} characters; at most {MAX_PROMPT_CHARS})")
        try:  # the shared prompt/class policy, before the request takes a work slot
            generator.check_request(req.k, req.class_index, req.prompt)
        except FlexiTokError as e:
            raise DemoHTTPError(str(e)) from None
        return await self.work.run(self._generate, generator, req, seed)

    # ------------------------------------------------------------------------------------------- worker side
    def _remember(self, m: _Served, image: Tensor, note: str) -> dict[str, Any]:
        image_id = uuid.uuid4().hex
        tok = m.spec.model
        with self._model_lock:  # one device, shared by the worker threads
            tokens = tok.tokenize(image[None].to(tok.device))[0].cpu()
        with self._cache_lock:
            self._images[image_id] = _Entry(model=m.spec.name, image=image, tokens=tokens)
            while len(self._images) > self.config.max_cached_images:
                self._images.popitem(last=False)
        return {"id": image_id, "model": m.spec.name, "note": note, "original": png_data_url(image)}

    def _load_upload(self, m: _Served, data: bytes, name: str) -> dict[str, Any]:
        try:
            # Decoding a large photo is slow (off the event loop); the pixel count is checked before decoding.
            loaded = load_image(data, m.spec.model.image_size, max_pixels=m.max_pixels)
        except ImageTooLargeError as e:
            raise DemoHTTPError(f"{str(e).replace('<bytes>', name)} (flexitok demo --max-megapixels)", 413) from None
        except InvalidInputError as e:
            detail = str(e).replace("<bytes>", name)
            raise DemoHTTPError(f"{detail}; upload a PNG, JPEG, WebP, BMP, GIF or TIFF image", 415) from None
        return self._remember(m, loaded.tensor, loaded.note)

    def _load_sample(self, m: _Served, name: str) -> dict[str, Any]:
        size = m.spec.model.image_size
        if m.samples_dir is not None and (m.samples_dir / name).is_file():
            loaded = load_image(m.samples_dir / name, size)
        else:
            from flexitok.data.skimage_photos import load_skimage_photo  # scikit-image: optional

            loaded = load_pil(load_skimage_photo(name), size)
        return self._remember(m, loaded.tensor, f"sample {name}" + (f": {loaded.note}" if loaded.note else ""))

    def _reconstruct_all(self, image_id: str, entry: _Entry, ks: list[int], seed: int) -> list[dict[str, Any]]:
        return [self._reconstruct(image_id, entry, k, seed) for k in ks]

    def _reconstruct(self, image_id: str, entry: _Entry, k: int, seed: int) -> dict[str, Any]:
        m = self.served[entry.model]
        tok = m.spec.model
        key = (image_id, k, seed)
        decode = replace(m.decode, seed=seed)
        with self._cache_lock:
            if key in self._recons:
                return self._recons[key]
        with self._model_lock:
            image = decode_tokens(tok, entry.tokens[:k].to(tok.device), decode)[0].float().cpu()
        ftok = FtokFile.from_model(tok, entry.tokens[:k], m.spec.name, decode)
        out = {
            "k": k,
            "image": png_data_url(image),
            "psnr": round(float(psnr(entry.image[None], image[None])[0]), 3),
            "ftok_bytes": len(ftok.to_bytes()),
        }
        with self._cache_lock:
            self._recons[key] = out
            while len(self._recons) > self.config.max_cached_reconstructions:
                self._recons.popitem(last=False)
        return out

    def _generate(self, generator: GeneratorBackend, req: GenerateRequest, seed: int) -> dict[str, Any]:
        try:
            with self._model_lock:
                image = generator.generate(req.k, seed, req.class_index, req.prompt)
        except FlexiTokError as e:
            raise DemoHTTPError(str(e)) from None
        return {"k": req.k, "image": png_data_url(image.float().cpu())}
