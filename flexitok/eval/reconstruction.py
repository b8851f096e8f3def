"""Reconstruction quality vs number of kept tokens: PSNR, SSIM and a feature Frechet distance per k."""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from flexitok.config import default_ks
from flexitok.errors import InvalidInputError
from flexitok.eval.features import FeatureExtractor, build_extractor
from flexitok.eval.metrics import frechet_distance, psnr, ssim
from flexitok.eval.plots import image_grid, plot_metrics_vs_k
from flexitok.eval.reference import ReferenceStats, distance_to_reference
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.files import atomic_write_bytes


def _collate_images(items: list[dict[str, Any]]) -> torch.Tensor:
    return torch.stack([it["image"] for it in items])


@torch.no_grad()
def evaluate_reconstruction(
    model: Any,
    dataset: Dataset,
    ks: Sequence[int] | None = None,
    n_images: int = 256,
    batch_size: int = 16,
    decode: DecodeConfig | None = None,
    extractor: FeatureExtractor | str | None = "efflite0",
    n_examples: int = 0,
    progress: bool = True,
    reference: ReferenceStats | None = None,
) -> dict[str, Any]:
    """Tokenize the first ``n_images`` images once, decode them from the first k tokens for every k in ``ks``.

    ``decode`` holds the decoder settings (default :class:`DecodeConfig()`). The initial noise comes from one
    generator seeded with ``decode.seed`` and is drawn per image, so image i gets the same noise for every k and
    every batch size. Returns a JSON-ready dict::

        {"ks", "n_images", "steps", "guidance_scale", "apg", "seed", "metrics": ["PSNR", "SSIM", <FD name>],
         "rows": [{"k": k, "PSNR": mean dB, "SSIM": mean, <FD name>: float, "nonfinite": int}, ...]}

    plus ``"examples"`` (``{"original": [E,3,H,W], k: [E,3,H,W]}``, clamped) when ``n_examples > 0``.
    PSNR/SSIM are per-image values averaged; the FD compares reconstruction and original features (rFD),
    NaN with fewer than two images. With ``reference`` statistics (same extractor), a ``<FD name>-ref`` column
    gives the distance of the reconstructions to them (rFID against dataset statistics). ``nonfinite`` counts reconstructions with NaN/inf pixels (then the
    metrics of that k are NaN and a warning is issued).
    """
    n_reg = int(model.n_registers)
    ks = list(ks) if ks is not None else default_ks(n_reg)
    if not ks or any(not 1 <= int(k) <= n_reg for k in ks):
        raise InvalidInputError(f"ks must be a non-empty list of values in 1..{n_reg}, got {ks}")
    ks = sorted({int(k) for k in ks})
    decode = decode or DecodeConfig()
    if n_images < 1 or batch_size < 1:
        raise InvalidInputError(f"n_images and batch_size must be >= 1, got {n_images}, {batch_size}")
    if not isinstance(dataset, IterableDataset):
        n_images = min(n_images, len(dataset))  # type: ignore[arg-type]
    device = next(model.parameters()).device
    if isinstance(extractor, str):
        extractor = build_extractor(extractor, device)
    elif isinstance(extractor, torch.nn.Module):
        extractor = extractor.to(device)
    fd_name = extractor.metric_name if extractor is not None else None

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate_images)
    generator = decode.generator()
    sums = {k: {"PSNR": 0.0, "SSIM": 0.0} for k in ks}
    feats_rec: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    feats_ref: list[torch.Tensor] = []
    examples: dict[Any, list[torch.Tensor]] = {"original": [], **{k: [] for k in ks}}
    nonfinite = dict.fromkeys(ks, 0)  # reconstructions with NaN/inf pixels (a decoder problem, reported not hidden)
    seen = 0
    bar = tqdm(total=n_images * len(ks), desc="reconstruction eval", unit="img", disable=not progress)
    for images in loader:
        if seen >= n_images:
            break
        images = images[: n_images - seen].to(device)
        b = images.shape[0]
        tokens = model.tokenize(images)
        noise = model.initial_noise(b, generator)
        if extractor is not None:
            feats_ref.append(extractor(images).double().cpu())
        keep_ex = max(0, min(b, n_examples - seen))
        if keep_ex:
            examples["original"].append(images[:keep_ex].clamp(-1, 1).cpu())
        for k in ks:
            rec = model.detokenize(tokens, decode, noise=noise, keep_k=k)
            rec = rec.float()
            nonfinite[k] += int((~torch.isfinite(rec).flatten(1).all(1)).sum())
            rec = rec.clamp(-1, 1)
            sums[k]["PSNR"] += float(psnr(rec, images.float()).sum())
            sums[k]["SSIM"] += float(ssim(rec, images.float()).sum())
            if extractor is not None:
                feats_rec[k].append(extractor(rec).double().cpu())
            if keep_ex:
                examples[k].append(rec[:keep_ex].cpu())
            bar.update(b)
        seen += b
    bar.close()
    if seen == 0:
        raise InvalidInputError("the dataset yielded no images")

    rows: list[dict[str, float]] = []
    for k in ks:
        row: dict[str, float] = {"k": k, "PSNR": sums[k]["PSNR"] / seen, "SSIM": sums[k]["SSIM"] / seen}
        if fd_name is not None:
            ok = seen >= 2 and nonfinite[k] == 0
            row[fd_name] = frechet_distance(torch.cat(feats_rec[k]), torch.cat(feats_ref)) if ok else float("nan")
            if reference is not None:
                row[f"{fd_name}-ref"] = distance_to_reference(torch.cat(feats_rec[k]), reference) if ok else math.nan
        row["nonfinite"] = nonfinite[k]
        rows.append(row)
    if any(nonfinite.values()):
        warnings.warn(
            f"the decoder produced NaN/inf pixels (images per k: {nonfinite}); their metrics are NaN",
            stacklevel=3,  # the caller of evaluate_reconstruction (past the no_grad wrapper)
        )
    result: dict[str, Any] = {
        "ks": ks,
        "n_images": seen,
        **decode.to_dict(),
        "metrics": ["PSNR", "SSIM"]
        + ([fd_name] if fd_name else [])
        + ([f"{fd_name}-ref"] if fd_name and reference is not None else []),
        "rows": rows,
    }
    if n_examples > 0:
        result["examples"] = {key: torch.cat(v) for key, v in examples.items() if v}
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4g}")
    return str(value)


