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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flexitok.errors import InvalidInputError
from flexitok.models.conditioning import Condition, ConditionEmbedder
from flexitok.models.flextok import FlexTok
from flexitok.models.generator import DEFAULT_GENERATOR, Generator
from flexitok.sampling.ar import ARSamplingConfig, generate
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.limits import MAX_SAMPLES_PER_CALL, MAX_SAMPLES_STREAMED, check_num_samples, check_prompts

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

    def __call__(
        self,
        labels: Sequence[int] | Tensor | int | None = None,
        prompts: Sequence[str] | str | None = None,
        num_samples: int | None = None,
        n_tokens: int | None = None,
        sampling: ARSamplingConfig | None = None,
        decode: DecodeConfig | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> GenerationOutput:
        """Generate one image per class label, per prompt, or ``num_samples`` unconditional images.

        ``labels``: class ids (a list, a ``LongTensor [B]`` or one int); ``prompts``: a list of strings, or one
        string (one prompt). ``n_tokens``: tokens per image (default: ``sampling.n_tokens``, else all the
        generator's tokens). ``sampling``: the AR options (temperature, top-k/p, CFG scale and schedule, KV cache;
        default :class:`ARSamplingConfig`, no CFG). ``decode``: the decoder's (steps, guidance, APG) and the base
        seed of the rows. ``batch_size`` rows run at a time (default: all at once); the tokens do not depend on it,
        the images at most in the last bits of the decoder's float sums. Every image is returned at once, so a call
        makes at most :data:`~flexitok.utils.limits.MAX_SAMPLES_PER_CALL`; :meth:`iter_batches` streams more.
        """
        batches = list(
            self._batches(
                labels, prompts, num_samples, n_tokens, sampling, decode, batch_size, progress, MAX_SAMPLES_PER_CALL
            )
        )
        return GenerationOutput(
            images=torch.cat([b.images for b in batches]), tokens=torch.cat([b.tokens for b in batches])
        )

    def iter_batches(
        self,
        labels: Sequence[int] | Tensor | int | None = None,
        prompts: Sequence[str] | str | None = None,
        num_samples: int | None = None,
        n_tokens: int | None = None,
        sampling: ARSamplingConfig | None = None,
        decode: DecodeConfig | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Iterator[GenerationOutput]:
        """Like calling the pipeline, but yields each batch's output as soon as it is decoded (rows in order,
        seeded the same), so a caller can write images as they come; up to
        :data:`~flexitok.utils.limits.MAX_SAMPLES_STREAMED` samples. The inputs are checked here, before the
        first batch runs."""
        return self._batches(
            labels, prompts, num_samples, n_tokens, sampling, decode, batch_size, progress, MAX_SAMPLES_STREAMED
        )

    def _batches(
        self,
        labels: Sequence[int] | Tensor | int | None,
        prompts: Sequence[str] | str | None,
        num_samples: int | None,
        n_tokens: int | None,
        sampling: ARSamplingConfig | None,
        decode: DecodeConfig | None,
        batch_size: int | None,
        progress: bool,
        limit: int,
    ) -> Iterator[GenerationOutput]:
        gen = self.generator
        decode = decode or DecodeConfig()
        sampling = sampling or ARSamplingConfig()
        k = n_tokens if n_tokens is not None else sampling.n_tokens
        k = k if k is not None else gen.config.n_tokens
        if not 1 <= k <= gen.config.n_tokens:
            raise InvalidInputError(f"the number of tokens must be in 1..{gen.config.n_tokens}, got {k}")
        sampling = dataclasses.replace(sampling, n_tokens=k)
        if labels is not None and prompts is not None:
            raise InvalidInputError("give class labels or prompts, not both")
        if prompts is not None:
            prompts = check_prompts(prompts)
        rows = _one_label(labels)
        given = len(prompts) if prompts is not None else len(rows) if rows is not None else None
        if given is not None and num_samples is not None and given != num_samples:
            raise InvalidInputError(f"{given} conditions for {num_samples} samples")
        n = given if given is not None else num_samples
        if n is None:
            raise InvalidInputError("give class labels, prompts or a number of samples (at least one)")
        n = check_num_samples(n, limit)
        if batch_size is not None and batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        step = batch_size or n
        # The first batch's condition is built here, so wrong inputs fail before the caller iterates.
        first = self._condition(rows, prompts, 0, min(step, n))
        return self._run(first, rows, prompts, n, step, sampling, decode, progress)

    def _condition(self, labels: Sequence[int] | Tensor | None, prompts: list[str] | None, s: int, e: int) -> Condition:
        # Prompts are encoded batch by batch: the text features of a row are padded like its batch.
        return self.conditioning.from_inputs(
            labels=None if labels is None else labels[s:e],
            prompts=None if prompts is None else prompts[s:e],
            num_samples=e - s if labels is None and prompts is None else None,
            text_encoder=self.text_encoder if prompts is not None else None,
        )

    @torch.no_grad()
    def _run(
        self,
        first: Condition,
        labels: Sequence[int] | Tensor | None,
        prompts: list[str] | None,
        n: int,
        step: int,
        sampling: ARSamplingConfig,
        decode: DecodeConfig,
        progress: bool,
    ) -> Iterator[GenerationOutput]:
        seed, dev = decode.seed, self.device
        bar = tqdm(range(0, n, step), desc="generate", unit="batch", disable=not progress, total=math.ceil(n / step))
        for s in bar:
            e = min(s + step, n)
            cond = first if s == 0 else self._condition(labels, prompts, s, e)
            gens = [torch.Generator(device=dev).manual_seed(seed + i) for i in range(s, e)]
            tokens = generate(self.generator, sampling, cond, generator=gens)
            noise_gens = [torch.Generator(device=dev).manual_seed(seed + NOISE_SEED_OFFSET + i) for i in range(s, e)]
            noise = torch.cat([self.tokenizer.initial_noise(1, g) for g in noise_gens])
            images = self.tokenizer.detokenize(tokens, decode, noise=noise)
            yield GenerationOutput(images=images.clamp(-1, 1).cpu(), tokens=tokens.cpu())


def _one_label(labels: Sequence[int] | Tensor | int | None) -> Sequence[int] | Tensor | None:
    """Class ids as rows: one id (an int or a 0-d tensor) is one row; a string is not a list of ids."""
    if labels is None:
        return None
    if isinstance(labels, Tensor):
        return labels.view(1) if labels.dim() == 0 else labels
    if isinstance(labels, int) and not isinstance(labels, bool):
        return [labels]
    if isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)):
        return labels
    raise InvalidInputError(f"labels must be class ids (a list, a LongTensor or one int), got {labels!r:.40}")
