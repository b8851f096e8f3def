"""The public FlexTok model: images <-> ordered 1D token sequences of flexible length."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

import torch
from torch import Tensor

from flexitok.config import FlexTokConfig, TransformerConfig
from flexitok.errors import CheckpointError, InvalidInputError
from flexitok.models.decoder import FlexTokDecoder
from flexitok.models.encoder import FlexTokEncoder
from flexitok.models.vae import Autoencoder, DiffusersVAE, build_vae, estimate_vae_size
from flexitok.nn.fsq import FSQ
from flexitok.sampling.flow import euler_sample
from flexitok.sampling.guidance import APG, GuidanceScale
from flexitok.utils.persistence import PretrainedModel

TokensLike = Tensor | Sequence[Tensor]


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

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def n_registers(self) -> int:
        return self.config.n_registers

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return self.fsq._basis.device

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

    # ------------------------------------------------------------------ validation
    def check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor):
            raise InvalidInputError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.dtype.is_floating_point:
            raise InvalidInputError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInputError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
        if tuple(images.shape[2:]) != self.image_size:
            raise InvalidInputError(
                f"this model takes {self.image_size[0]}x{self.image_size[1]} images, got "
                f"{images.shape[2]}x{images.shape[3]}; resize or crop first (flexitok.io.images.load_image does)"
            )
        if not torch.isfinite(images).all():
            raise InvalidInputError("images contain NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.001 or hi > 1.001:
            raise InvalidInputError(f"images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")

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
                raise InvalidInputError("no token sequences given")
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
            k = torch.as_tensor(keep_k, dtype=torch.long, device=self.device).reshape(-1)
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
    def tokenize(self, images: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] -> token ids ``LongTensor [B, N]`` (ordered coarse to fine)."""
        self.check_images(images)
        images = images.to(self.device, self.fsq._half.dtype)
        _, ids = self.latents_to_codes(self.vae.encode(images))
        return ids

    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian noise ``[B, C, h, w]``, drawn one image at a time like the official pipeline (so a seeded
        generator reproduces official samples)."""
        c, (h, w) = self.config.vae.latent_channels, self.config.latent_size
        gen_device = generator.device if generator is not None else self.device
        draws = [torch.randn((1, c, h, w), generator=generator, device=gen_device) for _ in range(batch_size)]
        return torch.cat(draws).to(self.device)

    @overload
    def detokenize(
        self,
        tokens: TokensLike,
        steps: int = ...,
        guidance_scale: GuidanceScale = ...,
        apg: bool | APG = ...,
        noise: Tensor | None = ...,
        generator: torch.Generator | None = ...,
        keep_k: int | Sequence[int] | Tensor | None = ...,
        progress: bool = ...,
        return_latents: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def detokenize(
        self,
        tokens: TokensLike,
        steps: int = ...,
        guidance_scale: GuidanceScale = ...,
        apg: bool | APG = ...,
        noise: Tensor | None = ...,
        generator: torch.Generator | None = ...,
        keep_k: int | Sequence[int] | Tensor | None = ...,
        progress: bool = ...,
        *,
        return_latents: Literal[True],
    ) -> tuple[Tensor, Tensor]: ...

    @torch.no_grad()
    def detokenize(
        self,
        tokens: TokensLike,
        steps: int = 20,
        guidance_scale: GuidanceScale = 7.5,
        apg: bool | APG = True,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        keep_k: int | Sequence[int] | Tensor | None = None,
        progress: bool = False,
        return_latents: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Token ids -> images ``[B, 3, H, W]`` (not clamped).

        ``tokens``: ``LongTensor [B, K]`` (K <= N) or a list of 1D tensors of different lengths. Each image is
        decoded from its first ``keep_k`` tokens (default: all given). ``guidance_scale`` 1.0 disables
        guidance; ``apg`` selects adaptive projected guidance over plain CFG. ``noise [B, C, h, w]`` fixes the
        starting point; otherwise it is drawn from ``generator``.
        """
        ids, keep = self._tokens_to_batch(tokens, keep_k)
        b = ids.shape[0]
        if noise is None:
            noise = self.initial_noise(b, generator)
        else:
            expected = (b, self.config.vae.latent_channels, *self.config.latent_size)
            if tuple(noise.shape) != expected:
                raise InvalidInputError(f"noise must have shape {list(expected)}, got {list(noise.shape)}")
            noise = noise.to(self.device, torch.float32)
        cond = self.decoder.condition(self.fsq.ids_to_codes(ids), keep)
        guider = apg if isinstance(apg, APG) else (APG() if apg else None)
        latents = euler_sample(
            self.decoder,
            noise,
            cond,
            self.decoder.null_condition(b),
            steps=steps,
            guidance_scale=guidance_scale,
            apg=guider,
            progress=progress,
        )
        images = self.vae.decode(latents)
        return (images, latents) if return_latents else images

    @torch.no_grad()
    def autoencode(self, images: Tensor, keep_k: int | Sequence[int] | Tensor | None = None, **kwargs) -> Tensor:
        """Tokenize then detokenize, keeping the first ``keep_k`` tokens (int or one per image)."""
        return self.detokenize(self.tokenize(images), keep_k=keep_k, **kwargs)

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
            rows, cols = part.posemb_grid or (h // ph, w // pw)
            size += (c * ph * pw + 1) * d + d * rows * cols  # patch embedding, sin-cos table
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
    ) -> FlexTok:
        """Load an official-format FlexTok ``model.safetensors`` (config in the header metadata or config.json).

        ``image_size`` defaults to the largest the position tables cover (256x256 for the released models).
        The reader is :func:`flexitok.io.official.load_official`, registered by :mod:`flexitok.io.pretrained`.
        """
        model = cls.foreign_format("official").load(Path(path), vae_config=vae_config, image_size=image_size)
        assert isinstance(model, FlexTok)
        return model.to(device).eval()

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"image_size={c.image_size}, registers={c.n_registers}, vocab={c.vocab_size}, "
            f"enc=d{c.encoder.transformer.depth}x{c.encoder.transformer.dim}, "
            f"dec=d{c.decoder.transformer.depth}x{c.decoder.transformer.dim}, vae={c.vae.kind}"
        )
