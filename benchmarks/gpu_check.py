"""One-GPU readiness check for paper-scale tokenizer training; prints one table (target: < 8 minutes on one GPU).

    python benchmarks/gpu_check.py                      # CUDA: d12-d12 and d18-d28, bf16, torch.compile
    python benchmarks/gpu_check.py --device cpu --tiny  # the same checks on a tiny model (CPU, gloo): CI / no GPU

Rows:

* ``train <preset>``: the real tokenizer training step (frozen SDXL-style 16-channel VAE encode, FlexTok encoder +
  decoder, REPA through a DINOv2-L-architecture target, AdamW, grad clipping) on random images with random weights,
  bf16 autocast and ``torch.compile``: images/s, model FLOPs utilisation (trained FLOPs from the meta-device count
  of ``flexitok.train.estimate``, against the GPU's dense bf16 peak or ``--peak-tflops``) and peak memory;
* ``fsdp world 1``: :func:`flexitok.train.trainer.train` with ``fsdp=true`` in a one-process group (nccl on CUDA,
  gloo on CPU);
* ``resume``: 4 steps straight vs a run interrupted after its step-2 checkpoint and resumed to 4, under the same
  setting: the largest weight difference of the exported models (0 = bit-identical).

Weights are random: the check is about speed, memory and the code paths, not quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

# Dense bf16 peak FLOP/s by device-name fragment (vendor data sheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


@dataclasses.dataclass
class Row:
    check: str
    status: str = "ok"
    images_s: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    note: str = ""


class RandomImages(Dataset):
    """``n`` random images ``[3, S, S]`` in [-1, 1] (fixed per index), label 0."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, self.size, self.size, generator=g) * 2 - 1, "label": 0}


def build_config(name: str, tiny: bool) -> Any:
    """A tokenizer run config (paper recipe for presets; tiny pixel-space model for ``--tiny``)."""
    from flexitok.train.config import load_run_config
    from flexitok.train.tokenizer import TokenizerTrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    if tiny:
        return load_run_config(
            TokenizerTrainConfig,
            root / "tokenizer-tiny-fmnist.yaml",
            ["task.repa_layer=1", "train.precision=fp32", "train.compile=false", "train.ema_decay=0.0"],
        )
    from flexitok.train.estimate import PAPER_VAE_CONFIG

    cfg = load_run_config(TokenizerTrainConfig, root / f"tokenizer-{name}.yaml")
    cfg.model.vae.pretrained = None
    cfg.model.vae.diffusers_config = dict(PAPER_VAE_CONFIG)  # architecture only: random weights
    return cfg


