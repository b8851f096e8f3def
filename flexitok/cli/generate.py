"""``flexitok generate``: sample token sequences with the AR generator and decode them with the tokenizer.

flexitok generate --class 3 --tokens 32 -n 16 -o grid.png
flexitok generate --prompt "a sneaker" --tokens 64 -n 8 --cfg-scale 3 -o sneakers.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from flexitok.cli.common import add_batch_size_arg, info, load_model, positive_int, resolve_device
from flexitok.errors import InvalidInputError
from flexitok.models.generator import DEFAULT_GENERATOR, Generator
from flexitok.sampling.ar import ARSamplingConfig, generate

# The bundled tokenizer paired with the bundled generator.
DEFAULT_TOKENIZER = "default"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def add_ar_sampling_args(p: argparse.ArgumentParser) -> None:
    """AR sampling flags shared by generate, eval-generation and bench-generator."""
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument(
        "--cfg-scale", type=float, default=3.0, help="generator classifier-free guidance (1 = off; default 3)"
    )
    p.add_argument(
        "--cfg-schedule",
        default="constant",
        choices=["constant", "linear", "cosine"],
        help="guidance over token positions: constant, or a ramp from 1 to --cfg-scale",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slow; for checks)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images: AR generator -> tokens -> tokenizer decoder",
        description="Sample FlexTok token sequences with an autoregressive generator and decode them into images.",
    )
    p.add_argument(
        "--generator", default=DEFAULT_GENERATOR, help=f"generator folder or bundled name ({DEFAULT_GENERATOR!r})"
    )
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help=f"tokenizer folder or name ({DEFAULT_TOKENIZER!r})")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--class", dest="classes", default=None, help="class id(s) or name(s), comma-separated; cycled")
    cond.add_argument(
        "--prompt", dest="prompts", action="append", default=None, help="text prompt (repeatable; cycled)"
    )
    p.add_argument("--tokens", type=positive_int, default=None, help="tokens per image, 1..N (default: all N)")
    p.add_argument("-n", "--num-samples", type=positive_int, default=16, help="number of images (default 16)")
    p.add_argument("-o", "--output", required=True, help="grid image (e.g. grid.png) or a folder for single images")
    p.add_argument("--seed", type=int, default=0, help="base seed; sample i uses seed + i (default 0)")
    p.add_argument("--steps", type=positive_int, default=20, help="decoder Euler steps (default 20)")
    p.add_argument("--decoder-guidance", type=float, default=7.5, help="decoder guidance scale (default 7.5)")
    p.add_argument("--no-apg", action="store_true", help="plain CFG instead of APG in the decoder")
    p.add_argument("--save-tokens", default=None, help="also save the sampled tokens [n, K] to this .pt file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    add_ar_sampling_args(p)
    add_batch_size_arg(p, default=16)
    p.set_defaults(func=run)


def parse_classes(text: str, gen: Generator) -> list[int]:
    """``"3"`` / ``"3,7"`` / ``"sneaker,bag"`` -> class ids (names matched case-insensitively)."""
    c = gen.config
    names = {n.lower(): i for i, n in enumerate(c.class_names or ())}
    ids = []
    for part in (s.strip() for s in text.split(",") if s.strip()):
        if part.lstrip("-").isdigit():
            i = int(part)
        elif part.lower() in names:
            i = names[part.lower()]
        else:
            known = f"; known names: {', '.join(c.class_names)}" if c.class_names else ""
            raise InvalidInputError(f"unknown class {part!r}{known}")
        if not 0 <= i < c.num_classes:
            raise InvalidInputError(f"class {i} is outside 0..{c.num_classes - 1}")
        ids.append(i)
    if not ids:
        raise InvalidInputError("--class needs at least one class")
    return ids


def row_generators(seed: int, n: int, device: torch.device, offset: int = 0) -> list[torch.Generator]:
    """One generator per sample (seed + i), so an image does not depend on the batch it was drawn in."""
    return [torch.Generator(device=device).manual_seed(seed + i + offset) for i in range(n)]


def check_pair(gen: Generator, tokenizer_vocab: int, tokenizer_tokens: int) -> None:
    """The generator must speak the tokenizer's vocabulary."""
    if gen.vocab_size != tokenizer_vocab:
        raise InvalidInputError(
            f"generator vocab_size {gen.vocab_size} does not match the tokenizer's codebook ({tokenizer_vocab}); "
            "use the tokenizer the generator was trained on"
        )
    if gen.config.n_tokens > tokenizer_tokens:
        raise InvalidInputError(
            f"generator makes up to {gen.config.n_tokens} tokens; tokenizer takes {tokenizer_tokens}"
        )


