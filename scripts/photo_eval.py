"""Held-out evaluation of a photo tokenizer: per-k PSNR/SSIM, rate-distortion vs JPEG/WebP, reconstruction grid.

    python scripts/photo_eval.py --model photo --photos runs/photos --out runs/photo-eval

Held-out images: ``<photos>/test`` (mate-backgrounds), each whole photo resized to the model's size (its central
square, the full height of a landscape photo; no detail crops). Writes ``results.json``, ``results.md``,
``rate_distortion.png`` and ``reconstructions.png`` into ``--out``.

Rates: FlexTok at k tokens costs ``ceil(k * 16 / 8)`` bytes (the bit-packed ids, no container). JPEG and WebP are
Pillow files at every quality 0, 5, ..., 100 (same quality for every image), interpolated in log-bytes at the
FlexTok byte counts; JPEG is counted twice: whole files (headers included) and its entropy-coded scan data alone.
A raw-pixel thumbnail (n x n RGB, 3n^2 bytes, enlarged bicubically) is the baseline below the codecs' smallest files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flexitok import DecodeConfig, FlexTok
from flexitok.data import DataConfig, build_dataset
from flexitok.eval.metrics import psnr, ssim
from flexitok.eval.plots import image_grid
from flexitok.eval.rate_distortion import (
    RDPoint,
    codec_curve,
    interpolate,
    plot_rate_distortion,
    thumbnail_curve,
    token_bytes,
)
from flexitok.eval.reconstruction import default_ks, evaluate_reconstruction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="photo")
    p.add_argument("--photos", default="runs/photos")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid-images", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = FlexTok.from_pretrained(args.model)
    size = model.image_size[0]
    data = build_dataset(DataConfig(kind="folder", path=args.photos, split="test", image_size=size))
    originals = torch.stack([data[i]["image"] for i in range(len(data))])
    ks = default_ks(model.n_registers)
    res = evaluate_reconstruction(
        model,
        data,
        ks=ks,
        n_images=len(data),
        batch_size=16,
        decode=DecodeConfig(steps=args.steps, guidance_scale=args.guidance_scale, apg=True, seed=args.seed),
        extractor=None,
        n_examples=args.grid_images,
        progress=False,
    )
    with torch.no_grad():
        vae_only = model.vae.decode(model.vae.encode(originals)).clamp(-1, 1)
    stage0 = {"PSNR": float(psnr(vae_only, originals).mean()), "SSIM": float(ssim(vae_only, originals).mean())}
    flextok = [
        RDPoint(f"k={r['k']}", token_bytes(r["k"], model.vocab_size), r["PSNR"], r["SSIM"], len(data))
        for r in res["rows"]
    ]
    qualities = tuple(range(0, 101, 5))
    curves = {
        "JPEG": codec_curve(originals, "JPEG", qualities),
        "JPEG-payload": codec_curve(originals, "JPEG", qualities, count="payload"),
        "WEBP": codec_curve(originals, "WEBP", qualities),
        "thumbnail": thumbnail_curve(originals, (1, 2, 3, 4, 5, 6, 8, 12)),
    }
    matched = {c: {pt.label: interpolate(curve, pt.bytes) for pt in flextok} for c, curve in curves.items()}
    floors = {c: min(pt.bytes for pt in curve) for c, curve in curves.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    plot = plot_rate_distortion(
        {
            "FlexTok photo (k = 1..64)": flextok,
            "JPEG (whole file)": curves["JPEG"],
            "JPEG-payload (scan data only)": curves["JPEG-payload"],
            "WEBP (whole file)": curves["WEBP"],
            "thumbnail (n x n RGB, bicubic up)": curves["thumbnail"],
        },
        f"{len(data)} held-out photos (mate-backgrounds) at {size}x{size}; codecs at quality 0, 5, ..., 100",
        references={"stage-0 VAE alone (the tokenizer's ceiling)": (stage0["PSNR"], stage0["SSIM"])},
    )
    plot.save(args.out / "rate_distortion.png")
    ex = res["examples"]
    rows = [ex["original"], vae_only[: args.grid_images]] + [ex[k] for k in ks]
    image_grid(rows, ["original", "VAE"] + [f"k={k}" for k in ks]).save(args.out / "reconstructions.png")

    def asdict(pt: RDPoint):
        return pt.__dict__

    summary = {
        "model": args.model,
        "n_images": len(data),
        "image_size": size,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "stage0_vae": stage0,
        "flextok": [asdict(pt) for pt in flextok],
        "codec_curves": {c: [asdict(pt) for pt in pts] for c, pts in curves.items()},
        "codec_interpolated_at_flextok_bytes": {
            c: {k: (None if v is None else {"psnr": v[0], "ssim": v[1]}) for k, v in m.items()}
            for c, m in matched.items()
        },
        "codec_smallest_mean_bytes": floors,
        "seconds": round(time.time() - t0, 1),
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        f"stage-0 VAE alone: PSNR {stage0['PSNR']:.2f} dB, SSIM {stage0['SSIM']:.4f}",
        f"smallest mean sizes (quality 0): JPEG file {floors['JPEG']:.0f} B, JPEG scan data "
        f"{floors['JPEG-payload']:.0f} B, WebP file {floors['WEBP']:.0f} B",
        "",
        "| k | bytes | FlexTok PSNR / SSIM | WebP file | JPEG file | JPEG scan data only | thumbnail |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pt in flextok:
        cells = []
        for c in ("WEBP", "JPEG", "JPEG-payload", "thumbnail"):
            m = matched[c][pt.label]
            cells.append(f"below its smallest ({floors[c]:.0f} B)" if m is None else f"{m[0]:.2f} / {m[1]:.4f}")
        lines.append(f"| {pt.label[2:]} | {pt.bytes:.0f} | {pt.psnr:.2f} / {pt.ssim:.4f} | " + " | ".join(cells) + " |")
    lines += ["", "| codec | quality (thumbnail: size) | mean bytes | PSNR | SSIM |", "|---|---:|---:|---:|---:|"]
    for c, pts in curves.items():
        for pt in pts:
            lines.append(f"| {c} | {pt.label.removeprefix('q=')} | {pt.bytes:.0f} | {pt.psnr:.2f} | {pt.ssim:.4f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"({summary['seconds']} s)")


if __name__ == "__main__":
    main()
