"""Generation metrics: Frechet distance (pluggable features, FD-EffLite0 offline) per number of generated
tokens and generator CFG scale, plus the accuracy of an in-repo classifier on class-conditional samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from flexitok.errors import InvalidInputError
from flexitok.eval.features import FeatureExtractor
from flexitok.eval.metrics import frechet_distance
from flexitok.models.classifier import SmallCNN
from flexitok.models.generator import Generator
from flexitok.sampling.ar import ARSamplingConfig, generate
from flexitok.sampling.decode import DecodeConfig


@dataclass
class GenerationEvalConfig:
    """What to sweep. Sample i uses ``decode.seed + i`` for its tokens and ``decode.seed + 10**6 + i`` for its
    decoder noise (the same in every sweep cell)."""

    token_counts: tuple[int, ...] = (1, 4, 16, 64, 256)
    cfg_scales: tuple[float, ...] = (1.0, 3.0)
    n_samples: int = 1000
    batch_size: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_schedule: str = "constant"
    decode: DecodeConfig = DecodeConfig()


def _device_of(module: object) -> torch.device:
    """Where a (possibly parameter-free) extractor runs: its first parameter or buffer, else the CPU."""
    if isinstance(module, nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            return t.device
    return torch.device("cpu")


@torch.no_grad()
def reference_features(
    extractor: FeatureExtractor, dataset: Dataset, n: int, batch_size: int = 64, progress: bool = True
) -> tuple[Tensor, Tensor, list[str] | None]:
    """Features of the first n dataset images -> (feats [n, D], labels [n], captions or None)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, labels, captions = [], [], []
    seen = 0
    for batch in tqdm(loader, desc="reference features", disable=not progress, total=math.ceil(n / batch_size)):
        take = min(n - seen, batch["image"].shape[0])
        dev = _device_of(extractor)
        feats.append(extractor(batch["image"][:take].to(dev)).cpu())
        labels.append(torch.as_tensor(batch["label"])[:take])
        if "caption" in batch:
            captions += list(batch["caption"])[:take]
        seen += take
        if seen >= n:
            break
    return torch.cat(feats), torch.cat(labels), (captions or None)


@torch.no_grad()
def sample_images(
    generator: Generator,
    tokenizer: Any,
    scfg: ARSamplingConfig,
    cfg: GenerationEvalConfig,
    labels: Tensor | None,
    prompts: Sequence[str] | None,
    text_encoder: nn.Module | None,
    progress: bool = True,
) -> Tensor:
    """Generate ``cfg.n_samples`` images [n, 3, H, W] in [-1, 1] (tokens via ``generator``, pixels via
    ``tokenizer.detokenize``); ``labels`` / ``prompts`` (length n) give each sample's condition."""
    dev = generator.tok_emb.weight.device
    out = []
    n = cfg.n_samples
    for s in tqdm(
        range(0, n, cfg.batch_size), desc=f"k={scfg.n_tokens} cfg={scfg.guidance_scale}", disable=not progress
    ):
        e = min(s + cfg.batch_size, n)
        kw: dict[str, Any] = {}
        if generator.config.condition == "class":
            assert labels is not None
            kw["labels"] = labels[s:e].to(dev)
        elif generator.config.condition == "text":
            assert prompts is not None and text_encoder is not None
            feats, mask = text_encoder(list(prompts[s:e]))
            kw.update(text_features=feats.to(dev), text_mask=mask.to(dev))
        else:
            kw["batch_size"] = e - s
        seed = cfg.decode.seed
        gens = [torch.Generator(device=dev).manual_seed(seed + i) for i in range(s, e)]
        tokens = generate(generator, scfg, generator=gens, **kw)
        noise_gens = [torch.Generator(device=dev).manual_seed(seed + 10**6 + i) for i in range(s, e)]
        noise = torch.cat([tokenizer.initial_noise(1, g) for g in noise_gens])
        images = tokenizer.detokenize(tokens, cfg.decode, noise=noise)
        out.append(images.clamp(-1, 1).cpu())
    return torch.cat(out)


def evaluate_generation(
    generator: Generator,
    tokenizer: Any,
    extractor: FeatureExtractor,
    ref_feats: Tensor,
    cfg: GenerationEvalConfig,
    labels: Tensor | None = None,
    prompts: Sequence[str] | None = None,
    text_encoder: nn.Module | None = None,
    classifier: SmallCNN | None = None,
    progress: bool = True,
) -> list[dict[str, float | int | str]]:
    """One row per (tokens, cfg_scale): ``{"tokens", "cfg_scale", "<metric>": FD, "accuracy" (class models with a
    classifier)}``. ``labels`` defaults to a balanced cycle over the classes for class-conditioned generators."""
    c = generator.config
    n = cfg.n_samples
    if c.condition == "class" and labels is None:
        labels = torch.arange(n) % c.num_classes
    if labels is not None:
        labels = labels[:n]
        if len(labels) < n:
            raise InvalidInputError(f"{len(labels)} labels for {n} samples")
    if c.condition == "text":
        if not prompts:
            raise InvalidInputError("a text-conditioned generator needs prompts for evaluation")
        prompts = [prompts[i % len(prompts)] for i in range(n)]
    bad = [k for k in cfg.token_counts if not 1 <= k <= c.n_tokens]
    if bad:
        raise InvalidInputError(f"token counts {bad} are outside 1..{c.n_tokens}")
    rows: list[dict[str, float | int | str]] = []
    metric = getattr(extractor, "metric_name", "FD")
    dev = _device_of(extractor)
    for k in cfg.token_counts:
        for scale in cfg.cfg_scales:
            scfg = ARSamplingConfig(
                n_tokens=k,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                guidance_scale=scale,
                guidance_schedule=cfg.cfg_schedule,  # type: ignore[arg-type]
            )
            images = sample_images(generator, tokenizer, scfg, cfg, labels, prompts, text_encoder, progress)
            feats = torch.cat(
                [extractor(images[i : i + cfg.batch_size].to(dev)).cpu() for i in range(0, n, cfg.batch_size)]
            )
            row: dict[str, float | int | str] = {
                "tokens": k,
                "cfg_scale": scale,
                metric: frechet_distance(feats, ref_feats),
            }
            if classifier is not None and labels is not None:
                pred = classifier.predict(images)
                row["accuracy"] = float((pred == labels.cpu()).float().mean())
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, float | int | str]]) -> str:
    """Plain-text table of :func:`evaluate_generation` rows."""
    if not rows:
        return "(no results)"
    keys = list(rows[0])
    lines = ["  ".join(f"{k:>12}" for k in keys)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>12.4g}" if isinstance(r[k], float) else f"{r[k]!s:>12}" for k in keys))
    return "\n".join(lines)
