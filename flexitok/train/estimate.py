"""``flexitok train tokenizer --dry-run``: size a run without data and without allocating the model.

The model, the frozen VAE and the REPA target are built on PyTorch's ``meta`` device (shapes only, no memory), and
one training step on a meta batch is traced:

* FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; forward
  and backward), split into the frozen VAE encode, the frozen REPA target and the trained FlexTok + projector;
* activation memory is the size of every tensor autograd saves for the backward pass (one copy per storage,
  parameters excluded), traced with activation checkpointing as configured; bf16 autocast is counted as half
  the fp32 figure (matmul inputs are saved in bf16);
* parameter, gradient, AdamW and EMA memory follow from the parameter counts (fp32 master weights, fp32 grads,
  two fp32 Adam moments, fp32 EMA of every floating-point model parameter), divided by the world size under FSDP.

Estimates leave out the CUDA context, allocator fragmentation and temporary buffers; measure with
benchmarks/gpu_check.py. Nothing here reads data, downloads weights or allocates the full model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flexitok.errors import ConfigError
from flexitok.models.vae import DiffusersVAE, sd_style_vae_config

# The paper's stage-0 VAEs are "similar to the SDXL VAE" (project page): an SDXL-style diffusers AutoencoderKL
# with 16 latent channels and 8x downsampling. Used when a config names no VAE (architecture only).
PAPER_VAE_CONFIG: dict[str, Any] = sd_style_vae_config(16)
GPU_MEMORY_GB = 80.0
HEADROOM = 0.9  # of the GPU memory usable by the estimated tensors
REFERENCE_GPU = ("H100 SXM dense bf16", 989e12)
ASSUMED_MFU = 0.4


@dataclass
class Estimate:
    """Everything the dry run prints. Byte counts are per GPU; FLOPs are per image unless named per step."""

    config_path: str
    image_size: tuple[int, int]
    params_encoder: int
    params_decoder: int
    params_aux: int
    params_vae: int
    params_repa: int
    vae_source: str
    repa_source: str
    flops_vae: float
    flops_repa: float
    flops_trained: float
    micro_batch: int
    grad_accum: int
    world_size: int
    precision: str
    fsdp: bool
    activation_checkpointing: bool
    compile: bool
    ema: bool
    activations_bytes: float
    ema_params: int
    flops_recompute: float = 0.0  # extra forward FLOPs of activation checkpointing (not counted in MFU)

    @property
    def params_trained(self) -> int:
        return self.params_encoder + self.params_decoder + self.params_aux

    @property
    def flops_per_image(self) -> float:
        return self.flops_vae + self.flops_repa + self.flops_trained

    @property
    def images_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def state_bytes(self, world_size: int | None = None) -> dict[str, float]:
        shard = (world_size or self.world_size) if self.fsdp else 1
        trained = self.params_trained
        out = {
            "weights (fp32)": 4.0 * trained / shard,
            "gradients (fp32)": 4.0 * trained / shard,
            "AdamW moments (2 x fp32)": 8.0 * trained / shard,
            "EMA (fp32)": 4.0 * self.ema_params / shard if self.ema else 0.0,
            "frozen VAE + REPA target (fp32)": 4.0 * (self.params_vae + self.params_repa),
        }
        return out

    def per_gpu_bytes(self, world_size: int | None = None, micro_batch: int | None = None) -> float:
        act = self.activations_bytes * (micro_batch or self.micro_batch) / self.micro_batch
        return sum(self.state_bytes(world_size).values()) + act

    def max_micro_batch(self, world_size: int | None = None) -> int:
        """Largest per-GPU micro-batch whose estimate fits ``HEADROOM`` of an 80 GB GPU (0: not even one)."""
        budget = GPU_MEMORY_GB * 1e9 * HEADROOM - sum(self.state_bytes(world_size).values())
        per_image = self.activations_bytes / self.micro_batch
        return max(0, int(budget // per_image)) if per_image > 0 else 0

    def gpus_needed(self) -> int | None:
        """Fewest 80 GB GPUs that hold the configured micro-batch (FSDP shards the states; DDP does not)."""
        for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
            if self.per_gpu_bytes(n) <= GPU_MEMORY_GB * 1e9 * HEADROOM:
                return n
            if not self.fsdp:
                return None
        return None


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _vae_module(cfg: Any) -> tuple[Any, str]:
    """A meta-device diffusers AutoencoderKL for the config's VAE (architecture only) and where it came from."""
    vae = cfg.model.vae
    if vae.kind == "identity":
        return None, "identity (pixel space)"
    from diffusers import AutoencoderKL

    if vae.diffusers_config is not None:
        conf, source = dict(vae.diffusers_config), "model.vae.diffusers_config"
    elif vae.pretrained is not None and (Path(vae.pretrained) / "config.json").is_file():
        conf, source = AutoencoderKL.load_config(vae.pretrained), f"{vae.pretrained}/config.json"
    else:
        conf = dict(PAPER_VAE_CONFIG, latent_channels=vae.latent_channels)
        source = (
            "assumed SDXL-style AutoencoderKL, 16 channels (no local model.vae config)"
            if vae.pretrained is None
            else f"assumed SDXL-style AutoencoderKL ({vae.pretrained} is not a local folder)"
        )
    conf = {k: v for k, v in conf.items() if not k.startswith("_")}
    with torch.device("meta"):
        return AutoencoderKL.from_config(conf), source


