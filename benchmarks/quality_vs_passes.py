"""Reconstruction quality against decoder passes, for each sampler option (the table in docs/performance.md).

Every option decodes the same held-out images from the same tokens and the same noise, with the existing
evaluation (:func:`flexitok.eval.reconstruction.evaluate_reconstruction`: PSNR, SSIM, FD-EffLite0 per k). A
*decoder pass* is one image through the decoder: a guided evaluation costs two ([cond; uncond]), an unguided one.

    python benchmarks/quality_vs_passes.py --model default -n 256 --update-doc docs/performance.md

``--update-doc`` rewrites the block between the ``quality-table`` markers of that file (the rest is untouched),
so the table can be regenerated after the bundled model is retrained. ``--json`` keeps every number. Every row
decodes with its own seeded noise, so rows can be split over processes (``--only 1,4 --json a.json``, ...) and
joined afterwards (``--merge a.json b.json ... --update-doc ...``): the numbers are those of one full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flexitok.data import DataConfig, build_dataset
from flexitok.eval.reconstruction import evaluate_reconstruction
from flexitok.models.flextok import FlexTok
from flexitok.sampling.decode import DecodeConfig
from flexitok.sampling.flow import decoder_passes

BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"


def options(base: DecodeConfig) -> list[tuple[str, DecodeConfig]]:
    """(label, config) for every row: the official sampler first, then fewer passes each way."""
    r = dataclasses.replace
    return [
        ("Euler, 20 steps (official default)", base),
        ("Euler, 10 steps", r(base, steps=10)),
        ("Euler, 5 steps", r(base, steps=5)),
        ("Euler, 20 steps, no guidance", r(base, guidance_scale=1.0)),
        ("Euler, 20 steps, guidance for t in [0.5, 1]", r(base, guidance_interval=(0.5, 1.0))),
        ("Euler, 20 steps, guidance for t in [0, 0.5]", r(base, guidance_interval=(0.0, 0.5))),
        ("Euler, 20 steps, guidance for t in [0.25, 0.75]", r(base, guidance_interval=(0.25, 0.75))),
        ("Heun, 10 steps", r(base, sampler="heun", steps=10)),
        ("Heun, 5 steps", r(base, sampler="heun", steps=5)),
        ("midpoint, 10 steps", r(base, sampler="midpoint", steps=10)),
        ("midpoint, 5 steps", r(base, sampler="midpoint", steps=5)),
        ("Heun, 5 steps, guidance for t in [0.5, 1]", r(base, sampler="heun", steps=5, guidance_interval=(0.5, 1.0))),
    ]


def passes(cfg: DecodeConfig) -> int:
    return decoder_passes(cfg)


def _fmt(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def markdown(rows: list[dict[str, Any]], ks: list[int], fd_name: str, command: str, meta: str) -> str:
    head = "| option | decoder passes / image | " + " | ".join(f"k={k}" for k in ks) + " |"
    sep = "|---|---:|" + "---:|" * len(ks)
    out = [f"Command: `{command}`", "", meta, "", "PSNR (dB, higher is better):", "", head, sep]
    for r in rows:
        out.append(f"| {r['option']} | {r['passes']} | " + " | ".join(_fmt(r["psnr"][str(k)], 2) for k in ks) + " |")
    out += ["", f"{fd_name} (lower is better):", "", head, sep]
    for r in rows:
        out.append(f"| {r['option']} | {r['passes']} | " + " | ".join(_fmt(r["fd"][str(k)], 1) for k in ks) + " |")
    return "\n".join(out) + "\n"


def update_doc(path: Path, block: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: f"{BEGIN}\n{block}{END}", text, flags=re.S)
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="tokenizer (default: the bundled one)")
    p.add_argument("-n", "--n-images", type=int, default=256, help="held-out test images (default 256)")
    p.add_argument("--ks", default="1,2,4,8,16,32", help="token counts (default 1,2,4,8,16,32)")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="base guidance (default 3.0, the model card's)")
    p.add_argument("--no-apg", action="store_true", help="plain CFG instead of APG")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=None, help="comma-separated row numbers to run (default all)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="join the rows of these --json files instead")
    p.add_argument("--json", type=Path, default=None, help="write all numbers here")
    p.add_argument("--update-doc", type=Path, default=None, help="rewrite the quality-table block of this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/quality_vs_passes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.merge:
        return merge(args.merge, args.json, args.update_doc)

    model = FlexTok.from_pretrained(args.model)
    ks = [int(k) for k in args.ks.split(",")]
    h = model.image_size[0]
    data = build_dataset(DataConfig(kind="fashion_mnist", split="test", image_size=h, limit=args.n_images))
    base = DecodeConfig(guidance_scale=args.guidance_scale, apg=not args.no_apg, seed=args.seed)
    chosen = list(enumerate(options(base)))
    if args.only:
        chosen = [chosen[int(i)] for i in args.only.split(",")]
    rows: list[dict[str, Any]] = []
    fd_name = "FD"
    for index, (label, cfg) in chosen:
        t0 = time.perf_counter()
        res = evaluate_reconstruction(
            model, data, ks=ks, n_images=args.n_images, batch_size=args.batch_size, decode=cfg, progress=False
        )
        fd_name = res["metrics"][-1]
        row = {
            "index": index,
            "option": label,
            "decode": cfg.to_dict(),
            "passes": passes(cfg),
            "psnr": {str(r["k"]): r["PSNR"] for r in res["rows"]},
            "ssim": {str(r["k"]): r["SSIM"] for r in res["rows"]},
            "fd": {str(r["k"]): r.get(fd_name, float("nan")) for r in res["rows"]},
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(f"{label}: {row['passes']} passes, PSNR {row['psnr']}, {fd_name} {row['fd']}", file=sys.stderr)
    meta = (
        f"Model `{args.model}`, the first {args.n_images} Fashion-MNIST test images, guidance "
        f"{args.guidance_scale:g} ({'CFG' if args.no_apg else 'APG'}) where guided, noise seed {args.seed}; "
        f"torch {torch.__version__}, {args.threads} threads."
    )
    block = markdown(rows, ks, fd_name, command, meta)
    print(block)
    if args.json:
        record = {"command": command, "meta": meta, "ks": ks, "fd_name": fd_name, "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.update_doc:
        update_doc(args.update_doc, block)
    return 0


def _unsplit(command: str) -> str:
    """The command of a split run without the flags that only split or save it."""
    return re.sub(r" --(only|json|update-doc) \S+", "", command)


def merge(files: list[Path], out_json: Path | None, doc: Path | None) -> int:
    """Join the rows of split runs (same model, images, ks and settings) into one table."""
    records = [json.loads(f.read_text()) for f in files]
    first = records[0]
    for f, r in zip(files, records, strict=True):
        if _unsplit(r["command"]) != _unsplit(first["command"]) or r["meta"] != first["meta"]:
            raise SystemExit(f"{f} is not a part of the same run as {files[0]}")
    rows = sorted((row for r in records for row in r["rows"]), key=lambda row: row["index"])
    if len({row["index"] for row in rows}) != len(rows):
        raise SystemExit("the files share rows")
    command = _unsplit(first["command"])
    block = markdown(rows, first["ks"], first["fd_name"], command, first["meta"])
    print(block)
    if out_json:
        out_json.write_text(json.dumps({**first, "command": command, "rows": rows}, indent=2) + "\n")
    if doc:
        update_doc(doc, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