def repa_target(cfg: Any, tiny: bool, device: torch.device) -> nn.Module | None:
    """A random-weight DINOv2 of the configured architecture (no download), or None for EfficientNet."""
    import transformers

    from flexitok.train.repa import DINOV2_ARCHITECTURES, DINOv2Features

    if tiny:
        arch = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
        patch = 4
    else:
        arch, patch = DINOV2_ARCHITECTURES[cfg.task.repa_encoder], 14
    h, w = cfg.model.latent_size
    ph, pw = cfg.model.decoder.patch_size
    model = transformers.Dinov2Model(transformers.Dinov2Config(patch_size=patch, image_size=518, **arch))
    return DINOv2Features(model, (patch * h // ph, patch * w // pw)).to(device)


def make_task(cfg: Any, tiny: bool, device: torch.device) -> Any:
    from flexitok.models.flextok import FlexTok
    from flexitok.train.tokenizer import TokenizerTask

    torch.manual_seed(0)
    model = FlexTok(cfg.model)
    enc = repa_target(cfg, tiny, device)
    return TokenizerTask(model, cfg.task, repa_encoder=enc, repa_out_dim=getattr(enc, "out_dim", None))


def throughput(name: str, args: argparse.Namespace, device: torch.device) -> Row:
    from flexitok.train.estimate import estimate
    from flexitok.train.trainer import param_groups

    cfg = build_config(name, args.tiny)
    batch_size = args.batch_size or (8 if args.tiny else cfg.train.batch_size // 2)
    cfg.train.batch_size = batch_size
    flops = estimate(cfg, world_size=1).flops_trained  # model FLOPs per image (forward + backward, trained parts)
    task = make_task(cfg, args.tiny, device)
    model = task.model.to(device)
    task.aux_modules.to(device)
    if cfg.train.activation_checkpointing:
        model.set_activation_checkpointing(True)
    compile_ = cfg.train.compile and not args.no_compile
    if compile_:
        model.encoder.compile()
        model.decoder.compile()
    params = nn.ModuleDict({"model": model, "aux": task.aux_modules})
    opt = torch.optim.AdamW(param_groups(params, cfg.train.weight_decay), lr=cfg.train.lr, fused=device.type == "cuda")
    amp = cfg.train.precision == "bf16" and device.type == "cuda"
    data = RandomImages(batch_size, cfg.data.image_size)
    batch = {"image": torch.stack([data[i]["image"] for i in range(batch_size)]).to(device)}

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = task.loss(batch, 0)
        loss.backward()
        nn.utils.clip_grad_norm_(params.parameters(), cfg.train.grad_clip)
        opt.step()
        return loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_compile = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    t_compile = time.perf_counter() - t_compile
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    dt = time.perf_counter() - t0
    if not all(torch.isfinite(x) for x in losses):
        return Row(f"train {name}", "FAILED", note="non-finite loss")
    images_s = batch_size * args.steps / dt
    row = Row(
        f"train {name}",
        images_s=images_s,
        note=f"batch {batch_size}, {'bf16' if amp else 'fp32'}, compile {'on' if compile_ else 'off'}, "
        f"act-ckpt {'on' if cfg.train.activation_checkpointing else 'off'}, warm-up {t_compile:.0f} s",
    )
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        peak = (
            args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in gpu), None)
        )
        row.mfu = flops * images_s / peak if peak else None
        row.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Interrupted(Exception):
    pass


def _exported(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((run_dir / "model").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no exported model under {run_dir / 'model'}")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def fsdp_and_resume(args: argparse.Namespace, device: torch.device) -> list[Row]:
    """train() under fsdp=true in a one-process group, then the resume round trip in the same group."""
    import torch.distributed as dist

    from flexitok.train.trainer import train

    backend = "nccl" if device.type == "cuda" else "gloo"
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(_free_port())
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    rows: list[Row] = []
    name = "tiny" if args.tiny else "d12-d12"
    try:
        dist.init_process_group(backend, rank=0, world_size=1)
        cfg = build_config(name, args.tiny)
        with tempfile.TemporaryDirectory() as tmp:
            data = RandomImages(16, cfg.data.image_size)

            def run(out: str, steps: int, resume: bool, stop_at: int | None = None) -> Path:
                tc = dataclasses.replace(
                    cfg.train,
                    out_dir=out,
                    steps=steps,
                    batch_size=4,
                    grad_accum=1,
                    fsdp=True,
                    compile=False,
                    ckpt_every=2,
                    eval_every=0,
                    log_every=1,
                    warmup_steps=0,
                    progress=False,
                    resume=resume,
                    num_workers=0,
                )
                task = make_task(cfg, args.tiny, device)
                if stop_at is not None:  # interrupt after the checkpoint at step stop_at (same schedule as 4 steps)
                    loss = task.loss

                    def interrupted(batch: Any, step: int) -> Any:
                        if step == stop_at:
                            raise _Interrupted
                        return loss(batch, step)

                    task.loss = interrupted  # type: ignore[method-assign]
                return train(task, data, tc)

            t0 = time.perf_counter()
            try:
                run(f"{tmp}/a", 4, False)
                rows.append(
                    Row(f"fsdp world 1 ({backend})", note=f"{name}, 4 steps in {time.perf_counter() - t0:.0f} s")
                )
            except Exception as e:  # report, do not crash the table
                rows.append(Row(f"fsdp world 1 ({backend})", "FAILED", note=f"{type(e).__name__}: {e}"[:160]))
                traceback.print_exc()
                return rows
            try:
                try:
                    run(f"{tmp}/b", 4, False, stop_at=2)
                except _Interrupted:
                    pass
                run(f"{tmp}/b", 4, True)
                # Compare the exported models (the same files whatever the checkpoint layout, sharded or not).
                a, b = _exported(Path(tmp) / "a"), _exported(Path(tmp) / "b")
                diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
                rows.append(Row("resume 2+2 vs 4 (fsdp)", note=f"max |weight diff| = {diff:.3g}"))
            except Exception as e:
                rows.append(Row("resume 2+2 vs 4 (fsdp)", "FAILED", note=f"{type(e).__name__}: {e}"[:160]))
                traceback.print_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rows


def format_table(rows: list[Row], header: str) -> str:
    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [header, f"| {'check':<26} | {'status':<6} | {'images/s':>9} | {'MFU':>6} | {'peak GiB':>8} | note |"]
    lines.append("|" + "|".join("-" * n for n in (28, 8, 11, 8, 10, 6)) + "|")
    for r in rows:
        mfu = None if r.mfu is None else 100 * r.mfu
        lines.append(
            f"| {r.check:<26} | {r.status:<6} | {f(r.images_s, '9.1f'):>9} | {f(mfu, '5.1f') + ('%' if mfu else ''):>6} "
            f"| {f(r.peak_gib, '8.1f'):>8} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model instead of the paper presets (CPU testing)")
    ap.add_argument("--presets", nargs="+", default=["d12-d12", "d18-d28"])
    ap.add_argument("--batch-size", type=int, default=None, help="per-step batch (default: half the config's)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per preset")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    ap.add_argument("--skip", nargs="*", default=[], choices=["train", "fsdp"], help="sections to leave out")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default 1 with --tiny)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and (args.threads or args.tiny):
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --device cpu --tiny")
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    rows: list[Row] = []
    sections: list[tuple[str, Callable[[], list[Row]]]] = []
    if "train" not in args.skip:
        for p in ["tiny"] if args.tiny else args.presets:
            sections.append(("train", lambda p=p: [throughput(p, args, device)]))
    if "fsdp" not in args.skip:
        sections.append(("fsdp", lambda: fsdp_and_resume(args, device)))
    for _, fn in sections:
        try:
            rows.extend(fn())
        except Exception as e:
            traceback.print_exc()
            rows.append(Row("section", "FAILED", note=f"{type(e).__name__}: {e}"[:160]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"gpu_check on {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print(format_table(rows, header))
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
