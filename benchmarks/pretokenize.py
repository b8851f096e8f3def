"""Pretokenize throughput on this machine: images/s with 0 and N DataLoader workers, the tokenizer's FLOPs per
image against the fp32 matmul peak, and the FLOPs per image of the paper encoders (for cluster arithmetic).

    OMP_NUM_THREADS=1 python benchmarks/pretokenize.py --model default --limit 1024 --threads 1 --workers 0,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from flexitok.bench.session import BENCH_VAE_CONFIG, busy_clock, count_flops, matmul_peaks
from flexitok.config import preset
from flexitok.data import DataConfig, build_dataset
from flexitok.data.tokens import PretokenizeJob, TokenShardDataset, pretokenize_dataset
from flexitok.models.flextok import FlexTok
from flexitok.models.vae import build_vae


def paper_encoder_gflops(name: str) -> dict[str, float]:
    """GFLOP per 256x256 image of ``tokenize`` for a paper preset: the VAE encoder counted by the FLOP counter on
    a randomly initialised SD3-style VAE, the encoder transformer analytically (2 x 12 D^2 per token and block for
    the qkv/out/MLP matmuls, 4 T^2 D per block for attention), T = 256 patches (2x2 on the 32x32 latent) + 256
    registers."""
    cfg = preset(name)
    vae_cfg = dataclasses.replace(cfg.vae, diffusers_config={**BENCH_VAE_CONFIG, "latent_channels": 16})
    vae = build_vae(vae_cfg).eval()
    with torch.no_grad():
        vae_flops = count_flops(lambda: vae.encode(torch.zeros(1, 3, 256, 256)))
    d, depth = cfg.encoder.transformer.dim, cfg.encoder.transformer.depth
    t = (256 // 8 // 2) ** 2 + cfg.encoder.n_registers
    trunk = depth * (2 * t * 12 * d * d + 4 * t * t * d)
    return {"vae_encoder": vae_flops / 1e9, "encoder_trunk": trunk / 1e9, "total": (vae_flops + trunk) / 1e9}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--limit", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--paper", default="d12-d12,d18-d28", help="presets to count FLOPs for ('' skips)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = FlexTok.from_pretrained(args.model).eval()
    size = model.image_size[0]
    dataset = build_dataset(DataConfig(kind=args.data, image_size=size, limit=args.limit))
    batch = torch.stack([dataset[i]["image"] for i in range(args.batch_size)])
    with torch.no_grad():
        flops = count_flops(lambda: model.tokenize(batch)) / args.batch_size
    peak, peak_busy = matmul_peaks(torch.device("cpu"), "fp32")
    out: dict[str, object] = {
        "model": args.model,
        "images": len(dataset),
        "threads": args.threads,
        "gflop_per_image": flops / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "matmul_peak_busy_gflops": peak_busy / 1e9,
    }
    digests = []
    for workers in [int(w) for w in args.workers.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            job = PretokenizeJob(Path(tmp) / "tok", batch_size=args.batch_size, num_workers=workers, shard_size=4096)
            t0, c0 = time.perf_counter(), busy_clock()
            pretokenize_dataset(model.tokenize, dataset, job)
            wall, busy = time.perf_counter() - t0, busy_clock() - c0
            digests.append(json.loads((Path(tmp) / "tok" / "index.json").read_text())["shards"])
            assert len(TokenShardDataset(Path(tmp) / "tok")) == len(dataset)
        ips = len(dataset) / wall
        out[f"workers={workers}"] = {
            "images_per_s": ips,
            "wall_s": wall,
            "main_process_busy_s": busy,
            "fraction_of_peak": ips * flops / peak,
        }
    out["same_tokens_for_every_worker_count"] = all(d == digests[0] for d in digests)
    for name in filter(None, args.paper.split(",")):
        out[f"{name} GFLOP/image"] = paper_encoder_gflops(name)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
