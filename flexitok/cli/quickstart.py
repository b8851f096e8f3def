"""``flexitok quickstart``: the whole story on the bundled default models, offline, in about a minute on a CPU.

1. tokenize the bundled sample images, 2. write a coarse-to-fine reconstruction grid (k = 1, 2, 4, ..., N),
3. generate class- and text-conditioned samples, 4. print a table of what was done and where the files are.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flexitok.cli.common import add_decode_args, decode_config, info
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.device import resolve_device

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"
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
    # Guidance 3.0: best for the small bundled tokenizer (see its model card).
    add_decode_args(p, DecodeConfig(guidance_scale=3.0))
    p.add_argument("--device", default="auto", help="cpu | cuda | mps | auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok import FlexTok
    from flexitok.cli.common import collect_image_paths
    from flexitok.cli.token_files import write_token_file
    from flexitok.eval.metrics import psnr
    from flexitok.eval.reconstruction import default_ks
    from flexitok.io.images import load_images, save_grid

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
    write_token_file(tok_file, tokens.cpu(), args.model, model.image_size, [p.name for p in paths],
                     model.vocab_size, model.n_registers)  # fmt: skip
    steps.append(Step("tokenize", time.perf_counter() - t0, str(tok_file), f"{len(paths)} images -> {tokens.shape[1]} ids each"))  # fmt: skip

    t0 = time.perf_counter()
    ks = default_ks(model.n_registers)
    noise = model.initial_noise(
        len(paths), decode.generator()
    )  # one noise per image, shared by all k: columns differ only in k
    columns, scores = [], []
    for k in ks:
        recon = model.detokenize(tokens, decode, keep_k=k, noise=noise)
        recon = recon.clamp(-1, 1)
        columns.append(recon.cpu())
        scores.append(float(psnr(recon, images).mean()))
    rows = [[images[i].cpu()] + [c[i] for c in columns] for i in range(len(paths))]
    grid = out / "reconstruction_grid.png"
    save_grid(rows, grid, labels=["input"] + [f"k={k}" for k in ks])
    detail = "PSNR by k: " + ", ".join(f"{k}:{s:.1f}" for k, s in zip(ks, scores, strict=True))
    steps.append(Step("coarse-to-fine reconstruction", time.perf_counter() - t0, str(grid), detail))

    steps += _generate(args, decode, model, out, device)

    print()
    print(f"{'step':32s} {'time':>7s}  {'output':44s} detail")
    for s in steps:
        print(f"{s.what:32s} {s.seconds:6.1f}s  {s.output:44s} {s.detail}")
    print(f"\nall outputs are in {out}/")
    return 0


def _generate(args: argparse.Namespace, decode: DecodeConfig, model, out: Path, device: torch.device) -> list[Step]:
    from flexitok.cli.generate import condition_kwargs, row_generators
    from flexitok.errors import CheckpointError
    from flexitok.io.checkpoint import atomic_write_bytes
    from flexitok.io.images import save_grid
    from flexitok.models.generator import Generator
    from flexitok.sampling.ar import ARSamplingConfig, generate

    steps: list[Step] = []
    for name, kind in ((args.class_generator, "class"), (args.text_generator, "text")):
        t0 = time.perf_counter()
        try:
            gen = Generator.from_pretrained(name, device=device)
        except CheckpointError as e:
            info(f"skipping {kind}-conditioned generation: {e}")
            continue
        scfg = ARSamplingConfig(n_tokens=gen.config.n_tokens, temperature=1.0, top_k=0, top_p=1.0,
                                guidance_scale=3.0, use_cache=True)  # fmt: skip
        if kind == "class":
            classes = gen.config.class_names or [str(i) for i in range(gen.config.num_classes)]
            per = 6
            labels = [c for c in range(len(classes)) for _ in range(per)]
            kw = condition_kwargs(gen, labels, None, None)
            row_names = list(classes)
        else:
            from flexitok.models.text_encoder import TextEncoder

            per = 6
            prompts = [p for p in PROMPTS for _ in range(per)]
            kw = condition_kwargs(gen, None, prompts, TextEncoder(gen.config.text_encoder).to(device))
            row_names = PROMPTS
        n = next(iter(kw.values())).shape[0]
        toks = generate(gen, scfg, generator=row_generators(decode.seed, n, device), **kw)
        noise = torch.cat([model.initial_noise(1, g) for g in row_generators(decode.seed, n, device, 10**6)])
        imgs = model.detokenize(toks, decode, noise=noise)
        imgs = imgs.clamp(-1, 1).cpu()
        rows = [list(imgs[i * per : (i + 1) * per]) for i in range(len(row_names))]
        path = out / f"{kind}_conditioned_samples.png"
        save_grid(rows, path)
        atomic_write_bytes(out / f"{kind}_conditioned_rows.txt", ("\n".join(row_names) + "\n").encode())
        steps.append(Step(f"{kind}-conditioned generation", time.perf_counter() - t0, str(path),
                          f"{len(row_names)} rows x {per} samples, {gen.config.n_tokens} tokens, CFG 3"))  # fmt: skip
    return steps
