"""The public FlexTok model: images <-> ordered 1D token sequences of flexible length."""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flexitok.config import FlexTokConfig, TransformerConfig
from flexitok.config import default_ks as k_ladder
from flexitok.errors import CheckpointError, InvalidInputError, OutsideTrainedRegimeWarning
from flexitok.models.decoder import FlexTokDecoder
from flexitok.models.encoder import FlexTokEncoder
from flexitok.models.vae import Autoencoder, DiffusersVAE, build_vae, estimate_vae_size
from flexitok.nn.fsq import FSQ
from flexitok.sampling.decode import DecodeConfig
from flexitok.sampling.flow import sample_flow
from flexitok.sampling.migration import check_official_kwargs
from flexitok.sampling.row_parallel import RowParallel, check_workers
from flexitok.utils.limits import MAX_IMAGE_SIDE
from flexitok.utils.persistence import PretrainedModel

TokensLike = Tensor | Sequence[Tensor]
# Above its position tables a model runs with stretched tables (outside the trained regime); beyond this many times
# the tables per side it is refused: the cost grows with the square of the patch count (a 32x32 model asked for
# 4096x4096 is 16,384 times its patches: terabytes of attention, or hours of decoding).
MAX_TABLE_STRETCH = 4
ImageSize = int | tuple[int, int]
ImageSizeLike = ImageSize | Sequence[ImageSize]


def _is_pair(x: object) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, int) for v in x)


def _as_size(x: object) -> tuple[int, int]:
    """An int (square) or an ``(H, W)`` pair -> ``(H, W)``."""
    if isinstance(x, int) and not isinstance(x, bool):
        return (x, x)
    if isinstance(x, Tensor) and x.numel() == 2:
        x = tuple(int(v) for v in x.tolist())
    if _is_pair(x):
        return (int(x[0]), int(x[1]))  # type: ignore[index]
    raise InvalidInputError(f"an image size must be an int or an (H, W) pair, got {x!r}")


