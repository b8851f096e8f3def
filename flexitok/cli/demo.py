"""``flexitok demo``: serve the local web demo (reconstruct from k tokens; optional generation panel)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from flexitok.cli.common import (
    DEFAULT_MODEL,
    add_decode_args,
    add_model_args,
    decode_config,
    info,
    load_model,
    model_reference,
)
from flexitok.cli.quickstart import SAMPLES
from flexitok.errors import FlexiTokError, InvalidInputError
from flexitok.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="serve the local web demo",
        description="Serve a web page on 127.0.0.1: upload an image or pick a sample, move the token-count slider "
        "and see the reconstruction; with --generator also generate from a class or prompt. Needs "
        "pip install 'flexitok[demo]'.",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MiB (default 10; larger: 413)"
    )
    p.add_argument(
        "--samples", default=str(SAMPLES), metavar="FOLDER", help="sample images to offer (default: the bundled ones)"
    )
    p.add_argument(
        "--generator",
        default="auto",
        metavar="NAME_OR_PATH",
        help="AR generator for the generation panel (default 'auto': the bundled one when --model is the bundled "
        "default; 'none': no generation panel)",
    )
    add_decode_args(p, seed=False)  # the seed comes with each request
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from flexitok.demo import DemoConfig, create_app
    except ImportError as e:
        raise InvalidInputError(f"the demo needs FastAPI and uvicorn: pip install 'flexitok[demo]' ({e})") from None
    if args.max_upload_mb <= 0:
        raise InvalidInputError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if not 0 <= args.port <= 65535:
        raise InvalidInputError(f"--port must lie in 0..65535, got {args.port}")
    if args.generator == "auto":
        from flexitok.models.generator import DEFAULT_GENERATOR

        args.generator = DEFAULT_GENERATOR if args.model == DEFAULT_MODEL else None
    elif args.generator == "none":
        args.generator = None
    samples = Path(args.samples) if args.samples else None
    if samples is not None and not samples.is_dir():
        raise InvalidInputError(f"--samples {samples}: not a folder")
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    decode = decode_config(args)
    config = DemoConfig(
        model_name=model_reference(args.model),
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        decode=decode,
        samples_dir=samples,
    )
    backend = None
    if args.generator:
        from flexitok.demo.generation import ARGeneratorBackend

        try:
            backend = ARGeneratorBackend.load(args.generator, model, decode)
        except FlexiTokError as e:
            raise InvalidInputError(f"cannot use generator {args.generator!r}: {e}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        info(f"warning: serving on {args.host}: anyone who can reach this machine can use the demo")
    app = create_app(model, config, backend)
    if args.port == 0:
        args.port = free_port(args.host)
    info(f"flexitok demo: open http://{args.host}:{args.port}/ (Ctrl+C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
