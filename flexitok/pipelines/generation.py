"""Generation: condition -> AR generator tokens -> FlexTok decoder -> images, seeded per row, in one place.

>>> from flexitok import GenerationPipeline, DecodeConfig
>>> pipe = GenerationPipeline.from_pretrained("default", "default")
>>> out = pipe(labels=[7, 7, 8], n_tokens=16, decode=DecodeConfig(seed=0))
>>> out.images.shape, out.tokens.shape             # [3, 3, H, W] in [-1, 1], LongTensor [3, 16]

Row ``i`` of a call (counting from 0 over all batches) samples its tokens with a generator seeded ``seed + i``
and its decoder noise with one seeded ``seed + NOISE_SEED_OFFSET + i`` (``seed = decode.seed``), both on the
generator's device, so a sample depends neither on the batch size nor on the other rows: ``flexitok generate``,
``quickstart``, ``eval generator`` and the demo all call this pipeline and agree for the same seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flexitok.errors import InvalidInputError
from flexitok.models.conditioning import ConditionEmbedder
from flexitok.models.flextok import FlexTok
from flexitok.models.generator import DEFAULT_GENERATOR, Generator
from flexitok.sampling.ar import ARSamplingConfig, generate
from flexitok.sampling.decode import DecodeConfig

# The bundled tokenizer paired with the bundled generators.
DEFAULT_TOKENIZER = "default"
NOISE_SEED_OFFSET = 10**6


@dataclass
class GenerationOutput:
    """``images [B, 3, H, W]`` in [-1, 1] (on the CPU) and the sampled ``tokens`` ``LongTensor [B, K]``."""

    images: Tensor
    tokens: Tensor


def check_pair(generator: Generator, tokenizer: FlexTok) -> None:
    """The generator must speak the tokenizer's vocabulary and fit in its register count."""
    if generator.vocab_size != tokenizer.vocab_size:
        raise InvalidInputError(
            f"generator vocab_size {generator.vocab_size} does not match the tokenizer's codebook "
            f"({tokenizer.vocab_size}); use the tokenizer the generator was trained on"
        )
    if generator.config.n_tokens > tokenizer.n_registers:
        raise InvalidInputError(
            f"generator makes up to {generator.config.n_tokens} tokens; tokenizer takes {tokenizer.n_registers}"
        )


class GenerationPipeline:
    """An AR :class:`Generator`, the :class:`FlexTok` tokenizer it was trained on, and (for text-conditioned
    generators) a text encoder, loaded on first use unless given."""

    def __init__(self, generator: Generator, tokenizer: FlexTok, text_encoder: nn.Module | None = None) -> None:
        check_pair(generator, tokenizer)
        self.generator, self.tokenizer = generator, tokenizer
        self._text_encoder = text_encoder

    @classmethod
    def from_pretrained(
        cls,
        generator: str | Path = DEFAULT_GENERATOR,
        tokenizer: str | Path = DEFAULT_TOKENIZER,
        device: str | torch.device = "cpu",
        text_encoder: nn.Module | None = None,
    ) -> GenerationPipeline:
        """Load both models (bundled names, folders or hub ids) and check that they belong together."""
        gen = Generator.from_pretrained(generator, device=device)
        tok = FlexTok.from_pretrained(tokenizer, device=device)
        return cls(gen, tok, text_encoder)

    @property
    def conditioning(self) -> ConditionEmbedder:
        return self.generator.conditioning

    @property
    def device(self) -> torch.device:
        return self.generator.tok_emb.weight.device

    @property
    def text_encoder(self) -> nn.Module | None:
        """The prompt encoder of a text-conditioned generator (``config.text_encoder``), loaded once."""
        if self._text_encoder is None and self.conditioning.needs_text_encoder:
            from flexitok.models.text_encoder import TextEncoder

            self._text_encoder = TextEncoder(self.generator.config.text_encoder).to(self.device)
        return self._text_encoder

    @torch.no_grad()
    def __call__(
        self,
        labels: Sequence[int] | Tensor | None = None,
        prompts: Sequence[str] | None = None,
        num_samples: int | None = None,
        n_tokens: int | None = None,
        sampling: ARSamplingConfig | None = None,
        decode: DecodeConfig | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> GenerationOutput:
        """Generate one image per class label, per prompt, or ``num_samples`` unconditional images.

        ``n_tokens``: tokens per image (default: ``sampling.n_tokens``, else all the generator's tokens).
        ``sampling``: the AR options (temperature, top-k/p, CFG scale and schedule, KV cache; default
        :class:`ARSamplingConfig`, no CFG). ``decode``: the decoder's (steps, guidance, APG) and the base seed of the
        rows. ``batch_size`` rows run at a time (default: all at once); the tokens do not depend on it, the images
        at most in the last bits of the decoder's float sums.
        """
        gen = self.generator
        decode = decode or DecodeConfig()
        sampling = sampling or ARSamplingConfig()
        k = n_tokens if n_tokens is not None else sampling.n_tokens
        k = k if k is not None else gen.config.n_tokens
        if not 1 <= k <= gen.config.n_tokens:
            raise InvalidInputError(f"the number of tokens must be in 1..{gen.config.n_tokens}, got {k}")
        sampling = dataclasses.replace(sampling, n_tokens=k)
        given = len(prompts) if prompts is not None else len(labels) if labels is not None else None
        if given is not None and num_samples is not None and given != num_samples:
            raise InvalidInputError(f"{given} conditions for {num_samples} samples")
        n = given if given is not None else num_samples
        if n is None or n < 1:
            raise InvalidInputError("give class labels, prompts or a number of samples (at least one)")
        if batch_size is not None and batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        step = batch_size or n
        tokens_all, images_all = [], []
        seed, dev = decode.seed, self.device
        bar = tqdm(range(0, n, step), desc="generate", unit="batch", disable=not progress, total=math.ceil(n / step))
        for s in bar:
            e = min(s + step, n)
            # Prompts are encoded batch by batch: the text features of a row are padded like its batch.
            cond = self.conditioning.from_inputs(
                labels=None if labels is None else labels[s:e],
                prompts=None if prompts is None else list(prompts[s:e]),
                num_samples=e - s if labels is None and prompts is None else None,
                text_encoder=self.text_encoder if prompts is not None else None,
            )
            gens = [torch.Generator(device=dev).manual_seed(seed + i) for i in range(s, e)]
            tokens = generate(gen, sampling, cond, generator=gens)
            noise_gens = [torch.Generator(device=dev).manual_seed(seed + NOISE_SEED_OFFSET + i) for i in range(s, e)]
            noise = torch.cat([self.tokenizer.initial_noise(1, g) for g in noise_gens])
            images = self.tokenizer.detokenize(tokens, decode, noise=noise)
            tokens_all.append(tokens.cpu())
            images_all.append(images.clamp(-1, 1).cpu())
        return GenerationOutput(images=torch.cat(images_all), tokens=torch.cat(tokens_all))
