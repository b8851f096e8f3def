"""``flexitok demo``: serve the local web demo (pick a tokenizer, reconstruct from k tokens and see every k at
once; optional generation panel)."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

from flexitok.cli.common import (
    DEFAULT_MODEL,
    add_decode_args,
    decode_config,
    info,
    load_model,
    model_reference,
    positive_int,
)
from flexitok.cli.quickstart import PHOTO_MODEL, samples_for
from flexitok.errors import FlexiTokError, InvalidInputError
from flexitok.utils.device import resolve_device

DEMO_MODELS = (DEFAULT_MODEL, PHOTO_MODEL)  # what `flexitok demo` serves without --model (the page opens on the first)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="serve the local web demo",
        description="Serve a web page on 127.0.0.1: pick a tokenizer, upload an image or pick a sample, move the "
        "token-count slider and see the reconstruction beside the whole coarse-to-fine strip; with a generator also "
        "generate from a class or prompt. Needs pip install 'flexitok[demo]'.",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME_OR_PATH",
        help="tokenizer to serve: bundled name, save_pretrained folder or official model.safetensors; repeat it to "
        "offer several (the page opens on the first). Default: the bundled 'default' and 'photo' models",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where to run (auto: cuda, then mps, then cpu)",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MiB (default 10; larger: 413)"
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=None,
        help="largest upload in decoded megapixels, checked from the image header before decoding (default: 256 "
        "times the model's pixels, at least 16.8 = 4096x4096; larger: 413)",
    )
    p.add_argument(
        "--workers", type=positive_int, default=2, help="requests decoding images or running the model at once (2)"
    )
    p.add_argument(
        "--max-queue", type=int, default=16, help="requests that may wait for a worker (default 16; beyond: 503)"
    )
    p.add_argument(
        "--upload-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest time a request body may take to arrive (default 30; slower: 408). Bodies are read before a "
        "request waits for a worker, so slow clients never hold one",
    )
    p.add_argument(
        "--samples",
        default=None,
        metavar="FOLDER",
        help="sample images to offer with every model (default: the bundled ones that go with each model: "
        "Fashion-MNIST test images, or held-out photos for 'photo')",
    )
    p.add_argument(
        "--generator",
        default="auto",
        metavar="NAME_OR_PATH",
        help="AR generator for the generation panel of the first model (default 'auto': the bundled one for the "
        "bundled default model; 'none': no generation panel)",
    )
    add_decode_args(p, seed=False)  # the seed comes with each request
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from flexitok.demo import DemoConfig, DemoModel, create_app
    except ImportError as e:
        raise InvalidInputError(f"the demo needs FastAPI and uvicorn: pip install 'flexitok[demo]' ({e})") from None
    if not 0 < args.max_upload_mb <= 1024:
        raise InvalidInputError(f"--max-upload-mb must lie in (0, 1024], got {args.max_upload_mb}")
    if args.max_megapixels is not None and not 0 < args.max_megapixels <= 1000:
        raise InvalidInputError(f"--max-megapixels must lie in (0, 1000], got {args.max_megapixels}")
    if not 0 <= args.max_queue <= 10000:
        raise InvalidInputError(f"--max-queue must lie in 0..10000, got {args.max_queue}")
    if not 0 < args.upload_timeout <= 3600:
        raise InvalidInputError(f"--upload-timeout must lie in (0, 3600] seconds, got {args.upload_timeout}")
    if not 0 <= args.port <= 65535:
        raise InvalidInputError(f"--port must lie in 0..65535, got {args.port}")
    names = args.model or default_models()
    if len(set(names)) != len(names):
        raise InvalidInputError(f"--model given twice: {names}")
    samples = Path(args.samples) if args.samples else None
    if samples is not None and not samples.is_dir():
        raise InvalidInputError(f"--samples {samples}: not a folder")
    device = resolve_device(args.device)
    decode = decode_config(args)
    served = []
    for i, name in enumerate(names):
        model = load_model(name, device)
        generator = args.generator if i == 0 else "auto"
        if generator == "auto":
            from flexitok.models.generator import DEFAULT_GENERATOR

            generator = DEFAULT_GENERATOR if name == DEFAULT_MODEL else "none"
        backend = None
        if generator != "none":
            from flexitok.demo.generation import ARGeneratorBackend

            try:
                backend = ARGeneratorBackend.load(generator, model, decode)
            except FlexiTokError as e:
                raise InvalidInputError(f"cannot use generator {generator!r}: {e}") from None
        served.append(
            DemoModel(
                model_reference(name),
                model,
                samples_dir=samples or samples_for(name),
                # The skimage photos are training images of the photo model: offer its held-out photos only.
                skimage_samples=() if name == PHOTO_MODEL else None,
                generator=backend,
            )
        )
    config = DemoConfig(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        decode=decode,
        max_pixels=None if args.max_megapixels is None else max(1, int(args.max_megapixels * 1e6)),
        workers=args.workers,
        max_queue=args.max_queue,
        upload_timeout_s=args.upload_timeout,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        info(f"warning: serving on {args.host}: anyone who can reach this machine can use the demo")
    app = create_app(served, config)
    if args.port == 0:
        args.port = free_port(args.host)
    info(f"flexitok demo: open http://{args.host}:{args.port}/ (Ctrl+C to stop)")
    quiet_log_lines()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def quiet_log_lines() -> None:
    """Show the demo's one-line notes (a client that went away mid-upload) on stderr, without tracebacks."""
    log = logging.getLogger("flexitok.demo")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("flexitok demo: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_models() -> list[str]:
    """The bundled tokenizers the demo offers when no --model is given (those of :data:`DEMO_MODELS` installed)."""
    from flexitok.models.flextok import FlexTok

    bundled = FlexTok.bundled_names()
    return [name for name in DEMO_MODELS if name in bundled]
