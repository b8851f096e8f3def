"""Tokenizer training throughput: images/s, tokens/s and (on CUDA) model FLOP utilisation.

    python benchmarks/train_throughput.py --preset tiny --batch-size 64 --steps 10
    python benchmarks/train_throughput.py --preset d12-d12 --batch-size 64 --steps 20 --compile

Runs the real :class:`flexitok.train.tokenizer.TokenizerTask` loss + backward + AdamW step on synthetic
inputs (random weights). Paper presets are fed random VAE latents directly (the frozen VAE encode and data
loading are excluded); the tiny preset works in pixel space. FLOPs count the transformer matmuls and
attention of encoder + decoder (training = 3x forward); MFU divides by the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from flexitok.config import FlexTokConfig, preset, tiny_config
from flexitok.models.flextok import FlexTok
from flexitok.train.optim import param_groups
from flexitok.train.tokenizer import TokenizerTask, TokenizerTaskConfig

# Dense bf16 peak FLOP/s by device-name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


class _NoVAE(nn.Module):
    """Stand-in stage 0 for presets whose VAE weights are not available: batches carry latents."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the benchmark feeds latents directly")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the benchmark feeds latents directly")


def _trunk_flops_per_sample(trunk: nn.Module, tokens: int) -> float:
    """Forward FLOPs of one sample: 2 x matmul weights x tokens + attention (QK^T and AV: 4 T^2 D per block)."""
    matmul = sum(
        m.weight.numel() for name, m in trunk.named_modules() if isinstance(m, nn.Linear) and "adaLN" not in name
    )
    blocks = trunk.blocks
    dim = blocks[0].attn.wq.weight.shape[0]
    return 2.0 * matmul * tokens + 4.0 * len(blocks) * tokens * tokens * dim


def train_flops_per_sample(model: FlexTok) -> float:
    cfg = model.config
    h, w = cfg.latent_size
    pe = (h // cfg.encoder.patch_size[0]) * (w // cfg.encoder.patch_size[1])
    pd = (h // cfg.decoder.patch_size[0]) * (w // cfg.decoder.patch_size[1])
    n = cfg.n_registers
    fwd = _trunk_flops_per_sample(model.encoder.trunk, pe + n) + _trunk_flops_per_sample(model.decoder.trunk, pd + n)
    return 3.0 * fwd


def build(preset_name: str, image_size: int) -> FlexTokConfig:
    if preset_name == "tiny":
        return tiny_config(image_size=image_size)
    return preset(preset_name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="tiny, d12-d12, d18-d18, d18-d28")
    ap.add_argument("--config", default=None, help="take the model from a tokenizer run YAML instead of --preset")
    ap.add_argument("--image-size", type=int, default=32, help="tiny preset only")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="bf16 autocast (CUDA only)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--repa-layer", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.config is not None:
        from flexitok.train.config import load_run_config
        from flexitok.train.tokenizer import TokenizerTrainConfig

        cfg = load_run_config(TokenizerTrainConfig, args.config).model
        args.preset = args.config
    else:
        cfg = build(args.preset, args.image_size)
    torch.manual_seed(0)
    model = FlexTok(cfg, vae=_NoVAE() if cfg.vae.kind != "identity" else None).to(device)
    if args.activation_checkpointing:
        model.set_activation_checkpointing(True)
    task = TokenizerTask(model, TokenizerTaskConfig(repa_layer=args.repa_layer))
    if args.repa_layer is not None:
        task.aux_modules.to(device)
        if isinstance(task.repa_encoder, nn.Module):
            task.repa_encoder.to(device)
    if args.compile:
        model.encoder.compile()
        model.decoder.compile()
    params = nn.ModuleDict({"model": model, "aux": task.aux_modules})
    opt = torch.optim.AdamW(param_groups(params, 0.05), lr=1e-4)
    amp = device.type == "cuda" and args.precision == "bf16"

    b = args.batch_size
    h, w = cfg.image_size
    if cfg.vae.kind == "identity":
        batch = {"image": torch.rand(b, 3, h, w, device=device) * 2 - 1}
    else:
        lh, lw = cfg.latent_size
        batch = {"latents": torch.randn(b, cfg.vae.latent_channels, lh, lw, device=device)}
        if args.repa_layer is not None:
            batch["image"] = torch.rand(b, 3, h, w, device=device) * 2 - 1

    def step(i: int) -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = task.loss(batch, i)
        loss.backward()
        nn.utils.clip_grad_norm_(params.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync()
    dt = time.perf_counter() - t0

    images_s = b * args.steps / dt
    tokens_s = images_s * cfg.n_registers
    flops = train_flops_per_sample(model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"preset={args.preset} image={h}x{w} registers={cfg.n_registers} params={n_params / 1e6:.1f}M "
        f"batch={b} device={device} precision={'bf16' if amp else 'fp32'} compile={args.compile}"
    )
    print(f"step time   {dt / args.steps * 1000:.1f} ms")
    print(f"images/s    {images_s:.1f}")
    print(f"tokens/s    {tokens_s:.0f}  (register tokens produced per second)")
    print(f"train FLOPs {flops / 1e9:.2f} GFLOP/image  ->  {flops * images_s / 1e12:.2f} TFLOP/s achieved")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = (
            args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), None)
        )
        if peak is None:
            print(f"MFU         unknown peak for {name!r}; pass --peak-tflops")
        else:
            print(f"MFU         {100 * flops * images_s / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s ({name})")
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
