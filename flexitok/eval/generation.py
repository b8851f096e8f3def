"""Generation metrics: Frechet distance (pluggable features, FD-EffLite0 offline) per number of generated
tokens and generator CFG scale, plus the accuracy of an in-repo classifier on class-conditional samples."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from flexitok.errors import InvalidInputError
from flexitok.eval.features import FeatureExtractor
from flexitok.eval.metrics import frechet_distance
from flexitok.eval.reference import reference_subset_features
from flexitok.models.classifier import SmallCNN
from flexitok.pipelines import GenerationPipeline, dataset_inputs
from flexitok.sampling.ar import ARSamplingConfig
from flexitok.sampling.decode import DecodeConfig


@dataclass
class GenerationEvalConfig:
    """What to sweep: every (token count, generator CFG scale) cell generates ``n_samples`` images with the
    ``sampling`` options (its ``n_tokens`` and ``guidance_scale`` are set per cell) and the ``decode`` settings.
    Sample i is seeded like row i of :class:`flexitok.pipelines.GenerationPipeline` (the same in every cell)."""

    token_counts: tuple[int, ...] = (1, 4, 16, 64, 256)
    cfg_scales: tuple[float, ...] = (1.0, 3.0)
    n_samples: int = 1000
    batch_size: int = 64
    sampling: ARSamplingConfig = field(default_factory=ARSamplingConfig)
    decode: DecodeConfig = DecodeConfig()


def _device_of(module: object) -> torch.device:
    """Where a (possibly parameter-free) extractor runs: its first parameter or buffer, else the CPU."""
    if isinstance(module, nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            return t.device
    return torch.device("cpu")


def reference_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    n: int,
    batch_size: int = 64,
    progress: bool = True,
    seed: int = 0,
    balanced: bool = False,
) -> tuple[Tensor, Tensor, list[str] | None]:
    """Features of a seeded random (or class-balanced) subset of n dataset images -> (feats [n, D], labels [n],
    captions or None). Never the first n: on a sorted class folder those would be a few classes."""
    return reference_subset_features(extractor, dataset, n, seed, balanced, batch_size, progress=progress)


def evaluate_generation(
    pipeline: GenerationPipeline,
    extractor: FeatureExtractor,
    ref_feats: Tensor,
    cfg: GenerationEvalConfig,
    labels: Tensor | None = None,
    prompts: Sequence[str] | None = None,
    classifier: SmallCNN | None = None,
    progress: bool = True,
) -> list[dict[str, float | int | str]]:
    """One row per (tokens, cfg_scale): ``{"tokens", "cfg_scale", "<metric>": FD, "accuracy"}``. The generator is
    prompted like the reference split: with its ``labels`` (class models; a balanced cycle over the classes when
    there are none) or its captions ``prompts`` (text models). ``accuracy`` (with a ``classifier``): the fraction
    of samples classified as the class they were asked for (class labels, or the captions' labels)."""
    c = pipeline.generator.config
    n = cfg.n_samples
    if labels is not None and len(labels) < n:
        raise InvalidInputError(f"{len(labels)} labels for {n} samples")
    inputs, truth = dataset_inputs(pipeline.conditioning, n, labels, prompts)
    bad = [k for k in cfg.token_counts if not 1 <= k <= c.n_tokens]
    if bad:
        raise InvalidInputError(f"token counts {bad} are outside 1..{c.n_tokens}")
    rows: list[dict[str, float | int | str]] = []
    metric = getattr(extractor, "metric_name", "FD")
    dev = _device_of(extractor)
    for k in cfg.token_counts:
        for scale in cfg.cfg_scales:
            sampling = dataclasses.replace(cfg.sampling, n_tokens=k, guidance_scale=scale)
            images = pipeline(
                **inputs, n_tokens=k, sampling=sampling, decode=cfg.decode, batch_size=cfg.batch_size, progress=progress
            ).images
            feats = torch.cat(
                [extractor(images[i : i + cfg.batch_size].to(dev)).cpu() for i in range(0, n, cfg.batch_size)]
            )
            row: dict[str, float | int | str] = {
                "tokens": k,
                "cfg_scale": scale,
                metric: frechet_distance(feats, ref_feats),
            }
            if classifier is not None and truth is not None:
                pred = classifier.predict(images)
                row["accuracy"] = float((pred == truth.cpu()).float().mean())
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