def markdown_table(result: dict[str, Any]) -> str:
    """The per-k rows of an :func:`evaluate_reconstruction` result as a markdown table."""
    cols = ["k", *result["metrics"]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    # JSON has no inf/nan; write them as strings so the file stays standard JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_reconstruction_report(
    result: dict[str, Any], out_dir: str | Path, extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``metrics_vs_k.png`` and, with examples, ``examples.png``
    (rows: originals, then one row per k). ``extra`` (e.g. model and data names) is added to the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "examples"}
    if extra:
        summary = {**extra, **summary}
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "metrics_vs_k.png"}
    atomic_write_bytes(paths["json"], (json.dumps(_json_safe(summary), indent=2) + "\n").encode())
    header = f"# Reconstruction vs kept tokens ({result['n_images']} images, {result['steps']} steps)\n\n"
    atomic_write_bytes(paths["markdown"], (header + markdown_table(result)).encode())
    atomic_write_bytes(paths["plot"], _png_bytes(plot_metrics_vs_k(result["rows"], result["metrics"])))
    examples = result.get("examples")
    if examples:
        rows = [examples["original"]] + [examples[k] for k in result["ks"] if k in examples]
        labels = ["original"] + [f"k={k}" for k in result["ks"] if k in examples]
        paths["examples"] = out / "examples.png"
        atomic_write_bytes(paths["examples"], _png_bytes(image_grid(rows, labels)))
    return paths
