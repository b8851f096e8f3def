"""Held-out evaluation of a photo tokenizer: per-k PSNR/SSIM, rate-distortion vs JPEG/WebP, reconstruction grid.

    python scripts/photo_eval.py --model photo --photos runs/photos --out runs/photo-eval

Held-out images: ``<photos>/test`` (mate-backgrounds), each resized to the model's size as a whole (shorter side
resized, centre square). Writes ``results.json``, ``results.md``, ``rate_distortion.png`` and
``reconstructions.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flexitok import FlexTok
from flexitok.data import DataConfig, build_dataset
from flexitok.eval.metrics import psnr, ssim
from flexitok.eval.plots import image_grid
from flexitok.eval.rate_distortion import RDPoint, codec_at_budget, codec_curve, plot_rate_distortion, token_bytes
from flexitok.eval.rate_distortion import smallest_file as codec_floor
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
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        apg=True,
        seed=args.seed,
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
    curves = {c: codec_curve(originals, c, qualities=(0, 5, 10, 20, 30, 50, 70, 90)) for c in ("JPEG", "WEBP")}
    matched = {c: {pt.label: codec_at_budget(originals, c, int(pt.bytes)) for pt in flextok} for c in ("JPEG", "WEBP")}
    floors = {c: codec_floor(originals, c) for c in ("JPEG", "WEBP")}
    args.out.mkdir(parents=True, exist_ok=True)
    plot = plot_rate_distortion(
        {"FlexTok photo": flextok, "JPEG": curves["JPEG"], "WEBP": curves["WEBP"]},
        f"{len(data)} held-out photos (mate-backgrounds) at {size}x{size}",
    )
    plot.save(args.out / "rate_distortion.png")
    ex = res["examples"]
    rows = [ex["original"], vae_only[: args.grid_images]] + [ex[k] for k in ks]
    image_grid(rows, ["original", "VAE"] + [f"k={k}" for k in ks]).save(args.out / "reconstructions.png")

    def asdict(pt: RDPoint | None):
        return None if pt is None else pt.__dict__

    summary = {
        "model": args.model,
        "n_images": len(data),
        "image_size": size,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "stage0_vae": stage0,
        "flextok": [asdict(pt) for pt in flextok],
        "codec_curves": {c: [asdict(pt) for pt in pts] for c, pts in curves.items()},
        "codec_matched": {c: {k: asdict(v) for k, v in m.items()} for c, m in matched.items()},
        "codec_smallest_file_bytes": floors,
        "seconds": round(time.time() - t0, 1),
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        f"stage-0 VAE alone: PSNR {stage0['PSNR']:.2f} dB, SSIM {stage0['SSIM']:.4f}",
        f"smallest files: JPEG {floors['JPEG']:.0f} B, WebP {floors['WEBP']:.0f} B (quality 0)",
        "",
        "| k | bytes | PSNR | SSIM | JPEG at <= bytes (PSNR / SSIM) | WebP at <= bytes (PSNR / SSIM) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for pt in flextok:
        cells = []
        for c in ("JPEG", "WEBP"):
            m = matched[c][pt.label]
            cells.append("n/a (smaller than any file)" if m is None else f"{m.psnr:.2f} / {m.ssim:.4f}")
        lines.append(f"| {pt.label[2:]} | {pt.bytes:.0f} | {pt.psnr:.2f} | {pt.ssim:.4f} | {cells[0]} | {cells[1]} |")
    lines += ["", "| codec | quality | mean bytes | PSNR | SSIM |", "|---|---:|---:|---:|---:|"]
    for c, pts in curves.items():
        for pt in pts:
            lines.append(f"| {c} | {pt.label[2:]} | {pt.bytes:.0f} | {pt.psnr:.2f} | {pt.ssim:.4f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"({summary['seconds']} s)")


if __name__ == "__main__":
    main()