def available_memory(device: torch.device) -> int | None:
    """Bytes a call on ``device`` can still allocate (free device memory plus what torch's CUDA cache holds
    unused; on the CPU the kernel's ``MemAvailable``), or None where unknown (then nothing is refused)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


class FlexTok(PretrainedModel):
    """VAE + resampler encoder + FSQ + rectified-flow decoder.

    >>> model = FlexTok.from_pretrained("default")
    >>> tokens = model.tokenize(images)                  # [B, 3, H, W] in [-1, 1] -> LongTensor [B, N]
    >>> recon = model.detokenize(tokens[:, :16])         # any prefix length 1..N

    Persistence (``save_pretrained`` / ``from_pretrained``) comes from
    :class:`flexitok.utils.persistence.PretrainedModel`; :mod:`flexitok.io.pretrained` adds the official
    checkpoint format and the official short names.
    """

    model_type = "tokenizer"
    config_class = FlexTokConfig
    bundled_dir = "tokenizers"
    bundled_aliases = {"default": "fmnist"}

    def __init__(self, config: FlexTokConfig, vae: Autoencoder | None = None) -> None:
        super().__init__()
        self.config = config
        lat_c, lat_hw = config.vae.latent_channels, config.latent_size
        self.vae = vae if vae is not None else build_vae(config.vae)
        self.encoder = FlexTokEncoder(config.encoder, lat_c, lat_hw, len(config.fsq_levels))
        self.fsq = FSQ(config.fsq_levels)
        self.decoder = FlexTokDecoder(config.decoder, lat_c, lat_hw, len(config.fsq_levels), config.n_registers)
        self.row_workers: int | None = None  # see enable_row_parallel; not saved, not in the config

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def n_registers(self) -> int:
        """Register positions of the decoder: the longest token sequence ``detokenize`` takes."""
        return self.config.n_registers

    def default_ks(self) -> list[int]:
        """The coarse-to-fine ladder of token counts for this model: 1, 2, 4, ..., :attr:`n_registers`."""
        return k_ladder(self.n_registers)

    @property
    def n_tokens(self) -> int:
        """Tokens per image from ``tokenize`` (``n_registers`` unless an official ``n_eval`` sets fewer)."""
        return self.config.encoder.n_tokens

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return self.fsq._basis.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype the model computes in (float32 unless cast, e.g. ``model.to(torch.bfloat16)``)."""
        return self.fsq._half.dtype

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.encoder.trunk.activation_checkpointing = enabled
        self.decoder.trunk.activation_checkpointing = enabled

    def compile(self, mode: str | None = None, freezing: bool | None = None) -> FlexTok:  # type: ignore[override]
        """Opt-in ``torch.compile`` of the encoder and decoder for inference (inductor on CPU or CUDA), in place.

        The first tokenize/detokenize of each batch shape pays the compilation (minutes on a small CPU).
        ``freezing`` (default: on for CPU models) lets inductor treat the weights as constants (prepacked matmul
        weights, folded constants), so compile after loading the weights and do not train the compiled model.
        ``mode`` is torch.compile's (e.g. ``"max-autotune"`` on CUDA) and excludes ``freezing``.
        """
        if freezing is None:
            freezing = mode is None and self.device.type == "cpu"
        if freezing and mode is not None:
            raise InvalidInputError("compile: pass either mode or freezing, not both")
        kwargs = {"options": {"freezing": True}} if freezing else {"mode": mode}
        self.encoder.compile(dynamic=False, **kwargs)
        self.decoder.compile(dynamic=False, **kwargs)
        return self

    def enable_row_parallel(self, workers: int | None = None) -> FlexTok:
        """Opt-in for the CPU: every decoder pass of ``detokenize`` splits its rows (``[cond; uncond]`` when guided)
        over ``workers`` threads with one intra-op thread each (default: torch's current thread count).

        Faster where the cores outnumber what one image's small ops can use (batch 1 on a few cores); outputs
        agree with the batched pass within float32 rounding. Not saved with the model; on other devices
        ``detokenize`` ignores it. See :mod:`flexitok.sampling.row_parallel`.
        """
        self.row_workers = check_workers(torch.get_num_threads() if workers is None else workers)
        return self

    def disable_row_parallel(self) -> FlexTok:
        """Back to one batched decoder call per pass (the default)."""
        self.row_workers = None
        return self

    def decoder_velocity(self) -> RowParallel | FlexTokDecoder:
        """The velocity function ``detokenize`` integrates: the decoder, split by rows when enabled."""
        return self.decoder if self.row_workers is None else RowParallel(self.decoder, self.row_workers)

    # ------------------------------------------------------------------ validation
    def check_images(self, images: Tensor) -> None:
        """Validate a batch ``[B, 3, H, W]`` in [-1, 1] of a size this model takes (:meth:`check_image_size`)."""
        if not isinstance(images, Tensor):
            raise InvalidInputError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.dtype.is_floating_point:
            raise InvalidInputError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInputError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
        if images.shape[0] == 0:
            raise InvalidInputError("images is an empty batch")
        self.check_image_size(tuple(images.shape[2:]), "encoder")  # type: ignore[arg-type]
        if not torch.isfinite(images).all():
            raise InvalidInputError("images contain NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.001 or hi > 1.001:
            raise InvalidInputError(f"images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")

    def size_multiple(self, part: str = "encoder") -> tuple[int, int]:
        """Image sides must be multiples of this (VAE downsampling x patch size) for the encoder or decoder."""
        ps = (self.config.encoder if part == "encoder" else self.config.decoder).patch_size
        d = self.config.vae.downsample
        return d * ps[0], d * ps[1]

    def max_image_size(self, part: str = "encoder") -> tuple[int, int]:
        """The largest ``(H, W)`` the encoder (``tokenize``) or decoder (``detokenize``) takes: its position tables
        stretched :data:`MAX_TABLE_STRETCH` times per side (at most :data:`~flexitok.utils.limits.MAX_IMAGE_SIDE`)."""
        mh, mw = self.size_multiple(part)
        posemb = self.encoder.posemb if part == "encoder" else self.decoder.posemb
        if len(posemb.sizes) == 1:  # a 1-D table is not stretched: its patch count is the limit
            n = posemb.sizes[0]
            side = min(MAX_IMAGE_SIDE // max(mh, mw), math.isqrt(n))
            return side * mh, side * mw
        th, tw = posemb.sizes
        cap_h, cap_w = MAX_IMAGE_SIDE // mh * mh, MAX_IMAGE_SIDE // mw * mw
        return min(MAX_TABLE_STRETCH * th * mh, cap_h), min(MAX_TABLE_STRETCH * tw * mw, cap_w)

    def estimate_call_bytes(self, part: str, size: tuple[int, int], batch: int, guided: bool = True) -> int:
        """A rough upper bound of the memory one ``tokenize`` (``part="encoder"``) or ``detokenize`` (``"decoder"``)
        of ``batch`` images of ``size`` needs at its peak: the VAE's full-resolution activations and the
        transformer's, whose attention is counted as ``[rows, heads, L, L]`` scores on the CPU (SDPA's fused CUDA
        kernels do not materialize them; their mask still is ``[L, L]``). ``guided``: the decoder runs a
        conditional and an unconditional row per image."""
        h, w = size
        mh, mw = self.size_multiple(part)
        cfg = self.config.encoder if part == "encoder" else self.config.decoder
        t = cfg.transformer
        seq = (h // mh) * (w // mw) + self.n_registers + 2
        rows = batch * (2 if part == "decoder" and guided else 1)
        elem = torch.finfo(self.dtype).bits // 8
        heads = max(1, t.dim // t.head_dim)
        hidden = t.mlp_hidden or int(t.dim * t.mlp_ratio)
        attention = rows * heads * seq * seq * elem if self.device.type != "cuda" else seq * seq
        activations = 2 * rows * seq * (4 * t.dim + hidden) * elem
        vae_width = 3
        if self.config.vae.kind == "diffusers":  # its widest activations: the first block's, at full resolution
            channels = (self.config.vae.diffusers_config or {}).get("block_out_channels") or [128]
            vae_width = int(channels[0])
        vae = 3 * batch * h * w * vae_width * elem
        return attention + activations + vae

    def check_call_memory(self, part: str, size: tuple[int, int], batch: int, guided: bool = True) -> None:
        """Refuse (``InvalidInputError``) a call whose :meth:`estimate_call_bytes` exceeds the memory available
        on the model's device, before anything is allocated."""
        need = self.estimate_call_bytes(part, size, batch, guided)
        have = available_memory(self.device)
        if have is None or need <= have:
            return
        what = "tokenize" if part == "encoder" else "detokenize"
        lh, lw = self.max_image_size(part)
        raise InvalidInputError(
            f"{what} of {batch} image(s) of {size[0]}x{size[1]} would need about {need / 2**30:.1f} GiB, but about "
            f"{have / 2**30:.1f} GiB is available on {self.device}; use smaller batches or images (this model "
            f"takes up to {lh}x{lw})"
        )

    def check_image_size(self, size: tuple[int, int], part: str = "encoder") -> None:
        """Check that ``(H, W)`` works for the encoder (``tokenize``) or the decoder (``detokenize``).

        Any size works whose sides are multiples of :meth:`size_multiple` (like the official code, a smaller
        patch grid uses the top-left corner of the position table). A grid larger than the table is outside the
        trained regime: the table is stretched by bilinear interpolation and an
        :class:`~flexitok.errors.OutsideTrainedRegimeWarning` is issued; beyond :meth:`max_image_size`
        (:data:`MAX_TABLE_STRETCH` times the tables per side) the size is refused.
        """
        h, w = (int(x) for x in size)
        if max(h, w) > MAX_IMAGE_SIDE:
            raise InvalidInputError(f"image size {h}x{w} is too large: sides are limited to {MAX_IMAGE_SIDE} pixels")
        mh, mw = self.size_multiple(part)
        if h < 1 or w < 1 or h % mh or w % mw:
            raise InvalidInputError(
                f"image size {h}x{w} does not work with this model: height and width must be positive multiples of "
                f"{mh} and {mw} (VAE downsampling x patch size); resize or crop first"
            )
        grid = (h // mh, w // mw)
        posemb = self.encoder.posemb if part == "encoder" else self.decoder.posemb
        if len(posemb.sizes) == 2 and (
            grid[0] > MAX_TABLE_STRETCH * posemb.sizes[0] or grid[1] > MAX_TABLE_STRETCH * posemb.sizes[1]
        ):
            lh, lw = self.max_image_size(part)
            raise InvalidInputError(
                f"image size {h}x{w} is too large for this model's {part}: its position tables cover "
                f"{posemb.sizes[0] * mh}x{posemb.sizes[1] * mw} pixels and it takes images up to {MAX_TABLE_STRETCH} "
                f"times that per side ({lh}x{lw}); resize first, or fine-tune at the larger size (docs/training.md)"
            )
        if part == "encoder" and self.config.encoder.flatten_patches:
            if grid[0] * grid[1] > posemb.sizes[0]:
                raise InvalidInputError(
                    f"image size {h}x{w} has {grid[0] * grid[1]} patches; this model's 1-D position table has "
                    f"{posemb.sizes[0]} (it cannot be stretched)"
                )
            return
        if not posemb.fits(grid):
            mh_t, mw_t = posemb.sizes[0] * mh, posemb.sizes[1] * mw
            warnings.warn(
                f"image size {h}x{w} is larger than this model's position tables cover ({mh_t}x{mw_t}): the "
                f"{part} stretches its position table by interpolation; this is outside the trained regime and "
                "quality is not guaranteed (fine-tune at the new size: docs/training.md)",
                OutsideTrainedRegimeWarning,
                stacklevel=4,  # the caller of tokenize / detokenize
            )

    def _tokens_to_batch(
        self, tokens: TokensLike, keep_k: int | Sequence[int] | Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Normalise tokens to ``ids [B, N]`` (right-padded with 0) and ``keep_k [B]``."""
        n = self.n_registers
        if isinstance(tokens, Tensor):
            if tokens.ndim == 1:
                tokens = tokens.unsqueeze(0)
            if tokens.ndim != 2:
                raise InvalidInputError(
                    f"tokens must have shape [B, K] or be a list of 1D tensors, got {list(tokens.shape)}"
                )
            rows = list(tokens)
        else:
            rows = [torch.as_tensor(t) for t in tokens]
        if not rows:
            raise InvalidInputError("no token sequences given (an empty batch)")
        lengths = []
        for i, r in enumerate(rows):
            if r.ndim == 2 and r.shape[0] == 1:  # official style [1, k]
                rows[i] = r = r[0]
            if r.ndim != 1:
                raise InvalidInputError(f"token sequence {i} must be 1D, got shape {list(r.shape)}")
            if not 1 <= r.numel() <= n:
                raise InvalidInputError(f"token sequence {i} has {r.numel()} tokens; this model takes 1..{n}")
            self.fsq.check_ids(r)
            lengths.append(r.numel())
        ids = torch.zeros(len(rows), n, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            ids[i, : r.numel()] = r.to(self.device, torch.long)
        keep = torch.tensor(lengths, dtype=torch.long, device=self.device)
        if keep_k is not None:
            k = torch.as_tensor(keep_k)
            if k.dtype.is_floating_point or k.dtype == torch.bool or k.is_complex():
                # as_tensor(2.7, dtype=long) would silently give 2
                raise InvalidInputError(f"keep_k must be an integer or integers, got {keep_k!r}")
            k = k.to(self.device, torch.long).reshape(-1)
            if k.numel() == 1:
                k = k.expand(len(rows))
            if k.numel() != len(rows):
                raise InvalidInputError(f"keep_k has {k.numel()} entries for {len(rows)} token sequences")
            if int(k.min()) < 1 or bool((k > keep).any()):
                raise InvalidInputError(
                    f"keep_k must lie in 1..(number of given tokens) per sequence, got {k.tolist()}"
                )
            keep = k.clone()
        return ids, keep

    # ------------------------------------------------------------------ core API
    def latents_to_codes(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled VAE latents ``[B, C, h, w]`` -> (FSQ codes ``[B, N, d]``, ids ``[B, N]``)."""
        return self.fsq(self.encoder(latents))

    @torch.no_grad()
    def tokenize(
        self,
        images: Tensor | Sequence[Tensor],
        deterministic: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Images in [-1, 1] -> token ids ``LongTensor [B, N]`` (ordered coarse to fine).

        ``images``: a batch ``[B, 3, H, W]`` of any size that :meth:`check_image_size` accepts, or a list of
        ``[3, H, W]`` (or ``[1, 3, H, W]``) images whose sizes may differ. A list is run one batch per size;
        each image gets the same tokens as when tokenized alone (when encoding is deterministic: posterior
        samples are drawn per size group, so they differ from one-at-a-time draws).

        ``deterministic``: ``None`` (default) follows the model's ``vae.sample_posterior``, the official VAE
        wrapper's option (official checkpoints that omit it sample, as the official code does); ``True`` encodes
        the posterior mean (reproducible tokens); ``False`` samples the posterior (from ``generator``).
        """
        sample = None if deterministic is None else not deterministic
        if isinstance(images, Tensor):
            self.check_images(images)
            return self._tokenize_batch(images, sample, generator)
        items = self._image_list(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(items):
            groups.setdefault((img.shape[-2], img.shape[-1]), []).append(i)
        for (h, w), idx in groups.items():  # every group checked before any runs
            self.check_call_memory("encoder", (h, w), len(idx))
        out = torch.empty(len(items), self.encoder.n_registers, dtype=torch.long, device=self.device)
        for idx in groups.values():
            out[idx] = self._tokenize_batch(torch.stack([items[i] for i in idx]), sample, generator)
        return out

    def _image_list(self, images: Sequence[Tensor]) -> list[Tensor]:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or len(images) == 0:
            raise InvalidInputError("images must be a [B, 3, H, W] tensor or a non-empty list of [3, H, W] tensors")
        items = []
        for i, img in enumerate(images):
            if isinstance(img, Tensor) and img.ndim == 4 and img.shape[0] == 1:
                img = img[0]
            if not isinstance(img, Tensor) or img.ndim != 3:
                shape = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise InvalidInputError(f"image {i} of the list must be a [3, H, W] tensor, got {shape}")
            self.check_images(img[None])
            items.append(img)
        return items

    def _tokenize_batch(self, images: Tensor, sample: bool | None, generator: torch.Generator | None) -> Tensor:
        self.check_call_memory("encoder", (int(images.shape[-2]), int(images.shape[-1])), int(images.shape[0]))
        images = images.to(self.device, self.dtype)
        _, ids = self.latents_to_codes(self.vae.encode(images, generator=generator, sample=sample))
        return ids

    def latent_size_for(self, image_size: tuple[int, int]) -> tuple[int, int]:
        d = self.config.vae.downsample
        return image_size[0] // d, image_size[1] // d

    def _decode_sizes(self, image_size: ImageSizeLike | None, batch_size: int) -> list[tuple[int, int]]:
        """``image_size`` (None = native, an int, one ``(H, W)``, or one entry per image) -> ``batch_size`` sizes."""
        if image_size is None:
            sizes = [self.image_size] * batch_size
        elif isinstance(image_size, int) or _is_pair(image_size):
            sizes = [_as_size(image_size)] * batch_size
        else:
            sizes = [_as_size(s) for s in image_size]
            if len(sizes) != batch_size:
                raise InvalidInputError(f"image_size has {len(sizes)} entries for {batch_size} token sequences")
        for size in dict.fromkeys(sizes):
            self.check_image_size(size, "decoder")
        return sizes

    def initial_noise(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        image_size: ImageSizeLike | None = None,
    ) -> Tensor:
        """Gaussian noise ``[B, C, h, w]`` for images of ``image_size`` (default: the native size), drawn one image
        at a time like the official pipeline (so a seeded generator reproduces official samples).

        With per-image sizes that differ, use :meth:`initial_noise_list`.
        """
        noise = self.initial_noise_list(batch_size, generator, image_size)
        if len({tuple(n.shape) for n in noise}) != 1:
            raise InvalidInputError("the images have different sizes; use initial_noise_list")
        return torch.stack(noise)

    def initial_noise_list(
        self, batch_size: int, generator: torch.Generator | None = None, image_size: ImageSizeLike | None = None
    ) -> list[Tensor]:
        """One noise tensor ``[C, h_i, w_i]`` per image, drawn in order from ``generator`` (official order)."""
        c = self.config.vae.latent_channels
        gen_device = generator.device if generator is not None else self.device
        out = []
        for size in self._decode_sizes(image_size, batch_size):
            h, w = self.latent_size_for(size)
            out.append(torch.randn((1, c, h, w), generator=generator, device=gen_device)[0].to(self.device))
        return out

    @torch.no_grad()
    def detokenize(
        self,
        tokens: TokensLike,
        decode: DecodeConfig | None = None,
        *,
        noise: Tensor | Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        keep_k: int | Sequence[int] | Tensor | None = None,
        progress: bool = False,
        image_size: ImageSize | None = None,
        **official_kwargs: Any,
    ) -> Tensor:
        """Token ids -> images ``[B, 3, H, W]`` (not clamped).

        ``tokens``: ``LongTensor [B, K]`` (K <= N) or a list of 1D tensors of different lengths. Each image is
        decoded from its first ``keep_k`` tokens (default: all given). ``decode`` holds the sampler settings
        (steps, guidance, APG, seed; default :class:`DecodeConfig()`). The initial noise is ``noise [B, C, h, w]``
        (or a list of ``[C, h, w]``) when given, else drawn from ``generator``, else from a CPU generator seeded with
        ``decode.seed``.

        ``image_size``: the output size in pixels, ``(H, W)`` or an int, for all images; default the model's
        native size (:attr:`image_size`). For one size per image use :meth:`detokenize_list`; for the decoder's
        latents as well, :meth:`detokenize_with_latents`.
        """
        check_official_kwargs(official_kwargs)  # ml-flextok's keywords: an error naming ours
        images, _ = self._detokenize(tokens, decode, noise, generator, keep_k, progress, self._one_size(image_size))
        return torch.stack(images)

    @torch.no_grad()
    def detokenize_with_latents(
        self,
        tokens: TokensLike,
        decode: DecodeConfig | None = None,
        *,
        noise: Tensor | Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        keep_k: int | Sequence[int] | Tensor | None = None,
        progress: bool = False,
        image_size: ImageSize | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`detokenize` that also returns the sampled latents: (images ``[B, 3, H, W]``, latents
        ``[B, C, h, w]``, the decoder's output that the VAE decodes into the images)."""
        images, latents = self._detokenize(
            tokens, decode, noise, generator, keep_k, progress, self._one_size(image_size)
        )
        return torch.stack(images), torch.stack(latents)

    @torch.no_grad()
    def detokenize_list(
        self,
        tokens: TokensLike,
        decode: DecodeConfig | None = None,
        *,
        noise: Tensor | Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        keep_k: int | Sequence[int] | Tensor | None = None,
        progress: bool = False,
        image_size: ImageSizeLike | None = None,
    ) -> list[Tensor]:
        """:meth:`detokenize` with one size per image: ``image_size`` is a list with an ``(H, W)`` (or int) per
        token sequence (or one size for all) -> a list of ``[3, H_i, W_i]`` images, computed one batch per size."""
        images, _ = self._detokenize(tokens, decode, noise, generator, keep_k, progress, image_size)
        return images

    @staticmethod
    def _one_size(image_size: object) -> ImageSize | None:
        if image_size is None or (isinstance(image_size, int) and not isinstance(image_size, bool)):
            return image_size
        if _is_pair(image_size):
            return _as_size(image_size)
        if isinstance(image_size, (list, tuple)) and all(_is_pair(s) or isinstance(s, int) for s in image_size):
            raise InvalidInputError("image_size must be one size for all images; for one per image use detokenize_list")
        return _as_size(image_size)  # raises with the shape it got

    def _detokenize(
        self,
        tokens: TokensLike,
        decode: DecodeConfig | None,
        noise: Tensor | Sequence[Tensor] | None,
        generator: torch.Generator | None,
        keep_k: int | Sequence[int] | Tensor | None,
        progress: bool,
        image_size: ImageSizeLike | None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """-> (images ``[3, H_i, W_i]``, latents ``[C, h_i, w_i]``), one per token sequence."""
        decode = decode or DecodeConfig()
        ids, keep = self._tokens_to_batch(tokens, keep_k)
        b = ids.shape[0]
        sizes = self._decode_sizes(image_size, b)
        guided = decode.guidance_scale != 1.0
        for size, count in Counter(sizes).items():
            self.check_call_memory("decoder", size, count, guided)
        if noise is None:
            starts = self.initial_noise_list(b, generator if generator is not None else decode.generator(), sizes)
        else:
            starts = self._check_noise(noise, sizes)
        starts = [x.to(self.dtype) for x in starts]
        cond = self.decoder.condition(self.fsq.ids_to_codes(ids), keep)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(size, []).append(i)
        images: list[Tensor] = [torch.empty(0)] * b
        latents: list[Tensor] = [torch.empty(0)] * b
        for idx in groups.values():
            lat = sample_flow(
                self.decoder_velocity(),
                torch.stack([starts[i] for i in idx]),
                cond[idx],
                self.decoder.null_condition(len(idx)),
                decode,
                progress=progress,
            )
            decoded = self.vae.decode(lat)
            for j, i in enumerate(idx):
                latents[i], images[i] = lat[j], decoded[j]
        return images, latents

    def _check_noise(self, noise: Tensor | Sequence[Tensor], sizes: list[tuple[int, int]]) -> list[Tensor]:
        c = self.config.vae.latent_channels
        expected = [(c, *self.latent_size_for(s)) for s in sizes]
        rows = list(noise) if isinstance(noise, Tensor) and noise.ndim == 4 else None
        if rows is None and not isinstance(noise, Tensor):
            rows = [n[0] if n.ndim == 4 and n.shape[0] == 1 else n for n in noise]
        if (
            rows is None
            or len(rows) != len(sizes)
            or any(tuple(r.shape) != e for r, e in zip(rows, expected, strict=True))
        ):
            want = [len(sizes), *expected[0]] if len(set(expected)) == 1 else f"{len(sizes)} tensors {expected}"
            got = list(noise.shape) if isinstance(noise, Tensor) else [tuple(r.shape) for r in rows or []]
            raise InvalidInputError(f"noise must have shape {want}, got {got}")
        if any(not r.is_floating_point() or not bool(torch.isfinite(r).all()) for r in rows):
            raise InvalidInputError("noise must be a float tensor of finite values (it has NaN or infinite entries)")
        return [r.to(self.device, torch.float32) for r in rows]

    @torch.no_grad()
    def autoencode(
        self,
        images: Tensor,
        keep_k: int | Sequence[int] | Tensor | None = None,
        decode: DecodeConfig | None = None,
        **kwargs,
    ) -> Tensor:
        """Tokenize then detokenize (at the input size), keeping the first ``keep_k`` tokens (int or one per image)."""
        kwargs.setdefault("image_size", (int(images.shape[-2]), int(images.shape[-1])))
        return self.detokenize(self.tokenize(images), decode, keep_k=keep_k, **kwargs)

    # ------------------------------------------------------------------ persistence
    def config_for_saving(self) -> FlexTokConfig:
        config = copy.deepcopy(self.config)
        if config.vae.kind == "diffusers" and config.vae.diffusers_config is None:
            # A VAE loaded from `pretrained`: store its architecture, its weights are in model.safetensors.
            assert isinstance(self.vae, DiffusersVAE)
            config.vae.diffusers_config = dict(self.vae.vae.config)
            config.vae.pretrained = None
        return config

    @classmethod
    def check_loaded_config(cls, config: FlexTokConfig, source: str) -> None:
        if config.vae.kind == "diffusers" and config.vae.diffusers_config is None:
            # Otherwise building the model would fetch a VAE from `pretrained` (maybe the network) for nothing.
            raise CheckpointError(f"{source}: config.vae.diffusers_config must describe the diffusers VAE")

    @classmethod
    def estimate_state_size(cls, config: FlexTokConfig) -> int:
        def trunk(t: TransformerConfig, adaln_groups: int) -> int:
            d = t.dim
            block = 4 * d * d + 3 * d * t.hidden + adaln_groups * 6 * d * (d + 1)
            return t.depth * block

        enc, dec, c = config.encoder, config.decoder, config.vae.latent_channels
        h, w = config.latent_size
        fsq, n = len(config.fsq_levels), enc.n_registers
        size = estimate_vae_size(config.vae)
        for part in (enc, dec):
            d, (ph, pw) = part.transformer.dim, part.patch_size
            grid = part.posemb_grid or (h // ph, w // pw)
            table = math.prod(grid) if part.posemb_type == "sincos" else len(grid) * max(grid)
            size += (c * ph * pw + 1) * d + d * table  # patch embedding, position table
        de, dd = enc.transformer.dim, dec.transformer.dim
        size += trunk(enc.transformer, 0) + n * de + (de + 1) * fsq
        size += trunk(dec.transformer, dec.adaln_expansion) + (fsq + 1) * dd + (n + 2) * dd
        size += (dec.time_freq_dim + 1) * dd + (dd + 1) * dd  # timestep MLP
        size += 2 * dd * (dd + 1) + (dd + 1) * dec.patch_size[0] * dec.patch_size[1] * c  # output head
        return size

    @classmethod
    def from_official(
        cls,
        path: str | os.PathLike[str],
        vae_config: dict | str | Path | None = None,
        image_size: tuple[int, int] | None = None,
        device: str | torch.device = "cpu",
        mup_base_width: int | tuple[int, int] | None = None,
        dtype: torch.dtype | None = None,
    ) -> FlexTok:
        """Load an official-format FlexTok ``model.safetensors`` (config in the header metadata or config.json).

        ``image_size`` sets the native size (the ``detokenize`` default; every call may use another size) and
        defaults to the largest the position tables cover (256x256 for the released models). ``dtype`` builds
        the model in that dtype (e.g. ``torch.bfloat16``); ``mup_base_width`` is needed only for checkpoints
        whose heads use the muP readout. See docs/official-checkpoints.md. The reader is
        :func:`flexitok.io.official.load_official`, registered by :mod:`flexitok.io.pretrained`.
        """
        model = cls.foreign_format("official").load(
            Path(path), vae_config=vae_config, image_size=image_size, mup_base_width=mup_base_width, dtype=dtype
        )
        assert isinstance(model, FlexTok)
        return model.to(device).eval()

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"image_size={c.image_size}, registers={c.n_registers}, vocab={c.vocab_size}, "
            f"enc=d{c.encoder.transformer.depth}x{c.encoder.transformer.dim}, "
            f"dec=d{c.decoder.transformer.depth}x{c.decoder.transformer.dim}, vae={c.vae.kind}"
        )