def _repa_module(task_cfg: Any, grid: tuple[int, int]) -> tuple[nn.Module | None, str]:
    if not task_cfg.repa_enabled:
        return None, "off"
    from flexitok.train.repa import EFFICIENTNET, DINOv2Features, dinov2_config

    spec = task_cfg.repa_encoder or EFFICIENTNET
    if spec == EFFICIENTNET:
        from flexitok.train.features import EfficientNetLite0FeatureMaps

        eff = EfficientNetLite0FeatureMaps(blocks=(task_cfg.repa_blocks,), resolution=task_cfg.repa_resolution)
        return eff.to("meta"), EFFICIENTNET
    import transformers

    conf = dinov2_config(spec)  # a local folder's config.json or a known hub architecture: no download
    patch = int(conf.patch_size)
    r = task_cfg.repa_resolution
    size = (r, r) if r is not None else (patch * grid[0], patch * grid[1])
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(conf)
        enc = DINOv2Features(model, size)
    return enc, f"{spec} (DINOv2, {size[0]}x{size[1]} input)"


def _saved_bytes(fn: Any, blocks: list[nn.Module]) -> tuple[float, float]:
    """Bytes of the distinct non-parameter tensors autograd saves while ``fn()`` runs forward and backward, and
    the largest share of one of ``blocks`` (what activation checkpointing recomputes at a time)."""
    seen: dict[int, int] = {}
    owner: dict[int, int] = {}
    current = [-1]

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if not isinstance(base, nn.Parameter):
            seen[id(base)] = max(seen.get(id(base), 0), base.numel() * base.element_size())
            owner.setdefault(id(base), current[0])
        return t

    handles = []
    for i, blk in enumerate(blocks):
        handles.append(blk.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
        handles.append(blk.register_forward_hook(lambda m, a, o: current.__setitem__(0, -1)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        for h in handles:
            h.remove()
    per_block: dict[int, int] = {}
    for k, nbytes in seen.items():
        if owner[k] >= 0:
            per_block[owner[k]] = per_block.get(owner[k], 0) + nbytes
    return float(sum(seen.values())), float(max(per_block.values(), default=0))


def estimate(cfg: Any, config_path: str = "", world_size: int = 8) -> Estimate:
    """Trace one training step of ``cfg`` (a :class:`~flexitok.train.config.TokenizerTrainConfig`) on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    from flexitok.models.flextok import FlexTok
    from flexitok.train.tokenizer import TokenizerTask

    if cfg.latents is not None:
        raise ConfigError("--dry-run sizes image-based runs; drop latents=... (the VAE encode is then counted too)")
    vae_net, vae_source = _vae_module(cfg)
    model_cfg = cfg.model
    if vae_net is not None:
        vae_cfg = dataclasses.replace(model_cfg.vae, latent_channels=int(vae_net.config.latent_channels))
        model_cfg = dataclasses.replace(model_cfg, vae=vae_cfg)
    with torch.device("meta"):
        vae = DiffusersVAE(model_cfg.vae, vae=vae_net) if vae_net is not None else None
        model = FlexTok(model_cfg, vae=vae)
    h, w = model_cfg.latent_size
    ph, pw = model_cfg.decoder.patch_size
    repa, repa_source = _repa_module(cfg.task, (h // ph, w // pw))
    task = TokenizerTask(model, cfg.task, repa_encoder=repa, repa_out_dim=getattr(repa, "out_dim", None))
    task.aux_modules.to("meta")
    train = cfg.train
    model.train()

    b = 1
    images = torch.zeros(b, 3, *model_cfg.image_size, device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.vae.encode(images)
    flops_vae = fc.get_total_flops() / b
    flops_repa = 0.0
    if repa is not None:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            repa(images)
        flops_repa = fc.get_total_flops() / b

    def step() -> None:
        loss, _ = task.loss({"image": images}, 0)
        loss.backward()

    blocks = [*model.encoder.trunk.blocks, *model.decoder.trunk.blocks]
    model.set_activation_checkpointing(False)
    with FlopCounterMode(display=False) as fc:
        act, block_peak = _saved_bytes(step, blocks)
    flops_total = fc.get_total_flops() / b
    recompute = 0.0
    if train.activation_checkpointing:
        # Saved tensors outside the checkpointed blocks (block inputs included), plus one block recomputed.
        model.set_activation_checkpointing(True)
        with FlopCounterMode(display=False) as fc:
            act = _saved_bytes(step, blocks)[0] + block_peak
        recompute = fc.get_total_flops() / b - flops_total
    if train.precision == "bf16":
        act /= 2
    ema_params = sum(p.numel() for p in model.parameters() if p.is_floating_point())
    return Estimate(
        config_path=config_path,
        image_size=(int(model_cfg.image_size[0]), int(model_cfg.image_size[1])),
        params_encoder=_count(model.encoder),
        params_decoder=_count(model.decoder),
        params_aux=_count(task.aux_modules),
        params_vae=_count(model.vae),
        params_repa=_count(repa) if isinstance(repa, nn.Module) else 0,
        vae_source=vae_source,
        repa_source=repa_source,
        flops_vae=flops_vae,
        flops_repa=flops_repa,
        flops_trained=flops_total - flops_vae - flops_repa,
        micro_batch=train.batch_size,
        grad_accum=train.grad_accum,
        world_size=world_size,
        precision=train.precision,
        fsdp=train.fsdp,
        activation_checkpointing=train.activation_checkpointing,
        compile=train.compile,
        ema=train.ema_decay > 0,
        activations_bytes=act * train.batch_size,
        ema_params=ema_params,
        flops_recompute=recompute,
    )


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def _m(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def format_estimate(e: Estimate) -> str:
    """The dry-run report (plain text)."""
    name, peak = REFERENCE_GPU
    step_flops = e.flops_per_image * e.micro_batch * e.grad_accum
    lines = [
        f"dry run: {e.config_path or 'tokenizer config'} ({e.image_size[0]}x{e.image_size[1]} images; nothing "
        "allocated, no data read)",
        "parameters",
        f"  trained     {_m(e.params_trained):>9}  (encoder {_m(e.params_encoder)}, decoder {_m(e.params_decoder)}, "
        f"REPA projector {_m(e.params_aux)})",
        f"  frozen VAE  {_m(e.params_vae):>9}  ({e.vae_source})",
        f"  REPA target {_m(e.params_repa):>9}  ({e.repa_source})",
        "FLOPs per image (forward + backward of the trained parts, forward of the frozen ones)",
        f"  trained     {e.flops_trained / 1e9:9.1f} GFLOP",
        f"  VAE encode  {e.flops_vae / 1e9:9.1f} GFLOP",
        f"  REPA target {e.flops_repa / 1e9:9.1f} GFLOP",
        f"  total       {e.flops_per_image / 1e9:9.1f} GFLOP"
        + (
            f"  (+{e.flops_recompute / 1e9:.1f} GFLOP recomputed by activation checkpointing)"
            if e.flops_recompute
            else ""
        ),
        f"per optimizer step: {e.images_per_step} images = {e.world_size} GPUs x micro-batch {e.micro_batch} x "
        f"grad_accum {e.grad_accum}; {step_flops / 1e12:.1f} TFLOP per GPU, "
        f"{e.flops_per_image * e.images_per_step / 1e15:.2f} PFLOP in all",
        f"precision {e.precision} (autocast on CUDA), "
        f"{'FSDP (fully_shard) over ' + str(e.world_size) + ' GPUs' if e.fsdp else 'DDP (replicated)'}, "
        f"activation checkpointing {'on' if e.activation_checkpointing else 'off'}, "
        f"torch.compile {'on' if e.compile else 'off'}, EMA {'on' if e.ema else 'off'}",
        f"memory per GPU (estimate, micro-batch {e.micro_batch})",
    ]
    for k, v in e.state_bytes().items():
        lines.append(f"  {k:<32} {_gb(v):>9}")
    lines.append(f"  {'activations (saved for backward)':<32} {_gb(e.activations_bytes):>9}")
    total = e.per_gpu_bytes()
    lines.append(f"  {'total':<32} {_gb(total):>9}")
    need = e.gpus_needed()
    fits = total <= GPU_MEMORY_GB * 1e9 * HEADROOM
    lines.append(
        f"80 GB GPUs: {'fits' if fits else 'does NOT fit'} at micro-batch {e.micro_batch} "
        f"(<= {HEADROOM:.0%} of 80 GB); largest micro-batch that fits: {e.max_micro_batch()}; "
        + (
            f"GPUs needed to hold it: {need}"
            if need is not None
            else "no GPU count holds it without FSDP / activation checkpointing / a smaller micro-batch"
        )
    )
    ips = ASSUMED_MFU * peak / e.flops_per_image
    lines.append(
        f"throughput at an assumed {ASSUMED_MFU:.0%} MFU on {name} ({peak / 1e12:.0f} TFLOP/s): "
        f"~{ips:.0f} images/s per GPU, ~{ips * e.world_size:.0f} images/s on {e.world_size}, "
        f"{e.images_per_step / (ips * e.world_size):.2f} s per optimizer step"
    )
    return "\n".join(lines)


def dry_run(config: str | None, overrides: list[str], world_size: int) -> str:
    from flexitok.train.config import load_run_config
    from flexitok.train.tokenizer import TokenizerTrainConfig

    if world_size < 1:
        raise ConfigError(f"--world-size must be >= 1, got {world_size}")
    cfg = load_run_config(TokenizerTrainConfig, config, overrides)
    return format_estimate(estimate(cfg, config or "", world_size))
