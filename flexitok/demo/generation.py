"""The demo's optional generation panel: a :class:`flexitok.pipelines.GenerationPipeline` behind the web API."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from flexitok.models.flextok import FlexTok
from flexitok.models.generator import Generator
from flexitok.pipelines import GenerationPipeline
from flexitok.sampling.ar import ARSamplingConfig
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.limits import MAX_PROMPT_CHARS, check_int, check_prompts


class ARGeneratorBackend:
    """Wraps a generator and its tokenizer for :func:`flexitok.demo.create_app`.

    A request is row 0 of a pipeline call seeded with the request's seed: the same image as
    ``flexitok generate --seed S -n 1`` with the same condition, k and settings.
    """

    def __init__(
        self,
        generator: Generator,
        tokenizer: FlexTok,
        decode: DecodeConfig | None = None,
        cfg_scale: float = 3.0,
        temperature: float = 1.0,
    ) -> None:
        self.pipeline = GenerationPipeline(generator, tokenizer)
        self.decode = decode or DecodeConfig()
        self.sampling = ARSamplingConfig(temperature=temperature, guidance_scale=cfg_scale)
        conditioning = self.pipeline.conditioning
        self.condition: str = conditioning.kind
        self.class_names: list[str] = conditioning.class_names
        self.max_tokens: int = generator.config.n_tokens
        self.max_prompt_chars: int = MAX_PROMPT_CHARS  # the shared policy (flexitok.utils.limits)

    @classmethod
    def load(cls, name_or_path: str, tokenizer: FlexTok, decode: DecodeConfig | None = None) -> ARGeneratorBackend:
        return cls(Generator.from_pretrained(name_or_path, device=tokenizer.device), tokenizer, decode)

    def check_request(self, k: int, class_index: int | None, prompt: str | None) -> None:
        """Refuse a request before it takes a work slot (:class:`InvalidInputError`, an HTTP 400): ``k`` outside
        ``1..max_tokens``, a class outside the generator's, a prompt against the shared policy of
        :mod:`flexitok.utils.limits` (at most ``MAX_PROMPT_CHARS`` characters), the wrong kind of condition."""
        check_int("k", k, 1, self.max_tokens)
        if class_index is not None:
            if self.condition != "class":
                raise self.pipeline.conditioning.wrong_input()
            check_int("class_index", class_index, 0, len(self.class_names) - 1)
        if prompt is not None and prompt.strip():
            if self.condition != "text":
                raise self.pipeline.conditioning.wrong_input()
            check_prompts(prompt)

    @torch.no_grad()
    def generate(self, k: int, seed: int, class_index: int | None, prompt: str | None) -> Tensor:
        """-> image ``[3, H, W]`` in [-1, 1] from ``k`` sampled tokens (the request is checked first)."""
        self.check_request(k, class_index, prompt)
        labels = None if class_index is None else [class_index]
        prompts = [prompt.strip()] if prompt and prompt.strip() else None
        out = self.pipeline(
            labels=labels,
            prompts=prompts,
            num_samples=1,
            n_tokens=k,
            sampling=self.sampling,
            decode=replace(self.decode, seed=seed),
        )
        return out.images[0]
