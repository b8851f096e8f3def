"""``flexitok quickstart``: the whole story on the bundled models, offline, in about a minute on a CPU.

1. tokenize the bundled sample images, 2. write a coarse-to-fine reconstruction grid (k = 1, 2, 4, ..., N),
3. the same for held-out photos with the bundled ``photo`` tokenizer, 4. generate class- and text-conditioned
samples, 5. print a table of what was done and where the files are.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flexitok.cli.common import add_decode_args, collect_image_paths, decode_config, info
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.device import resolve_device

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SAMPLES = ASSETS / "samples"  # Fashion-MNIST test images, for the default tokenizer
PHOTO_SAMPLES = ASSETS / "photo_samples"  # held-out photos (mate-backgrounds), for the photo tokenizer
PHOTO_MODEL = "photo"
PROMPTS = ["a photo of a sneaker", "a pair of trousers", "a handbag", "an ankle boot", "a dress", "a t-shirt"]


@dataclass
class Step:
    what: str
    seconds: float
    output: str
    detail: str = ""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="run the main job on the bundled default models (offline, CPU)")
    p.add_argument("--out", default="out/quickstart", help="output folder (default out/quickstart)")
    p.add_argument("--model", default="default", help="tokenizer (default: the bundled Fashion-MNIST model)")
    p.add_argument("--class-generator", default="default", help="class-conditioned generator (bundled name or path)")
    p.add_argument("--text-generator", default="default-text", help="text-conditioned generator")
    p.add_argument("--images", default=str(SAMPLES), help="image file or folder (default: bundled samples)")
    p.add_argument(
        "--photo-model",
        default=PHOTO_MODEL,
        help="tokenizer for the photo grid (default: the bundled photo model, skipped when not installed; 'none': "
        "no photo grid)",
    )
    p.add_argument("--photo-images", default=str(PHOTO_SAMPLES), help="photos for it (default: bundled held-out ones)")
    # Guidance 3.0: best for the small bundled tokenizer (see its model card).
    add_decode_args(p, DecodeConfig(guidance_scale=3.0))
    p.add_argument("--device", default="auto", help="cpu | cuda | mps | auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok import FlexTok
    from flexitok.codec.token_files import TokenFile, write_token_file
    from flexitok.io.images import load_images

    decode = decode_config(args)
    torch.manual_seed(decode.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    steps: list[Step] = []

    t0 = time.perf_counter()
    model = FlexTok.from_pretrained(args.model, device=device)
    steps.append(Step("load tokenizer", time.perf_counter() - t0, args.model, f"{model.n_registers} tokens/image, "
                      f"vocab {model.vocab_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params"))  # fmt: skip

    t0 = time.perf_counter()
    paths = collect_image_paths([args.images])
    images = load_images(paths, model.image_size, progress=False)[0].to(device)
    tokens = model.tokenize(images)
    tok_file = out / "tokens.json"
    # The same token-file format as `flexitok tokenize`, so `flexitok detokenize` can read it.
    write_token_file(tok_file, TokenFile(list(tokens.cpu()), args.model, model.image_size, model.vocab_size,
                                         model.n_registers, [p.name for p in paths]))  # fmt: skip
    steps.append(Step("tokenize", time.perf_counter() - t0, str(tok_file), f"{len(paths)} images -> {tokens.shape[1]} ids each"))  # fmt: skip

    t0 = time.perf_counter()
    grid, detail = coarse_to_fine_grid(model, tokens, images, decode, out / "reconstruction_grid.png")
    steps.append(Step("coarse-to-fine reconstruction", time.perf_counter() - t0, str(grid), detail))

    steps += _photo_grid(args, decode, out, device)
    steps += _generate(args, decode, model, out, device)

    print()
    print(f"{'step':32s} {'time':>7s}  {'output':44s} detail")
    for s in steps:
        print(f"{s.what:32s} {s.seconds:6.1f}s  {s.output:44s} {s.detail}")
    print(f"\nall outputs are in {out}/")
    return 0


def samples_for(model: str) -> Path:
    """The bundled sample images that go with a tokenizer: held-out photos for ``photo``, else Fashion-MNIST."""
    return PHOTO_SAMPLES if model == PHOTO_MODEL else SAMPLES


def coarse_to_fine_grid(model, tokens: torch.Tensor, images: torch.Tensor, decode: DecodeConfig, path: Path):
    """Save rows ``input, k=1, 2, 4, ..., N`` (one per image) to ``path``; -> (path, "PSNR by k: ...").

    ``tokens`` ``[B, N]`` and ``images`` ``[B, 3, H, W]``. One noise per image, shared by every k, so the columns
    differ only in k.
    """
    from flexitok.eval.metrics import psnr
    from flexitok.io.images import save_grid

    ks = model.default_ks()
    noise = model.initial_noise(len(images), decode.generator())
    columns, scores = [], []
    for k in ks:
        recon = model.detokenize(tokens, decode, keep_k=k, noise=noise).clamp(-1, 1)
        columns.append(recon.cpu())
        scores.append(float(psnr(recon, images).mean()))
    rows = [[images[i].cpu()] + [c[i] for c in columns] for i in range(len(images))]
    save_grid(rows, path, labels=["input"] + [f"k={k}" for k in ks])
    return path, "PSNR by k: " + ", ".join(f"{k}:{s:.1f}" for k, s in zip(ks, scores, strict=True))


def _photo_grid(args: argparse.Namespace, decode: DecodeConfig, out: Path, device: torch.device) -> list[Step]:
    """The coarse-to-fine grid of held-out photos with the photo tokenizer (skipped when it is not installed)."""
    from flexitok import FlexTok
    from flexitok.io.images import load_images

    name = args.photo_model
    if name == "none":
        return []
    if name == PHOTO_MODEL and PHOTO_MODEL not in FlexTok.bundled_names():
        info(f"skipping the photo grid: the bundled {PHOTO_MODEL!r} tokenizer is not installed")
        return []
    t0 = time.perf_counter()
    model = FlexTok.from_pretrained(name, device=device)
    paths = collect_image_paths([args.photo_images])
    images = load_images(paths, model.image_size, progress=False)[0].to(device)
    tokens = model.tokenize(images)
    grid, detail = coarse_to_fine_grid(model, tokens, images, decode, out / "photo_reconstruction_grid.png")
    detail = f"{len(paths)} photos, {model.n_registers} tokens of {model.vocab_size} codes; {detail}"
    return [Step("photo coarse-to-fine", time.perf_counter() - t0, str(grid), detail)]


def _generate(args: argparse.Namespace, decode: DecodeConfig, model, out: Path, device: torch.device) -> list[Step]:
    from flexitok.errors import CheckpointError
    from flexitok.io.images import save_grid
    from flexitok.models.generator import Generator
    from flexitok.pipelines import GenerationPipeline
    from flexitok.sampling.ar import ARSamplingConfig
    from flexitok.utils.files import atomic_write_bytes

    per = 6  # samples per row; a row is one class or one prompt

    def class_rows(pipe: GenerationPipeline) -> tuple[list[str], dict]:
        names = pipe.conditioning.class_names
        return names, {"labels": [c for c in range(len(names)) for _ in range(per)]}

    def text_rows(pipe: GenerationPipeline) -> tuple[list[str], dict]:
        return PROMPTS, {"prompts": [p for p in PROMPTS for _ in range(per)]}

    steps: list[Step] = []
    for kind, name, rows_of in (("class", args.class_generator, class_rows), ("text", args.text_generator, text_rows)):
        t0 = time.perf_counter()
        try:
            pipe = GenerationPipeline(Generator.from_pretrained(name, device=device), model)
        except CheckpointError as e:
            info(f"skipping {kind}-conditioned generation: {e}")
            continue
        row_names, inputs = rows_of(pipe)
        imgs = pipe(**inputs, sampling=ARSamplingConfig(guidance_scale=3.0), decode=decode).images  # one batch
        grid = [list(imgs[i * per : (i + 1) * per]) for i in range(len(row_names))]
        path = out / f"{kind}_conditioned_samples.png"
        save_grid(grid, path)
        atomic_write_bytes(out / f"{kind}_conditioned_rows.txt", ("\n".join(row_names) + "\n").encode())
        steps.append(Step(f"{kind}-conditioned generation", time.perf_counter() - t0, str(path),
                          f"{len(row_names)} rows x {per} samples, {pipe.generator.config.n_tokens} tokens, CFG 3"))  # fmt: skip
    return steps