def condition_kwargs(
    gen: Generator, labels: list[int] | None, prompts: list[str] | None, text_encoder: torch.nn.Module | None
) -> dict[str, Any]:
    """Keyword arguments for :func:`flexitok.sampling.ar.generate` for one batch."""
    dev = gen.tok_emb.weight.device
    kind = gen.config.condition
    if kind == "class":
        if labels is None:
            raise InvalidInputError("this generator is class-conditioned: pass --class")
        return {"labels": torch.tensor(labels, device=dev)}
    if kind == "text":
        if prompts is None or text_encoder is None:
            raise InvalidInputError("this generator is text-conditioned: pass --prompt")
        feats, mask = text_encoder(prompts)
        return {"text_features": feats.to(dev), "text_mask": mask.to(dev)}
    if labels is not None or prompts is not None:
        raise InvalidInputError("this generator is unconditional: drop --class / --prompt")
    return {}


def run(args: argparse.Namespace) -> int:
    from flexitok.io.images import save_grid, save_image

    device = resolve_device(args.device)
    gen = Generator.from_pretrained(args.generator, device=device)
    tok = load_model(args.tokenizer, device)
    check_pair(gen, tok.vocab_size, tok.n_registers)
    k = args.tokens or gen.config.n_tokens
    if not 1 <= k <= gen.config.n_tokens:
        raise InvalidInputError(f"--tokens must be in 1..{gen.config.n_tokens}, got {k}")
    scfg = ARSamplingConfig(
        n_tokens=k,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=args.cfg_scale,
        guidance_schedule=args.cfg_schedule,
        use_cache=not args.no_cache,
    )
    n = args.num_samples
    labels = prompts = None
    text_encoder = None
    if gen.config.condition == "class" and args.classes is not None:
        ids = parse_classes(args.classes, gen)
        labels = [ids[i % len(ids)] for i in range(n)]
    if args.prompts is not None:
        prompts = [args.prompts[i % len(args.prompts)] for i in range(n)]
        if gen.config.condition == "text":
            from flexitok.models.text_encoder import TextEncoder

            text_encoder = TextEncoder(gen.config.text_encoder).to(device)
    if gen.config.condition == "class" and args.classes is None and args.prompts is None:
        raise InvalidInputError("this generator is class-conditioned: pass --class (id or name)")

    tokens_all, images_all = [], []
    for s in tqdm(range(0, n, args.batch_size), desc="generate", unit="batch"):
        e = min(s + args.batch_size, n)
        kw = condition_kwargs(gen, labels[s:e] if labels else None, prompts[s:e] if prompts else None, text_encoder)
        if gen.config.condition == "none":
            kw["batch_size"] = e - s
        gens = row_generators(args.seed + s, e - s, device)
        tokens = generate(gen, scfg, generator=gens, **kw)
        noise = torch.cat([tok.initial_noise(1, g) for g in row_generators(args.seed + s, e - s, device, 10**6)])
        images = tok.detokenize(
            tokens, steps=args.steps, guidance_scale=args.decoder_guidance, apg=not args.no_apg, noise=noise
        )
        tokens_all.append(tokens.cpu())
        images_all.append(images.clamp(-1, 1).cpu())
    tokens = torch.cat(tokens_all)
    images = torch.cat(images_all)
    out = Path(args.output)
    if out.suffix.lower() in _IMAGE_SUFFIXES:
        save_grid(_rows(images), out)
        info(f"wrote {n} samples ({k} tokens each) to {out}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_image(img, out / f"sample_{i:04d}.png")
        info(f"wrote {n} images ({k} tokens each) to {out}/")
    if args.save_tokens:
        from flexitok.io.checkpoint import atomic_write

        atomic_write(args.save_tokens, lambda p: torch.save(tokens, p))
    return 0


def _rows(images: Tensor) -> list[Tensor]:
    per_row = math.ceil(math.sqrt(images.shape[0]))
    return [images[i : i + per_row] for i in range(0, images.shape[0], per_row)]
